"""What a user of `qsegment predict` waits for, against what the network takes, in one run.

1. One CHASE_DB1 image from a cold process: wall time and peak RSS of the command.
2. The folder of 28 CHASE_DB1 images: the command's time per image after start-up
   (folder run minus one-image run, over 27), against `Segmenter.predict` on the same
   images already decoded to uint8 arrays (in this process).
3. A 3504x2336 photograph (a CHASE image resized up, written as JPEG at quality 95, the
   format of the CHASE images it is compared with, and as PNG beside): wall and peak RSS
   of the command, with ``--scale none`` (segmented at that size, in tiles) and with
   the default ``--scale auto`` (brought to CHASE's scale first); the tiled time over
   (pixel ratio x the CHASE per-image time of step 2); and, in this process, the first
   predict of that new size against the second (medians of three), by a Segmenter that
   has segmented a CHASE image before, and beside it by a fresh one (whose first predict
   sets the interpreter up).

    python benchmarks/bench_cli.py [--runtime openvino] [--json out.json]

The targets printed are issue #35's.

Each command runs as a child process whose peak RSS is its own (``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

QSEGMENT = [sys.executable, "-m", "qsegment"]


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command run to its end; its stderr goes to a
    file (progress bars would fill a pipe that is read only at the end)."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(args)} failed: {stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    from qsegment import Segmenter
    from qsegment.datasets import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="cold one-image runs (3)")
    parser.add_argument("--runtime", default="auto", help="what every command and "
                        "Segmenter runs on (auto: the default, the fastest for this CPU)")
    args = parser.parse_args()
    runtime = ["--runtime", args.runtime]
    data = default_data_dir()
    photos = sorted(data.glob("Image_*[LR].jpg"))
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-cli-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "chase"
        folder.mkdir()
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
        one = [run([*QSEGMENT, "predict", str(photos[0]), "-o", str(tmp / f"one{i}"), *runtime])
               for i in range(args.repeats)]
        folder_wall, folder_rss = run([*QSEGMENT, "predict", str(folder), "-o",
                                       str(tmp / "folder"), *runtime])
        big_path, png_path = tmp / "big.jpg", tmp / "big.png"
        rgb = np.asarray(Image.open(photos[10]).convert("RGB"))
        resized = Image.fromarray(rgb).resize((3504, 2336), Image.BILINEAR)
        resized.save(big_path, quality=95)
        resized.save(png_path)
        big_wall, big_rss = run([*QSEGMENT, "predict", str(big_path), "-o", str(tmp / "big"),
                                 "--scale", "none", *runtime])
        png_wall, png_rss = run([*QSEGMENT, "predict", str(png_path), "-o", str(tmp / "png"),
                                 "--scale", "none", *runtime])
        auto_wall, auto_rss = run([*QSEGMENT, "predict", str(big_path), "-o",
                                   str(tmp / "auto"), *runtime])

        segmenter = Segmenter.from_pretrained(runtime=args.runtime)
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
        segmenter.predict(arrays[0])  # warm-up
        in_process = [_timed(segmenter.predict, array) for array in arrays]
        big = np.asarray(Image.open(big_path))
        pairs = []  # (first, second) predict of the new size, three times
        for _ in range(3):
            at_own_size = Segmenter.from_pretrained(scale="none", runtime=args.runtime)
            at_own_size.predict(arrays[0])  # a CHASE image first: 3504x2336 is a new size
            pairs.append([_timed(at_own_size.predict, big) for _ in range(2)])
        firsts = [statistics.median(times) for times in zip(*pairs, strict=True)]
        fresh = Segmenter.from_pretrained(scale="none", runtime=args.runtime)
        fresh_first = _timed(fresh.predict, big)

    cold = statistics.median(w for w, _ in one)
    per_image_cli = (folder_wall - cold) / (len(photos) - 1)
    per_image_api = statistics.mean(in_process)
    pixels = 3504 * 2336 / (rgb.shape[0] * rgb.shape[1])
    result = {
        "model": segmenter.name, "runtime": segmenter.runtime, "images": len(photos),
        "cold_one_image_s": cold, "cold_one_image_peak_rss_mb": max(r for _, r in one),
        "folder_s": folder_wall, "folder_peak_rss_mb": folder_rss,
        "cli_s_per_image": per_image_cli, "segmenter_s_per_image": per_image_api,
        "cli_over_segmenter": per_image_cli / per_image_api,
        "big_s": big_wall, "big_peak_rss_mb": big_rss, "big_pixel_ratio": pixels,
        "big_png_s": png_wall, "big_png_peak_rss_mb": png_rss,
        "big_auto_s": auto_wall, "big_auto_peak_rss_mb": auto_rss,
        "big_over_scaled_chase": big_wall / (pixels * per_image_cli),
        "big_first_s": firsts[0], "big_second_s": firsts[1],
        "big_first_over_second": firsts[0] / firsts[1], "big_fresh_first_s": fresh_first,
    }
    print(f"model {result['model']} on {result['runtime']}")
    print("| measure | measured | target |\n|---|---:|---|")
    print(f"| one image, cold process: wall | {cold:.2f} s | <= 0.6 s |")
    print(f"| one image, cold process: peak RSS | {result['cold_one_image_peak_rss_mb']:.0f} MB "
          "| <= 300 MB |")
    print(f"| 28-image folder: CLI per image / Segmenter.predict per image | "
          f"{per_image_cli * 1000:.0f} / {per_image_api * 1000:.0f} ms = "
          f"{result['cli_over_segmenter']:.2f}x | <= 1.1x |")
    print(f"| 3504x2336, --scale none (tiled): peak RSS | {big_rss:.0f} MB | < 600 MB |")
    print(f"| 3504x2336, --scale none: wall / ({pixels:.2f} x CHASE per image) | "
          f"{big_wall:.2f} s / "
          f"{pixels * per_image_cli:.2f} s = {result['big_over_scaled_chase']:.2f}x | "
          "<= 1.3x |")
    print(f"| 3504x2336 as PNG, --scale none: wall, peak RSS | {png_wall:.2f} s "
          f"({png_wall / (pixels * per_image_cli):.2f}x), {png_rss:.0f} MB | |")
    print(f"| 3504x2336, --scale auto (the default): wall, peak RSS | {auto_wall:.2f} s, "
          f"{auto_rss:.0f} MB | |")
    print(f"| 3504x2336, --scale none: first predict of the new size / second (a Segmenter "
          f"warm on CHASE) | {firsts[0]:.2f} / {firsts[1]:.2f} s = "
          f"{result['big_first_over_second']:.2f}x | <= 1x (no build) |")
    print(f"| 3504x2336, --scale none: first predict of a fresh Segmenter (interpreter set-up) | "
          f"{fresh_first:.2f} s | |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
