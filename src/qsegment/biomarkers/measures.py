"""Vessel biomarkers of one binary vessel map, inside its field of view (FOV).

Pure functions of arrays: no files, no model. Everything is measured inside the FOV
(the whole frame when none is given) in pixels, and converted to millimetres at the
end when the pixel size is known (:func:`pixel_size`). docs/BIOMARKERS.md says what each
number means, with references.

Conventions (each validated on shapes with known answers in tests/test_biomarkers.py):

- **Centreline**: ``skimage.morphology.skeletonize`` of the vessel map, traced into
  segments (paths between junctions and free ends) by ``skan``. A path with a free end
  that is shorter than the vessel is wide where it starts (length < twice the largest
  distance to the background on it) is a skeletonisation spur or a speck: such paths
  are pruned once, before anything is measured.
- **Length**: each segment's pixel chain is resampled at every pixel of chain length
  and smoothed by a quadratic Savitzky-Golay filter over :data:`SMOOTH_WINDOW` px. The
  8-connected chain of a digital line is up to 8 % too long (at 22.5 degrees); the
  smooth curve of a 1 px line is within 0.5 % at any angle, and it gives the chord
  and the curvature too.
- **Tortuosity** of a segment: arc length / chord; **curvature**: the mean absolute
  curvature of the smooth curve (total curvature / length, rad per length unit).
  Both only for segments of :data:`MIN_SEGMENT_PX` or more (shorter ones are pixel
  noise), and summarised as length-weighted means.
- **Calibre** of a segment: the vessel area closest to its centreline (each vessel
  pixel goes to its nearest centreline pixel, found with the Euclidean distance
  transform, if it lies within that pixel's vessel radius) divided by the segment's
  length. Unlike ``2 * edt - 1`` at single pixels, which reads a 3 px line at 30
  degrees as 1.8 px, it does not depend on the vessel's direction: lines 3, 5 and 9 px
  wide measure within 0.6 px of their width at 0 to 80 degrees.
- **Junctions**: centreline pixels with three or more neighbours; junctions joined by
  a link shorter than the vessel is wide there are one junction. Three segments meet
  at a *branch point*, four or more at a *crossing*. The *branching angle* is the
  smallest of the three angles between the segments' directions at a branch point,
  each read from 2 junction radii out (past the junction's blob) over a further
  ``max(10 px, 4 radii)``: the angle between the daughters of a bifurcation, and 90
  degrees for a side branch leaving a straight vessel (a T). It under-reads
  bifurcations whose daughters open wider than 120 degrees; the minimum-work optimum
  of a symmetric bifurcation is 75 degrees (Murray 1926, Zamir 1976).
- **Fractal dimension**: box counting on the vessel map (not its centreline) cut to
  the FOV's bounding box, with boxes of :data:`BOX_SIZES` px that fit four times into
  its shorter side; least-squares slope of log(count) against log(1/size), reported
  with the range of box sizes and the fit's R^2.
- **Millimetres**: lengths are multiplied by mm/px, areas by (mm/px)^2, curvature and
  length density by px/mm; ratios, counts and angles do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple
from warnings import warn

import numpy as np
import skan
from scipy import ndimage, signal, stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import block_reduce
from skimage.morphology import remove_small_objects, skeletonize

from ..datasets.fov import fov_mask_diameter
from ..errors import QsegmentError

if TYPE_CHECKING:
    from .equivalents import ArteryVeinAnalysis

MM_PER_DEGREE = 0.29
"""Retinal distance per degree of visual angle near the posterior pole of an
emmetropic adult eye: 0.29 mm/deg (Drasdo N, Fowler CW, "Non-linear projection of the
retinal image in a wide-angle schematic eye", Br J Ophthalmol 58:709-714, 1974).
It ignores the eye's axial length and the camera's own magnification, so a pixel size
from the FOV angle is good to about 10 %."""

SMOOTH_WINDOW = 21  # px of centreline in each Savitzky-Golay fit
MIN_SEGMENT_PX = 10.0  # shorter segments get no tortuosity, curvature or calibre
WIDEST_FRACTION = 0.10  # calibre_widest: mean calibre of the widest 10 % of segments
BOX_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512)
NOT_A_TREE = 0.5  # a map covering more of its FOV than this is not a vessel tree
BRIDGE_LOW = 0.3  # bridge_gaps: probability a gap in a vessel may dip to
SPECK_PX = 100  # bridge_gaps: pieces this small that nothing joined are dropped


class BiomarkerError(QsegmentError, ValueError):
    """An input that cannot be measured (not 2-D, not binary, sizes that disagree)."""


class Field(NamedTuple):
    """One biomarker: its name, unit (``L``: the length unit, px or mm) and meaning."""

    name: str
    unit: str
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("fov_area", "L^2", "area of the field of view"),
    Field("vessel_area", "L^2", "vessel pixels inside the FOV"),
    Field("area_density", "1", "vessel_area / fov_area"),
    Field("vessel_length", "L", "total centreline length"),
    Field("length_density", "1/L", "vessel_length / fov_area"),
    Field("fractal_dimension", "1", "box-counting dimension of the vessel map"),
    Field("fractal_r2", "1", "R^2 of the box-counting fit"),
    Field("fractal_box_min", "px", "smallest box of the fit"),
    Field("fractal_box_max", "px", "largest box of the fit"),
    Field("tortuosity", "1", "length-weighted mean arc/chord of the segments"),
    Field("tortuosity_median", "1", "median arc/chord of the segments"),
    Field("curvature", "rad/L", "total absolute curvature / length of the segments"),
    Field("calibre_mean", "L", "length-weighted mean calibre of the segments"),
    Field("calibre_median", "L", "median calibre of the segments"),
    Field("calibre_widest", "L", "mean calibre of the widest 10 % of segments"),
    Field("segments", "count", "vessel segments between junctions and free ends"),
    Field("branch_points", "count", "junctions of three segments"),
    Field("crossings", "count", "junctions of four or more segments"),
    Field("end_points", "count", "free ends of segments"),
    Field("branching_angle", "deg", "mean branching angle over the branch points"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
_UNITS = {f.name: f.unit for f in FIELDS}
_POWER = {"L": 1, "L^2": 2, "1/L": -1, "rad/L": -1}


@dataclass(frozen=True)
class PixelSize:
    """How long a pixel is (``mm_per_pixel``; None: measure in pixels) and why."""

    mm_per_pixel: float | None = None
    source: str = "pixels"

    @property
    def unit(self) -> str:
        return "px" if self.mm_per_pixel is None else "mm"

    def convert(self, value: float, unit: str) -> float:
        """``value``, measured in pixels with ``unit`` (a :class:`Field` unit), in this
        length unit (mm, or px when the pixel size is unknown)."""
        if self.mm_per_pixel is None or unit not in _POWER:
            return value
        return value * self.mm_per_pixel ** _POWER[unit]

    def units(self) -> dict[str, str]:
        """Each field's unit in words, ``L`` replaced by px or mm."""
        return {name: unit.replace("L", self.unit) for name, unit in _UNITS.items()}


@dataclass(frozen=True)
class FractalFit:
    dimension: float
    r2: float
    box_sizes: tuple[int, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    """One vessel segment, in pixels. ``kind``: tip-tip, tip-junction,
    junction-junction or cycle (a closed loop: no chord, so no arc/chord); ``coords``:
    its smooth centreline, (row, col) per px; NaN shape measures for segments shorter
    than :data:`MIN_SEGMENT_PX`."""

    kind: str
    length: float
    chord: float
    arc_chord: float
    curvature: float  # mean |curvature|, rad/px
    calibre: float
    coords: np.ndarray = field(repr=False)

    def row(self, pixel_size: PixelSize) -> dict[str, float | str]:
        """The segment in ``pixel_size``'s units (its ends in pixels), for a table."""
        (y0, x0), (y1, x1) = np.round(self.coords[[0, -1]], 1).tolist()
        convert = pixel_size.convert
        return {"kind": self.kind, "length": convert(self.length, "L"),
                "chord": convert(self.chord, "L"), "arc_chord": self.arc_chord,
                "curvature": convert(self.curvature, "rad/L"),
                "calibre": convert(self.calibre, "L"), "length_unit": pixel_size.unit,
                "y0_px": y0, "x0_px": x0, "y1_px": y1, "x1_px": x1}


@dataclass
class VesselAnalysis:
    """The biomarkers of one vessel map: ``values`` in ``pixel_size``'s units (NaN where
    undefined, with the reason in ``reasons``), the segments, and the maps behind them
    (``skeleton``: the pruned centreline; ``width``: each segment's calibre in px on
    its centreline, NaN elsewhere; branch and end points as (row, col), with the
    branching angle at each branch point in degrees)."""

    values: dict[str, float]
    reasons: dict[str, str]
    warnings: list[str]
    pixel_size: PixelSize
    segments: list[Segment]
    skeleton: np.ndarray
    width: np.ndarray
    branch_points: np.ndarray
    end_points: np.ndarray
    branching_angles: np.ndarray
    artery_vein: ArteryVeinAnalysis | None = None  # CRAE, CRVE, ... where classes were given

    @property
    def scale(self) -> PixelSize:
        """Deprecated name of :attr:`pixel_size` (warns; removed in the next release)."""
        _deprecated("VesselAnalysis.scale", "VesselAnalysis.pixel_size")
        return self.pixel_size


def as_binary(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """``mask`` as bool: a 2-D array holding zero and at most one other value (0/1,
    0/255, False/True); anything else is refused rather than guessed at."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise BiomarkerError(f"{what} must be a non-empty 2-D array, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask
    values = np.unique(mask)
    if values.size > 2 or (values.size == 2 and values[0] != 0) or np.isnan(values).any():
        shown = ", ".join(str(v) for v in values[:4]) + (", ..." if values.size > 4 else "")
        raise BiomarkerError(
            f"{what} is not binary: {values.size} distinct values ({shown}); expected 0 and "
            "one other value (threshold a probability map first)")
    return mask != 0


def pixel_size(fov: np.ndarray, *, mm_per_pixel: float | None = None,
               fov_degrees: float | None = None) -> PixelSize:
    """The pixel size ``mm_per_pixel``, or the one from the camera's FOV angle,
    ``fov_degrees * MM_PER_DEGREE /`` the diameter of ``fov`` in pixels (the longer side
    of its bounding box: :func:`~qsegment.datasets.fov.fov_mask_diameter`); pixels when
    neither is given.

    Args:
        fov: the field of view, a boolean (H, W) map (used with ``fov_degrees`` only).
        mm_per_pixel: the pixel size in millimetres, when it is known.
        fov_degrees: the camera's field of view in degrees, across the FOV's diameter.

    Returns:
        The pixel size (None: pixels) and where it came from.

    Raises:
        BiomarkerError: both ``mm_per_pixel`` and ``fov_degrees``, an ``mm_per_pixel``
            that is not positive, ``fov_degrees`` outside (0, 180), or ``fov_degrees``
            with an empty ``fov``.
    """
    if mm_per_pixel is not None and fov_degrees is not None:
        raise BiomarkerError("give mm_per_pixel or fov_degrees, not both")
    if mm_per_pixel is not None:
        if not mm_per_pixel > 0:
            raise BiomarkerError(f"mm_per_pixel must be positive, got {mm_per_pixel}")
        return PixelSize(float(mm_per_pixel), "mm_per_pixel")
    if fov_degrees is None:
        return PixelSize()
    if not 0 < fov_degrees < 180:
        raise BiomarkerError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    diameter = fov_mask_diameter(fov)
    if diameter is None:
        raise BiomarkerError("fov_degrees needs a field of view, and this one is empty")
    return PixelSize(fov_degrees * MM_PER_DEGREE / diameter,
                     f"fov_degrees: {fov_degrees:g} deg x {MM_PER_DEGREE} mm/deg "
                     f"over a {diameter} px FOV")


def pixel_scale(fov: np.ndarray, *, mm_per_pixel: float | None = None,
                fov_degrees: float | None = None) -> PixelSize:
    """Deprecated name of :func:`pixel_size` (warns; removed in the next release)."""
    _deprecated("pixel_scale", "pixel_size")
    return pixel_size(fov, mm_per_pixel=mm_per_pixel, fov_degrees=fov_degrees)


def _deprecated(old: str, new: str) -> None:
    warn(f"qsegment.biomarkers: {old} is deprecated, use {new} (\"scale\" now "
         "means only the image rescale factor)", DeprecationWarning, stacklevel=3)


def __getattr__(name: str) -> object:
    """``Scale``, the deprecated name of :class:`PixelSize` (warns; removed in the next
    release)."""
    if name == "Scale":
        _deprecated("Scale", "PixelSize")
        return PixelSize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bridge_gaps(mask: np.ndarray, probability: np.ndarray, low: float = BRIDGE_LOW,
                speck_px: int = SPECK_PX) -> np.ndarray:
    """A model's cut ``mask`` made fit to measure, using its ``probability`` map.

    A thin vessel's probability dips under the threshold here and there, which cuts it
    into pieces with two false end points per cut; lone specks add more. So: hysteresis
    on the map (the regions where the probability is at least ``low`` that hold a
    pixel of the mask, 4-connected as in ``skimage.filters.apply_hysteresis_threshold``)
    gives the vessels as one tree; its 1-px centreline (``skeletonize``) is added to the
    mask, which joins the pieces without widening any vessel; then the pieces of
    ``speck_px`` pixels or fewer that still stand alone are dropped. The defaults were
    chosen on CHASE_DB1's 20 training images (docs/BIOMARKERS.md)."""
    mask = as_binary(mask)
    if probability.shape != mask.shape:
        raise BiomarkerError(f"the probability map is {probability.shape[1]}x"
                             f"{probability.shape[0]} px but the mask {mask.shape[1]}x"
                             f"{mask.shape[0]}: they must match")
    if not np.issubdtype(probability.dtype, np.floating):
        raise BiomarkerError(f"the probability map is {probability.dtype}: give the model's "
                             "float map in [0, 1] (Prediction.probability)")
    labels, _ = ndimage.label(mask | (probability >= low))
    tree = np.isin(labels, np.unique(labels[mask]))
    return remove_small_objects(mask | skeletonize(tree), max_size=speck_px, connectivity=2)


def box_counting_dimension(mask: np.ndarray,
                           box_sizes: tuple[int, ...] | None = None) -> FractalFit:
    """Box-counting (capacity) dimension of the True pixels of ``mask``: boxes on a
    grid from the top-left corner (default sizes: :data:`BOX_SIZES` up to a quarter of
    the shorter side), least-squares slope of log(count) against log(1/size)."""
    mask = as_binary(mask)
    if box_sizes is None:
        box_sizes = tuple(s for s in BOX_SIZES if 4 * s <= min(mask.shape))
    counts = tuple(int(block_reduce(mask, (s, s), np.any, cval=False).sum())
                   for s in box_sizes)
    if len(box_sizes) < 3 or min(counts, default=0) == 0:
        return FractalFit(math.nan, math.nan, tuple(box_sizes), counts)
    fit = stats.linregress(-np.log(box_sizes), np.log(counts))
    return FractalFit(float(fit.slope), float(fit.rvalue ** 2), tuple(box_sizes), counts)


def smooth_path(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A pixel chain resampled at unit chain length and smoothed (quadratic
    Savitzky-Golay): the smooth (row, col) points and the absolute curvature at each
    (NaN for chains under 5 px, returned as they are)."""
    coords = np.asarray(coords, dtype=float)
    chain = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(coords, axis=0).T))])
    n = round(chain[-1]) + 1
    if n < 5:
        return coords, np.full(len(coords), np.nan)
    s = np.linspace(0.0, chain[-1], n)
    points = np.column_stack([np.interp(s, chain, coords[:, k]) for k in (0, 1)])
    window = min(SMOOTH_WINDOW, n - 1 + n % 2)
    smooth, d1, d2 = (signal.savgol_filter(points, window, 2, deriv=d, axis=0)
                      for d in (0, 1, 2))
    speed = np.hypot(d1[:, 0], d1[:, 1])
    kappa = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / np.maximum(speed, 1e-9) ** 3
    return smooth, kappa


def _segment(kind: str, coords: np.ndarray, area: float) -> Segment:
    """A segment from its pixel chain and the vessel area closest to it."""
    smooth, kappa = smooth_path(coords)
    steps = np.hypot(*np.diff(smooth, axis=0).T)
    length = float(steps.sum())
    chord = float(np.hypot(*(smooth[-1] - smooth[0])))
    arc_chord = curvature = calibre = math.nan
    if length >= MIN_SEGMENT_PX:
        calibre = area / length
        ds = np.concatenate([[0.0], steps]) + np.concatenate([steps, [0.0]])
        curvature = float(np.sum(kappa * ds) / np.sum(ds))
        if kind != "cycle":  # a closed loop has no chord
            arc_chord = length / chord
    return Segment(kind, length, chord, arc_chord, curvature, calibre, smooth)


def _skeleton(image: np.ndarray) -> skan.Skeleton | None:
    """skan's graph of a centreline image, without isolated pixels (None if empty)."""
    image = remove_small_objects(image, max_size=1, connectivity=2)
    return skan.Skeleton(image) if image.any() else None


def _prune(skeleton: skan.Skeleton, edt: np.ndarray) -> skan.Skeleton | None:
    """Drop, once, every path with a free end that is shorter than the vessel is wide."""
    tips = skeleton.degrees == 1
    lengths = skeleton.path_lengths()
    spurs = []
    for i in range(skeleton.n_paths):
        path = skeleton.path(i)
        if tips[path[0]] or tips[path[-1]]:
            rows, cols = skeleton.coordinates[path].T.astype(int)
            if lengths[i] < 2 * edt[rows, cols].max():
                spurs.append(i)
    if len(spurs) == skeleton.n_paths:
        return None
    return _skeleton(skeleton.prune_paths(spurs).skeleton_image) if spurs else skeleton


def _junction_clusters(skeleton: skan.Skeleton, edt: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two end nodes of every path, each node's junction cluster (-1: none) and
    which paths are links inside a junction (shorter than the vessel there is wide)."""
    junction = skeleton.degrees >= 3
    ends = np.array([(p[0], p[-1]) for p in map(skeleton.path, range(skeleton.n_paths))],
                    dtype=int).reshape(-1, 2)
    rows, cols = skeleton.coordinates[ends.ravel()].T.astype(int)
    width = (2 * edt[rows, cols]).reshape(-1, 2).max(axis=1)
    internal = (junction[ends].all(axis=1) & (ends[:, 0] != ends[:, 1])
                & (skeleton.path_lengths() < np.maximum(width, 2.0)))
    nodes = np.flatnonzero(junction)
    index = np.full(len(junction), -1)
    index[nodes] = np.arange(nodes.size)
    links = index[ends[internal]]
    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])),
                       shape=(nodes.size, nodes.size))
    cluster = np.full(len(junction), -1)
    cluster[nodes] = connected_components(graph, directed=False)[1]
    return ends, cluster, internal


def _nearest_path_area(skeleton: skan.Skeleton, vessels: np.ndarray,
                       edt: np.ndarray) -> np.ndarray:
    """Vessel area closest to each path: every vessel pixel goes to its nearest
    centreline pixel when it lies within that pixel's vessel radius."""
    labels = skeleton.path_label_image()
    distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    own = vessels & (distance <= edt[rows, cols])
    return np.bincount(labels[rows[own], cols[own]], minlength=skeleton.n_paths + 1)[1:]


def _direction(arm: np.ndarray, radius: float) -> np.ndarray:
    """Unit direction of an arm (a smooth path from its junction, one point per px):
    from ``2 x radius`` px out, past the junction's blob, to ``max(10, 4 x radius)``
    px further."""
    last = len(arm) - 1
    start = round(2 * radius)
    v = arm[min(start + round(max(10.0, 4 * radius)), last)] - arm[min(start, last - 1)]
    return v / max(float(np.hypot(*v)), 1e-9)


def _branching_angle(arms: list[np.ndarray], radius: float) -> float:
    """Smallest angle between the directions of three arms, in degrees."""
    d = [_direction(arm, radius) for arm in arms]
    cosine = max(float(np.dot(d[i], d[j])) for i, j in ((0, 1), (0, 2), (1, 2)))
    return math.degrees(math.acos(np.clip(cosine, -1.0, 1.0)))


@dataclass
class _Tree:
    skeleton: np.ndarray
    segments: list[Segment]
    width: np.ndarray
    branch_points: np.ndarray
    crossings: int
    angles: list[float]
    tips: np.ndarray


def _trace(vessels: np.ndarray, edt: np.ndarray) -> _Tree | None:
    """Segments, junctions, free ends and branching angles of a vessel map."""
    skeleton = _skeleton(skeletonize(vessels))
    skeleton = _prune(skeleton, edt) if skeleton is not None else None
    if skeleton is None:
        return None
    ends, cluster, internal = _junction_clusters(skeleton, edt)
    area = _nearest_path_area(skeleton, vessels, edt)
    kinds = ("tip-tip", "tip-junction", "junction-junction")
    coords = skeleton.coordinates.astype(int)
    width = np.full(vessels.shape, np.nan)
    segments: list[Segment] = []
    arms: dict[int, list[tuple[int, np.ndarray]]] = {}  # junction cluster: (its node, arm)
    for i in np.flatnonzero(~internal):
        a, b = ends[i]
        kind = "cycle" if a == b else kinds[int(cluster[a] >= 0) + int(cluster[b] >= 0)]
        pixels = coords[skeleton.path(i)]
        segment = _segment(kind, pixels, float(area[i]))
        segments.append(segment)
        width[pixels[:, 0], pixels[:, 1]] = segment.calibre
        for node, arm in ((a, segment.coords), (b, segment.coords[::-1])):
            if cluster[node] >= 0:
                arms.setdefault(int(cluster[node]), []).append((node, arm))
    branch_points, crossings, angles = [], 0, []
    for arm_list in arms.values():
        nodes = coords[[node for node, _ in arm_list]]
        if len(arm_list) >= 4:
            crossings += 1
        elif len(arm_list) == 3:
            radius = float(edt[nodes[:, 0], nodes[:, 1]].max())
            branch_points.append(nodes.mean(axis=0))
            angles.append(_branching_angle([arm for _, arm in arm_list], radius))
    return _Tree(np.asarray(skeleton.skeleton_image, dtype=bool), segments, width,
                 np.array(branch_points).reshape(-1, 2), crossings, angles,
                 coords[skeleton.degrees == 1])


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    ok = np.isfinite(values)
    return float(np.average(values[ok], weights=weights[ok])) if ok.any() else math.nan


def _tree_values(tree: _Tree) -> dict[str, float]:
    """The centreline biomarkers of a traced tree, in pixels."""
    length = np.array([s.length for s in tree.segments])
    tortuosity = np.array([s.arc_chord for s in tree.segments])
    calibre = np.array([s.calibre for s in tree.segments])
    long_enough = np.isfinite(calibre) & (length >= 2 * np.nan_to_num(calibre))
    widest = np.sort(calibre[long_enough])[::-1]
    return {
        "vessel_length": float(length.sum()),
        "tortuosity": _weighted_mean(tortuosity, length),
        "tortuosity_median": float(np.nanmedian(tortuosity))
        if np.isfinite(tortuosity).any() else math.nan,
        "curvature": _weighted_mean(np.array([s.curvature for s in tree.segments]), length),
        "calibre_mean": _weighted_mean(calibre, length),
        "calibre_median": float(np.nanmedian(calibre)) if np.isfinite(calibre).any()
        else math.nan,
        "calibre_widest": float(widest[:max(1, round(WIDEST_FRACTION * widest.size))].mean())
        if widest.size else math.nan,
        "segments": len(tree.segments), "branch_points": len(tree.branch_points),
        "crossings": tree.crossings, "end_points": len(tree.tips),
        "branching_angle": float(np.mean(tree.angles)) if tree.angles else math.nan,
    }


def _reason(name: str, fov_area: float, vessel_area: float, density: float) -> str:
    """Why ``name`` has no value."""
    if fov_area == 0:
        return "empty field of view"
    if vessel_area == 0:
        return "no vessel pixel in the FOV"
    if name.startswith("fractal"):
        return "too few box sizes fit in the FOV, or the box counts do not change with size"
    if density > NOT_A_TREE:
        return f"vessels cover {density:.0%} of the FOV: not a vessel tree"
    if name == "branching_angle":
        return "no branch point"
    if name.startswith("tortuosity"):
        return f"no open segment (not a loop) of {MIN_SEGMENT_PX:g} px or more"
    return f"no segment of {MIN_SEGMENT_PX:g} px or more"


def _values_in_pixels(vessels: np.ndarray, fov: np.ndarray, edt: np.ndarray
                      ) -> tuple[dict[str, float], _Tree | None]:
    """Every field in pixels (NaN where undefined) and the traced tree, if any."""
    fov_area, vessel_area = int(fov.sum()), int(vessels.sum())
    values = dict.fromkeys(FIELD_NAMES, math.nan)
    values.update(fov_area=fov_area, vessel_area=vessel_area)
    if fov_area == 0:
        return values, None
    values["area_density"] = vessel_area / fov_area
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    fit = box_counting_dimension(vessels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    values.update(fractal_dimension=fit.dimension, fractal_r2=fit.r2,
                  fractal_box_min=min(fit.box_sizes, default=math.nan),
                  fractal_box_max=max(fit.box_sizes, default=math.nan))
    tree = None
    if values["area_density"] <= NOT_A_TREE:
        tree = _trace(vessels, edt) if vessel_area else None
        values.update(_tree_values(tree) if tree else dict(
            vessel_length=0.0, segments=0, branch_points=0, crossings=0, end_points=0))
        values["length_density"] = values["vessel_length"] / fov_area
    return values, tree


def measure(mask: np.ndarray, fov: np.ndarray | None = None, *,
            mm_per_pixel: float | None = None, fov_degrees: float | None = None,
            min_object_px: int = 0) -> VesselAnalysis:
    """All biomarkers (:data:`FIELDS`) of the vessel map ``mask`` inside ``fov``
    (default: the whole frame), in pixels or in millimetres (:func:`pixel_size`),
    after dropping vessel fragments of ``min_object_px`` pixels or fewer (8-connected;
    default 0: measure the map as it is; a model's specks are then end points).

    An empty FOV, an empty map or one that fills the FOV is no error: what is
    undefined is NaN, with its reason in ``reasons``, and ``warnings`` say why.

    Args:
        mask: the binary vessel map, (H, W), zero and one other value.
        fov: the binary field of view, the size of ``mask`` (default: the whole frame).
        mm_per_pixel: the pixel size in millimetres (default: measure in pixels).
        fov_degrees: the camera's field of view in degrees, from which the pixel size
            is computed instead (:func:`pixel_size`).
        min_object_px: vessel fragments of this many pixels or fewer are dropped first.

    Returns:
        The values of :data:`FIELDS` with the reasons and warnings, the pixel size, the
        segments and the maps behind them (centreline, calibre, branch and end points).

    Raises:
        BiomarkerError: ``mask`` or ``fov`` is not a binary 2-D map, their sizes differ,
            or the pixel-size options are wrong (:func:`pixel_size`).
    """
    mask = as_binary(mask)
    fov = np.ones_like(mask) if fov is None else as_binary(fov, "FOV mask")
    if fov.shape != mask.shape:
        raise BiomarkerError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but its FOV "
                             f"is {fov.shape[1]}x{fov.shape[0]}: they must match")
    if fov.any() or fov_degrees is None:
        size = pixel_size(fov, mm_per_pixel=mm_per_pixel, fov_degrees=fov_degrees)
    else:  # no FOV to take the pixel size from, and nothing to measure anyway
        size = PixelSize(math.nan, f"fov_degrees: {fov_degrees:g} deg over an empty FOV")
    vessels = mask & fov
    if min_object_px > 0:
        vessels = remove_small_objects(vessels, max_size=min_object_px, connectivity=2)
    edt = ndimage.distance_transform_edt(vessels)
    values, tree = _values_in_pixels(vessels, fov, edt)
    density = values["area_density"]
    warnings = []
    if values["fov_area"] == 0:
        warnings.append("the field of view is empty: nothing to measure")
    elif values["vessel_area"] == 0:
        warnings.append("no vessel pixel in the field of view")
    elif density > NOT_A_TREE:
        warnings.append(f"vessels cover {density:.0%} of the field of view: not a vessel "
                        "map, so no centreline measures")
    converted = {name: size.convert(values[name], _UNITS[name]) for name in FIELD_NAMES}
    reasons = {name: _reason(name, values["fov_area"], values["vessel_area"], density)
               for name, value in converted.items() if math.isnan(value)}
    if tree is None:
        tree = _Tree(np.zeros_like(mask), [], np.full(mask.shape, np.nan),
                     np.empty((0, 2)), 0, [], np.empty((0, 2), dtype=int))
    return VesselAnalysis(converted, reasons, warnings, size, tree.segments, tree.skeleton,
                          tree.width, tree.branch_points, tree.tips, np.array(tree.angles))
