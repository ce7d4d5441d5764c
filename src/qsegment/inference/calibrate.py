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


def _sides(bits: np.ndarray, frame: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's left and right neighbour in a flat array of 64-pixel words (bit i of
    word j is pixel 64 j + i) whose rows each end in a guard word: a row's first pixel
    reads the previous row's guard, its last the guard after it, and the very first
    pixel ``frame`` (set or clear). Whole-array shifts: on slices of short rows NumPy
    would loop row by row."""
    one, top = np.uint64(1), np.uint64(63)
    left = bits << one
    left[1:] |= bits[:-1] >> top
    left[0] |= np.uint64(frame)
    right = bits >> one
    right[:-1] |= bits[1:] << top
    return left, right


def _ridge_counts(mask: np.ndarray) -> np.ndarray:
    """How many pixels of the ridge of ``mask`` lie at each taxicab distance to its
    background (index 0: none): the pixels inside it at least as far from the background
    as their 8 neighbours. The frame's edge is not background, so ``mask`` must have some
    (all True would never erode).

    The mask is eroded one cross-shaped step at a time as bits, 64 pixels to a word and
    only over the rows still holding some; a pixel that the step removes is at the
    distance of that step, and is on the ridge if no neighbour survives it. The same counts
    as SciPy's ``distance_transform_cdt`` and a 3x3 maximum (tested) in a third of the
    time of a distance map in NumPy, without SciPy's import (0.3 s of a cold ``qsegment
    predict``)."""
    height, width = mask.shape
    words = -(-width // 64) + 1  # per row: the pixels' words, then a guard word
    padded = np.zeros((height, words * 64), bool)
    padded[:, :width] = mask
    # little-endian words of little-endian bits: bit i of word j is pixel 64 j + i
    inside = np.packbits(padded, axis=1, bitorder="little").view("<u8")
    row_frame = np.packbits(np.arange(words * 64) < width, bitorder="little").view("<u8")
    in_frame = np.tile(row_frame, height)
    beyond = ~in_frame  # past the last column and the guards: not background
    counts = [0]
    while (rows := np.flatnonzero(inside.any(axis=1))).size:
        # the rows left, with a row of background (or the frame) on each side
        flat = inside[max(rows[0] - 1, 0):rows[-1] + 2].ravel()
        with_frame = flat | beyond[:flat.size]
        kept = with_frame.copy()
        kept[words:] &= with_frame[:-words]
        kept[:-words] &= with_frame[words:]
        for neighbour in _sides(with_frame, frame=True):
            kept &= neighbour
        kept &= in_frame[:flat.size]
        near = kept.copy()  # the pixels with a neighbour that survives the step
        near[words:] |= kept[:-words]
        near[:-words] |= kept[words:]
        for neighbour in _sides(near, frame=False):
            near |= neighbour
        counts.append(int(np.bitwise_count(flat & ~near).sum()))
        inside = kept.reshape(-1, words)
    return np.array(counts)


def vessel_calibre(probability: np.ndarray, cut: float = MASK_CUT) -> float | None:
    """The calibre (px) of the widest vessels in a map: the mean of the ridge widths (twice
    the taxicab distance to the background on the mask's centre lines) between the
    :data:`WIDTH_BAND` percentiles. None where the mask has too few centre pixels to say."""
    mask = probability >= cut
    if mask.all():  # no background to measure a width against (and no erosion ends)
        return None
    counts = _ridge_counts(mask)
    if counts.sum() < MIN_RIDGE_PIXELS:
        return None
    widths = np.repeat(2.0 * np.arange(counts.size), counts)
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


def map_histogram(probability: np.ndarray) -> np.ndarray:
    """The :func:`histogram` that a map's cut is read from: its every other row and
    column. A quarter of the pixels gives the same cut on all 55 training photographs of
    CHASE_DB1, HRF-AV and LES-AV, in a quarter of the time (0.7 against 2.5-3 ms on a
    CHASE_DB1 map)."""
    return histogram(probability[::2, ::2])


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
    return expected_dice_bin(map_histogram(probability), platt) / HISTOGRAM_BINS


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
        counts = map_histogram(scaled)  # the cut and the share of the map above it
        cut_bin = expected_dice_bin(counts, calibration.platt)
        cut = cut_bin / HISTOGRAM_BINS
        if counts[cut_bin:].sum() / counts.sum() < MIN_VESSEL_FRACTION:
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
