"""CRAE, CRVE and AVR from an artery/vein model's maps against the same code on the
manual artery/vein maps, on the HRF-AV and LES-AV test splits (issue #34).

    python benchmarks/bench_equivalents.py RUN|FILE.onnx [--split test|train] [--tta flip]
        [--runtime R] [--no-segment-vote] [--disc-from model|manual] [--decompose]
        [--threshold T] [--out DIR]
    python benchmarks/bench_equivalents.py --from DIR/equivalents.json [--against JSON]
        [--out DIR2]

For each test photograph the optic disc is located once (on the photograph, with the
model's vessel map, as `qsegment predict --biomarkers` finds it; ``--disc-from manual``:
with the manual vessel map, so that the manual column is the same whatever the model)
and both maps are measured around that same disc
(:func:`qsegment.biomarkers.equivalents.measure_artery_vein`). Reported per measure,
pooled over both splits: ICC(A,1), mean absolute relative difference (MARD), Pearson r
and the Bland-Altman bias and limits of agreement; ``DIR/equivalents.json`` holds every
image's values and ``DIR/equivalents_bland_altman.png`` the figure. Each ICC comes with
its 95 % interval, a BCa bootstrap over the photographs (``scipy.stats.bootstrap``,
paired, seeded): with 32 photographs it says how far apart two models' ICCs must be to
differ. ``--from`` recomputes the tables and the figure from a saved ``equivalents.json``
without measuring again, and with ``--against`` another saved run takes the manual maps'
place (how far the sensor's measures are from the CPU's, say). ``--split train``
measures the training splits instead, which the artery/vein model learned from: what
the same code gives where the model's maps are closer to the manual ones.

A ``FILE.onnx`` (``qsegment quantize``'s int8 file for the sensor) is run as the camera
runs it, in ROI tiles (:class:`qsegment.deploy.tiling.SensorTiles`, as ``qsegment
evaluate FILE.onnx --task av`` scores it), at the scale and cut of its float model's
calibration: the measures the sensor's maps would give.

``--threshold`` cuts the model's vessel map at a fixed probability instead of its own
cut per photograph (``auto``, the expected-Dice cut): how much of the calibres'
disagreement is the cut's.

A last table groups the photographs (HRF-AV's healthy, diabetic-retinopathy and glaucoma
eyes, LES-AV): the mean ratio of the model's values to the reference's in each group, and
each ICC once those offsets are divided out, an oracle that tells an offset per group (an
annotation convention, a kind of eye) from disagreement photograph by photograph.

``--decompose`` says which half of the model's map the disagreement comes from: two more
rows measure hybrids against the same manual values, the model's vessels with the manual
classes (each vessel pixel takes the class of the nearest manual artery or vein pixel:
the calibre's share) and the manual vessels with the model's classes (the
classification's share).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MEASURES = ("crae", "crve", "avr")
BOOTSTRAP = 4000  # resamples of the photographs for each ICC's interval
HYBRIDS = {"model_vessels_manual_classes": "model's vessels, manual classes",
           "manual_vessels_model_classes": "manual vessels, model's classes"}


def classes_on(vessels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``vessels`` (bool) classed by the nearest artery or vein pixel of ``classes``."""
    from scipy import ndimage

    from qsegment.biomarkers.equivalents import ARTERY, VEIN

    known = (classes == ARTERY) | (classes == VEIN)
    if not known.any():
        return np.zeros(vessels.shape, np.uint8)
    _, (rows, cols) = ndimage.distance_transform_edt(~known, return_indices=True)
    return np.where(vessels, classes[rows, cols], 0).astype(np.uint8)


def agreement(model: np.ndarray, manual: np.ndarray) -> dict:
    """ICC(A,1) with its 95 % bootstrap interval, MARD, r, bias and limits of agreement of
    ``model`` against ``manual``."""
    from scipy import stats

    from qsegment.biomarkers.report import _compare, icc_a1

    ok = np.isfinite(model) & np.isfinite(manual)
    diff = model[ok] - manual[ok]
    interval = stats.bootstrap(
        (model[ok], manual[ok]), lambda a, b: icc_a1(np.column_stack([a, b])),
        paired=True, vectorized=False, n_resamples=BOOTSTRAP, method="BCa",
        rng=np.random.default_rng(0)).confidence_interval
    return {**_compare(model, manual), "icc_95": [float(interval.low), float(interval.high)],
            "images": int(ok.sum()), "bias": float(diff.mean()),
            "loa": float(1.96 * diff.std(ddof=1)), "model_mean": float(model[ok].mean()),
            "manual_mean": float(manual[ok].mean())}


def against(images: list[dict], reference: list[dict]) -> list[dict]:
    """``images`` with their manual values replaced by the model values of the same
    photographs in ``reference`` (another saved run), on the photographs both hold."""
    model_of = {(r["dataset"], r["image"]): r["model"] for r in reference}
    return [{"dataset": r["dataset"], "image": r["image"], "model": r["model"],
             "manual": model_of[r["dataset"], r["image"]]}
            for r in images if (r["dataset"], r["image"]) in model_of]


