"""Latency of `Segmenter.predict` on one CHASE_DB1 image (960x999) per runtime.

Preprocessing (8-bit RGB to the model's input, padding) and postprocessing (crop,
probabilities, threshold) are included, decoding the file is not. Each runtime
runs in its own process, one after the other in one invocation: in a shared
process the thread pools of one runtime (OpenMP, ONNX Runtime) keep spinning
after it returns and slow the next one down. LiteRT runs twice: in the tiles shipped
with the weights (400x1008: three for this image; the default before issue #35) and
whole (``tile=1024``: one 960x1000 pass). Then the default, ``--runtime auto``, with the
runtime it took, against the fastest and against LiteRT in its tiles, from the same run.

    python benchmarks/bench_predict.py [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def worker(runtime: str, model: str, repeats: int, tile: int | None = None) -> dict:
    import numpy as np

    from qsegment import Segmenter
    from qsegment.datasets import load_sample

    image = load_sample(None, "Image_11L").image
    rgb8 = np.round(image * 255).astype(np.uint8)  # what a decoded file gives
    segmenter = Segmenter.from_pretrained(model, runtime=runtime, tile=tile)
    segmenter.predict(rgb8)  # warm-up (and, for tflite-int8, a model for a new size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.predict(rgb8)
        times.append((time.perf_counter() - start) * 1000)
    return {"image": list(rgb8.shape), "runtime": segmenter.runtime,
            "median_ms": statistics.median(times),
            "p90_ms": float(np.percentile(times, 90))}


def main() -> None:
    from qsegment.pretrained import DEFAULT_MODEL
    from qsegment.runtimes import AUTO, checkpoint_runtimes

    runtimes = checkpoint_runtimes()

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", choices=[AUTO, *runtimes], help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.repeats, args.tile)))
        return
    rows = {}
    litert, whole, auto = "tflite-int8", "tflite-int8, whole (tile=1024)", f"{AUTO} (the default)"
    for runtime, tile in [*((r, []) for r in runtimes), (whole, ["--tile", "1024"]),
                          (auto, [])]:
        done = subprocess.run([sys.executable, __file__, "--worker", runtime.split()[0].rstrip(","),
                               "--model", args.model, "--repeats", str(args.repeats), *tile],
                              capture_output=True, text=True, check=True)
        rows[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
    shape = rows[litert]["image"]
    print(f"| runtime | median (ms) | p90 (ms) |   ({shape[0]}x{shape[1]}, {args.repeats} runs)")
    print("|---|---:|---:|")
    for runtime, r in rows.items():
        print(f"| {runtime} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
    for runtime in rows:
        if runtime != "torch":
            ratio = rows[runtime]["median_ms"] / rows["torch"]["median_ms"]
            print(f"{runtime} / torch median ratio: {ratio:.3f}")
    ratio = rows[litert]["median_ms"] / rows[whole]["median_ms"]
    print(f"{litert} in tiles / whole median ratio: {ratio:.3f}")
    fastest = min((r for r in rows if r != auto), key=lambda r: rows[r]["median_ms"])
    print(f"auto took {rows[auto]['runtime']}: {rows[auto]['median_ms']:.1f} ms, "
          f"{rows[auto]['median_ms'] / rows[fastest]['median_ms']:.3f}x the fastest "
          f"({fastest}), {rows[litert]['median_ms'] / rows[auto]['median_ms']:.2f}x faster "
          f"than {litert} in its tiles")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
