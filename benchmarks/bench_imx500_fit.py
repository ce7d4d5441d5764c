"""The IMX500 fit table: input size -> on-chip memory (the converter's own report) ->
Dice, float and int8, for each model at several square sizes up to its limit.

For every (model, size): `qsegment quantize MODEL --size N` (MCT PTQ, 16 whole training
images resized to NxN), the converter's memory report at NxN (imx500-converter,
``--no-input-persistency`` as `qsegment export` converts), then `qsegment evaluate` of the
int8 ONNX beside its float source at the same size: whole validation images resized to
NxN, maps resized back and scored against the full-resolution first-observer labels
inside the FOV, at the float model's train-chosen threshold. Each model's largest
fitting size is searched as `qsegment export` does. Needs Java 17 and Sony's toolchain.

    python benchmarks/bench_imx500_fit.py --model qsegment-nearest-312 --sizes 128,256,312 \
        [--model qsegment-imx --sizes 256,512,640] [--json out.json] [--keep DIR]

About 1.5 min per (model, size) on this machine's two cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def measure(model: str, size: int, folder: Path) -> dict:
    """Quantize, memory-report and evaluate one model at one size."""
    from qsegment.engine.evaluate import int8_table
    from qsegment.export.imx500.convert import memory_report
    from qsegment.export.imx500.quantize import quantize

    onnx = folder / f"{model}-{size}.onnx"
    start = time.perf_counter()
    quantize(model, onnx, size=size, calibration=16)
    report = memory_report(onnx, size)
    table = int8_table(onnx, figures=False, progress=False)
    float_row, int8_row = table["rows"].values()
    return {"model": model, "size": size, "onnx": str(onnx),
            "memory_mb": round(report.required / 2**20, 2), "fits": report.fits,
            "dice_float": round(float_row["pooled"]["dice"], 4),
            "dice_int8": round(int8_row["pooled"]["dice"], 4),
            "seconds": round(time.perf_counter() - start, 1)}


def largest(onnx: str) -> dict:
    """The largest square size that fits, with the memory at it and one step above."""
    from qsegment.export.imx500.convert import largest_fitting_size

    size, reports = largest_fitting_size(onnx, cache=False)
    above = min((s for s in reports if size is None or s > size), default=None)
    return {"largest_size": size,
            "memory_mb": {s: round(r.required / 2**20, 2) for s, r in sorted(reports.items())},
            "next_size_needs_mb": (round(reports[above].required / 2**20, 2)
                                   if above is not None else None)}


def table(rows: list[dict], limits: dict[str, dict]) -> str:
    lines = ["| model | input | on-chip memory (of 8.00 MB) | fits | Dice float | Dice int8 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']}x{r['size']} | {r['memory_mb']:.2f} MB | "
                     f"{'yes' if r['fits'] else 'no'} | {r['dice_float']:.4f} | "
                     f"{r['dice_int8']:.4f} |")
    for model, limit in limits.items():
        lines.append(f"\n{model}: largest square that fits {limit['largest_size']}; the next "
                     f"size tried needs {limit['next_size_needs_mb']} MB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True,
                        help="shipped weights name or checkpoint (repeatable)")
    parser.add_argument("--sizes", action="append", required=True,
                        help="comma-separated sizes for the --model before it")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", type=Path, help="keep the int8 ONNX files in this folder")
    args = parser.parse_args()
    if len(args.model) != len(args.sizes):
        parser.error("give one --sizes after each --model")
    rows, limits = [], {}
    with tempfile.TemporaryDirectory(prefix="qsegment-fit-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for model, sizes in zip(args.model, args.sizes, strict=True):
            for size in (int(s) for s in sizes.split(",")):
                rows.append(measure(model, size, folder))
                print(json.dumps(rows[-1]), flush=True)
            limits[model] = largest(rows[-1]["onnx"])
            print(json.dumps({model: limits[model]}), flush=True)
    print(table(rows, limits))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "limits": limits}, indent=2) + "\n")


if __name__ == "__main__":
    main()
