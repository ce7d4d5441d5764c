"""Label-free calibration of one photograph: the scale at which its vessels have the calibre
the model learned, and the cut that maximises the Dice its own map expects (issue #31).

Both read the map of a first pass at the field-of-view scale
(:func:`~qsegment.inference.maps.scale_factor`):

- **Scale from the vessels.** The calibre of the widest vessels (the mean ridge width of
  the mask's 60th to 95th width percentiles) is compared with the training images'. The
  network draws vessels that are too thin for it wider than they are, so the measured
  calibre follows the image's scale as ``scale ** gamma`` (gamma about 0.6, fitted), and
  the correction is ``(calibre / reference) ** (-1 / gamma)``. Where it moves the scale by
  more than it moves any training image at its own scale (the dead band), a second pass
  runs at the corrected scale.
- **A cut per photograph.** The map's probabilities, recalibrated by ``sigmoid(a * logit
  + b)``, are read as the chance that each pixel is vessel; the cut is the one that
  maximises the expected Dice ``2 sum(q above) / (count above + sum(q))``. A less sure map
  (another camera) gets a lower cut by itself.

The constants (reference calibre, gamma, ``a`` and ``b``) are the model's, fitted on its
training images and shifts simulated from them (:mod:`qsegment.engine.calibrate`), and kept
beside its weights (``NAME.calibration.json``). Numpy only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..card import CardError
from ..datasets.fov import TRAINING_FOV_DIAMETER
from ..images import resize_map
from ..runtimes.base import logit
from .maps import Scale, at_scale, fov_scale

log = logging.getLogger(__name__)

MASK_CUT = 0.5  # the first pass's probability from which the calibre is measured
WIDTH_BAND = (60.0, 95.0)  # the percentiles of ridge widths averaged: the widest vessels
MIN_RIDGE_PIXELS = 500  # fewer vessel centre pixels than this: no calibre to read
MIN_VESSEL_FRACTION = 0.01  # a mask this sparse looks unlike a fundus photograph


@dataclass(frozen=True)
class Calibration:
    """A model's constants for the label-free rules, kept beside its weights."""

    vessel_width: float  # mean ridge width (px) of the training images' widest vessels
    width_gamma: float  # measured calibre ~ scale ** width_gamma
    platt: tuple[float, float]  # (a, b): calibrated logit = a * logit + b
    dead_band: float = 0.15  # corrections within this of 1 keep the FOV scale
    scale_range: tuple[float, float] = (0.714, 2.0)  # the corrections the fit covered
    fitted_on: str = ""

    @classmethod
    def beside(cls, weights: str | Path) -> Calibration | None:
        """The calibration kept beside a weights file (``NAME.calibration.json``), or None
        where the model has none."""
        path = calibration_path(weights)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(vessel_width=float(data["vessel_width"]),
                       width_gamma=float(data["width_gamma"]),
                       platt=(float(data["platt"][0]), float(data["platt"][1])),
                       dead_band=float(data["dead_band"]),
                       scale_range=(float(data["scale_range"][0]), float(data["scale_range"][1])),
                       fitted_on=str(data.get("fitted_on", "")))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CardError(f"{path}: not a readable calibration ({err})") from err

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "platt": list(self.platt), "scale_range": list(self.scale_range)}


def calibration_path(weights: str | Path) -> Path:
    """Where a weights file's calibration is kept: ``NAME.calibration.json`` beside it."""
    return Path(weights).with_suffix(".calibration.json")


