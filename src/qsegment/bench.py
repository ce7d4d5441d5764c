"""Side-by-side benchmark of every registered model (paper Tables II and III, Fig. 3).

Each (model, runtime) pair is measured in its own subprocess, so its peak resident
memory (RSS) is its own and one pair's caches do not help the next; the ONNX
Runtime workers never import PyTorch (whose CUDA build alone maps ~0.7 GB). Latency is a
forward pass on one 3xNxN image after warm-up; all pairs run in one invocation so
their ratios are comparable on a noisy machine.
"""

from __future__ import annotations

import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .runtimes import RUNTIMES, checkpoint_runtimes

if TYPE_CHECKING:
    from .runtimes.base import Runtime

# The paper's Table III (embedded platforms), quoted for comparison; not measured here.
PAPER_TABLE_III = [
    ("ERFNet", "NVIDIA Jetson TX1", 14.28, 6000.0),
    ("M2U-Net", "Rockchip RK3399", 14700.0, 9600.0),
    ("T-Net", "NVIDIA GTX 1080Ti", None, 250000.0),
    ("Q-Segment", "ARM Cortex-M4F", 126.25, 82.69),
    ("Q-Segment", "Sony Spresense", 143.75, 448.0),
    ("Q-Segment", "IMX500 (in-sensor)", 0.23, 71.94),
    ("Q-Segment", "IMX500 end-to-end", 17.21, 254.6),
]


def prepare(name: str, size: int, workdir: Path, runtimes: tuple[str, ...]) -> None:
    """Write the model's fp32 and int8 ONNX and int8 TFLite files into ``workdir``
    (untrained weights: latency does not depend on their values; int8 is calibrated on
    real images). A model the TFLite converter cannot take gets ``NAME.tflite-error``."""
    import torch

    from .data import training_inputs
    from .export.onnx import export_onnx, quantize_onnx_int8
    from .export.tflite import ConversionError, convert_int8
    from .models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    files = {RUNTIMES.get(runtime).file_suffix for runtime in runtimes}
    if {".onnx", ".int8.onnx"} & files:  # the int8 file is onnx-int8's and openvino's
        fp32 = export_onnx(model, model_file(workdir, name, "onnx"), (size, size))
        quantize_onnx_int8(fp32, model_file(workdir, name, "onnx-int8"), size=size)
    if "tflite-int8" in runtimes:
        try:
            flatbuffer = convert_int8(model, torch.cat(list(training_inputs(4, size=size))))
            model_file(workdir, name, "tflite-int8").write_bytes(flatbuffer)
        except ConversionError as err:  # keep the converter's own reason, in one line
            reason = re.search(r"error: ([^\n]{1,160})", str(err))
            (workdir / f"{name}.tflite-error").write_text(
                reason.group(1) if reason else str(err).splitlines()[0][:160])


def model_file(workdir: Path, name: str, runtime: str) -> Path:
    """The one file the model ``name`` becomes for ``runtime`` (its row's
    ``file_suffix``) in ``workdir``."""
    return workdir / f"{name}{RUNTIMES.get(runtime).file_suffix}"


def _runner(name: str, runtime: str, workdir: Path) -> Runtime:
    """The model on ``runtime`` from the registry: the file :func:`prepare` wrote, or the
    untrained module for a runtime that runs no file (``torch``)."""
    if RUNTIMES.get(runtime).file_suffix is None:
        import torch

        from .models import create_model
        from .runtimes.pytorch import TorchRuntime

        torch.manual_seed(0)
        return TorchRuntime(create_model(name))
    return RUNTIMES.load(runtime).from_file(model_file(workdir, name, runtime))


