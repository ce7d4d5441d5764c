"""Float ONNX export and an ONNX Runtime session that runs it on the CPU.

The legacy TorchScript-based exporter is used (``dynamo=False``): torch >= 2.13
defaults to the dynamo exporter, which needs ``onnxscript`` (not in this
project's environment), and the legacy one gives dynamic H and W directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_write

OPSET = 17


def export_onnx(model: nn.Module, path: str | Path, example_size: tuple[int, int] = (256, 256)
                ) -> Path:
    """Write ``model`` as ONNX with input ``image`` (N, 3, H, W) and output ``logits``;
    N, H and W are dynamic (H and W must stay multiples of the model's size_multiple)."""
    import warnings

    model = model.eval()
    example = torch.rand(1, 3, *example_size)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # tracer warnings about the shape checks
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, example, str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": dynamic, "logits": dynamic})

    atomic_write(path, write)
    return path


class OnnxModel:
    """An ONNX Runtime CPU session behaving like the model for inference:
    ``runtime(x)`` maps an (N, 3, H, W) float32 array to logits."""

    def __init__(self, path: str | Path, threads: int | None = None, size_multiple: int = 8
                 ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.size_multiple = size_multiple

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})[0]
