"""Latency of `Segmenter.predict` on one CHASE_DB1 image (960x999) per runtime.

Preprocessing (to float, padding) and postprocessing (crop, sigmoid, threshold) are
included, decoding the file is not. Runtimes are measured in one run, interleaved,
so their ratio is meaningful on a noisy machine.

    python benchmarks/bench_predict.py [--repeats 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from qsegment import Segmenter
from qsegment.data import default_data_dir, load_sample
from qsegment.engine.predict import RUNTIMES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", default="qsegment-nearest")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    image = load_sample(default_data_dir(), "Image_11L").image
    rgb8 = np.round(image * 255).astype(np.uint8)  # what a decoded file gives
    segmenters = {rt: Segmenter.from_pretrained(args.model, runtime=rt) for rt in RUNTIMES}
    times: dict[str, list[float]] = {rt: [] for rt in segmenters}
    for seg in segmenters.values():  # warm-up
        seg.predict(rgb8)
    for _ in range(args.repeats):
        for rt, seg in segmenters.items():
            start = time.perf_counter()
            seg.predict(rgb8)
            times[rt].append((time.perf_counter() - start) * 1000)
    rows = {rt: {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90))}
            for rt, t in times.items()}
    print(f"| runtime | median (ms) | p90 (ms) |   ({rgb8.shape[0]}x{rgb8.shape[1]}, "
          f"{args.repeats} runs)")
    print("|---|---:|---:|")
    for rt, r in rows.items():
        print(f"| {rt} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |")
    for rt in RUNTIMES[1:]:
        ratio = rows[rt]["median_ms"] / rows["torch"]["median_ms"]
        print(f"{rt} / torch median ratio: {ratio:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"image": list(rgb8.shape), "repeats": args.repeats, "rows": rows}, f,
                      indent=2)


if __name__ == "__main__":
    main()