def _taxicab_distance(mask: np.ndarray, dense_steps: int = 3) -> np.ndarray:
    """Each pixel's taxicab distance to the background of ``mask`` (0 outside it): how many
    cross-shaped erosions it survives, plus one. The frame's edge is not background, so
    ``mask`` must have some (all True would never erode). Numpy only (SciPy's
    ``distance_transform_cdt`` gives the same, but its import costs 0.3 s of a cold
    ``qsegment predict``). The first ``dense_steps`` erosions run on the whole array; the
    few pixels of wide vessels left then erode by index, which halves the time on a
    CHASE_DB1 map (7 to 3.6 ms)."""
    distance = mask.astype(np.uint16)
    current = mask
    for _ in range(dense_steps):
        eroded = current.copy()
        eroded[1:] &= current[:-1]
        eroded[:-1] &= current[1:]
        eroded[:, 1:] &= current[:, :-1]
        eroded[:, :-1] &= current[:, 1:]
        distance += eroded
        current = eroded
    width = mask.shape[1]
    stride = width + 2
    inside = np.pad(current, 1, constant_values=True).ravel()  # the frame: not background
    rows, cols = np.nonzero(current)
    at = (rows + 1) * stride + cols + 1
    flat = distance.ravel()
    while at.size:
        kept = inside[at - 1] & inside[at + 1] & inside[at - stride] & inside[at + stride]
        inside[at[~kept]] = False
        at = at[kept]
        flat[(at // stride - 1) * width + at % stride - 1] += 1
    return distance


def _max_3x3(values: np.ndarray) -> np.ndarray:
    """The maximum over each pixel's 3x3 neighbourhood (within the frame)."""
    rows = values.copy()
    rows[1:] = np.maximum(rows[1:], values[:-1])
    rows[:-1] = np.maximum(rows[:-1], values[1:])
    both = rows.copy()
    both[:, 1:] = np.maximum(both[:, 1:], rows[:, :-1])
    both[:, :-1] = np.maximum(both[:, :-1], rows[:, 1:])
    return both


def vessel_calibre(probability: np.ndarray, cut: float = MASK_CUT) -> float | None:
    """The calibre (px) of the widest vessels in a map: the mean of the ridge widths (twice
    the taxicab distance to the background on the mask's centre lines) between the
    :data:`WIDTH_BAND` percentiles. None where the mask has too few centre pixels to say."""
    mask = probability >= cut
    if mask.all():  # no background to measure a width against (and no erosion ends)
        return None
    distance = _taxicab_distance(mask)
    ridge = mask & (distance >= _max_3x3(distance))
    widths = 2.0 * distance[ridge]
    if widths.size < MIN_RIDGE_PIXELS:
        return None
    low, high = np.percentile(widths, WIDTH_BAND)
    return float(widths[(widths >= low) & (widths <= high)].mean())


def scale_correction(probability: np.ndarray, calibration: Calibration) -> float | None:
    """How much to rescale the image that gave ``probability`` so that its vessels have the
    training calibre, clipped to the range the fit covered; None where no calibre reads."""
    calibre = vessel_calibre(probability)
    if calibre is None:
        return None
    correction = (calibre / calibration.vessel_width) ** (-1.0 / calibration.width_gamma)
    return float(np.clip(correction, *calibration.scale_range))


HISTOGRAM_BINS = 512


def histogram(probability: np.ndarray) -> np.ndarray:
    """Pixel counts of a map in :data:`HISTOGRAM_BINS` equal bins of [0, 1], as
    ``np.histogram`` counts them (1.0 in the last bin) in a third of its time: the bins'
    edges are multiples of a power of two, so scaling by :data:`HISTOGRAM_BINS` is exact,
    and the bins fit in 16 bits (a map's worth of 64-bit indices costs more to allocate
    than to count)."""
    bins = np.asarray(probability * np.float32(HISTOGRAM_BINS)).astype(np.uint16).ravel()
    counts = np.bincount(bins, minlength=HISTOGRAM_BINS + 1)
    counts[HISTOGRAM_BINS - 1] += counts[HISTOGRAM_BINS:].sum()  # 1.0 is in the last bin
    return counts[:HISTOGRAM_BINS]


def expected_dice_bin(counts: np.ndarray, platt: tuple[float, float]) -> int:
    """The lowest bin of :func:`histogram` ``counts`` that the expected-Dice cut keeps."""
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS
    a, b = platt
    chance = 1.0 / (1.0 + np.exp(-(a * logit(centres) + b)))
    above = np.cumsum(counts[::-1])  # pixels at or above each bin, from the top
    hits = np.cumsum((counts * chance)[::-1])
    expected = 2.0 * hits / np.maximum(above + hits[-1], 1.0)
    return HISTOGRAM_BINS - 1 - int(np.argmax(expected))


def expected_dice_cut(probability: np.ndarray, platt: tuple[float, float]) -> float:
    """The probability cut that maximises the Dice expected from the map itself, once its
    probabilities are recalibrated by ``sigmoid(a * logit + b)`` (``platt``): each pixel
    above the cut adds its chance of being vessel to the overlap and one to the mask.
    Pixels outside the field of view (near 0) never reach the cut."""
    return expected_dice_bin(histogram(probability), platt) / HISTOGRAM_BINS


@dataclass(frozen=True)
class CalibratedMap:
    """A photograph's probability map with the scale and cut found for it."""

    probability: np.ndarray  # (H, W) float32 at the image's size
    scale: float  # the factor the network saw the image at
    scale_rule: str  # "vessels", "fov", "none" or "fixed"
    fov_scale: float | None  # the FOV rule's factor (None: no FOV rim, or not asked)
    cut: float | None  # the expected-Dice cut (None: no calibration)
    quality: tuple[str, ...]  # warnings: "no-fov", "no-vessels", "scale-out-of-range"


def calibrated_map(image: np.ndarray, probability: Callable[[np.ndarray], np.ndarray],
                   scale: Scale, calibration: Calibration | None,
                   fov_diameter: float = TRAINING_FOV_DIAMETER, name: str = "image"
                   ) -> CalibratedMap:
    """The map of ``image`` at the scale ``scale`` asks for, with its cut.

    Args:
        image: (H, W, 3) RGB, as ``probability`` takes it.
        probability: the map of an image at its own scale.
        scale: ``auto`` (FOV rule, then the vessel rule where ``calibration`` has it
            and a FOV rim shows: in a crop the widest vessels seen need not be the
            widest there are),
            ``fov`` (the FOV rule only), ``none`` or a factor.
        calibration: the model's constants (None: the FOV rule and no cut).
        fov_diameter: the training images' FOV diameter in pixels (the FOV rule).
        name: how warnings name the image.
    """
    quality: list[str] = []
    fov_factor = fov_scale(image, fov_diameter) if scale in ("auto", "fov") else None
    if scale in ("auto", "fov"):
        if fov_factor is None:
            quality.append("no-fov")
        factor, rule = (fov_factor or 1.0), ("fov" if fov_factor is not None else "none")
    else:
        factor, rule = (1.0, "none") if scale == "none" else (float(scale), "fixed")
    scaled = at_scale(image, factor, probability)
    if scale == "auto" and calibration is not None and fov_factor is not None:
        correction = scale_correction(scaled, calibration)
        if correction is None:
            quality.append("no-vessels")
        else:
            if correction in calibration.scale_range:
                quality.append("scale-out-of-range")
            if abs(math.log(correction)) > math.log1p(calibration.dead_band):
                factor, rule = factor * correction, "vessels"
                scaled = at_scale(image, factor, probability)
    cut = None
    if calibration is not None:
        counts = histogram(scaled)  # the cut and the share of the map above it in one pass
        cut_bin = expected_dice_bin(counts, calibration.platt)
        cut = cut_bin / HISTOGRAM_BINS
        if counts[cut_bin:].sum() / scaled.size < MIN_VESSEL_FRACTION:
            quality.append("no-vessels")
    for flag in dict.fromkeys(quality):
        log.warning("%s: %s", name, QUALITY[flag])
    h, w = image.shape[:2]
    full = scaled if scaled.shape[:2] == (h, w) else resize_map(scaled, (h, w))
    return CalibratedMap(full, factor, rule, fov_factor, cut, tuple(dict.fromkeys(quality)))


QUALITY = {
    "no-fov": "no field-of-view rim found: the FOV scale rule falls back to the image's scale",
    "no-vessels": "almost no vessels found: the map may be unreliable (is it a fundus photograph?)",
    "scale-out-of-range": "its vessels' calibre is outside what the scale rule was fitted on: "
                          "the scale was clipped; try --scale with a factor",
}
