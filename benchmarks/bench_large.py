"""Peak memory and time of `Segmenter.predict` on a large fundus photograph, tiled.

A 3504x2336 image (the size of a typical fundus camera's photograph) is made by
resizing a real CHASE_DB1 image up; it is segmented at its own size (``scale="none"``)
in the default tiles (those shipped with the weights), then (for comparison) in one
piece, each in a fresh process so that each peak resident memory (RSS) is its own.

    python benchmarks/bench_large.py [--runtime onnx-int8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def worker(tile: int | None, runtime: str) -> dict:
    import numpy as np
    from PIL import Image

    from qsegment import Segmenter
    from qsegment.bench import peak_rss_mb
    from qsegment.datasets import load_sample

    rgb8 = np.round(load_sample(None, "Image_11L").image * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(rgb8).resize((3504, 2336), Image.BILINEAR))
    seg = Segmenter.from_pretrained(runtime=runtime, tile=tile, scale="none")
    start = time.perf_counter()
    out = seg.predict(big)
    seconds = time.perf_counter() - start
    return {"tile": "x".join(map(str, seg.tile)), "runtime": runtime, "shape": list(out.mask.shape),
            "seconds": seconds, "vessel_fraction": float(out.mask.mean()),
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    from qsegment.runtimes import checkpoint_runtimes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch", choices=checkpoint_runtimes(),
                        help="tflite-int8 builds the one-piece model on first use (cached): "
                             "run twice to time it without the build")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    for tile in (0, 4096):  # the default tiles, then the whole image in one piece
        cmd = [sys.executable, __file__, "--worker", str(tile), args.runtime]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| tile | runtime | output | seconds | peak RSS (MB) |\n|---:|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['tile']} | {r['runtime']} | {r['shape'][1]}x{r['shape'][0]} | "
              f"{r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[2]) or None, sys.argv[3])))
    else:
        main()
