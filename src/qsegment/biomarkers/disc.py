"""The optic disc: where it is, how wide, and the measurement zones around it.

The locator is a method, not a network: it needs no runtime and reads a photograph of
any camera the same way. The disc is the brightest disc-sized spot of the field of
view (FOV) and the vessels converge on it, so at a working size where the FOV is
:data:`LOCATE_PX` pixels across it scores every pixel by the mean brightness of a disc
of :data:`FILTER_RADIUS` FOV diameters around it minus that of a disc twice as wide
(means over FOV pixels only, so the FOV's edge is no edge), plus
:data:`VESSEL_WEIGHT` times the vessel density in the smaller disc, both as z-scores over
the FOV. The best pixel is the centre. The diameter is twice the median, over
:data:`RAYS` rays from the centre, of the radius of the outermost strong fall of the
smoothed brightness (:func:`_edge`), at a working size where the FOV is :data:`EDGE_PX`
across. The candidate is no disc (the photograph may be centred on the macula with the
disc outside it) where its brightness z-score is under :data:`MIN_CONTRAST`, its edge
falls slower than :data:`MIN_EDGE` or, given a vessel map, its brightness and vessel
density z-scores sum to less than :data:`MIN_EVIDENCE`.

Every constant was chosen on IDRiD-OD's first 40 photographs and checked on the other
14 (docs/BIOMARKERS.md, "The optic disc"; ``benchmarks/bench_disc.py``);
:data:`EDGE_FRACTION` also by eye on eight photographs of the other cameras, whose discs
have a bright cup inside whose edge is the steepest fall: five training photographs and
three test ones (HRF-AV 12_g and 14_dr, LES-AV 279), which the docs name.
:data:`MIN_CONTRAST` was lowered after a contact sheet of HRF-AV and CHASE_DB1, test
photographs among them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, signal

LOCATE_PX = 256  # the FOV's diameter in the working image where the centre is found
EDGE_PX = 512  # ... and where the disc's edge is found
FILTER_RADIUS = 0.08  # the brightness filter's disc radius, in FOV diameters
VESSEL_WEIGHT = 0.5  # the vessel density's weight beside the brightness
RAYS = 48
EDGE_RANGE = (0.025, 0.12)  # where a disc's edge may lie from its centre, in FOV diameters
EDGE_FRACTION = 0.3  # a fall this steep, relative to a ray's steepest, may be the margin
MIN_CONTRAST = 1.8  # a centre's brightness z-score under which it is no disc
MIN_EDGE = 0.06  # a disc's median edge drop per px, in FOV brightness SDs, under which ...
MIN_EVIDENCE = 3.5  # ... or, with a vessel map, its brightness and vessel z-scores' sum ...

ZONES = {"A": (0.0, 0.5), "B": (0.5, 1.0), "C": (0.5, 2.0)}
"""The measurement zones, in disc diameters from the disc's margin (Knudtson et al.
2003; Hubbard et al. 1999): zone B, where CRAE and CRVE are measured, is the ring from
half a disc diameter to one disc diameter beyond the margin."""


@dataclass(frozen=True)
class Disc:
    """An optic disc, in pixels of the image it was found in: centre (``row``, ``col``)
    and ``diameter``. ``found`` is False (and the numbers NaN) where no disc was found,
    with the reason; ``source`` says where it came from."""

    row: float
    col: float
    diameter: float
    found: bool = True
    reason: str = ""
    source: str = "located"
    score: float = math.nan  # the brightness z-score at the centre found

    @classmethod
    def missing(cls, reason: str, score: float = math.nan) -> Disc:
        return cls(math.nan, math.nan, math.nan, False, reason, "none", score)

    def distance(self, shape: tuple[int, int]) -> np.ndarray:
        """Each pixel's distance from the disc's margin, in disc diameters (negative
        inside the disc)."""
        rows, cols = np.ogrid[:shape[0], :shape[1]]
        return (np.hypot(rows - self.row, cols - self.col) - self.diameter / 2) / self.diameter

    def zone(self, shape: tuple[int, int], name: str = "B") -> np.ndarray:
        """The boolean mask of zone ``name`` (:data:`ZONES`) in an image of ``shape``."""
        return self.ring(shape, *ZONES[name])

    def ring(self, shape: tuple[int, int], inner: float, outer: float) -> np.ndarray:
        """The pixels ``inner`` to ``outer`` disc diameters beyond the disc's margin."""
        d = self.distance(shape)
        return (d >= inner) & (d < outer)

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The disc itself as a boolean mask."""
        return self.distance(shape) < 0


def _working(plane: np.ndarray, box: tuple[int, int, int, int], size: int
             ) -> tuple[np.ndarray, float]:
    """The bounding box ``box`` of a uint8 image (H, W[, 3]) resized so the FOV is
    ``size`` px across (box filter; in uint8, which Pillow resizes fastest) as float32,
    and that scale."""
    top, left, bottom, right = box
    scale = size / max(bottom - top, right - left)
    shape = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    crop = Image.fromarray(np.ascontiguousarray(plane[top:bottom, left:right]))
    return np.asarray(crop.resize(shape, Image.Resampling.BOX), np.float32), scale


def _disk(radius: int) -> np.ndarray:
    rows, cols = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (rows**2 + cols**2 <= radius**2).astype(np.float32)


def _fov_mean(values: np.ndarray, fov: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``values`` over the FOV pixels within ``radius`` of each pixel, and the
    share of that disc inside the FOV."""
    kernel = _disk(radius)
    total = signal.fftconvolve(values * fov, kernel, mode="same")
    count = signal.fftconvolve(fov.astype(np.float32), kernel, mode="same")
    return total / np.maximum(count, 1e-3), count / kernel.sum()