def group_of(row: dict) -> str:
    """A photograph's group: HRF-AV's three kinds of eye (names ending ``_h``, ``_dr``,
    ``_g``: healthy, diabetic retinopathy, glaucoma), any other dataset whole."""
    kind = row["image"].rpartition("_")[2]
    return f"{row['dataset']} {kind}" if row["dataset"] == "hrf-av" else row["dataset"]


def by_group(images: list[dict], column: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per group (:func:`group_of`), the photographs and the mean ratio of the model's
    value to the reference's, per measure; and each measure's ICC(A,1) once every model
    value is divided by its group's mean ratio. That ICC is an oracle (it uses the
    reference): how much of the disagreement is one offset per group of photographs (an
    annotator's or a kind of eye's convention) rather than photograph by photograph."""
    groups = np.array([group_of(r) for r in images])
    ratio = {m: column["model"][m] / column["manual"][m] for m in MEASURES}
    table, scaled = {}, {m: column["model"][m].copy() for m in MEASURES}
    for group in sorted(set(groups)):
        chosen = groups == group
        table[group] = {"images": int(chosen.sum())}
        for m in MEASURES:
            mean = float(np.nanmean(ratio[m][chosen]))
            table[group][m] = mean
            scaled[m][chosen] /= mean
    from qsegment.biomarkers.report import icc_a1

    without = {}
    for m in MEASURES:
        ok = np.isfinite(scaled[m]) & np.isfinite(column["manual"][m])
        without[m] = float(icc_a1(np.column_stack([scaled[m][ok], column["manual"][m][ok]])))
    return {"groups": table, "icc_without_group_offsets": without}


def summarise(images: list[dict], out: Path, reference: str = "manual"
              ) -> tuple[dict, dict, dict]:
    """The agreement of each measure (and of each hybrid the images hold, and by group
    of photographs: :func:`by_group`), printed as the docs' tables, and the Bland-Altman
    figure in ``out``; ``reference`` names what the images' ``manual`` values are."""
    sources = ("model", "manual", *(s for s in HYBRIDS if s in images[0]))
    column = {s: {m: np.array([r[s][m] for r in images], dtype=float) for m in MEASURES}
              for s in sources}
    summary = {m: agreement(column["model"][m], column["manual"][m]) for m in MEASURES}
    hybrids = {s: {m: agreement(column[s][m], column["manual"][m]) for m in MEASURES}
               for s in HYBRIDS if s in column}
    print(f"\n| measure | images | ICC(A,1) [95 % interval] | MARD | Pearson r | {reference} "
          f"mean | model mean | bias (model - {reference}) | 95 % limits |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for measure, s in summary.items():
        print(f"| {measure.upper()} | {s['images']} | {_icc(s)} | {s['mard']:.1%} | "
              f"{s['r']:.3f} | {s['manual_mean']:.3g} | {s['model_mean']:.3g} | "
              f"{s['bias']:+.3g} | ±{s['loa']:.3g} |")
    if hybrids:
        print("\n| against the manual map: ICC(A,1) [95 % interval] of | " + " | ".join(
            m.upper() for m in MEASURES) + " |\n|---|" + "---:|" * len(MEASURES))
        for label, rows in (("the model's map", summary),
                            *((HYBRIDS[s], hybrids[s]) for s in hybrids)):
            print(f"| {label} | " + " | ".join(_icc(rows[m]) for m in MEASURES) + " |")
    groups = by_group(images, column)
    print("\n| photographs | images | " + " | ".join(
        f"{m.upper()}: model / {reference}" for m in MEASURES) + " |\n|---|---:|"
        + "---:|" * len(MEASURES))
    for group, row in groups["groups"].items():
        print(f"| {group} | {row['images']} | " + " | ".join(f"{row[m]:.3f}" for m in MEASURES)
              + " |")
    print("| ICC(A,1) with each group's mean ratio divided out (an oracle) | | " + " | ".join(
        f"{groups['icc_without_group_offsets'][m]:.3f}" for m in MEASURES) + " |")
    _bland_altman(out / "equivalents_bland_altman.png", column, reference)
    return summary, hybrids, groups


def _icc(row: dict) -> str:
    low, high = row["icc_95"]
    return f"{row['icc']:.3f} [{low:.3f}, {high:.3f}]"


def _bland_altman(path: Path, column: dict[str, dict[str, np.ndarray]],
                  reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    for ax, measure in zip(axes, MEASURES, strict=True):
        model, manual = column["model"][measure], column["manual"][measure]
        ok = np.isfinite(model) & np.isfinite(manual)
        mean, diff = (model[ok] + manual[ok]) / 2, model[ok] - manual[ok]
        bias, spread = diff.mean(), 1.96 * diff.std(ddof=1)
        ax.scatter(mean, diff, s=14)
        for level, style in ((bias, "-"), (bias - spread, "--"), (bias + spread, "--")):
            ax.axhline(level, color="gray", linestyle=style, linewidth=1)
        unit = "" if measure == "avr" else " (px)"
        ax.set(title=measure.upper(), xlabel=f"mean of model and {reference}{unit}",
               ylabel=f"model - {reference}{unit}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def photographs(split: str, limit: int | None = None
                ) -> Iterator[tuple[str, str, np.ndarray, np.ndarray | None, np.ndarray]]:
    """(dataset, image name, RGB photograph, FOV mask or None, manual artery/vein classes)
    of HRF-AV's and LES-AV's ``split`` (``test`` or ``train``), at most ``limit`` per
    dataset."""
    from PIL import Image

    from qsegment.datasets import load_classes, load_label, open_dataset

    for name in ("hrf-av", "les-av"):
        dataset = open_dataset(dataset=name)
        names = dataset.default_split.val if split == "test" else dataset.default_split.train
        for image_name in names[:limit]:
            photo = np.asarray(Image.open(dataset.image_path(image_name)).convert("RGB"))
            fov_path = dataset.fov_path(image_name)
            fov = load_label(fov_path, photo.shape[:2], what="FOV mask") if fov_path else None
            yield (name, image_name, photo, fov,
                   load_classes(dataset.label_path(image_name, 1), photo.shape[:2]))


def main() -> None:
    from qsegment import Segmenter
    from qsegment.biomarkers.disc import locate_disc
    from qsegment.biomarkers.equivalents import measure_artery_vein

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an artery/vein model: run folder or weights")
    parser.add_argument("--from", dest="saved", metavar="JSON", type=Path,
                        help="recompute the tables and the figure from this "
                        "equivalents.json instead of measuring (written to --out)")
    parser.add_argument("--against", metavar="JSON", type=Path,
                        help="with --from: its model's measures against this saved "
                        "run's model measures instead of the manual ones, on the "
                        "photographs both measured (e.g. the sensor's file against the "
                        "CPU's int8)")
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
    parser.add_argument("--decompose", action="store_true",
                        help="also measure the two hybrid maps (module docstring)")
    parser.add_argument("--threshold", default="auto",
                        help="the vessel cut: auto (per photograph), card or a probability")
    args = parser.parse_args()
    if (args.model is None) == (args.saved is None):
        parser.error("give an artery/vein model to measure, or --from a saved equivalents.json")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.against and not args.saved:
        parser.error("--against compares two saved runs: give --from too")
    if args.saved:
        saved = json.loads(args.saved.read_text())
        if args.against:
            saved = {"against": str(args.against), "images": against(
                saved["images"], json.loads(args.against.read_text())["images"])}
        saved["summary"], saved["hybrids"], saved["groups"] = summarise(
            saved["images"], out, "reference" if args.against else "manual")
        _write(out, saved)
        return
    options = {"artery_vein": True, "tta": args.tta, "segment_vote": args.segment_vote,
               "threshold": args.threshold}
    segmenter = Segmenter.from_pretrained(args.model, runtime=args.runtime, **options)
    images: list[dict] = []
    start = time.perf_counter()
    for name, image_name, photo, fov, manual in photographs(args.split, args.limit):
        prediction = segmenter.predict(photo, image_name)
        vessels = prediction.mask if args.disc_from == "model" else manual > 0
        disc = locate_disc(photo, fov, vessels=vessels)
        row = {"dataset": name, "image": image_name, "disc": [disc.row, disc.col,
                                                              disc.diameter]}
        maps = {"model": prediction.classes, "manual": manual}
        if args.decompose:
            maps["model_vessels_manual_classes"] = classes_on(prediction.mask, manual)
            maps["manual_vessels_model_classes"] = classes_on(manual > 0,
                                                              prediction.classes)
        for source, classes in maps.items():
            analysis = measure_artery_vein(classes, disc, fov)
            row[source] = {k: analysis.values[k] for k in
                           (*MEASURES, "zone_b_arteries", "zone_b_veins")}
            row[f"{source}_reasons"] = {k: v for k, v in analysis.reasons.items()
                                        if k in MEASURES}
        images.append(row)
        print(f"{name} {image_name}: disc {disc.diameter:.0f} px, " + ", ".join(
            f"{m} {row['model'][m]:.3g}/{row['manual'][m]:.3g}" for m in MEASURES)
            + f" (model/manual, {time.perf_counter() - start:.1f} s)", flush=True)
        start = time.perf_counter()  # the next photograph's time includes its reading
    summary, hybrids, groups = summarise(images, out)
    _write(out, {"model": str(args.model), "runtime": segmenter.runtime, "split": args.split,
                 "tta": args.tta, "segment_vote": args.segment_vote,
                 "disc_from": args.disc_from, "threshold": args.threshold,
                 "summary": summary, "hybrids": hybrids, "groups": groups,
                 "images": images})


def _write(out: Path, result: dict) -> None:
    (out / "equivalents.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out / 'equivalents.json'} and equivalents_bland_altman.png")


if __name__ == "__main__":
    main()
