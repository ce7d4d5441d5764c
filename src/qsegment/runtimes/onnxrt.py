"""ONNX Runtime on the CPU: float32, static int8, and Sony MCT's int8 ONNX.

One session wrapper serves all three; each opens an ONNX file (a checkpoint becomes
one in :mod:`qsegment.export.cpu`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..card import Card
from .base import ModelFileError, Runtime, depth_to_space, shipped_int8_onnx

if TYPE_CHECKING:
    from onnxruntime import SessionOptions

MCT_DOMAIN = "mct_quantizers"


class OnnxRuntime(Runtime):
    """An ONNX file in an ONNX Runtime CPU session (input ``image``, output logits)."""

    name = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None, size_multiple: int = 1,
                 options: SessionOptions | None = None) -> None:
        import onnxruntime as ort

        if options is None:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.size_multiple = size_multiple

    @classmethod
    def from_file(cls, path: str | Path) -> OnnxRuntime:
        return cls(path)

    def logits(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x, self.path.name)
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


class OnnxInt8Runtime(OnnxRuntime):
    """Static int8 ONNX: the ``NAME.int8.onnx`` shipped beside the weights, or one that
    :func:`qsegment.export.cpu.onnx_int8` quantized."""

    name = "onnx-int8"

    @classmethod
    def from_weights(cls, weights: Path, threads: int | None = None) -> OnnxInt8Runtime | None:
        """The shipped file (no PyTorch needed) on ``threads`` threads (default: one per
        CPU); None where there is none."""
        shipped = shipped_int8_onnx(weights)
        return None if shipped is None else cls(shipped[0], threads, size_multiple=shipped[1])


class MctOnnxRuntime(OnnxRuntime):
    """MCT's int8 ONNX (custom ops of the ``mct_quantizers`` domain registered), at the
    fixed square size it was exported for; its card lies beside it."""

    name = "mct-int8"

    def __init__(self, path: str | Path, threads: int | None = 1,
                 output_phases: int | None = None) -> None:
        """``output_phases``: k where the graph returns k x k phases of the map (default:
        the card's ``output_phases``, else 1)."""
        import mct_quantizers

        path = require_mct_onnx(path)
        super().__init__(path, threads, options=mct_quantizers.get_ort_session_options())
        self.size = self.fixed_size = int(self.session.get_inputs()[0].shape[-1])
        self.size_multiple = self.size
        self.card = Card.beside(path)
        self.output_phases = (int(self.card.get("output_phases", 1)) if output_phases is None
                              else output_phases)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Full-resolution logits: a network whose sensor graph returns 2x2 (or kxk) phases
        has them interleaved here, as the camera host does."""
        out = super().logits(x)
        return depth_to_space(out, self.output_phases) if self.output_phases > 1 else out

    @classmethod
    def from_file(cls, path: str | Path) -> MctOnnxRuntime:
        return cls(path)


def is_mct_onnx(path: str | Path) -> bool:
    """Whether an ONNX file holds MCT's quantizer ops (the IMX500 converter needs them)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.domain == MCT_DOMAIN for node in graph.node)


def require_mct_onnx(path: str | Path) -> Path:
    """``path`` if it is an MCT-quantized ONNX, else a :class:`ModelFileError` saying why."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        ok = is_mct_onnx(path)
    except (DecodeError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not a readable ONNX file ({err})") from err
    if not ok:
        raise ModelFileError(f"{path}: not an MCT-quantized ONNX (no {MCT_DOMAIN} ops; a float "
                             "export cannot run on the IMX500): make one with `qsegment quantize`")
    return path
