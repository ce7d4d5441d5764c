"""Arteries and veins measured apart: CRAE, CRVE and AVR around the optic disc, and the
vessel measures of each class.

The central retinal arteriolar and venular equivalents (CRAE, CRVE) summarise the
calibres of the vessels crossing zone B (half to one disc diameter beyond the disc's
margin: :data:`~.disc.ZONES`) by the revised formulas of Knudtson et al. (2003, "Revised
formulas for summarizing retinal vessel diameters", Curr Eye Res 27:143-149): the six
widest arterioles (venules) are paired largest with smallest, each pair combined as
``k * sqrt(w1^2 + w2^2)`` (k = 0.88 for arterioles, 0.95 for venules), the odd one out
carried over, until one value is left. AVR = CRAE / CRVE.

Here a zone-B vessel is a segment of the vessel map (any class) between branch points
and crossings (:func:`~.measures.measure`) whose centreline runs through zone B for at
least as long as the vessel is wide (and :data:`~.measures.MIN_SEGMENT_PX`); its
calibre is its area inside zone B over its centreline's length there
(:func:`zone_vessels`) and its class the majority of artery and vein pixels on that
centreline. A vessel that branches inside zone B counts as its
segments (the protocol measures the trunk once), which is where this differs from a
grader's reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..datasets.base import VESSEL_CLASSES
from .disc import ZONES, Disc
from .measures import MIN_SEGMENT_PX, Field, PixelSize, as_binary, measure, pixel_size

KNUDTSON = {"artery": 0.88, "vein": 0.95}
WIDEST = 6  # vessels of each class the equivalents combine
MIN_VESSELS = 2  # fewer zone-B vessels of a class than this: no equivalent
MARGIN = 0.25  # disc diameters traced beyond zone B on each side (zone_vessels)
ARTERY, VEIN = VESSEL_CLASSES.index("artery"), VESSEL_CLASSES.index("vein")
CLASS_MEASURES = ("area_density", "fractal_dimension", "tortuosity", "calibre_mean")

FIELDS: tuple[Field, ...] = (
    Field("disc_row", "px", "optic disc centre, row"),
    Field("disc_col", "px", "optic disc centre, column"),
    Field("disc_diameter", "L", "optic disc diameter"),
    Field("crae", "L", "central retinal arteriolar equivalent (revised Knudtson, zone B)"),
    Field("crve", "L", "central retinal venular equivalent (revised Knudtson, zone B)"),
    Field("avr", "1", "arteriole-to-venule ratio, crae / crve"),
    Field("zone_b_arteries", "count", "artery segments in zone B (the widest six combined)"),
    Field("zone_b_veins", "count", "vein segments in zone B (the widest six combined)"),
    *(Field(f"{kind}_{name}", unit, f"{name.replace('_', ' ')} of the {kind} map")
      for kind in KNUDTSON
      for name, unit in zip(CLASS_MEASURES, ("1", "1", "1", "L"), strict=True)),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
DISC_FIELDS = FIELD_NAMES[:3]
_UNITS = {f.name: f.unit for f in FIELDS}


@dataclass(frozen=True)
class ZoneVessel:
    """One zone-B vessel segment: its class, calibre and length in px, the share of its
    centreline's classed pixels that are of that class, and the centreline."""

    kind: str
    calibre: float
    length: float
    agreement: float
    coords: np.ndarray = field(repr=False)


@dataclass
class ArteryVeinAnalysis:
    """The measures of one artery/vein map (:data:`FIELDS`, in ``pixel_size``'s units;
    NaN with the reason in ``reasons`` where undefined), the disc they were measured
    around and the zone-B vessels, the six widest of each class ``used``."""

    values: dict[str, float]
    reasons: dict[str, str]
    disc: Disc
    pixel_size: PixelSize
    vessels: list[ZoneVessel]
    used: list[ZoneVessel]


def disc_reasons(disc: Disc) -> dict[str, str]:
    """Why the disc's fields are NaN, where no disc was found."""
    return {} if disc.found else {k: f"no optic disc: {disc.reason}" for k in DISC_FIELDS}


