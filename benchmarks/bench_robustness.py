"""Robustness to other cameras, from real data: CHASE_DB1's 8 validation images under
shifts of scale, colour and quality, segmented as `qsegment predict` does (int8, the
card's threshold) and scored inside the FOV at full resolution (each map resized back
to 960x999 and compared with the first observer's label).

Conditions: the image itself; rescaled so that its FOV is 540 px or 3300 px across
(a 565x584 screening camera, a 3504x2336 one); grayscale (red-free) and the green
channel alone; JPEG quality 30; gamma 0.6 and 1.6; a Gaussian blur (radius 2 px); a
warm colour cast. Every condition with ``--scale auto`` (the default) and, for the
rescaled ones, ``--scale none`` beside it.

    python benchmarks/bench_robustness.py [--models qsegment-nearest-distill ...] [--json out.json]

A second table says whether the card's threshold transfers: the best threshold of each
condition's images (an oracle), the Dice it would add, and the expected calibration
error (ECE, 15 bins, inside the FOV).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from qsegment.datasets.fov import TRAINING_FOV_DIAMETER

Shift = Callable[[np.ndarray], np.ndarray]


def _rescale_to(fov_px: float) -> Shift:
    def shift(rgb: np.ndarray) -> np.ndarray:
        factor = fov_px / TRAINING_FOV_DIAMETER  # CHASE_DB1's
        h, w = rgb.shape[:2]
        return np.asarray(Image.fromarray(rgb).resize((round(w * factor), round(h * factor)),
                                                      Image.BILINEAR))
    return shift


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=30)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _gamma(g: float) -> Shift:
    return lambda rgb: np.round(255 * (rgb / 255.0) ** g).astype(np.uint8)


SHIFTS: dict[str, Shift] = {
    "clean": lambda rgb: rgb,
    "FOV 540 px": _rescale_to(540),
    "FOV 3300 px": _rescale_to(3300),
    "grayscale": lambda rgb: np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None],
                                       3, axis=2),
    "green channel": lambda rgb: np.repeat(rgb[..., 1:2], 3, axis=2),
    "JPEG q30": _jpeg,
    "gamma 0.6": _gamma(0.6),
    "gamma 1.6": _gamma(1.6),
    "blur 2 px": lambda rgb: np.asarray(Image.fromarray(rgb).filter(
        ImageFilter.GaussianBlur(2))),
    "colour cast": lambda rgb: np.clip(rgb * np.array([1.15, 1.0, 0.8]), 0, 255).astype(
        np.uint8),
}
RESCALED = ("FOV 540 px", "FOV 3300 px")


def condition_scores(model: str, condition: str, scale: str, samples: list) -> dict:
    """Pooled Dice at the card's threshold; for the threshold's transfer, the Dice at the
    best threshold of these very images (an oracle, never a way to choose one) and the
    expected calibration error of the probabilities."""
    from qsegment import Segmenter
    from qsegment.images import resize_map
    from qsegment.metrics import best_threshold, calibration_error, evaluate

    segmenter = Segmenter.from_pretrained(model, scale=scale)
    probs = []
    for s in samples:
        shifted = SHIFTS[condition](np.round(s.image * 255).astype(np.uint8))
        prob = segmenter.predict(shifted).probability
        probs.append(resize_map(prob, s.label.shape) if prob.shape != s.label.shape else prob)
    labels, fovs = [s.label for s in samples], [s.fov for s in samples]
    oracle = best_threshold(probs, labels, fovs)
    return {"dice": evaluate(probs, labels, fovs, segmenter.threshold)["pooled"]["dice"],
            "threshold": segmenter.threshold, "best_threshold": oracle,
            "best_dice": evaluate(probs, labels, fovs, oracle)["pooled"]["dice"],
            "ece": calibration_error(probs, labels, fovs)}


def markdown(rows: dict[str, dict[str, dict]], models: list[str]) -> str:
    """The Dice table (each condition against the clean images) and the threshold one."""
    clean = rows["clean, --scale auto"]
    lines = ["| condition | " + " | ".join(f"{m}: Dice (minus clean)" for m in models)
             + " |", "|---|" + "---:|" * len(models)]
    for name, row in rows.items():
        cells = [f"{row[m]['dice']:.4f} ({row[m]['dice'] - clean[m]['dice']:+.4f})"
                 for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| condition | " + " | ".join(
        f"{m}: best threshold (Dice there minus at the card's) / ECE" for m in models) + " |",
        "|---|" + "---:|" * len(models)]
    for name, row in rows.items():
        cells = [f"{row[m]['best_threshold']:.2f} ({row[m]['best_dice'] - row[m]['dice']:+.4f})"
                 f" / {row[m]['ece']:.4f}" for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    from qsegment.datasets import load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["qsegment-nearest-transfer-jpeg", "qsegment-nearest-transfer"])
    parser.add_argument("--conditions", nargs="+", choices=list(SHIFTS), default=list(SHIFTS))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    _, val = load_split()
    rows = {}
    for condition in ["clean", *[c for c in args.conditions if c != "clean"]]:
        for scale in ("auto", "none") if condition in RESCALED else ("auto",):
            rows[f"{condition}, --scale {scale}"] = {
                model: condition_scores(model, condition, scale, val) for model in args.models}
    print(markdown(rows, args.models))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
