"""The optic disc locator (issue #34) on IDRiD-OD, and how often it finds a disc on
HRF-AV, LES-AV and CHASE_DB1.

    python benchmarks/bench_disc.py [--sheet DIR]

IDRiD-OD's reference disc is the largest non-black blob of its masked photograph. Its
first 40 photographs chose the locator's constants; the other 14 are held out. Every
photograph is located as ``predict --biomarkers`` does: with the default model's vessel
map. For each
split: the share of centres within 0.25 reference disc diameters, the median centre
error, the median found/reference diameter ratio and the share within 20 %, and the
locator's median time per photograph. "No disc" photographs are the half of each IDRiD
photograph away from its disc: how often the locator wrongly finds one there. ``--sheet``
writes contact sheets of the discs found on the other datasets, to check by eye. Last,
what the disc adds to ``predict --biomarkers`` on CHASE_DB1's 8 validation images:
the locator's time against the rest of the image's ``predict --biomarkers`` work
(``Segmenter.predict`` and ``measure_prediction``, whose disc is subtracted), same run.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

IDRID = Path(__file__).resolve().parents[1] / "../shared/data/IDRiD-OD"


def reference(name: str) -> tuple[float, float, float]:
    masked = np.asarray(Image.open(IDRID / "od_masks" / f"{name}_OD.jpg").convert("RGB"))
    labels, _ = ndimage.label(masked.max(axis=2) > 20)
    disc = ndimage.binary_fill_holes(labels == np.bincount(labels.ravel())[1:].argmax() + 1)
    row, col = ndimage.center_of_mass(disc)
    return float(row), float(col), 2 * math.sqrt(disc.sum() / math.pi)


def main() -> None:
    from qsegment import Segmenter
    from qsegment.biomarkers.disc import locate_disc
    from qsegment.datasets import open_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", help="write contact sheets of the other datasets here")
    args = parser.parse_args()
    segmenter = Segmenter.from_pretrained()
    names = sorted(p.stem for p in (IDRID / "images").glob("*.jpg"))
    print("| IDRiD-OD split | images | centre within 0.25 DD | median error (DD) | "
          "diameter ratio (median) | within 20 % | no disc in the other half: wrongly "
          "found | ms per photograph |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for split, chosen in (("1-40 (chose the constants)", names[:40]),
                          ("41-54 (held out)", names[40:])):
        errors, ratios, times, wrong = [], [], [], 0
        for name in chosen:
            photo = np.asarray(Image.open(IDRID / "images" / f"{name}.jpg").convert("RGB"))
            row, col, diameter = reference(name)
            vessels = segmenter.predict(photo).mask
            start = time.perf_counter()
            disc = locate_disc(photo, vessels=vessels)
            times.append(time.perf_counter() - start)
            errors.append(math.hypot(disc.row - row, disc.col - col) / diameter
                          if disc.found else math.inf)
            ratios.append(disc.diameter / diameter if disc.found else math.nan)
            half = photo[:, photo.shape[1] // 2:] if col < photo.shape[1] / 2 \
                else photo[:, :photo.shape[1] // 2]
            half = np.ascontiguousarray(half)
            wrong += locate_disc(half, vessels=segmenter.predict(half).mask).found
        e, r = np.array(errors), np.array(ratios)
        print(f"| {split} | {len(chosen)} | {np.mean(e <= 0.25):.1%} | {np.median(e):.3f} | "
              f"{np.nanmedian(r):.3f} | {np.mean(np.abs(r - 1) < 0.2):.1%} | "
              f"{wrong}/{len(chosen)} | {1000 * np.median(times):.0f} |")
    print("\n| dataset | photographs | disc found | ms per photograph (median) |\n"
          "|---|---:|---:|---:|")
    for dataset_name in ("hrf-av", "les-av", "chasedb1"):
        dataset = open_dataset(dataset=dataset_name)
        tiles, found, times = [], 0, []
        for name in dataset.names():
            photo = np.asarray(Image.open(dataset.image_path(name)).convert("RGB"))
            vessels = segmenter.predict(photo).mask
            start = time.perf_counter()
            disc = locate_disc(photo, vessels=vessels)
            times.append(time.perf_counter() - start)
            found += disc.found
            if args.sheet:
                shown = Image.fromarray(photo)
                draw = ImageDraw.Draw(shown)
                width = max(2, photo.shape[1] // 250)
                for radius, colour in ((0.5, "yellow"), (1.0, "cyan"), (1.5, "cyan")):
                    if disc.found:
                        r = radius * disc.diameter
                        draw.ellipse([disc.col - r, disc.row - r, disc.col + r, disc.row + r],
                                     outline=colour, width=width)
                shown.thumbnail((240, 240))
                tiles.append(shown)
        print(f"| {dataset_name} | {len(times)} | {found} | {1000 * np.median(times):.0f} |")
        if args.sheet:
            columns = 10
            sheet = Image.new("RGB", (240 * columns, 240 * math.ceil(len(tiles) / columns)))
            for i, tile in enumerate(tiles):
                sheet.paste(tile, (240 * (i % columns), 240 * (i // columns)))
            Path(args.sheet).mkdir(parents=True, exist_ok=True)
            sheet.save(Path(args.sheet) / f"discs_{dataset_name}.jpg", quality=80)
    predict_share()


def predict_share() -> None:
    """The locator's time over the rest of predict --biomarkers' per-image time."""
    from qsegment import Segmenter
    from qsegment.biomarkers.disc import locate_disc
    from qsegment.biomarkers.report import measure_prediction
    from qsegment.datasets import fov_mask, open_dataset

    chase = open_dataset(dataset="chasedb1")
    segmenter = Segmenter.from_pretrained()
    disc_s, rest_s = [], []
    for name in chase.default_split.val:
        photo = np.asarray(Image.open(chase.image_path(name)).convert("RGB"))
        segmenter.predict(photo)  # warm
        start = time.perf_counter()
        prediction = segmenter.predict(photo)
        measure_prediction(chase.image_path(name), name, photo, prediction, segmenter)
        whole = time.perf_counter() - start
        start = time.perf_counter()
        locate_disc(photo, fov_mask(photo), prediction.mask)
        disc_s.append(time.perf_counter() - start)
        rest_s.append(whole - disc_s[-1])
    disc, rest = float(np.median(disc_s)), float(np.median(rest_s))
    print(f"\npredict --biomarkers on CHASE_DB1 (8 validation images, medians): the disc "
          f"{1000 * disc:.0f} ms, the rest {1000 * rest:.0f} ms: the disc adds "
          f"{disc / rest:.1%}")


if __name__ == "__main__":
    main()
