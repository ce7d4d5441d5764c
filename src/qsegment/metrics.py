"""Segmentation metrics inside the field of view, as the vessel literature reports them.

Threshold-based scores are pure functions of the confusion counts (computed once);
AUC and the Dice-maximizing threshold come from scikit-learn's ROC and
precision-recall curves. "pooled" scores treat all pixels of all images as one
set (the usual Table IV convention); "mean" averages the per-image scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from .datasets.base import AV_CLASSES
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
    return binned_auc(*bin_counts(p, t))


def bin_counts(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How many vessel and background pixels (``t``) have their probability ``p`` in each
    of :data:`AUC_BINS` equal bins of [0, 1]: bin ``b`` holds ``b / AUC_BINS <= p``."""
    bins = np.minimum((np.clip(p, 0.0, 1.0) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    return np.bincount(bins[t], minlength=AUC_BINS), np.bincount(bins[~t], minlength=AUC_BINS)


def pooled_bin_counts(pixels: Iterable[tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bin_counts` of several images' (probability, label) pixels, summed image
    by image: their pool without a copy of all of them."""
    vessel = np.zeros(AUC_BINS, np.int64)
    background = np.zeros(AUC_BINS, np.int64)
    for p, t in pixels:
        v, b = bin_counts(p, t)
        vessel += v
        background += b
    return vessel, background


def _pooled_auc(pixels: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """:func:`_auc` of all images' pixels together; from :func:`pooled_bin_counts` where
    the pool would be binned anyway (the 100 M test pixels of HRF-AV: 2 GB less)."""
    if sum(t.size for _, t in pixels) <= EXACT_AUC_PIXELS:
        return _auc(np.concatenate([p for p, _ in pixels]), np.concatenate([t for _, t in pixels]))
    vessel, background = pooled_bin_counts(pixels)
    return binned_auc(vessel, background) if vessel.any() and background.any() else float("nan")


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
    pooled = {**scores(total), "auc": _pooled_auc(pixels)}
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

    Exact (scikit-learn's precision-recall curve) up to :data:`EXACT_AUC_PIXELS` pixels;
    above, the best lower edge of :data:`AUC_BINS` probability bins, counted image by
    image (:func:`bin_counts`), then, as scikit-learn's, the lowest probability drawn
    from it: sorting the 140 M training pixels of a HRF-AV + LES-AV + CHASE_DB1 mixture
    took GBs that the counts do not.
    """
    triples = list(zip(probs, labels, fovs, strict=True))
    if sum(np.size(p) for p in probs) <= EXACT_AUC_PIXELS:
        pixels = [_in_fov(*triple) for triple in triples]
        all_p = np.concatenate([p for p, _ in pixels])
        all_t = np.concatenate([t for _, t in pixels])
        precision, recall, thresholds = precision_recall_curve(all_t, all_p)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        return float(thresholds[int(np.argmax(f1[:-1]))])
    vessel, background = pooled_bin_counts(_in_fov(*triple) for triple in triples)
    found = np.cumsum(vessel[::-1])[::-1]  # vessel pixels at or above each bin's edge
    drawn = found + np.cumsum(background[::-1])[::-1]
    dice = 2 * found / np.maximum(drawn + vessel.sum(), 1)
    edge = float(np.argmax(dice)) / AUC_BINS
    return min(float(p[p >= edge].min(initial=1.0))
               for p, _ in (_in_fov(*triple) for triple in triples))


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


# Artery/vein scores (issue #33). A class map codes 0 background, 1 artery, 2 vein,
# 3 uncertain (AV_CLASSES are 1-3).
AV_METRICS = ("se", "auc_roc", "f1", "auc_pr", "mse")  # BF-Net's table, in its order
CURVE_BINS = 1 << 16


def _binned_curves(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(ROC AUC, PR AUC) of scores ``p`` in [0, 1] against labels ``t`` from counts in
    :data:`CURVE_BINS` bins: seconds on 8 MP where sorting takes minutes. The PR curve is
    integrated by trapezoids over recall, as scikit-learn's ``auc`` of its
    ``precision_recall_curve`` (BF-Net's AUC-PR)."""
    if not 0 < t.sum() < t.size:
        return float("nan"), float("nan")
    bins = np.minimum((np.clip(p, 0.0, 1.0) * CURVE_BINS).astype(np.int64), CURVE_BINS - 1)
    positive = np.bincount(bins[t], minlength=CURVE_BINS).astype(np.float64)
    negative = np.bincount(bins[~t], minlength=CURVE_BINS).astype(np.float64)
    tp, fp = np.cumsum(positive[::-1]), np.cumsum(negative[::-1])  # cut lowered bin by bin
    seen = tp + fp > 0
    precision, recall = tp[seen] / (tp[seen] + fp[seen]), tp[seen] / positive.sum()
    recall, precision = np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision])
    return binned_auc(positive, negative), float(np.trapezoid(precision, recall))


def artery_vein_scores(predicted: np.ndarray, probabilities: np.ndarray, label: np.ndarray,
                       fov: np.ndarray) -> dict[str, dict[str, float]]:
    """One image's artery/vein scores by BF-Net's protocol (Zhou et al., MICCAI 2021, and
    its published evaluation code): each class of :data:`AV_CLASSES` one-vs-rest over the
    FOV pixels, from the decoded class map ``predicted`` (sensitivity, F1, accuracy and
    MSE, which on a decoded map is 1 - accuracy) and the class's probability map
    (AUC-ROC, AUC-PR); then the mean of the classes weighted by their labelled pixel
    counts (``weighted``). A class that the label lacks weighs nothing.

    Args:
        predicted: (H, W) class map, values 0-3.
        probabilities: (3, H, W) probability of artery, vein and uncertain.
        label: (H, W) reference class map, values 0-3.
        fov: (H, W) bool field of view.
    """
    if not predicted.shape == label.shape == fov.shape == probabilities.shape[1:]:
        raise UsageError(f"shape mismatch: prediction {predicted.shape}, probabilities "
                         f"{probabilities.shape}, label {label.shape}, fov {fov.shape}")
    pred, truth = predicted[fov], label[fov]
    per_class, weights = {}, []
    for value, name in enumerate(AV_CLASSES, start=1):
        t, p = truth == value, pred == value
        tp = int(np.count_nonzero(p & t))
        fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp
        s = scores(Counts(tp, fp, fn, t.size - tp - fp - fn))
        auc_roc, auc_pr = _binned_curves(probabilities[value - 1][fov], t)
        per_class[name] = {"se": s["se"], "auc_roc": auc_roc, "f1": s["dice"],
                           "auc_pr": auc_pr, "mse": 1.0 - s["acc"], "acc": s["acc"],
                           "pixels": int(t.sum())}
        weights.append(int(t.sum()))
    total = sum(weights)
    per_class["weighted"] = {
        k: sum(w * (0.0 if math.isnan(m[k]) else m[k]) for w, m in
               zip(weights, per_class.values(), strict=False)) / total if total else math.nan
        for k in (*AV_METRICS, "acc")}
    return per_class


def centreline_accuracy(artery_score: np.ndarray, label: np.ndarray, fov: np.ndarray
                        ) -> tuple[float, int]:
    """The classic artery/vein accuracy: on the manual vessels' centreline pixels
    (skimage's skeleton of ``label > 0``) that are labelled artery or vein, inside the
    FOV, the share whose class the model gives right (artery where ``artery_score`` >
    0.5: the artery probability among artery and vein), whether or not it found the
    vessel there; with the number of pixels scored."""
    from skimage.morphology import skeletonize

    centre = skeletonize(label > 0) & fov & ((label == 1) | (label == 2))
    scored = int(centre.sum())
    if not scored:
        return math.nan, 0
    right = (artery_score[centre] > 0.5) == (label[centre] == 1)
    return float(right.mean()), scored
