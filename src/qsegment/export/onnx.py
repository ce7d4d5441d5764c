"""Float ONNX export, and int8 ONNX (QDQ) for ONNX Runtime and OpenVINO on the CPU (run
by the ``onnx``, ``onnx-int8`` and ``openvino`` runtimes, :mod:`qsegment.runtimes`).

:func:`export_onnx_int8` writes the int8 network the ``tflite-int8`` runtime's
flatbuffers hold (the same PT2E quantization, from the same recorded ranges), so that
every int8 runtime draws the same masks; :func:`fake_quantized` is that network as a
PyTorch module, which quantization-aware training (``qsegment train --qat``) steps
through; :func:`quantize_onnx_int8` is ONNX Runtime's own static quantization (min/max
ranges), which the benchmarks compare.

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
    import torch
    from torch import nn

    from ..datasets import FundusDataset

OPSET = 17


def export_onnx(model: nn.Module, path: str | Path, example_size: tuple[int, int] = (256, 256)
                ) -> Path:
    """Write ``model`` as ONNX with input ``image`` (N, 3, H, W) and output ``logits``;
    N, H and W are dynamic (H and W must stay multiples of the model's size_multiple)."""
    path = Path(path)
    atomic_write(path, lambda tmp: _trace(model.eval(), example_size, tmp))
    return path


def _trace(module: nn.Module, example_size: tuple[int, int], path: Path) -> None:
    """``module`` traced on an example of ``example_size`` and written as ONNX at
    ``path``, with N, H and W dynamic."""
    import warnings

    import torch

    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # tracer warnings about the shape checks
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (torch.rand(1, 3, *example_size),), str(path), dynamo=False,
                          opset_version=OPSET, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": dynamic, "logits": dynamic})


def export_onnx_int8(model: nn.Module, observers: dict[str, torch.Tensor], path: str | Path,
                     example_size: tuple[int, int] = (256, 256)) -> Path:
    """Write ``model`` as static int8 ONNX (QDQ) with the quantization of the
    ``tflite-int8`` runtime's flatbuffers, from the ranges ``observers`` that
    :func:`~qsegment.export.tflite.calibrate` recorded: int8 symmetric per-channel
    weights (stored as int8) and the same activation grids, written as uint8 (the
    int8 grid moved up by 128: the same values, in the u8 x s8 pairing CPU kernels take).

    One change, for CPUs without VNNI: the input's quantization is left out, so the
    first convolution runs in float. Its uint8 pixels against full-range int8 weights
    overflow the 16-bit pair sums of AVX2's VPMADDUBSW, in OpenVINO and ONNX Runtime,
    and change about 1% of the mask (issue #35). The input is multiplied by
    255 x its scale instead: on an 8-bit image that is the value LiteRT's int8 input
    holds.

    Raises:
        ConversionError: the network cannot be captured or quantized, or its input
            scale does not map the 256 pixel values one to one onto its grid.
    """
    import torch

    graph = fake_quantized(model, observers, example_size)
    path = Path(path)

    def write(tmp: Path) -> None:
        _trace(graph, example_size, tmp)
        _store_int8_weights(tmp)

    with torch.no_grad():
        atomic_write(path, write)
    return path


def fake_quantized(model: nn.Module, observers: dict[str, torch.Tensor],
                   example_size: tuple[int, int] = (256, 256)) -> torch.fx.GraphModule:
    """The int8 network :func:`export_onnx_int8` writes, as a PyTorch module: ``model``
    with its BatchNorm folded and each quantization (the ranges ``observers`` recorded) a
    ``torch.fake_quantize_*`` op, any input size and batch. Quantization-aware training
    steps through it: the rounding passes gradients straight through, the ranges stay
    (:func:`~qsegment.export.tflite.load_folded` takes its weights back)."""
    from .tflite import quantized_graph

    return _as_fake_quantization(quantized_graph(model, (1, 3, *example_size),
                                           observers=observers)[1])


def _as_fake_quantization(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` (PT2E's quantize/dequantize pairs) with each pair as the
    ``torch.fake_quantize_*`` op whose ONNX form is QuantizeLinear -> DequantizeLinear,
    activations on uint8 and the input's pair as a multiplication
    (:func:`export_onnx_int8`)."""
    import torch

    from .tflite import ConversionError

    ops = torch.ops.quantized_decomposed
    nodes = graph.graph
    for node in list(nodes.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":  # torch.export's
            nodes.erase_node(node)  # check of the captured shape: H and W stay dynamic
            continue
        if node.target not in (ops.quantize_per_tensor.default,
                               ops.quantize_per_channel.default):
            continue
        with nodes.inserting_after(node):
            if node.target == ops.quantize_per_channel.default:  # weights, int8 -127..127
                tensor, scale, zero_point, axis = node.args[:4]
                setattr(graph, zero_point.target,
                        getattr(graph, zero_point.target).to(torch.int32))
                fake = nodes.call_function(torch.fake_quantize_per_channel_affine,
                                           (tensor, scale, zero_point, axis, -128, 127))
            elif node.args[0].op == "placeholder":
                tensor, scale = node.args[:2]
                if 255 * abs(1 / (255 * scale) - 1) >= 0.5:  # round(p / 255 / scale) != p
                    raise ConversionError(f"the input scale {scale:.6g} does not hold the "
                                          "256 pixel values one to one")
                fake = nodes.call_function(torch.mul, (tensor, 255 * scale))
            else:  # activations, int8 -128..127 with a zero point: the same grid on uint8
                tensor, scale, zero_point = node.args[:3]
                fake = nodes.call_function(torch.fake_quantize_per_tensor_affine,
                                           (tensor, scale, zero_point + 128, 0, 255))
        for dequantize in list(node.users):
            dequantize.replace_all_uses_with(fake)
            nodes.erase_node(dequantize)
        nodes.erase_node(node)
    return torch.fx.GraphModule(graph, nodes)  # a fresh module: the exporter calls eval()


def _store_int8_weights(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` with each constant QuantizeLinear (a weight's)
    computed: the weights stored as int8, read by DequantizeLinear (a quarter of the
    size, and the form ONNX Runtime's own quantizer writes)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    network = onnx.load(str(path))
    graph = network.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # the exporter shares equal zero points through Identity
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    stored = []
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in constants:
            continue
        weights, scale, zero_point = (constants[name] for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [-1 if d == axis else 1 for d in range(weights.ndim)]
        codes = np.rint(weights / scale.reshape(shape)) + zero_point.reshape(shape)
        stored.append(numpy_helper.from_array(np.clip(codes, -128, 127).astype(np.int8),
                                              node.output[0]))
        graph.node.remove(node)
    graph.initializer.extend(stored)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    onnx.save(network, str(path))


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
