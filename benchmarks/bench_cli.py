"""What a user of `qsegment predict` waits for, against what the network takes, in one run.

1. One CHASE_DB1 image from a cold process: wall time and peak RSS of the command.
2. The folder of 28 CHASE_DB1 images: the command's time per image after start-up
   (folder run minus one-image run, over 27), against `Segmenter.predict` on the same
   images already decoded to uint8 arrays (in this process), the two timed in turns
   (``--repeats`` of them; each per-image time after an untimed run that fills the
   caches) and the ratio the median of its turns' ratios: the machine's speed drifts by
   more than the ratio's margin between one step and the next. Likewise the defaults
   against ``--scale fov --threshold card`` (#31's calibration), in the CLI and in process.
3. A 3504x2336 photograph (a CHASE image resized up, written as JPEG at quality 95, the
   format of the CHASE images it is compared with, and as PNG beside): wall and peak RSS
   of the command, with ``--scale none`` (segmented at that size, in tiles) and with
   the default ``--scale auto`` (brought to CHASE's scale first); the tiled command's
   time over (pixel ratio x the CHASE per-image time of step 2), start-up included, and
   like for like, a folder of three copies' time per image after start-up (as step 2
   measures CHASE's, in its turns) over the same; and, start-up aside, the second
   in-process predict of that size over (pixel ratio x ``Segmenter.predict``'s CHASE
   time); and, in this process, the first predict of that new size against the second
   (medians of three), by a Segmenter that
   has segmented a CHASE image before, and beside it by a fresh one (whose first predict
   sets the interpreter up).

4. With ``--av MODEL`` (an artery/vein model): the folder's per-image time of
   ``predict --av`` against the same model's vessel map alone, both on ``--runtime``, and
   against the default vessel ``predict`` (issue #33's target), in step 2's turns.

    python benchmarks/bench_cli.py [--runtime openvino] [--av runs/av] [--json out.json]

The targets printed are issue #35's, and #31's: the label-free calibration (the default
``--scale auto --threshold auto``) against ``--scale fov --threshold card`` per image.

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
BIG_COPIES = 3  # 3504x2336 photographs in the folder timed per image


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


def per_image_s(command: list[str], folder: Path, out: Path) -> float:
    """A folder's time per image after start-up: (the folder - its first image alone)
    over the other images; an untimed first run fills the caches a model's first use
    fills (its int8 ranges, OpenVINO's compiled network)."""
    images = sorted(folder.iterdir())
    run([*command, str(images[0]), "-o", str(out / "warm-up")])
    one, _ = run([*command, str(images[0]), "-o", str(out / "one")])
    whole, _ = run([*command, str(folder), "-o", str(out / "folder")])
    return (whole - one) / (len(images) - 1)


def time_big(rgb: np.ndarray, path: Path, runtime: list[str]) -> dict[str, float]:
    """Step 3's commands on ``rgb`` resized to 3504x2336 and written to ``path`` (JPEG,
    quality 95) and beside it as PNG: wall and peak RSS of each; and a folder of
    :data:`BIG_COPIES` copies beside it (``bigs``), which step 2's turns time."""
    png_path, tmp = path.with_suffix(".png"), path.parent
    resized = Image.fromarray(rgb).resize((3504, 2336), Image.BILINEAR)
    resized.save(path, quality=95)
    resized.save(png_path)
    own_size = [*QSEGMENT, "predict", "--scale", "none", *runtime]
    big_s, big_rss = run([*own_size, str(path), "-o", str(tmp / "big")])
    png_s, png_rss = run([*own_size, str(png_path), "-o", str(tmp / "png")])
    auto_s, auto_rss = run([*QSEGMENT, "predict", str(path), "-o", str(tmp / "auto"), *runtime])
    copies = tmp / "bigs"
    copies.mkdir()
    for i in range(BIG_COPIES):
        shutil.copy(path, copies / f"big{i}.jpg")
    return {"big_s": big_s, "big_peak_rss_mb": big_rss, "big_png_s": png_s,
            "big_png_peak_rss_mb": png_rss, "big_auto_s": auto_s,
            "big_auto_peak_rss_mb": auto_rss}


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def print_table(r: dict) -> None:
    """The targets' table of one run's result ``r``."""
    ms = {k: r[k] * 1000 for k in ("cli_s_per_image", "segmenter_s_per_image",
                                    "uncalibrated_cli_s_per_image",
                                    "uncalibrated_segmenter_s_per_image")}
    scaled_chase = r["big_pixel_ratio"] * r["cli_s_per_image"]
    print(f"model {r['model']} on {r['runtime']}")
    print("| measure | measured | target |\n|---|---:|---|")
    print(f"| one image, cold process: wall | {r['cold_one_image_s']:.2f} s | <= 0.6 s |")
    print(f"| one image, cold process: peak RSS | {r['cold_one_image_peak_rss_mb']:.0f} MB "
          "| <= 300 MB |")
    turns = ", ".join(f"{t['cli'] / t['segmenter']:.2f}x" for t in r["turns"])
    print(f"| 28-image folder: CLI per image / Segmenter.predict per image (medians of "
          f"{len(r['turns'])} turns) | {ms['cli_s_per_image']:.0f} / "
          f"{ms['segmenter_s_per_image']:.0f} ms = {r['cli_over_segmenter']:.2f}x (turns: "
          f"{turns}) | <= 1.1x |")
    print(f"| 28-image folder, per image: defaults / `--scale fov --threshold card` (#31's "
          f"calibration) | {ms['cli_s_per_image']:.0f} / "
          f"{ms['uncalibrated_cli_s_per_image']:.0f} ms = {r['calibration_cli_ratio']:.2f}x "
          "| <= 1.3x |")
    print(f"| the same, Segmenter.predict in this process | {ms['segmenter_s_per_image']:.0f} "
          f"/ {ms['uncalibrated_segmenter_s_per_image']:.0f} ms = "
          f"{r['calibration_segmenter_ratio']:.2f}x | <= 1.3x |")
    print(f"| 3504x2336, --scale none (tiled): peak RSS | {r['big_peak_rss_mb']:.0f} MB "
          "| < 600 MB |")
    print(f"| 3504x2336, --scale none: wall / ({r['big_pixel_ratio']:.2f} x CHASE per image) "
          f"| {r['big_s']:.2f} s / {scaled_chase:.2f} s = {r['big_over_scaled_chase']:.2f}x "
          "| (start-up included) |")
    print(f"| 3504x2336, --scale none: folder of {BIG_COPIES}, per image after start-up / "
          f"({r['big_pixel_ratio']:.2f} x CHASE per image), in the same turns | "
          f"{r['big_cli_s_per_image']:.2f} s "
          f"/ {scaled_chase:.2f} s = {r['big_per_image_over_scaled_chase']:.2f}x | <= 1.3x |")
    print(f"| 3504x2336, --scale none: Segmenter.predict, second of the size / ("
          f"{r['big_pixel_ratio']:.2f} x CHASE's) | {r['big_second_s']:.2f} s / "
          f"{r['big_pixel_ratio'] * r['segmenter_s_per_image']:.2f} s = "
          f"{r['big_warm_over_scaled_chase']:.2f}x | (start-up aside) |")
    print(f"| 3504x2336 as PNG, --scale none: wall, peak RSS | {r['big_png_s']:.2f} s "
          f"({r['big_png_s'] / scaled_chase:.2f}x), {r['big_png_peak_rss_mb']:.0f} MB | |")
    print(f"| 3504x2336, --scale auto (the default): wall, peak RSS | {r['big_auto_s']:.2f} s, "
          f"{r['big_auto_peak_rss_mb']:.0f} MB | |")
    print(f"| 3504x2336, --scale none: first predict of the new size / second (a Segmenter "
          f"warm on CHASE) | {r['big_first_s']:.2f} / {r['big_second_s']:.2f} s = "
          f"{r['big_first_over_second']:.2f}x | <= 1x (no build) |")
    print(f"| 3504x2336, --scale none: first predict of a fresh Segmenter (interpreter set-up) "
          f"| {r['big_fresh_first_s']:.2f} s | |")
    if "av_model" in r:
        av, alone, default = (r[f"{name}_s_per_image"] * 1000 for name in ("av", "alone", "cli"))
        turns = ", ".join(f"{t['av'] / t['cli']:.2f}x" for t in r["turns"])
        print(f"| 28-image folder, per image: `predict --av` ({r['av_model']}) / the same "
              f"model's vessels alone (medians of {len(r['turns'])} turns) | {av:.0f} / "
              f"{alone:.0f} ms, {r['av_over_alone']:.2f}x | |")
        print(f"| the same, `predict --av` / the default vessel predict, timed in the same "
              f"turns | {av:.0f} / {default:.0f} ms, {r['av_over_default']:.2f}x (turns: "
              f"{turns}) | <= 1.5x |")


def main() -> None:
    from qsegment import Segmenter
    from qsegment.datasets import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=3,
                        help="cold one-image runs, and turns of the folder's timings (3)")
    parser.add_argument("--runtime", default="auto", help="what every command and "
                        "Segmenter runs on (auto: the default, the fastest for this CPU)")
    parser.add_argument("--av", metavar="MODEL", help="also time `predict --av` with this "
                        "artery/vein model (a run folder or .safetensors)")
    args = parser.parse_args()
    runtime = ["--runtime", args.runtime]
    data = default_data_dir()
    photos = sorted(data.glob("Image_*[LR].jpg"))
    if len(photos) < 2:
        parser.error(f"{data} holds {len(photos)} CHASE_DB1 photographs (Image_NNL.jpg): "
                     "point QSEGMENT_DATA_CHASEDB1 at the CHASE_DB1 folder")
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-cli-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "chase"
        folder.mkdir()
        for photo in photos:
            shutil.copy(photo, folder / photo.name)
        predict = [*QSEGMENT, "predict", *runtime]
        one = [run([*predict, str(photos[0]), "-o", str(tmp / f"one{i}")])
               for i in range(args.repeats)]
        folder_wall, folder_rss = run([*predict, str(folder), "-o", str(tmp / "folder")])
        big_path = tmp / "big.jpg"
        rgb = np.asarray(Image.open(photos[10]).convert("RGB"))
        big_runs = time_big(rgb, big_path, runtime)

        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
        in_process = {"segmenter": Segmenter.from_pretrained(runtime=args.runtime),
                      "uncalibrated_segmenter": Segmenter.from_pretrained(
                          runtime=args.runtime, scale="fov", threshold="card")}
        for segmenter in in_process.values():
            segmenter.predict(arrays[0])  # warm-up
        segmenter = in_process["segmenter"]
        big = np.asarray(Image.open(big_path))
        pairs = []  # (first, second) predict of the new size, three times
        for _ in range(3):
            at_own_size = Segmenter.from_pretrained(scale="none", runtime=args.runtime)
            at_own_size.predict(arrays[0])  # a CHASE image first: 3504x2336 is a new size
            pairs.append([_timed(at_own_size.predict, big) for _ in range(2)])
        firsts = [statistics.median(times) for times in zip(*pairs, strict=True)]
        fresh = Segmenter.from_pretrained(scale="none", runtime=args.runtime)
        fresh_first = _timed(fresh.predict, big)
        commands = {"cli": (predict, folder), "uncalibrated_cli": (
            [*predict, "--scale", "fov", "--threshold", "card"], folder),
            "big_cli": ([*predict, "--scale", "none"], tmp / "bigs")}
        if args.av:
            av_model = [*predict, "--model", args.av]
            commands.update({"av": ([*av_model, "--av"], folder), "alone": (av_model, folder)})
        # in turns, so that each ratio compares runs of the same minute
        turns = [{**{name: per_image_s(command, images, tmp / f"{name}{i}")
                     for name, (command, images) in commands.items()},
                  **{name: statistics.mean(_timed(s.predict, array) for array in arrays)
                     for name, s in in_process.items()}} for i in range(args.repeats)]

    def ratio(a: str, b: str) -> float:
        return statistics.median(turn[a] / turn[b] for turn in turns)

    per_image = {f"{name}_s_per_image": statistics.median(turn[name] for turn in turns)
                 for name in turns[0]}
    per_image_cli, per_image_api = per_image["cli_s_per_image"], per_image["segmenter_s_per_image"]
    pixels = 3504 * 2336 / (rgb.shape[0] * rgb.shape[1])
    result = {
        "model": segmenter.name, "runtime": segmenter.runtime, "images": len(photos),
        "cold_one_image_s": statistics.median(w for w, _ in one),
        "cold_one_image_peak_rss_mb": max(r for _, r in one),
        "folder_s": folder_wall, "folder_peak_rss_mb": folder_rss, "turns": turns,
        **per_image, "cli_over_segmenter": ratio("cli", "segmenter"),
        "calibration_cli_ratio": ratio("cli", "uncalibrated_cli"),
        "calibration_segmenter_ratio": ratio("segmenter", "uncalibrated_segmenter"),
        **big_runs, "big_pixel_ratio": pixels,
        "big_over_scaled_chase": big_runs["big_s"] / (pixels * per_image_cli),
        "big_per_image_over_scaled_chase": ratio("big_cli", "cli") / pixels,
        "big_first_s": firsts[0], "big_second_s": firsts[1],
        "big_first_over_second": firsts[0] / firsts[1], "big_fresh_first_s": fresh_first,
        "big_warm_over_scaled_chase": firsts[1] / (pixels * per_image_api),
    }
    if args.av:
        result.update({"av_model": args.av, "av_over_alone": ratio("av", "alone"),
                       "av_over_default": ratio("av", "cli")})
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
