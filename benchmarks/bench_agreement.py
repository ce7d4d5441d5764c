"""Do the CPU runtimes draw the same masks? Each runtime's pooled Dice on CHASE_DB1's
validation images (the paper's 8 test images) and the Dice between its masks and LiteRT's
(``tflite-int8``), all through ``Segmenter.from_pretrained(runtime=R)`` on the 8-bit
photographs, with the card's threshold.

    python benchmarks/bench_agreement.py [--model NAME] [--json out.json]

Issue #35's targets for ``openvino``: mask Dice with ``tflite-int8`` >= 0.995 and its
Dice within 0.001 of ``tflite-int8``'s. ``tflite-int8 (reference kernels)`` runs the same
flatbuffers on TFLite's reference kernels instead of XNNPACK: how far two correct int8
engines of one file drift apart, the floor of any agreement between runtimes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REFERENCE_KERNELS = "tflite-int8 (reference kernels)"


def main() -> None:
    from qsegment import Segmenter
    from qsegment.datasets import load_split
    from qsegment.metrics import evaluate
    from qsegment.pretrained import DEFAULT_MODEL
    from qsegment.runtimes import checkpoint_runtimes
    from qsegment.runtimes.litert import Int8Session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"weights ({DEFAULT_MODEL})")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    _, validation = load_split()
    photographs = [np.round(s.image * 255).astype(np.uint8) for s in validation]
    labels, fovs = [s.label for s in validation], [s.fov for s in validation]
    segmenters = {name: Segmenter.from_pretrained(args.model, runtime=name)
                  for name in checkpoint_runtimes()}
    reference = Segmenter.from_pretrained(args.model, runtime="tflite-int8")
    runner = reference.runner
    for shape, path in runner.flatbuffers.items():  # the same files, reference kernels
        runner._sessions[shape] = Int8Session(path.read_bytes(), reference=True)
    runner.max_sessions = len(runner.flatbuffers)
    segmenters[REFERENCE_KERNELS] = reference
    masks, rows = {}, {}
    for name, segmenter in segmenters.items():
        print(f"{name} ...", flush=True)
        predictions = [segmenter.predict(photo) for photo in photographs]
        masks[name] = [p.mask for p in predictions]
        rows[name] = {"dice": evaluate([p.probability for p in predictions], labels, fovs,
                                       segmenter.threshold)["pooled"]["dice"]}
    for name, row in rows.items():
        row["mask_dice_with_tflite_int8"] = evaluate(
            [m.astype(np.float32) for m in masks[name]], masks["tflite-int8"], fovs,
            0.5)["pooled"]["dice"]
        row["dice_minus_tflite_int8"] = row["dice"] - rows["tflite-int8"]["dice"]
    print(f"\n{args.model} on CHASE_DB1's {len(validation)} validation images "
          f"({', '.join(s.name for s in validation)})\n")
    print("| runtime | Dice | minus tflite-int8's | mask Dice with tflite-int8 |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['dice']:.4f} | {row['dice_minus_tflite_int8']:+.4f} | "
              f"{row['mask_dice_with_tflite_int8']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
