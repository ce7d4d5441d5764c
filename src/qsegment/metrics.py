"""Segmentation metrics inside the field of view, as the vessel literature reports them.

Threshold-based scores are pure functions of the confusion counts (computed once);
AUC and the Dice-maximizing threshold come from scikit-learn's ROC and
precision-recall curves. "pooled" scores treat all pixels of all images as one
set (the usual Table IV convention); "mean" averages the per-image scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from .errors import UsageError

METRICS = ("dice", "acc", "auc", "se", "sp", "iou", "mcc")


@dataclass(frozen=True)
class Counts:
    """Confusion counts of a binary prediction."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                      self.tn + other.tn)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def scores(c: Counts) -> dict[str, float]:
    """Dice (F1), accuracy, sensitivity, specificity, IoU and MCC from counts."""
    tp, fp, fn, tn = (float(v) for v in (c.tp, c.fp, c.fn, c.tn))
    mcc_den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "acc": _ratio(tp + tn, tp + fp + fn + tn),
        "se": _ratio(tp, tp + fn),
        "sp": _ratio(tn, tn + fp),
        "iou": _ratio(tp, tp + fp + fn),
        "mcc": _ratio(tp * tn - fp * fn, mcc_den),
    }


def _in_fov(prob: np.ndarray, label: np.ndarray, fov: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray]:
    if prob.shape != label.shape or (fov is not None and fov.shape != label.shape):
        raise UsageError(f"shape mismatch: prediction {prob.shape}, label {label.shape}, "
                         f"fov {None if fov is None else fov.shape}")
    if fov is None:
        return prob.ravel(), label.ravel().astype(bool)
    return prob[fov], label[fov].astype(bool)


def confusion(prob: np.ndarray, label: np.ndarray, fov: np.ndarray | None = None,
              threshold: float = 0.5) -> Counts:
    """Counts of ``prob >= threshold`` against ``label`` over the FOV pixels."""
    p, t = _in_fov(prob, label, fov)
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & t))
    fp = int(np.count_nonzero(pred & ~t))
    fn = int(np.count_nonzero(~pred & t))
    return Counts(tp, fp, fn, int(t.size) - tp - fp - fn)


EXACT_AUC_PIXELS = 1 << 22  # above this, AUC from AUC_BINS bins: seconds and MBs, not GBs
AUC_BINS = 1 << 20


def _auc(p: np.ndarray, t: np.ndarray) -> float:
    """ROC AUC of scores ``p`` against labels ``t``: scikit-learn's, exact, up to
    :data:`EXACT_AUC_PIXELS`; above, from per-bin counts of probabilities in
    :data:`AUC_BINS` equal bins (ties within a bin count half; within 1e-5 of the exact
    value, where sorting the 145 M pixels of 21 HRF photographs takes 10 GB)."""
    if not 0 < t.sum() < t.size:
        return float("nan")
    if t.size <= EXACT_AUC_PIXELS:
        return float(roc_auc_score(t, p))
    bins = np.minimum((np.clip(p, 0.0, 1.0) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    return binned_auc(np.bincount(bins[t], minlength=AUC_BINS),
                      np.bincount(bins[~t], minlength=AUC_BINS))


def binned_auc(vessel: np.ndarray, background: np.ndarray) -> float:
    """ROC AUC from the counts of vessel and background pixels in the same increasing
    probability bins (ties within a bin count half)."""
    vessel, background = vessel.astype(np.float64), background.astype(np.float64)
    below = np.cumsum(background) - background
    return float(((below + background / 2) * vessel).sum() / (vessel.sum() * background.sum()))


def evaluate(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
             fovs: Sequence[np.ndarray | None], threshold: float | Sequence[float] = 0.5
             ) -> dict[str, Any]:
    """All metrics for a set of images: ``pooled``, ``mean`` and ``per_image`` dicts.

    ``probs`` are probability maps (or any score where higher means vessel; the
    threshold applies to it, one for all or one per image), ``labels`` binary maps,
    ``fovs`` boolean masks or None.
    """
    if not (len(probs) == len(labels) == len(fovs)) or not probs:
        raise UsageError("need the same, non-zero number of predictions, labels and FOVs")
    cuts = [threshold] * len(probs) if isinstance(threshold, float | int) else list(threshold)
    if len(cuts) != len(probs):
        raise UsageError(f"{len(cuts)} thresholds for {len(probs)} images")
    pixels = [_in_fov(p, t, f) for p, t, f in zip(probs, labels, fovs, strict=True)]
    per_image, total = [], Counts(0, 0, 0, 0)
    for (p, t), cut in zip(pixels, cuts, strict=True):
        c = confusion(p, t, None, cut)
        total = total + c
        per_image.append({**scores(c), "auc": _auc(p, t)})
    all_p = np.concatenate([p for p, _ in pixels])
    all_t = np.concatenate([t for _, t in pixels])
    pooled = {**scores(total), "auc": _auc(all_p, all_t)}
    mean = {k: float(np.mean([m[k] for m in per_image])) for k in METRICS}
    return {"threshold": threshold, "pooled": _ordered(pooled), "mean": mean,
            "per_image": [_ordered(m) for m in per_image]}


def _ordered(d: dict[str, float]) -> dict[str, float]:
    return {k: d[k] for k in METRICS}


def best_threshold(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                   fovs: Sequence[np.ndarray | None]) -> float:
    """The threshold that maximizes pooled Dice (F1) on the given images.

    Call it on *training* predictions and keep the value: tuning it on the
    validation images would leak them into the result.
    """
    pixels = [_in_fov(p, t, f) for p, t, f in zip(probs, labels, fovs, strict=True)]
    all_p = np.concatenate([p for p, _ in pixels])
    all_t = np.concatenate([t for _, t in pixels])
    precision, recall, thresholds = precision_recall_curve(all_t, all_p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def calibration_error(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      fovs: Sequence[np.ndarray | None], bins: int = 15) -> float:
    """Expected calibration error inside the FOV, pooled: the pixel-weighted mean gap
    between the mean probability and the fraction of vessel pixels in ``bins`` equal
    bins of probability. 0 when "p = 0.8" means vessel 80 % of the time."""
    pixels = [_in_fov(p, t, f) for p, t, f in zip(probs, labels, fovs, strict=True)]
    all_p = np.concatenate([p for p, _ in pixels]).astype(np.float64)
    all_t = np.concatenate([t for _, t in pixels]).astype(np.float64)
    which = np.minimum((all_p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, all_p, bins) - np.bincount(which, all_t, bins))
    return float(gap.sum() / max(count.sum(), 1))


def agreement(reference: np.ndarray, other: np.ndarray, threshold: float) -> dict[str, float]:
    """How close two logit maps are (a float model and its int8 copy, two runtimes):
    logits, probabilities and the thresholded masks."""
    diff = np.abs(reference - other)
    p_ref, p_other = (1 / (1 + np.exp(-a.astype(np.float64))) for a in (reference, other))
    return {"logit_max_abs": float(diff.max()), "logit_mean_abs": float(diff.mean()),
            "identical_fraction": float((diff == 0).mean()),
            "prob_mean_abs": float(np.abs(p_ref - p_other).mean()),
            "mask_agreement": float(((p_ref >= threshold) == (p_other >= threshold)).mean())}