def knudtson(widths: list[float] | np.ndarray, k: float) -> float:
    """The revised Knudtson equivalent of ``widths`` with constant ``k``: sorted, paired
    largest with smallest into ``k * sqrt(a^2 + b^2)``, the middle one of an odd count
    carried over, until one value is left (NaN for no widths)."""
    values = sorted((float(w) for w in widths), reverse=True)
    if not values:
        return math.nan
    while len(values) > 1:
        n = len(values)
        merged = [k * math.hypot(values[i], values[n - 1 - i]) for i in range(n // 2)]
        if n % 2:
            merged.append(values[n // 2])
        values = sorted(merged, reverse=True)
    return values[0]


def zone_vessels(classes: np.ndarray, disc: Disc, fov: np.ndarray | None = None
                 ) -> list[ZoneVessel]:
    """The classed vessel segments of zone B around ``disc`` in the class map ``classes``
    (module docstring), widest first.

    The vessels are traced in a ring :data:`MARGIN` disc diameters wider than zone B on
    each side, so that no segment's centreline is cut short at zone B's edges (a
    skeleton stops half a vessel width before the end of a cut vessel, which would read
    the vessel wider than it is); each segment's calibre is then its vessel area inside
    zone B (each vessel pixel counted for its nearest centreline pixel) over its
    centreline's length inside zone B."""
    zone = disc.zone(classes.shape, "B")
    inner, outer = ZONES["B"]
    region = disc.ring(classes.shape, inner - MARGIN, outer + MARGIN)
    if fov is not None:
        zone, region = zone & fov, region & fov
    if not zone.any():
        return []
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    crop, zone = classes[box], zone[box]
    vessels = crop > 0
    segments = measure(vessels, region[box]).segments
    centreline = np.zeros(crop.shape, np.int32)  # segment index + 1 on each centreline pixel
    for i, segment in enumerate(segments):
        r, c = _pixels(segment.coords, crop.shape)
        centreline[r, c] = i + 1
    _, (near_r, near_c) = ndimage.distance_transform_edt(centreline == 0, return_indices=True)
    counted = vessels & zone
    area = np.bincount(centreline[near_r[counted], near_c[counted]],
                       minlength=len(segments) + 1)[1:]
    found = []
    for i, segment in enumerate(segments):
        middle = (segment.coords[1:] + segment.coords[:-1]) / 2
        r, c = _pixels(middle, crop.shape)
        inside = zone[r, c]
        length = float(np.hypot(*np.diff(segment.coords, axis=0).T)[inside].sum())
        calibre = area[i] / length if length > 0 else math.nan
        if not length >= max(calibre, MIN_SEGMENT_PX):  # a speck or a stub; NaN too
            continue
        r, c = _pixels(segment.coords, crop.shape)
        on = crop[r, c][zone[r, c]]
        arteries, veins = int(np.sum(on == ARTERY)), int(np.sum(on == VEIN))
        if arteries + veins == 0:
            continue
        kind = "artery" if arteries >= veins else "vein"
        found.append(ZoneVessel(kind, calibre, length, max(arteries, veins) / (arteries + veins),
                                segment.coords + np.array([rows[0], cols[0]])))
    return sorted(found, key=lambda v: -v.calibre)


def _pixels(coords: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) points rounded to pixels inside ``shape``."""
    r, c = np.round(coords).astype(int).T
    return np.clip(r, 0, shape[0] - 1), np.clip(c, 0, shape[1] - 1)


def _class_measures(classes: np.ndarray, fov: np.ndarray, size: PixelSize
                    ) -> tuple[dict[str, float], dict[str, str]]:
    """:data:`CLASS_MEASURES` of the artery map and of the vein map, prefixed."""
    values, reasons = {}, {}
    for kind, value in (("artery", ARTERY), ("vein", VEIN)):
        analysis = measure(classes == value, fov, mm_per_pixel=size.mm_per_pixel)
        for name in CLASS_MEASURES:
            values[f"{kind}_{name}"] = analysis.values[name]
            if name in analysis.reasons:
                reasons[f"{kind}_{name}"] = analysis.reasons[name]
    return values, reasons


def measure_artery_vein(classes: np.ndarray, disc: Disc, fov: np.ndarray | None = None, *,
                        mm_per_pixel: float | None = None, fov_degrees: float | None = None
                        ) -> ArteryVeinAnalysis:
    """CRAE, CRVE and AVR around ``disc`` and each class's measures (:data:`FIELDS`) of
    the map ``classes`` of :data:`~qsegment.datasets.VESSEL_CLASSES` (0 background,
    1 artery, 2 vein, 3 uncertain), inside ``fov`` (default: the whole frame).

    No disc, no vessel of a class in zone B, or fewer than :data:`MIN_VESSELS`: the
    values that need them are NaN with the reason; the others are still measured.

    Raises:
        BiomarkerError: ``classes`` is not a 2-D map, or ``fov`` is not binary or of
            another size, or the pixel-size options are wrong.
    """
    classes = np.asarray(classes)
    vessels = as_binary(classes > 0, "artery/vein map")
    fov = np.ones_like(vessels) if fov is None else as_binary(fov, "FOV mask")
    size = pixel_size(fov, mm_per_pixel=mm_per_pixel, fov_degrees=fov_degrees)
    values, reasons = _class_measures(np.where(fov, classes, 0), fov, size)
    found = zone_vessels(classes, disc, fov) if disc.found else []
    used: list[ZoneVessel] = []
    values.update(disc_row=disc.row, disc_col=disc.col, disc_diameter=disc.diameter)
    reasons.update(disc_reasons(disc))
    for kind, name, count in (("artery", "crae", "zone_b_arteries"),
                              ("vein", "crve", "zone_b_veins")):
        widest = [v for v in found if v.kind == kind][:WIDEST]
        values[count] = len([v for v in found if v.kind == kind]) if disc.found else math.nan
        values[name] = math.nan
        if not disc.found:
            reasons[name] = reasons[count] = f"no optic disc: {disc.reason}"
        elif not (classes == (ARTERY if kind == "artery" else VEIN)).any():
            reasons[name] = f"the map has no {kind} pixel"
        elif len(widest) < MIN_VESSELS:
            reasons[name] = (f"{len(widest)} {kind} segment(s) in zone B; the equivalent "
                             f"needs at least {MIN_VESSELS}")
        else:
            values[name] = knudtson([v.calibre for v in widest], KNUDTSON[kind])
            used += widest
    values["avr"] = values["crae"] / values["crve"] if not math.isnan(
        values["crae"] + values["crve"]) else math.nan
    if math.isnan(values["avr"]):
        reasons["avr"] = reasons.get("crae") or reasons.get("crve") or "undefined"
    converted = {k: size.convert(v, _UNITS[k]) for k, v in values.items()}
    return ArteryVeinAnalysis(converted, reasons, disc, size, found, used)
