"""Runtimes: every way to run a model, in one registry.

Each row names a class (imported on first use, so listing the names costs no
PyTorch or LiteRT import) that follows :class:`~qsegment.runtimes.base.Runtime`.
``checkpoint`` runtimes run a float checkpoint (``predict``/``evaluate``/``bench``
``--runtime``); ``suffix`` runtimes open an int8 model file that an export made
(``qsegment evaluate FILE``). Adding a runtime is one module and one row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..registry import lookup, register, resolve
from .base import ModelFileError, read_manifest, with_shipped_tiling

if TYPE_CHECKING:
    from torch import nn

    from .base import Runtime


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    target: str  # "module:Class"
    summary: str
    checkpoint: bool = True  # runs float checkpoints (from_model)
    suffix: str | None = None  # opens model files with this suffix (from_file)

    def load(self) -> type[Runtime]:
        return resolve(self.target)


RUNTIMES: dict[str, RuntimeInfo] = {}


def register_runtime(info: RuntimeInfo) -> RuntimeInfo:
    return register(RUNTIMES, info.name, info, "runtime")


for _info in (
    RuntimeInfo("tflite-int8", "qsegment.runtimes.litert:LiteRtInt8",
                "int8 TFLite in LiteRT/XNNPACK, the fastest on a CPU, no PyTorch (models "
                "shipped at 512x512, 960x1000 and 400x1008, the tile of larger images)"),
    RuntimeInfo("torch", "qsegment.runtimes.pytorch:TorchRuntime", "PyTorch eager, float32"),
    RuntimeInfo("onnx", "qsegment.runtimes.onnxrt:OnnxRuntime", "ONNX Runtime, float32"),
    RuntimeInfo("onnx-int8", "qsegment.runtimes.onnxrt:OnnxInt8Runtime",
                "ONNX Runtime, static int8 (QDQ)"),
    RuntimeInfo("mct-int8", "qsegment.runtimes.onnxrt:MctOnnxRuntime",
                "Sony MCT's int8 ONNX (the IMX500 path) in ONNX Runtime, at its fixed size",
                checkpoint=False, suffix=".onnx"),
    RuntimeInfo("tflite-micro", "qsegment.runtimes.tflm:MicroModel",
                "a fully int8 .tflite in the TFLite-Micro interpreter, at its fixed size",
                checkpoint=False, suffix=".tflite"),
):
    register_runtime(_info)

DEFAULT_RUNTIME = "tflite-int8"  # the fastest on a CPU (docs/BENCHMARKS.md)


def checkpoint_runtimes() -> list[str]:
    """Names of the runtimes that run a float checkpoint, in registry order."""
    return [name for name, info in RUNTIMES.items() if info.checkpoint]


def _info(name: str, checkpoint: bool) -> RuntimeInfo:
    usable = {n: RUNTIMES[n] for n in (checkpoint_runtimes() if checkpoint else RUNTIMES)}
    return lookup(usable, name, "runtime")


def open_runtime(name: str, model: nn.Module, weights: Path | None = None) -> Runtime:
    """``model`` on the runtime ``name``; ``weights`` (its .safetensors file) lets int8
    runtimes use the files shipped beside it."""
    runtime = _info(name, checkpoint=True).load().from_model(model, weights)
    return with_shipped_tiling(runtime, read_manifest(weights) if weights is not None else {})


def open_weights(name: str, weights: Path, threads: int | None = None) -> Runtime:
    """The runtime ``name`` for a weights file: from the files shipped beside it where the
    runtime can run them alone (no PyTorch), on ``threads`` threads (default: one per CPU;
    one per process where several share a machine, e.g. ``qsegment batch``'s workers),
    else from the network the weights build."""
    cls = _info(name, checkpoint=True).load()
    manifest = read_manifest(weights)
    if reason := manifest.get("unsupported", {}).get(name):
        raise ModelFileError(f"{weights.stem} cannot run on the {name} runtime (publishing it "
                             f"failed: {reason}); choose another --runtime, e.g. torch")
    runtime = cls.from_weights(weights, threads) if hasattr(cls, "from_weights") else None
    if runtime is None:
        from ..pretrained import load_model

        runtime = cls.from_model(load_model(weights)[0], weights)
    return with_shipped_tiling(runtime, manifest)


def open_file(path: str | Path, name: str | None = None) -> Runtime:
    """The runtime of a model file, chosen by ``name`` or by the file's suffix."""
    path = Path(path)
    if name is None:
        matches = [n for n, info in RUNTIMES.items() if info.suffix == path.suffix]
        if not matches:
            known = ", ".join(sorted({i.suffix for i in RUNTIMES.values() if i.suffix}))
            raise ValueError(f"{path}: no runtime opens {path.suffix or 'suffix-less'} files "
                             f"(known: {known})")
        name = matches[0]
    return _info(name, checkpoint=False).load().from_file(path)


__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "RuntimeInfo", "checkpoint_runtimes", "open_file",
           "open_runtime", "open_weights", "register_runtime"]
