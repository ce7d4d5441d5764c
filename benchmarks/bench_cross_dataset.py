"""The cross-dataset table (issue #32, docs/RESULTS.md "One model for every camera"): rows
are the training data (each set alone, all together), columns each test split, as
bob.ip.binseg and lwnet publish them.

Each cell segments the split's images as `qsegment predict` does with no flags (the
default runtime, ``--scale auto --threshold auto``) and gives the pooled Dice inside the
given (or derived) FOV against the first observer, the AUC, and beside them the Dice at
the best single threshold for the set (an oracle: chosen with the labels, on the same
maps). A second observer's Dice is added where the set has one.

    python benchmarks/bench_cross_dataset.py \\
        --model CHASE_DB1=qsegment-nearest-transfer-jpeg --model all=runs/multi \\
        --json cross.json --figure docs/figures/cross_dataset.png

A model is a shipped name, a run folder or a .safetensors file; one without a
calibration file (`qsegment calibrate MODEL`) keeps the FOV rule and its card's cut.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_other_cameras import Counts, _histogram_dice
from tqdm import tqdm

from qsegment.datasets import open_dataset
from qsegment.files import atomic_write
from qsegment.images import read_rgb
from qsegment.inference.calibrate import HISTOGRAM_BINS, histogram
from qsegment.inference.predict import Segmenter
from qsegment.metrics import binned_auc

TEST_SETS = ("chasedb1", "hrf-av", "les-av")


def measure(model: str, dataset_name: str, runtime: str = "openvino") -> dict:
    """One cell: the model at its defaults on the dataset's test (validation) split."""
    dataset = open_dataset(None, dataset_name)
    _, samples = dataset.split()
    segmenter = Segmenter.from_pretrained(model, runtime=runtime)
    default = Counts()
    vessel, background = np.zeros(HISTOGRAM_BINS), np.zeros(HISTOGRAM_BINS)
    per_image, seconds = [], 0.0
    for sample in tqdm(samples, desc=f"{Path(model).name} on {dataset.title}", leave=False):
        rgb = read_rgb(sample.path)
        label, fov = sample.label & sample.fov, sample.fov
        start = time.perf_counter()
        found = segmenter.predict(rgb, sample.name)
        seconds += time.perf_counter() - start
        default.add(found.mask & fov, label)
        vessel += histogram(found.probability[label])
        background += histogram(found.probability[fov & ~label])
        per_image.append({"name": sample.name, "scale": round(found.scale, 3),
                          "threshold": round(found.threshold, 4),
                          "quality": list(found.quality)})
    oracle, oracle_threshold = _histogram_dice(vessel, background)
    return {"dataset": dataset.title, "images": len(samples), "dice": round(default.dice, 4),
            "auc": round(binned_auc(vessel, background), 4), "oracle": round(oracle, 4),
            "oracle_threshold": round(oracle_threshold, 3), "runtime": segmenter.runtime,
            "threshold_rule": segmenter.threshold_rule,
            "seconds_per_image": round(seconds / len(samples), 3), "per_image": per_image}


def second_observer(dataset_name: str) -> float | None:
    """Pooled Dice of the second observer against the first inside the FOV, if any."""
    dataset = open_dataset(None, dataset_name)
    if dataset.observers < 2:
        return None
    counts = Counts()
    first, second = dataset.split(observer=1)[1], dataset.split(observer=2)[1]
    for a, b in zip(first, second, strict=True):
        counts.add(b.label & b.fov, a.label & a.fov)
    return round(counts.dice, 4)


def figure(rows: dict[str, list[dict]], path: Path) -> None:
    """Grouped bars: Dice at the defaults per test set, one bar per training data, the
    oracle threshold's Dice as a tick above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [cell["dataset"] for cell in next(iter(rows.values()))]
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for i, (label, cells) in enumerate(rows.items()):
        x = np.arange(len(sets)) + (i - (len(rows) - 1) / 2) * width
        ax.bar(x, [c["dice"] for c in cells], width, label=f"trained on {label}")
        ax.scatter(x, [c["oracle"] for c in cells], marker="_", color="black", s=120,
                   label="best single threshold" if i == 0 else None)
    ax.set_xticks(np.arange(len(sets)), [f"{s} test" for s in sets])
    ax.set_ylabel("Dice at the defaults")
    ax.set_ylim(0.6, 0.9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=MODEL",
                        help="a row: what it was trained on, and the weights (repeatable)")
    parser.add_argument("--dataset", action="append", choices=TEST_SETS,
                        help=f"a test split, repeatable (default: {', '.join(TEST_SETS)})")
    parser.add_argument("--runtime", default="openvino",
                        help="one runtime for every row (openvino: the default's on a CPU "
                             "that has it; a run folder's `auto` would build a TFLite model "
                             "per photograph size)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--figure", type=Path, help="also draw the table here (PNG)")
    args = parser.parse_args()
    models = dict(item.split("=", 1) for item in args.model)
    sets = args.dataset or list(TEST_SETS)
    rows = {label: [measure(model, name, args.runtime) for name in sets]
            for label, model in models.items()}
    titles = [cell["dataset"] for cell in next(iter(rows.values()))]
    print("| trained on | " + " | ".join(f"{t} test: Dice (oracle) / AUC" for t in titles) + " |")
    print("|---|" + "---:|" * len(titles))
    for label, cells in rows.items():
        print(f"| {label} ({models[label]}) | " + " | ".join(
            f"**{c['dice']:.4f}** ({c['oracle']:.4f} at {c['oracle_threshold']:.3f}) / "
            f"{c['auc']:.4f}" for c in cells) + " |")
    humans = [second_observer(name) for name in sets]
    print("| second observer | " + " | ".join("-" if h is None else f"{h:.4f}" for h in humans)
          + " |")
    if args.json:
        atomic_write(args.json, json.dumps({"models": models, "rows": rows,
                                            "second_observer": humans}, indent=1))
    if args.figure:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
