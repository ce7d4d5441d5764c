"""Runtimes: every way to run a model, in one registry. They open files; they build none.

Each row of :data:`RUNTIMES` names a class (imported on first use, so listing the names
costs no PyTorch or LiteRT import) that follows :class:`~qsegment.runtimes.base.Runtime`.
A row with ``build`` runs float checkpoints (``predict``/``evaluate``/``bench``
``--runtime``): it names the function of :mod:`qsegment.export.cpu` that makes the files
the runtime opens from the network (export's job, PyTorch's floor), used only where the
weights do not ship them; ``suffix`` runtimes open an int8 model file that an export made
(``qsegment evaluate FILE``). Adding a runtime is one module and one row.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..registry import Entry, Registry, resolve
from .base import ModelFileError, read_manifest, with_shipped_tiling

if TYPE_CHECKING:
    from .base import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeInfo(Entry):
    """A runtime's row: its target is a :class:`~qsegment.runtimes.base.Runtime` class."""

    # "module:function(weights, model=None) -> Runtime": runs a float checkpoint (or a
    # network) here, building the files the runtime opens where the weights ship none
    build: str | None = None
    suffix: str | None = None  # `open_file` opens model files with this suffix here
    file_suffix: str | None = None  # a network as the one file it opens: NAME + this


RUNTIMES: Registry[RuntimeInfo] = Registry("runtime", [
    RuntimeInfo("tflite-int8", "qsegment.runtimes.litert:LiteRtInt8",
                "int8 TFLite in LiteRT/XNNPACK, the int8 runtime for ARM, no PyTorch (models "
                "shipped at 512x512, 960x1000 and 400x1008, the tile of larger images)",
                build="qsegment.export.cpu:litert_int8", file_suffix=".int8.tflite"),
    RuntimeInfo("openvino", "qsegment.runtimes.openvino:OpenVinoInt8",
                "OpenVINO, static int8 (the shipped QDQ ONNX), compiled once per input shape "
                "and cached; images up to 2048x2048 whole (in the base install on x86-64, else "
                "the [fast] extra)",
                build="qsegment.export.cpu:openvino_int8", file_suffix=".int8.onnx"),
    RuntimeInfo("torch", "qsegment.runtimes.pytorch:TorchRuntime", "PyTorch eager, float32",
                build="qsegment.export.cpu:torch_runtime"),
    RuntimeInfo("onnx", "qsegment.runtimes.onnxrt:OnnxRuntime", "ONNX Runtime, float32",
                build="qsegment.export.cpu:onnx_float", file_suffix=".onnx"),
    RuntimeInfo("onnx-int8", "qsegment.runtimes.onnxrt:OnnxInt8Runtime",
                "ONNX Runtime, static int8 (QDQ)",
                build="qsegment.export.cpu:onnx_int8", file_suffix=".int8.onnx"),
    RuntimeInfo("mct-int8", "qsegment.runtimes.onnxrt:MctOnnxRuntime",
                "Sony MCT's int8 ONNX (the IMX500 path) in ONNX Runtime, at its fixed size",
                suffix=".onnx"),
    RuntimeInfo("tflite-micro", "qsegment.runtimes.tflm:MicroModel",
                "a fully int8 .tflite in the TFLite-Micro interpreter, at its fixed size",
                suffix=".tflite"),
])

AUTO = "auto"
DEFAULT_RUNTIME = AUTO  # the fastest int8 runtime installed for this CPU: auto_runtimes()


def auto_runtimes(machine: str | None = None) -> tuple[list[str], str]:
    """The runtimes ``auto`` tries, fastest first, on this CPU (or on ``machine``, as
    :func:`platform.machine` names it), and why that order.

    On x86-64, OpenVINO runs the int8 network of a CHASE_DB1 image about 2x faster than
    LiteRT in its default tiles, with the same masks (``benchmarks/bench_runtimes.py``,
    docs/BENCHMARKS.md); LiteRT (XNNPACK) is the int8 runtime made for ARM boards.
    """
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        return ["openvino", "tflite-int8"], "x86-64: OpenVINO first, LiteRT next"
    return ["tflite-int8"], f"{machine}: LiteRT (XNNPACK), the int8 runtime for ARM"


