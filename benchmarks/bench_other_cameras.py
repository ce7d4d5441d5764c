"""Other cameras: a CHASE-only model at the defaults against the best a label could choose
(issue #31, docs/RESULTS.md "Other cameras").

For each dataset's validation (test) images, segmented as `qsegment predict` does (the
default runtime), pooled Dice inside the given (or derived) FOV against the first
observer, for:

- **default**: ``--scale auto --threshold auto``: the vessel-calibre scale and the
  per-image expected-Dice cut (qsegment.inference.calibrate);
- the two halves of it: the FOV scale with the per-image cut, the vessel scale with the
  card's cut; and ``--scale fov --threshold card``, the default before #31;
- **oracle**: the best multiple of the FOV scale (of :data:`MULTIPLES`) with the best single
  threshold for the set, both chosen with the labels.

    python benchmarks/bench_other_cameras.py --dataset chasedb1
    python benchmarks/bench_other_cameras.py --dataset hrf-av --dataset les-av --json out.json

AUC is read from 512-bin histograms of the default maps (within 0.001 of the exact one).
Nothing here is fitted: the model and its calibration were fitted on CHASE_DB1's training
images (`qsegment calibrate`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tqdm import tqdm

from qsegment.datasets import open_dataset
from qsegment.images import read_rgb
from qsegment.inference.calibrate import HISTOGRAM_BINS, expected_dice_cut, histogram
from qsegment.inference.maps import fov_scale
from qsegment.inference.predict import Segmenter
from qsegment.metrics import binned_auc
from qsegment.pretrained import DEFAULT_MODEL

# the oracle's scales, as multiples of the FOV rule's factor
MULTIPLES = (0.6, 0.8, 1.0, 1.25, 1.5, 1.8, 2.2, 2.6, 3.0)


class Counts:
    """Pooled true-positive, predicted and label pixel counts of one way of cutting."""

    def __init__(self) -> None:
        self.tp = self.predicted = self.vessels = 0

    def add(self, mask: np.ndarray, label: np.ndarray) -> None:
        self.tp += int(np.count_nonzero(mask & label))
        self.predicted += int(np.count_nonzero(mask))
        self.vessels += int(np.count_nonzero(label))

    @property
    def dice(self) -> float:
        return 2 * self.tp / max(self.predicted + self.vessels, 1)


def _histogram_dice(vessel: np.ndarray, background: np.ndarray) -> tuple[float, float]:
    """(best pooled Dice, its threshold) from per-bin vessel and background counts."""
    tp = np.cumsum(vessel[::-1])[::-1]
    predicted = tp + np.cumsum(background[::-1])[::-1]
    dice = 2 * tp / (predicted + vessel.sum())
    best = int(np.argmax(dice))
    return float(dice[best]), best / HISTOGRAM_BINS


def measure(dataset_name: str, model: str = DEFAULT_MODEL) -> dict:
    dataset = open_dataset(None, dataset_name)
    _, samples = dataset.split()
    default = Segmenter.from_pretrained(model)
    card_cut = Segmenter.from_pretrained(model, threshold="card").threshold
    ways = {k: Counts() for k in ("default", "fov scale, cut per image",
                                  "vessel scale, card cut", "fov scale, card cut")}
    sweep = {m: (np.zeros(HISTOGRAM_BINS), np.zeros(HISTOGRAM_BINS)) for m in MULTIPLES}
    default_hist = (np.zeros(HISTOGRAM_BINS), np.zeros(HISTOGRAM_BINS))
    images, seconds = [], 0.0
    for sample in tqdm(samples, desc=dataset_name):
        name = sample.name
        rgb = read_rgb(sample.path)
        label, fov = sample.label, sample.fov
        start = time.perf_counter()
        found = default.predict(rgb, name)
        seconds += time.perf_counter() - start
        ways["default"].add(found.mask & fov, label & fov)
        ways["vessel scale, card cut"].add((found.probability >= card_cut) & fov, label & fov)
        for h, part in zip(default_hist, (label & fov, ~label & fov), strict=True):
            h += histogram(found.probability[part])
        base = fov_scale(rgb) or 1.0
        for m in MULTIPLES:
            prob = Segmenter(default.runner, card_cut, scale=base * m).predict(rgb).probability
            for h, part in zip(sweep[m], (label & fov, ~label & fov), strict=True):
                h += histogram(prob[part])
            if m == 1.0:
                ways["fov scale, card cut"].add((prob >= card_cut) & fov, label & fov)
                assert default.calibration is not None, f"{model} has no calibration"
                cut = expected_dice_cut(prob, default.calibration.platt)
                ways["fov scale, cut per image"].add((prob >= cut) & fov, label & fov)
        images.append({"name": name, "fov_scale": base, "scale": found.scale,
                       "scale_rule": found.scale_rule, "threshold": found.threshold,
                       "quality": list(found.quality),
                       "dice": 2 * int(np.count_nonzero(found.mask & label & fov))
                       / max(int(np.count_nonzero(found.mask & fov))
                             + int(np.count_nonzero(label & fov)), 1)})
    oracle = {m: _histogram_dice(*sweep[m]) for m in MULTIPLES}
    best = max(oracle, key=lambda m: oracle[m][0])
    return {"dataset": dataset.title, "images": len(samples), "model": model,
            "runtime": default.runtime,
            **{k: round(v.dice, 4) for k, v in ways.items()},
            "oracle": round(oracle[best][0], 4), "oracle_multiple": best,
            "oracle_threshold": oracle[best][1],
            "oracle_by_multiple": {str(m): [round(d, 4), t] for m, (d, t) in oracle.items()},
            "auc_default": round(binned_auc(*default_hist), 4),
            "default_seconds_per_image": round(seconds / len(samples), 3),
            "per_image": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", required=True,
                        help="a registered dataset (its validation/test split), repeatable")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [measure(name, args.model) for name in args.dataset]
    print("| set | images | default | fov scale, cut per image | vessel scale, card cut "
          "| fov scale, card cut (before) | oracle (scale x FOV rule, threshold) | default "
          "- oracle | AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['dataset']} | {r['images']} | **{r['default']:.4f}** "
              f"| {r['fov scale, cut per image']:.4f} | {r['vessel scale, card cut']:.4f} "
              f"| {r['fov scale, card cut']:.4f} | {r['oracle']:.4f} "
              f"({r['oracle_multiple']}, {r['oracle_threshold']:.3f}) "
              f"| {r['default'] - r['oracle']:+.4f} | {r['auc_default']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
