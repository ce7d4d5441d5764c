"""Throughput of `qsegment batch` on Ray against `qsegment predict`, in one run.

The 28 CHASE_DB1 photographs, linked ``--repeats`` times under new names (224 images
by default), are segmented by

1. `qsegment predict` (one process: the int8 interpreter on every core, two threads
   reading and writing files),
2. `qsegment batch --workers 1` (one Ray worker on one core),
3. `qsegment batch --workers 2` (two workers, one core each),
4. `qsegment batch --workers 1 --cpus-per-worker 2` (one worker on both cores: the
   same cores as predict, so the ratio to it is the cost of Ray and of a worker that
   reads, segments and writes in turn),

and, in this process, `Segmenter.predict` on the decoded photographs with the
interpreter on 1 and on 2 threads (what separates a worker from predict).

With ``--models A,B`` every command runs with each model, one model after the other, and
the last table gives A's speed-up over B per command: whether a faster network speeds
the Ray batch up as much as `qsegment predict` (issue #35).

Each command is a fresh process that starts (and stops) its own local Ray. Every
command also runs on the 28 photographs once; the difference of the two wall times
over the difference in images is the steady per-image time, without the start-up
(Ray, workers, model), which a million-image job pays once. The batch masks are
checked byte for byte against predict's.

    python benchmarks/bench_batch.py [--repeats 8] [--models A,B] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench_cli import QSEGMENT, run

COMMANDS = {
    "predict": ["predict"],
    "batch, 1 worker": ["batch", "--workers", "1"],
    "batch, 2 workers": ["batch", "--workers", "2"],
    "batch, 1 worker x 2 CPUs": ["batch", "--workers", "1", "--cpus-per-worker", "2"],
}


def linked(folder: Path, photos: list[Path], repeats: int) -> Path:
    """``folder`` holding ``repeats`` links to each photograph, named apart."""
    folder.mkdir()
    for r in range(repeats):
        for photo in photos:
            (folder / f"{photo.stem}-{r:02d}{photo.suffix}").symlink_to(photo)
    return folder


def interpreter_threads(photos: list[Path], model: str) -> dict[int, float]:
    """Seconds per image of `Segmenter.predict` on decoded photographs, in this process,
    with the int8 interpreter on 1 and on 2 threads: a worker's and predict's."""
    from qsegment import Segmenter
    from qsegment.images import read_rgb

    images = [read_rgb(p) for p in photos]
    seconds = {}
    for threads in (1, 2):
        segmenter = Segmenter.from_pretrained(model, threads=threads)
        segmenter.predict(images[0])  # the interpreter's set-up
        start = time.perf_counter()
        for image in images:
            segmenter.predict(image)
        seconds[threads] = (time.perf_counter() - start) / len(images)
    return seconds


def time_commands(sets: dict[str, Path], sizes: dict[str, int], model: str, tmp: Path
                  ) -> dict[str, dict[str, float]]:
    """Every command of :data:`COMMANDS` with ``model`` on both sets: wall times and the
    steady rate; each batch's masks checked against predict's."""
    results = {}
    for label, command in COMMANDS.items():
        walls = {}
        for size, folder in sets.items():
            out = tmp / f"{model}-{label}-{size}".replace(" ", "_").replace(",", "")
            walls[size], _ = run([*QSEGMENT, command[0], str(folder), "-o", str(out),
                                  *command[1:], "--model", model])
            if label != "predict":
                reference = tmp / f"{model}-predict-{size}"
                assert all((reference / m.name).read_bytes() == m.read_bytes()
                           for m in out.glob("*_mask.png")), f"{label}: masks differ"
        steady = (walls["large"] - walls["small"]) / (sizes["large"] - sizes["small"])
        results[label] = {"wall_small_s": walls["small"], "wall_large_s": walls["large"],
                          "images_per_s": sizes["large"] / walls["large"],
                          "steady_images_per_s": 1 / steady, "steady_s_per_image": steady}
        print(f"{model}, {label}: {results[label]}", file=sys.stderr)
    return results


def print_model(model: str, results: dict, threads: dict[int, float], sizes: dict[str, int],
                repeats: int) -> dict[str, float]:
    """One model's table and ratios (returned)."""
    one, two = results["batch, 1 worker"], results["batch, 2 workers"]
    predict, whole = results["predict"], results["batch, 1 worker x 2 CPUs"]
    ratios = {
        "two_over_one_workers": two["steady_images_per_s"] / one["steady_images_per_s"],
        "one_worker_over_predict": one["steady_s_per_image"] / predict["steady_s_per_image"],
        "one_worker_2cpu_over_predict": (whole["steady_s_per_image"]
                                         / predict["steady_s_per_image"]),
    }
    print(f"\n{model}: {sizes['large']} images (the 28 CHASE_DB1 photographs x {repeats}); "
          f"steady = ({sizes['large']} - {sizes['small']}) images over the wall-time "
          "difference of the two sets")
    print("| command | wall, 28 / large set (s) | images/s, whole command | "
          "images/s, steady | ms per image, steady |\n|---|---:|---:|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r['wall_small_s']:.1f} / {r['wall_large_s']:.1f} | "
              f"{r['images_per_s']:.2f} | {r['steady_images_per_s']:.2f} | "
              f"{r['steady_s_per_image'] * 1000:.0f} |")
    print(f"2 workers / 1 worker (steady throughput): {ratios['two_over_one_workers']:.2f}x "
          "(target >= 1.7x)")
    print(f"1 worker / predict (steady time per image): {ratios['one_worker_over_predict']:.2f}x "
          "(target <= 1.3x)")
    print(f"1 worker on 2 CPUs / predict (same cores): "
          f"{ratios['one_worker_2cpu_over_predict']:.2f}x")
    print(f"Segmenter.predict on decoded images, interpreter on 1 / 2 threads: "
          f"{threads[1] * 1000:.0f} / {threads[2] * 1000:.0f} ms = "
          f"{threads[1] / threads[2]:.2f}x")
    return ratios


