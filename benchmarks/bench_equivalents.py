"""CRAE, CRVE and AVR from an artery/vein model's maps against the same code on the
manual artery/vein maps, on the HRF-AV and LES-AV test splits (issue #34).

    python benchmarks/bench_equivalents.py RUN [--split test|train] [--tta flip] [--runtime R]
        [--no-segment-vote] [--disc-from model|manual] [--out DIR]

For each test photograph the optic disc is located once (on the photograph, with the
model's vessel map, as `qsegment predict --biomarkers` finds it; ``--disc-from manual``:
with the manual vessel map, so that the manual column is the same whatever the model)
and both maps are measured around that same disc
(:func:`qsegment.biomarkers.equivalents.measure_artery_vein`). Reported per measure,
pooled over both splits: ICC(A,1), mean absolute relative difference (MARD), Pearson r
and the Bland-Altman bias and limits of agreement; ``DIR/equivalents.json`` holds every
image's values and ``DIR/equivalents_bland_altman.png`` the figure. ``--split train``
measures the training splits instead, which the artery/vein model learned from: what
the same code gives where the model's maps are closer to the manual ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MEASURES = ("crae", "crve", "avr")


def _bland_altman(path: Path, table: dict[str, dict[str, list[float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    for ax, measure in zip(axes, MEASURES, strict=True):
        model, manual = (np.array(table[measure][s]) for s in ("model", "manual"))
        ok = np.isfinite(model) & np.isfinite(manual)
        mean, diff = (model[ok] + manual[ok]) / 2, model[ok] - manual[ok]
        bias, spread = diff.mean(), 1.96 * diff.std(ddof=1)
        ax.scatter(mean, diff, s=14)
        for level, style in ((bias, "-"), (bias - spread, "--"), (bias + spread, "--")):
            ax.axhline(level, color="gray", linestyle=style, linewidth=1)
        unit = "" if measure == "avr" else " (px)"
        ax.set(title=measure.upper(), xlabel=f"mean of model and manual{unit}",
               ylabel=f"model - manual{unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from PIL import Image

    from qsegment import Segmenter
    from qsegment.biomarkers.disc import locate_disc
    from qsegment.biomarkers.equivalents import measure_artery_vein
    from qsegment.biomarkers.report import _compare
    from qsegment.datasets import load_classes, load_label, open_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an artery/vein model: run folder or weights")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--out", default="runs/equivalents", help="output folder")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--tta", choices=("none", "flip", "d8"), default="none",
                        help="the test-time views the model's logits are averaged over")
    parser.add_argument("--limit", type=int, help="at most this many images per dataset")
    parser.add_argument("--segment-vote", action=argparse.BooleanOptionalAction, default=True,
                        help="one class per vessel segment, as predict --av (default), or "
                        "each pixel's own")
    parser.add_argument("--disc-from", choices=("model", "manual"), default="model",
                        help="the vessel map the disc is located with (model)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter.from_pretrained(args.model, runtime=args.runtime, artery_vein=True,
                                          tta=args.tta, segment_vote=args.segment_vote)
    images: list[dict] = []
    for name in ("hrf-av", "les-av"):
        dataset = open_dataset(dataset=name)
        split = dataset.default_split
        for image_name in (split.val if args.split == "test" else split.train)[:args.limit]:
            start = time.perf_counter()
            photo = np.asarray(Image.open(dataset.image_path(image_name)).convert("RGB"))
            shape = photo.shape[:2]
            fov_path = dataset.fov_path(image_name)
            fov = load_label(fov_path, shape, what="FOV mask") if fov_path else None
            manual = load_classes(dataset.label_path(image_name, 1), shape)
            prediction = segmenter.predict(photo, image_name)
            vessels = prediction.mask if args.disc_from == "model" else manual > 0
            disc = locate_disc(photo, fov, vessels=vessels)
            row = {"dataset": name, "image": image_name, "disc": [disc.row, disc.col,
                                                                  disc.diameter]}
            for source, classes in (("model", prediction.classes), ("manual", manual)):
                analysis = measure_artery_vein(classes, disc, fov)
                row[source] = {k: analysis.values[k] for k in
                               (*MEASURES, "zone_b_arteries", "zone_b_veins")}
                row[f"{source}_reasons"] = {k: v for k, v in analysis.reasons.items()
                                            if k in MEASURES}
            images.append(row)
            print(f"{name} {image_name}: disc {disc.diameter:.0f} px, " + ", ".join(
                f"{m} {row['model'][m]:.3g}/{row['manual'][m]:.3g}" for m in MEASURES)
                + f" (model/manual, {time.perf_counter() - start:.1f} s)", flush=True)
    table = {m: {s: [r[s][m] for r in images] for s in ("model", "manual")} for m in MEASURES}
    summary = {}
    for measure in MEASURES:
        model, manual = (np.array(table[measure][s], dtype=float) for s in ("model", "manual"))
        ok = np.isfinite(model) & np.isfinite(manual)
        diff = model[ok] - manual[ok]
        summary[measure] = {**_compare(model, manual), "images": int(ok.sum()),
                            "bias": float(diff.mean()), "loa": float(1.96 * diff.std(ddof=1)),
                            "model_mean": float(model[ok].mean()),
                            "manual_mean": float(manual[ok].mean())}
    print("\n| measure | images | ICC(A,1) | MARD | Pearson r | manual mean | model mean | "
          "bias (model - manual) | 95 % limits |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for measure, s in summary.items():
        print(f"| {measure.upper()} | {s['images']} | {s['icc']:.3f} | {s['mard']:.1%} | "
              f"{s['r']:.3f} | {s['manual_mean']:.3g} | {s['model_mean']:.3g} | "
              f"{s['bias']:+.3g} | ±{s['loa']:.3g} |")
    (out / "equivalents.json").write_text(json.dumps(
        {"model": str(args.model), "runtime": segmenter.runtime, "split": args.split,
         "tta": args.tta, "segment_vote": args.segment_vote, "disc_from": args.disc_from,
         "summary": summary,
         "images": images}, indent=1, default=float) + "\n")
    _bland_altman(out / "equivalents_bland_altman.png", table)
    print(f"wrote {out / 'equivalents.json'} and equivalents_bland_altman.png")


if __name__ == "__main__":
    main()
