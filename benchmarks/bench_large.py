"""Peak memory and time of `Segmenter.predict` on a large fundus photograph, tiled.

A 3504x2336 image (the size of a typical fundus camera's photograph) is made by
resizing a real CHASE_DB1 image up; it is segmented at its own size (``scale="none"``)
in the default tiles (those shipped with the weights; on a runtime that fits its tiles
to the image, OpenVINO, those fitted, then its fixed tile shape for comparison), then in
one piece, each in a fresh process so that each peak resident memory (RSS) is its own.
Each is timed twice: the first predict (which compiles or builds a new shape) and the
second; "network pixels" is what the tiles cover over the image's pixels.

    python benchmarks/bench_large.py [--runtime openvino] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def worker(tile: int | None, runtime: str, fit: bool) -> dict:
    import numpy as np
    from PIL import Image

    from qsegment import Segmenter
    from qsegment.bench import peak_rss_mb
    from qsegment.datasets import load_sample

    rgb8 = np.round(load_sample(None, "Image_11L").image * 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(rgb8).resize((3504, 2336), Image.BILINEAR))
    seg = Segmenter.from_pretrained(runtime=runtime, tile=tile, scale="none")
    fitted = seg.runner.fits_tiles and fit
    type(seg.runner).fits_tiles = fitted
    rows, columns = seg.windows(*big.shape[:2])
    covered = sum(b - a for a, b, _, _ in rows) * sum(b - a for a, b, _, _ in columns)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        out = seg.predict(big)
        seconds.append(time.perf_counter() - start)
    count, height = len(rows) * len(columns), rows[0][1] - rows[0][0]
    tiles = f"{count} x {height}x{columns[0][1] - columns[0][0]}"
    return {"tiles": tiles + (" (fitted)" if fitted and count > 1 else ""), "runtime": runtime,
            "shape": list(out.mask.shape), "first_s": seconds[0], "seconds": seconds[1],
            "network_pixels": covered / big.shape[0] / big.shape[1],
            "vessel_fraction": float(out.mask.mean()), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    from qsegment.runtimes import checkpoint_runtimes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch", choices=checkpoint_runtimes(),
                        help="tflite-int8 builds the one-piece model on first use (cached): "
                             "run twice to time it without the build")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    rows = []
    # the default tiles (fitted where the runtime fits them), the fixed tile shape, whole
    for tile, fit in ((0, 1), (0, 0), (4096, 1)):
        cmd = [sys.executable, __file__, "--worker", str(tile), args.runtime, str(fit)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        if row not in rows and not any(r["tiles"] == row["tiles"] for r in rows):
            rows.append(row)
    print("| tiles | runtime | network pixels | first predict (s) | second (s) | peak RSS (MB) "
          "|\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tiles']} | {r['runtime']} | {r['network_pixels']:.2f}x | "
              f"{r['first_s']:.2f} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[2]) or None, sys.argv[3], sys.argv[4] == "1")))
    else:
        main()
