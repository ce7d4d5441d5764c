"""Fitting a model's label-free calibration (:mod:`qsegment.inference.calibrate`) on its
training images only, and on shifts simulated from them.

- **Scale rule.** Each training image is run at known factors (:data:`FIT_FACTORS`); the
  reference calibre is the geometric mean at factor 1, and ``gamma`` the least-squares
  slope of log calibre on log factor.
- **Cut rule.** Each training image is run as it is, under simulated camera shifts
  (:data:`SHIFTS`: blur, lower resolution, contrast, gamma, exposure, colour balance,
  noise, JPEG, gray) and at the wrong scale; the recalibration ``(a, b)`` is the point of
  :data:`PLATT_GRID` whose per-image expected-Dice cuts give the best pooled Dice, averaged
  over the conditions. A histogram per map makes each grid point cost microseconds.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from ..datasets import Sample
from ..errors import UsageError
from ..images import resize_map
from ..inference.calibrate import (
    HISTOGRAM_BINS,
    Calibration,
    expected_dice_bin,
    histogram,
    map_histogram,
    vessel_calibre,
)
from ..inference.maps import at_scale, fov_scale

if TYPE_CHECKING:  # the mixture is PyTorch's side; calibrating needs only its samples
    from ..data.mixture import Part

Probability = Callable[[np.ndarray], np.ndarray]  # uint8 RGB at its scale -> map
FIT_FACTORS = (0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.4)
PLATT_GRID = (tuple(np.round(np.arange(0.5, 1.76, 0.1), 2)),
              tuple(np.round(np.arange(-2.5, 0.01, 0.125), 3)))


def _gamma_ratio(rgb: np.ndarray, gamma: float) -> np.ndarray:
    return np.round(255.0 * (rgb / 255.0) ** gamma).astype(np.uint8)


def _scaled(rgb: np.ndarray, gain: np.ndarray | float, offset: np.ndarray | float = 0.0
            ) -> np.ndarray:
    return np.clip(np.round(rgb * gain + offset), 0, 255).astype(np.uint8)


def _contrast(rgb: np.ndarray, amount: float) -> np.ndarray:
    return _scaled(rgb, amount, (1 - amount) * rgb.mean(axis=(0, 1)))


def _pil(rgb: np.ndarray, change: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.asarray(change(Image.fromarray(rgb)).convert("RGB"))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _lower_resolution(image: Image.Image, factor: float) -> Image.Image:
    w, h = image.size
    small = image.resize((round(w * factor), round(h * factor)), Image.Resampling.BILINEAR)
    return small.resize((w, h), Image.Resampling.BILINEAR)


# What other cameras change in a photograph, short of the scale (uint8 RGB in and out)
Shift = Callable[[np.ndarray], np.ndarray]
SHIFTS: dict[str, Shift] = {
    "none": lambda rgb: rgb,
    "blur 1.5": lambda rgb: _pil(rgb, lambda im: im.filter(ImageFilter.GaussianBlur(1.5))),
    "blur 3": lambda rgb: _pil(rgb, lambda im: im.filter(ImageFilter.GaussianBlur(3))),
    "half resolution": lambda rgb: _pil(rgb, lambda im: _lower_resolution(im, 0.5)),
    "contrast 0.6": lambda rgb: _contrast(rgb, 0.6),
    "contrast 0.4": lambda rgb: _contrast(rgb, 0.4),
    "gamma 1.8": lambda rgb: _gamma_ratio(rgb, 1.8),
    "gamma 0.6": lambda rgb: _gamma_ratio(rgb, 0.6),
    "exposure 0.5": lambda rgb: _scaled(rgb, 0.5),
    "exposure 1.5": lambda rgb: _scaled(rgb, 1.5),
    "greenish": lambda rgb: _scaled(rgb, np.array([0.7, 1.1, 1.3])),
    "reddish": lambda rgb: _scaled(rgb, np.array([1.2, 0.8, 0.6])),
    "noise 0.04": lambda rgb: _scaled(
        rgb, 1.0, np.random.default_rng(0).normal(0.0, 0.04 * 255, rgb.shape)),
    "jpeg 20": lambda rgb: _pil(rgb, lambda im: _jpeg(im, 20)),
    "blur 2 + contrast 0.6": lambda rgb: _contrast(
        _pil(rgb, lambda im: im.filter(ImageFilter.GaussianBlur(2))), 0.6),
    "gray": lambda rgb: _pil(rgb, lambda im: im.convert("L")),
}
CARD_TOLERANCE = 0.001  # Dice the cut rule may lose to the card's cut on the training images
WRONG_SCALES = (0.6, 0.7, 1.2, 1.4)  # of FIT_FACTORS: the scale rule's residual errors


def _uint8(sample: Sample) -> np.ndarray:
    return np.round(np.asarray(sample.image) * 255.0).astype(np.uint8)


def fit_scale_rule(widths: np.ndarray, factors: Sequence[float] = FIT_FACTORS
                   ) -> tuple[float, float, float]:
    """(reference calibre, gamma, dead band) from calibres ``widths`` (images x
    ``factors``, in the scaled images' pixels): the geometric mean at factor 1, the slope
    of log calibre on log factor through it, and the largest correction the rule then asks
    of a training image at its own scale (less than that is the spread between eyes, not
    a wrong scale)."""
    if 1.0 not in factors or np.isnan(widths).any():
        raise UsageError("the scale rule needs a calibre at factor 1 on every image")
    own = widths[:, list(factors).index(1.0)]
    reference = float(np.exp(np.log(own).mean()))
    x = np.log(np.broadcast_to(np.asarray(factors), widths.shape)).ravel()
    y = np.log(widths / reference).ravel()
    gamma = float((x * y).sum() / (x * x).sum())
    dead_band = float(np.exp(np.abs(np.log(own / reference)).max() / gamma) - 1.0)
    return reference, gamma, dead_band


# per image: the map's histogram that its cut is read from (map_histogram), and its FOV's
# and its FOV's vessels' (histogram)
Histograms = tuple[np.ndarray, np.ndarray, np.ndarray]


def _pooled_dice(maps: list[Histograms], first_bin: Callable[[np.ndarray], int]) -> float:
    """Pooled Dice inside the FOV of cutting each map at the bin ``first_bin`` gives it."""
    tp = predicted = vessels = 0
    for whole, fov, vessel in maps:
        first = first_bin(whole)
        tp += int(vessel[first:].sum())
        predicted += int(fov[first:].sum())
        vessels += int(vessel.sum())
    return 2 * tp / max(predicted + vessels, 1)


def fit_cut_rule(conditions: dict[str, list[Histograms]], card_threshold: float,
                 tolerance: float = CARD_TOLERANCE) -> tuple[tuple[float, float], float]:
    """The ``(a, b)`` of :data:`PLATT_GRID` that maximises the pooled Dice (inside the FOV)
    of per-image expected-Dice cuts (read from the whole map, as predicting does), averaged
    over ``conditions``, each a list of :data:`Histograms` per image, among those that lose
    at most ``tolerance`` to the card's threshold on the images as they are (``none``): the
    model's own camera.
    Returns it with that mean Dice."""
    card_bin = math.ceil(card_threshold * HISTOGRAM_BINS)
    floor = _pooled_dice(conditions["none"], lambda _: card_bin) - tolerance
    best: tuple[float, tuple[float, float]] = (-1.0, (1.0, 0.0))
    for platt in itertools.product(*PLATT_GRID):
        def first_bin(whole: np.ndarray, platt: tuple[float, float] = platt) -> int:
            return expected_dice_bin(whole, platt)

        if _pooled_dice(conditions["none"], first_bin) < floor:
            continue
        mean = float(np.mean([_pooled_dice(maps, first_bin) for maps in conditions.values()]))
        if mean > best[0]:
            best = (mean, platt)
    return best[1], best[0]


def fit_calibration(probability: Probability, train: Sequence[Sample], card_threshold: float,
                    shifts: Mapping[str, Shift] | None = None, progress: bool = True,
                    fov_corrections: Sequence[float] = ()) -> tuple[Calibration, dict]:
    """A model's calibration fitted on its training images only.

    Args:
        probability: the model's map of a uint8 RGB image at the image's own scale.
        train: the model's training samples (labels are read for the cut rule only).
        card_threshold: the model's train-chosen threshold, which the cut rule may not
            lose more than :data:`CARD_TOLERANCE` Dice to on the training images.
        shifts: the simulated camera shifts (default :data:`SHIFTS`; ``none`` is needed).
        progress: show a progress bar.
        fov_corrections: how far each training image's training scale lies from the
            FOV rule's (:func:`fov_rule_corrections`; a mixture of cameras): the scale rule
            reaches them all.

    Returns:
        The calibration and a report: each condition's pooled Dice at the fitted cuts.
    """
    shifts = SHIFTS if shifts is None else shifts
    if not train or "none" not in shifts:
        raise UsageError("calibration needs training images and the unshifted condition")
    widths = np.full((len(train), len(FIT_FACTORS)), np.nan)
    conditions: dict[str, list[Histograms]] = {}
    bar = tqdm(total=len(train) * (len(FIT_FACTORS) + len(shifts)), desc="calibrate",
               unit="map", disable=not progress)
    for i, sample in enumerate(train):
        rgb = _uint8(sample)
        label = np.asarray(sample.label, dtype=bool)

        def add(condition: str, full: np.ndarray, sample: Sample = sample,
                label: np.ndarray = label) -> None:
            conditions.setdefault(condition, []).append(
                (map_histogram(full), histogram(full[sample.fov]),
                 histogram(full[sample.fov & label])))

        for j, factor in enumerate(FIT_FACTORS):
            scaled = at_scale(rgb, factor, probability)
            widths[i, j] = vessel_calibre(scaled) or np.nan
            if factor in WRONG_SCALES:
                add(f"scale {factor}", resize_map(scaled, label.shape))
            bar.update()
        for name, shift in shifts.items():
            add(name, probability(shift(rgb)))
            bar.update()
    bar.close()
    reference, gamma, dead_band = fit_scale_rule(widths)
    platt, dice = fit_cut_rule(conditions, card_threshold)
    calibration = Calibration(
        vessel_width=round(reference, 3), width_gamma=round(gamma, 3), platt=platt,
        dead_band=math.ceil(dead_band * 1000) / 1000,  # rounded up: no training image moves
        scale_range=(round(min((1 / max(FIT_FACTORS), *fov_corrections)), 3),
                     round(max((1 / min(FIT_FACTORS), *fov_corrections)), 3)),
        fitted_on=f"{len(train)} training images ({train[0].name} to {train[-1].name}), "
                  f"{len(shifts) - 1} simulated shifts and {len(WRONG_SCALES)} wrong scales")
    report = {"mean_dice": round(dice, 4), "histogram_bins": HISTOGRAM_BINS,
              "conditions": sorted(conditions), "factors": list(FIT_FACTORS)}
    return calibration, report


def fov_rule_corrections(parts: Sequence[Part]) -> list[float]:
    """Each training photograph's training scale divided by the FOV rule's factor for it:
    the correction the vessel rule must make after the FOV rule on that camera (a 45 deg
    HRF photograph needs about 2.3x); photographs without a FOV rim are left out."""
    corrections = []
    for part in parts:
        for name, scale in zip(part.split.train, part.train_scales, strict=True):
            factor = fov_scale(part.dataset.sample(name).image)
            if factor is not None:
                corrections.append(scale / factor)
    return corrections