def checkpoint_runtimes() -> list[str]:
    """Names of the runtimes that run a float checkpoint, in registry order."""
    return [info.name for info in RUNTIMES if info.build]


def checkpoint_runtime(name: str) -> RuntimeInfo:
    """The row ``name`` among the runtimes that run a float checkpoint; an unknown name
    (:class:`~qsegment.registry.UnknownNameError`) lists them."""
    return Registry("checkpoint runtime", [i for i in RUNTIMES if i.build]).get(name)


def open_weights(name: str, weights: Path, threads: int | None = None) -> Runtime:
    """The runtime ``name`` for a weights file: the files shipped beside it where the
    runtime can run them alone (no PyTorch), on ``threads`` threads (default: one per CPU;
    one per process where several share a machine, e.g. ``qsegment batch``'s workers).
    Else the network the weights build, by the row's ``build`` function on PyTorch's floor
    (named, not imported here: an install without PyTorch never reaches it, and the
    command line names the extra to install).

    ``auto`` opens the first of :func:`auto_runtimes` that is installed and has its files
    shipped beside the weights (the last one in any case); each one passed over is logged
    in one line (INFO where it is not installed or has no files, a WARNING where it
    failed)."""
    if name == AUTO:
        name, runtime = _first_shipped(weights, threads)
    else:
        runtime = _open_shipped(name, weights, threads)
    if runtime is None:  # a checkpoint runtime's row has a build
        runtime = resolve(cast(str, checkpoint_runtime(name).build))(weights)
    return with_shipped_tiling(runtime, read_manifest(weights))


def _open_shipped(name: str, weights: Path, threads: int | None) -> Runtime | None:
    """The runtime ``name`` on the files shipped beside ``weights``; None where none
    ship."""
    cls = checkpoint_runtime(name).load()
    if reason := read_manifest(weights).get("unsupported", {}).get(name):
        raise ModelFileError(f"{weights.stem} cannot run on the {name} runtime (publishing it "
                             f"failed: {reason}); choose another --runtime, e.g. torch")
    return cls.from_weights(weights, threads) if hasattr(cls, "from_weights") else None


def _first_shipped(weights: Path, threads: int | None) -> tuple[str, Runtime | None]:
    """``auto``'s runtime: the first of :func:`auto_runtimes` installed with its files
    shipped beside ``weights``, else the last, on its shipped files or (None) to build."""
    order, why = auto_runtimes()
    for name, after in pairwise(order):
        try:
            runtime = _open_shipped(name, weights, threads)
        except ImportError as err:
            log.info("runtime auto: %s is not installed (no module %s); trying %s", name,
                     err.name, after)
            continue
        except (ModelFileError, RuntimeError) as err:
            log.warning("runtime auto: %s failed (%s); trying %s", name,
                        str(err).strip().splitlines()[0], after)
            continue
        if runtime is not None:
            log.info("runtime auto: %s (%s)", name, why)
            return name, runtime
        log.info("runtime auto: no %s files ship beside %s; trying %s", name, weights.name,
                 after)
    log.info("runtime auto: %s (%s)", order[-1], why)
    return order[-1], _open_shipped(order[-1], weights, threads)


def open_file(path: str | Path, name: str | None = None) -> Runtime:
    """The runtime of a model file, chosen by ``name`` or by the file's suffix."""
    path = Path(path)
    if name is None:
        matches = [info.name for info in RUNTIMES if info.suffix == path.suffix]
        if not matches:
            known = ", ".join(sorted({i.suffix for i in RUNTIMES if i.suffix}))
            raise ModelFileError(f"{path}: no runtime opens {path.suffix or 'suffix-less'} "
                                 f"files (known: {known})")
        name = matches[0]
    return RUNTIMES.load(name).from_file(path)


__all__ = ["AUTO", "DEFAULT_RUNTIME", "RUNTIMES", "RuntimeInfo", "auto_runtimes",
           "checkpoint_runtime", "checkpoint_runtimes", "open_file", "open_weights"]