def main() -> None:
    from qsegment.datasets import default_data_dir
    from qsegment.pretrained import DEFAULT_MODEL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8,
                        help="copies of the 28 photographs in the large set (8: 224 images)")
    parser.add_argument("--models", default=DEFAULT_MODEL,
                        help=f"comma-separated; with two, the first's speed-up over the "
                        f"second per command ({DEFAULT_MODEL})")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    models = args.models.split(",")
    photos = sorted(default_data_dir().glob("Image_*[LR].jpg"))
    load_before = os.getloadavg()[0]  # another job on the cores skews every ratio
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-batch-") as tmp:
        tmp = Path(tmp)
        sets = {"small": linked(tmp / "small", photos, 1),
                "large": linked(tmp / "large", photos, args.repeats)}
        sizes = {"small": len(photos), "large": len(photos) * args.repeats}
        results = {m: time_commands(sets, sizes, m, tmp) for m in models}
    threads = {m: interpreter_threads(photos, m) for m in models}
    load = {"before": load_before, "after": os.getloadavg()[0]}
    print(f"load average (1 min) before / after: {load['before']:.2f} / {load['after']:.2f}")
    ratios = {m: print_model(m, results[m], threads[m], sizes, args.repeats) for m in models}
    if len(models) == 2:
        new, old = models
        print(f"\n| command (same cores for both) | steady images/s, {new} / {old} | "
              "speed-up |\n|---|---:|---:|")
        for label in COMMANDS:
            fast, slow = (results[m][label]["steady_images_per_s"] for m in models)
            print(f"| {label} | {fast:.2f} / {slow:.2f} | {fast / slow:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratios": ratios, "load": load,
                                               "segmenter_s_per_image": threads},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
