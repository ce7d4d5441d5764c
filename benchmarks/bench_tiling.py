"""In-sensor ROI tiling on CHASE_DB1, simulated: the accuracy of the stitched map and how
often it refreshes, per number of tiles k.

Each of the 8 validation images (960x999) stands for the sensor frame. For each k,
:func:`qsegment.deploy.tiling.plan_tiles` covers the image's FOV box with at most k
square ROIs (overlapping by ``--halo`` network pixels); each ROI is resized into the
NxN input as calibration resizes whole images (bilinear, antialiased), run by the
MCT int8 ONNX in ONNX Runtime, turned into probabilities and stitched back at full
resolution. Dice: inside the FOV, against the first observer, at the card's
(train-chosen) threshold, pooled over the 8 images as ``qsegment evaluate`` does. The
first row of each model is ``qsegment evaluate``'s view for reference: the whole
image squashed into NxN (not square, so not a plan).

    python benchmarks/bench_tiling.py --onnx runs/tiling/transfer312.onnx \\
        --onnx runs/tiling/nearest312.onnx [--tiles 1 4 9 16] [--halo 16] [--json out.json]

The ONNX files come from ``qsegment quantize MODEL -o X.onnx --size N``.

Assumptions, not measured here: the AI Camera delivers FRAME_RATE frames/s in this
mode (picamera2's default), the new ROI takes effect on the next frame (one tile per
frame, no settling frames), and the network's in-sensor inference takes 0.23 ms (the
paper's figure), far below the frame period: the frame rate bounds the refresh.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qsegment.runtimes.onnxrt import MctOnnxRuntime

FRAME_RATE = 30.0  # frames/s, assumed (picamera2's default for the AI Camera)
INFERENCE_MS = 0.23  # the paper's in-sensor inference time, assumed


def whole_image_row(runtime: MctOnnxRuntime, samples: list) -> dict:
    """``qsegment evaluate``'s view: each whole image resized into NxN, the map resized
    back, scored as the tiled rows are."""
    from qsegment.deploy.tiling import roi_probability
    from qsegment.images import resize_map
    from qsegment.metrics import evaluate

    probs = []
    for s in samples:
        height, width = s.fov.shape
        tile = roi_probability(runtime, s.image, (0, 0, width, height))
        probs.append(resize_map(tile, (height, width)))
    threshold = runtime.card.threshold_value
    metrics = evaluate(probs, [s.label for s in samples], [s.fov for s in samples], threshold)
    size = runtime.fixed_size
    return {"tiles_requested": "whole image", "tiles": 1, "grids": ["1x1, not square"],
            "side": [min(height, width), max(height, width)],
            "resize_factor": [size / max(height, width), size / min(height, width)],
            "threshold": threshold,
            "pooled": metrics["pooled"],
            "per_image_dice": [m["dice"] for m in metrics["per_image"]]}


def model_rows(path: Path, tiles: list[int], halo: int, samples: list) -> list[dict]:
    """The reference row and one row per k for one MCT ONNX, with the refresh rate."""
    from qsegment.deploy.tiling import simulate
    from qsegment.runtimes.onnxrt import MctOnnxRuntime

    runtime = MctOnnxRuntime(path)
    rows = []
    for k in ["whole image", *tiles]:
        start = time.perf_counter()
        row = (whole_image_row(runtime, samples) if k == "whole image"
               else simulate(runtime, samples, k, halo))
        rows.append({"onnx": str(path), "model": runtime.card.get("source_checkpoint"),
                     "size": runtime.fixed_size, **row,
                     "frames_per_map": row["tiles"], "map_refresh_hz": FRAME_RATE / row["tiles"],
                     "wall_s": round(time.perf_counter() - start, 1)})
    return rows


def _span(values: list[float], fmt: str) -> str:
    """A [min, max] range as one value when both agree."""
    low, high = (format(v, fmt) for v in values)
    return low if low == high else f"{low}-{high}"


def markdown(rows: list[dict]) -> str:
    """One table row per model and k; ranges where the images' FOV boxes differ."""
    lines = ["| model (int8, N) | k asked | tiles (grid) | ROI side (px) | resize factor N/side "
             "| Dice | frames per map | map refresh @ 30 fps |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['size']}) | {r['tiles_requested']} | {r['tiles']} "
            f"({', '.join(r['grids'])}) | {_span(r['side'], 'd')} | "
            f"{_span(r['resize_factor'], '.3f')} | {r['pooled']['dice']:.4f} | "
            f"{r['frames_per_map']} | {r['map_refresh_hz']:.1f} Hz |")
    return "\n".join(lines)


def main() -> None:
    from qsegment.datasets import load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", action="append", required=True, type=Path,
                        help="an MCT int8 ONNX (qsegment quantize); repeat to compare models")
    parser.add_argument("--tiles", type=int, nargs="+", default=[1, 4, 9, 16],
                        help="numbers of tiles k to plan (1 4 9 16)")
    parser.add_argument("--halo", type=int, default=16,
                        help="least overlap of neighbouring tiles, network pixels (16)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    _, val = load_split()
    rows = [row for path in args.onnx for row in model_rows(path, args.tiles, args.halo, val)]
    print(markdown(rows))
    print(f"\nassumed: {FRAME_RATE:.0f} frames/s, one tile per frame, in-sensor inference "
          f"{INFERENCE_MS} ms per tile (the paper's): the frame rate bounds the refresh")
    if args.json:
        args.json.write_text(json.dumps({"frame_rate": FRAME_RATE, "inference_ms": INFERENCE_MS,
                                         "halo": args.halo, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
