"""Where `qsegment predict`'s memory goes: one shipped int8 flatbuffer in a LiteRT
interpreter alone, per kernel set and input shape, each in a fresh process: peak RSS
after set-up and after one inference, and the inference time.

    python benchmarks/bench_litert_memory.py [--model qsegment-nearest]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

KERNELS = ("AUTO", "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "BUILTIN_REF")  # XNNPACK, optimized, ref


def worker(path: str, kernels: str) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from qsegment.bench import peak_rss_mb

    interpreter = Interpreter(model_content=Path(path).read_bytes(), num_threads=2,
                              experimental_op_resolver_type=getattr(OpResolverType, kernels))
    interpreter.allocate_tensors()
    after_setup = peak_rss_mb()
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], np.int8))
    start = time.perf_counter()
    interpreter.invoke()
    return {"setup_mb": after_setup, "peak_mb": peak_rss_mb(),
            "invoke_s": time.perf_counter() - start}


def main() -> None:
    from qsegment.pretrained import resolve_checkpoint
    from qsegment.runtimes.base import read_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qsegment-nearest")
    args = parser.parse_args()
    weights = resolve_checkpoint(args.model)
    shapes = read_manifest(weights)["tflite"]
    print("| shape | kernels | peak RSS after set-up (MB) | after one inference (MB) | "
          "inference (s) |\n|---|---|---:|---:|---:|")
    for shape, name in shapes.items():
        for kernels in KERNELS if shape == "960x1000" else KERNELS[:1]:
            done = subprocess.run([sys.executable, __file__, "--worker",
                                   str(weights.with_name(name)), kernels],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {shape} | {kernels} | {r['setup_mb']:.0f} | {r['peak_mb']:.0f} | "
                  f"{r['invoke_s']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3])))
    else:
        main()