def measure(name: str, runtime: str, size: int, repeats: int, workdir: Path) -> dict:
    """Latency (median, p90, ms), throughput and peak RSS of one model on one runtime,
    in this process (the files from :func:`prepare` are in ``workdir``); ``{"error": ...}``
    where the model could not be made for the runtime."""
    failed = workdir / f"{name}.tflite-error"
    if runtime == "tflite-int8" and failed.is_file():
        return {"error": failed.read_text()}
    run = _runner(name, runtime, workdir)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    run(x)  # warm-up: allocations, ONNX Runtime's graph preparation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    return {"median_ms": median, "p90_ms": float(np.percentile(times, 90)),
            "images_per_s": 1000.0 / median,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM restarts at exec, unlike
    ``ru_maxrss``, which a subprocess inherits from the (larger) process that forked it."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(size: int = 960, repeats: int = 10, archs: list[str] | None = None,
                  runtimes: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    """Every architecture in ``archs`` (default: all of :data:`qsegment.models.MODELS`) on
    every runtime, each pair in a fresh subprocess."""
    from tqdm import tqdm

    from .models import create_model, list_models
    from .models.profile import model_stats

    archs = archs or list_models()
    runtimes = runtimes or tuple(checkpoint_runtimes())
    rows = []
    with tempfile.TemporaryDirectory(prefix="qsegment-bench-") as tmp:
        for name in tqdm(archs, desc="export", disable=not progress):
            prepare(name, size, Path(tmp), runtimes)
        pairs = [(m, r) for m in archs for r in runtimes]
        for name, runtime in tqdm(pairs, desc="bench", disable=not progress):
            cmd = [sys.executable, "-m", "qsegment.bench", name, runtime, str(size),
                   str(repeats), tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"benchmark of {name} on {runtime} failed:\n"
                                   f"{done.stderr[-2000:]}")
            stats = model_stats(create_model(name), size, size)
            rows.append({"model": name, "runtime": runtime, **stats,
                         **json.loads(done.stdout.strip().splitlines()[-1])})
    return {"size": size, "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    """Our measurements, then the paper's Table III labelled as the paper's."""
    n = result["size"]
    lines = [f"Measured here, one 3x{n}x{n} image, median of {result['repeats']} runs after "
             "warm-up:", "",
             "| model | runtime | params (M) | fp32 (MB) | int8 (MB) | GMACs | median (ms) | "
             "p90 (ms) | images/s | peak RSS (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    failures = []
    for r in result["rows"]:
        head = (f"| {r['model']} | {r['runtime']} | {r['params_m']:.3f} | {r['fp32_mb']:.2f} "
                f"| {r['int8_mb']:.2f} | {r['gmacs']:.2f} |")
        if "error" in r:
            failures.append(f"- {r['model']} on {r['runtime']}: {r['error']}")
            lines.append(head + " n/a | n/a | n/a | n/a |")
            continue
        lines.append(f"{head} {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    if failures:
        lines += ["", "Not measured (the model could not be made for the runtime):", *failures]
    lines += ["", "The paper's Table III (quoted, not measured here):", "",
              "| network | platform | latency (ms) | power (mW) |", "|---|---|---:|---:|"]
    for net, platform, latency, power in PAPER_TABLE_III:
        lat = "n/a" if latency is None else f"{latency:g}"
        lines.append(f"| {net} | {platform} | {lat} | {power:g} |")
    return "\n".join(lines)


def scatter(result: dict, path: Path, runtime: str = "onnx") -> None:
    """Like the paper's Fig. 3: latency against weight size, circle area ~ parameters."""
    import matplotlib.pyplot as plt

    from .files import atomic_write

    rows = [r for r in result["rows"] if r["runtime"] == runtime and "error" not in r]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for r in rows:
        ax.scatter(r["fp32_mb"], r["median_ms"], s=max(r["params_m"], 0.01) * 600, alpha=0.5)
        ax.annotate(r["model"], (r["fp32_mb"], r["median_ms"]), ha="center", va="center",
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fp32 weights (MB)")
    ax.set_ylabel(f"latency on this CPU, {runtime} (ms)")
    ax.set_title(f"{result['size']}x{result['size']} input; circle area ~ parameters")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png"))
    plt.close(fig)



def machine() -> str:
    """CPU model and core count, for the report's header."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


REPORT_END = "<!-- end of `qsegment bench` output; what follows is kept -->"


def write_report(result: dict, out: Path, command: str) -> None:
    """``out`` (Markdown) with the table and the command that made it, the raw numbers as
    JSON beside it, and the Fig. 3-like chart as PNG. Text after :data:`REPORT_END` in an
    existing ``out`` is kept."""
    from .files import atomic_write, write_json

    out = Path(out)
    chart = out.with_name(out.stem + "_fig3.png")
    scatter(result, chart)
    write_json(out.with_suffix(".json"), result)
    text = (f"# Benchmarks\n\nMade by `{command}` on {machine()}, "
            f"{time.strftime('%Y-%m-%d')}.\n\n{markdown(result)}\n\n"
            f"![latency against size]({chart.name})\n")
    if out.is_file() and REPORT_END in out.read_text():  # keep what follows, written by hand
        text += "\n" + REPORT_END + out.read_text().split(REPORT_END, 1)[1]
    atomic_write(out, text)


if __name__ == "__main__":  # worker: python -m qsegment.bench MODEL RUNTIME SIZE REPEATS DIR
    name_, runtime_, size_, repeats_, dir_ = sys.argv[1:6]
    print(json.dumps(measure(name_, runtime_, int(size_), int(repeats_), Path(dir_))))