def _zscore(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    inside = values[where]
    return (values - inside.mean()) / max(float(inside.std()), 1e-6)


def _centre(luminance: np.ndarray, fov: np.ndarray, vessels: np.ndarray | None
            ) -> tuple[tuple[int, int], float, float]:
    """The best disc centre in a working image, the highest brightness z-score within a
    filter radius of it (the vessels may pull the centre off a faint disc's brightest
    spot) and the vessel density's z-score there (NaN without vessels)."""
    radius = max(3, round(FILTER_RADIUS * LOCATE_PX))
    inner, coverage = _fov_mean(luminance, fov, radius)
    outer, _ = _fov_mean(luminance, fov, 2 * radius)
    valid = fov & (coverage > 0.5)
    brightness = _zscore(inner - outer, valid)
    score, convergence = brightness.copy(), np.full(brightness.shape, np.nan)
    if vessels is not None and vessels[valid].any():
        convergence = _zscore(_fov_mean(vessels, fov, radius)[0], valid)
        score += VESSEL_WEIGHT * convergence
    score[~valid] = -np.inf
    row, col = np.unravel_index(int(np.argmax(score)), score.shape)
    near = _disk(radius) > 0
    top, left = row - radius, col - radius
    window = np.pad(np.where(valid, brightness, -np.inf), radius, constant_values=-np.inf)[
        top + radius:top + 3 * radius + 1, left + radius:left + 3 * radius + 1]
    return (int(row), int(col)), float(window[near].max()), float(convergence[row, col])


def _edge(luminance: np.ndarray, fov: np.ndarray, centre: tuple[float, float]
          ) -> tuple[float, float]:
    """The disc's diameter in the working image's pixels: twice the median, over
    :data:`RAYS` rays (ending where they leave the FOV), of the radius of the ray's
    outermost strong fall in brightness (the steepest point of its last run of slopes
    at least :data:`EDGE_FRACTION` as steep as its steepest: the disc's margin, where the
    steepest fall is often the cup's edge inside it); and the median of the rays'
    steepest falls per px, in standard deviations of the FOV's brightness."""
    smooth = ndimage.gaussian_filter(luminance, 2.0)
    radii = np.arange(EDGE_RANGE[0] * EDGE_PX, EDGE_RANGE[1] * EDGE_PX)
    angles = np.linspace(0.0, 2 * np.pi, RAYS, endpoint=False)
    rows = centre[0] + np.outer(np.sin(angles), radii)
    cols = centre[1] + np.outer(np.cos(angles), radii)
    profile = ndimage.map_coordinates(smooth, [rows, cols], order=1, mode="nearest")
    inside = ndimage.map_coordinates(fov.astype(np.float32), [rows, cols], order=0) > 0
    slope = np.gradient(profile, axis=1)
    slope[~inside] = 0.0
    edges = []
    for ray in slope[slope.min(axis=1) < 0]:
        strong = np.flatnonzero(ray <= EDGE_FRACTION * ray.min())
        gaps = np.flatnonzero(np.diff(strong) > 1)  # the last run starts after the last gap
        first, last = strong[gaps[-1] + 1 if gaps.size else 0], strong[-1]
        edges.append(radii[first + int(np.argmin(ray[first:last + 1]))])
    diameter = 2.0 * float(np.median(edges)) if edges else math.nan
    return diameter, float(np.median(-slope.min(axis=1))) / max(float(smooth[fov].std()), 1e-6)


def locate_disc(image: np.ndarray, fov: np.ndarray | None = None,
                vessels: np.ndarray | None = None) -> Disc:
    """The optic disc of the fundus photograph ``image`` (module docstring: how).

    Args:
        image: the photograph, (H, W, 3) RGB uint8.
        fov: its field of view (default: :func:`~qsegment.datasets.fov_mask`).
        vessels: its vessel map, (H, W), if one is at hand: the vessels converging on
            the disc break ties between bright spots.

    Returns:
        The disc in ``image``'s pixels, or one with ``found=False`` and the reason where
        the FOV is empty or no spot stands out enough to be a disc (a photograph
        centred on the macula with the disc outside it).
    """
    from ..datasets import fov_mask

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the disc locator needs an (H, W, 3) uint8 RGB photograph, got "
                         f"{image.dtype} {image.shape}")
    fov = fov_mask(image) if fov is None else np.asarray(fov, dtype=bool)
    if not fov.any():
        return Disc.missing("empty field of view")
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    mask = np.asarray(fov, bool).view(np.uint8) * np.uint8(255)
    edge, edge_scale = _working(image, box, EDGE_PX)
    edge = edge.mean(axis=2)
    edge_fov = _working(mask, box, EDGE_PX)[0] > 127
    small, scale = _working(image, box, LOCATE_PX)
    small = small.mean(axis=2)
    small_fov = _working(mask, box, LOCATE_PX)[0] > 127
    small_vessels = None if vessels is None else _working(
        np.asarray(vessels, bool).view(np.uint8) * np.uint8(255), box, LOCATE_PX)[0] / 255
    (row, col), contrast, convergence = _centre(small, small_fov, small_vessels)
    ratio = edge_scale / scale
    diameter, strength = _edge(edge, edge_fov, ((row + 0.5) * ratio - 0.5,
                                                (col + 0.5) * ratio - 0.5))
    if (contrast < MIN_CONTRAST or strength < MIN_EDGE
            or contrast + convergence < MIN_EVIDENCE):  # NaN (no vessel map) is not less
        return Disc.missing(f"no disc: the best candidate (brightness z-score {contrast:.2f}, "
                            f"edge {strength:.3f}, vessel density z-score {convergence:.2f}) "
                            "is too weak; is the disc outside the photograph?", contrast)
    return Disc(box[0] + (row + 0.5) / scale - 0.5, box[1] + (col + 0.5) / scale - 0.5,
                diameter / edge_scale, score=contrast)
