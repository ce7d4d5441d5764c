"""Float ONNX export and static int8 quantization for ONNX Runtime on the CPU (run by
the ``onnx`` and ``onnx-int8`` runtimes, :mod:`qsegment.runtimes.onnxrt`).

The legacy TorchScript-based exporter is used (``dynamo=False``): torch >= 2.13
defaults to the dynamo exporter, which needs ``onnxscript`` (not in this
project's environment), and the legacy one gives dynamic H and W directly.
PyTorch is imported inside the functions that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..files import atomic_write

if TYPE_CHECKING:
    from torch import nn

    from ..datasets import FundusDataset

OPSET = 17


def export_onnx(model: nn.Module, path: str | Path, example_size: tuple[int, int] = (256, 256)
                ) -> Path:
    """Write ``model`` as ONNX with input ``image`` (N, 3, H, W) and output ``logits``;
    N, H and W are dynamic (H and W must stay multiples of the model's size_multiple)."""
    import warnings

    import torch

    model = model.eval()
    example = torch.rand(1, 3, *example_size)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # tracer warnings about the shape checks
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": dynamic, "logits": dynamic})

    atomic_write(path, write)
    return path


def quantize_onnx_int8(fp32_path: str | Path, path: str | Path, size: int | None = None,
                       count: int = 4, data: str | Path | FundusDataset | None = None,
                       multiple: int = 1) -> Path:
    """Static int8 quantization for ONNX Runtime on the CPU (QDQ, per-channel int8
    weights, uint8 activations: the u8 x s8 pairing that VNNI kernels take), calibrated
    with min/max on ``count`` training images at ``size`` (None: full resolution, padded
    to the network's ``multiple``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ..data import training_inputs

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = ({"image": x.numpy()}
                          for x in training_inputs(count, data, size, multiple))

        def get_next(self) -> dict | None:
            return next(self.items, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    def write(tmp: Path) -> None:
        prepared = tmp.with_suffix(".pre.onnx")  # shapes inferred, graph optimised first
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        finally:
            prepared.unlink(missing_ok=True)

    path = Path(path)
    atomic_write(path, write)
    return path
