"""Three readers of the zone-B calibres: the manual map, the model's map and the
photograph itself, at the same places (issue #34).

    python benchmarks/bench_widths.py [MODEL] [--split train|test] [--runtime R]
        [--limit N] [--out DIR]

CRAE and CRVE compare the model's vessel widths with the manual map's, so where the two
part a third reader is needed to say which of them is off: the photograph. Around the
optic disc located with the manual vessel map, each of the six widest zone-B arteries and
veins of the manual map (:func:`qsegment.biomarkers.equivalents.zone_vessels`) is cut
across every :data:`EVERY` centreline pixels, along the centreline's normal, and read
three ways at each cut: the width of the manual mask, the width of the model's mask
(``qsegment predict --av``'s map of the photograph) and the full width at half depth of
the vessel's dip in the photograph's green channel (:func:`half_depth_width`, smoothed by
a Gaussian of :data:`SMOOTH` px). Each vessel gets each reader's median over its cuts.
Printed per group of photographs (HRF-AV's healthy, diabetic-retinopathy and glaucoma
eyes, LES-AV: as ``bench_equivalents.py`` groups them) and class: the mean widths and the
median ratios of the vessels' widths. ``DIR/widths.json`` holds every vessel's and
``DIR/widths.png`` draws the ratios per group (:func:`plot`).

The half-depth width is a reader of its own, not a better truth: it reads a blurred edge
wider than an annotator draws it, and a vessel with a strong central reflex is left out
where the reflex rises above half depth. What it gives is a yardstick that is the same
for every group of photographs: where the model's widths keep one ratio to it in every
group and the manual widths do not, the manual maps' convention differs between those
groups.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

EVERY = 3  # centreline pixels between two cuts across a vessel
STEP = 0.25  # px between two samples along a cut
SMOOTH = 1.0  # px, the Gaussian the green channel is smoothed with before it is read
MIN_DEPTH = 3.0  # grey levels: a shallower dip is no vessel to read
READERS = ("manual", "model", "photograph")
RATIOS = (("model", "manual"), ("photograph", "manual"), ("photograph", "model"))
EYES = {"h": "healthy", "dr": "DR", "g": "glaucoma"}  # HRF-AV's groups, by name ending


def normals(coords: np.ndarray) -> np.ndarray:
    """Unit normals (row, col) of a centreline ``coords`` (N, 2), from its local direction."""
    direction = np.gradient(coords.astype(float), axis=0)
    direction /= np.maximum(np.hypot(*direction.T), 1e-9)[:, None]
    return np.stack([-direction[:, 1], direction[:, 0]], axis=1)


def run_width(inside: np.ndarray) -> float:
    """The length (px) of the run of True samples through the middle of a cut sampled every
    :data:`STEP` px; NaN where the middle is not inside or the run reaches an end of the
    cut (a width the cut cannot hold)."""
    middle = len(inside) // 2
    if not inside[middle]:
        return float("nan")
    outside = np.flatnonzero(~inside)
    left, right = outside[outside < middle], outside[outside > middle]
    if not left.size or not right.size:
        return float("nan")
    return float(right[0] - left[-1] - 1) * STEP


def half_depth_width(profile: np.ndarray) -> float:
    """The full width at half depth (px) of a dark vessel's dip in a grey-level
    ``profile`` sampled every :data:`STEP` px across it, centred on the centreline: the
    background is the median of the outer sixths, the floor the darkest sample of the
    middle quarter. NaN where the dip is shallower than :data:`MIN_DEPTH`."""
    n = len(profile)
    background = float(np.median(np.r_[profile[:n // 6], profile[-(n // 6):]]))
    floor = float(profile[n // 2 - n // 8:n // 2 + n // 8 + 1].min())
    if background - floor < MIN_DEPTH:
        return float("nan")
    return run_width(profile < (background + floor) / 2)


def vessel_widths(coords: np.ndarray, masks: list[np.ndarray], green: np.ndarray,
                  reach: float) -> np.ndarray:
    """Each reader's median width (px) of the vessel whose centreline is ``coords``: the
    masks' (float32 0/1, in order: converted once per photograph, not per vessel) and
    the smoothed ``green`` channel's half-depth width, on cuts :data:`EVERY` pixels apart
    reaching ``reach`` px to each side."""
    from scipy import ndimage

    offsets = np.arange(-reach, reach + STEP / 2, STEP)
    points, across = coords[::EVERY], normals(coords)[::EVERY]
    samples = (points[:, None, :] + offsets[None, :, None] * across[:, None, :]).reshape(-1, 2).T
    shape = (len(points), len(offsets))
    widths = [[run_width(cut) for cut in
               (ndimage.map_coordinates(mask, samples, order=1) >= 0.5)
               .reshape(shape)] for mask in masks]
    profiles = ndimage.map_coordinates(green, samples, order=1).reshape(shape)
    widths.append([half_depth_width(cut) for cut in profiles])
    with np.errstate(all="ignore"):
        return np.array([np.nanmedian(w) if np.isfinite(w).any() else np.nan for w in widths])


def read_by_all(vessel: dict) -> bool:
    """Whether every reader gave the vessel a width (the table and the figure keep these)."""
    return bool(np.isfinite([vessel[r] for r in READERS]).all())


def summarise(vessels: list[dict]) -> dict:
    """Per group and class, the vessels read by all three readers, their mean widths and
    the median ratios of one reader's width to another's (:data:`RATIOS`)."""
    kept: dict[str, list[dict]] = defaultdict(list)
    for v in filter(read_by_all, vessels):
        kept[f"{v['group']} {v['kind']}"].append(v)
    return {key: {"vessels": len(kept[key]),
                  **{f"{r}_mean": float(np.mean([v[r] for v in kept[key]])) for r in READERS},
                  **{f"{a}/{b}": float(np.median([v[a] / v[b] for v in kept[key]]))
                     for a, b in RATIOS}}
            for key in sorted(kept)}


def print_table(table: dict) -> None:
    print("| group, class | vessels | " + " | ".join(f"{r} (px)" for r in READERS) + " | "
          + " | ".join(f"{a} / {b}" for a, b in RATIOS) + " |")
    print("|---|---:|" + "---:|" * (len(READERS) + len(RATIOS)))
    for key, row in table.items():
        print(f"| {key} | {row['vessels']} | "
              + " | ".join(f"{row[f'{r}_mean']:.2f}" for r in READERS) + " | "
              + " | ".join(f"{row[f'{a}/{b}']:.3f}" for a, b in RATIOS) + " |")


def plot(path: Path, vessels: list[dict], title: str) -> None:
    """Per group of photographs and class, the vessels' photograph/manual and
    photograph/model width ratios as box plots: a reader whose ratio moves from one group
    to the next is the one that changes its convention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({v["group"] for v in vessels})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    for ax, kind, name in zip(axes, ("artery", "vein"), ("Arteries", "Veins"), strict=True):
        for offset, (reader, colour) in zip((-0.18, 0.18), (("manual", "tab:orange"),
                                                           ("model", "tab:blue")), strict=True):
            ratios = [[v["photograph"] / v[reader] for v in filter(read_by_all, vessels)
                       if v["group"] == g and v["kind"] == kind] for g in groups]
            ax.boxplot(ratios, positions=np.arange(len(groups)) + offset, widths=0.3,
                       patch_artist=True, boxprops={"facecolor": colour, "alpha": 0.6},
                       medianprops={"color": "black"}, showfliers=False)
            ax.plot([], [], color=colour, linewidth=6, alpha=0.6, label=f"photograph / {reader}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xticks(range(len(groups)), [
            f"{dataset.upper()}\n{EYES[eyes]}" if eyes else dataset.upper()
            for dataset, _, eyes in (g.partition(" ") for g in groups)])
        ax.set(title=f"{name} in zone B", ylabel="width ratio (per vessel)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from bench_equivalents import group_of, photographs
    from scipy import ndimage

    from qsegment import Segmenter
    from qsegment.biomarkers.disc import locate_disc
    from qsegment.biomarkers.equivalents import WIDEST, zone_vessels
    from qsegment.pretrained import AV_MODEL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=AV_MODEL, help="an artery/vein model")
    parser.add_argument("--split", choices=("test", "train"), default="train")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--limit", type=int, help="at most this many images per dataset")
    parser.add_argument("--out", default="runs/widths", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter.from_pretrained(args.model, runtime=args.runtime, artery_vein=True)
    vessels: list[dict] = []
    start = time.perf_counter()
    for name, image_name, photo, fov, manual in photographs(args.split, args.limit):
        disc = locate_disc(photo, fov, vessels=manual > 0)
        model = segmenter.predict(photo, image_name).mask
        green = ndimage.gaussian_filter(photo[..., 1].astype(np.float32), SMOOTH)
        group = group_of({"dataset": name, "image": image_name})
        found = zone_vessels(manual, disc, fov) if disc.found else []
        masks = [(manual > 0).astype(np.float32), model.astype(np.float32)]
        read = 0
        for kind in ("artery", "vein"):
            for v in [v for v in found if v.kind == kind][:WIDEST]:
                widths = vessel_widths(v.coords, masks, green,
                                       max(8.0, 2.5 * v.calibre))
                vessels.append({"dataset": name, "image": image_name, "group": group,
                                "kind": kind, **dict(zip(READERS, map(float, widths),
                                                         strict=True))})
                read += 1
        print(f"{name} {image_name}: {read} vessels ({time.perf_counter() - start:.1f} s)",
              flush=True)
        start = time.perf_counter()  # the next photograph's time includes its reading
    table = summarise(vessels)
    print_table(table)
    (out / "widths.json").write_text(json.dumps(
        {"model": args.model, "runtime": segmenter.runtime, "split": args.split,
         "summary": table, "vessels": vessels}, indent=1) + "\n")
    what = "test" if args.split == "test" else "training"
    plot(out / "widths.png", vessels, f"{args.model}, HRF-AV's and LES-AV's {what} "
         "photographs:\nthe half-depth width in the photograph over each map's width")
    print(f"wrote {out / 'widths.json'} and widths.png")


if __name__ == "__main__":
    main()
