"""Fully int8 TFLite conversion, for microcontrollers and for fast CPU inference.

Conversion (see docs/DEPLOY_MCU.md for why this route): BatchNorm is folded into
the convolutions, the network is captured with ``torch.export`` (strict, so the
quantizer sees module boundaries) and quantized post-training with PT2E and
LiteRT-Torch's quantizer (int8 symmetric per-channel weights, int8 activations),
plus one rule of ours: nearest up-sampling shares its input's quantization, so
the decoder stays integer. ``litert_torch.convert`` then writes a flatbuffer with
NHWC int8 input and output.

A TFLite graph has a fixed input shape, but the calibrated ranges do not depend
on it (the network is fully convolutional): :func:`calibrate` records the PT2E
observers once, and :func:`convert_int8` re-applies them at any shape. That is how
the ``tflite-int8`` runtime (:mod:`qsegment.runtimes.litert`) gets one flatbuffer
per image shape, cached on disk.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..console import captured_stderr
from ..errors import QsegmentError, UsageError
from ..files import atomic_write, user_cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..engine.config import TrainConfig
    from ..models import SegmentationModel

log = logging.getLogger(__name__)
MIXTURE_WINDOWS = 64  # calibration windows of other data than CHASE_DB1 whole
WINDOW = 512  # their side


class ConversionError(QsegmentError, RuntimeError):
    """The int8 TFLite conversion failed; the message carries the converter's log."""


def _conv_bn_pairs(model: nn.Module) -> Iterator[tuple[nn.Sequential, int, str]]:
    """Each Conv2d -> BatchNorm2d pair inside an nn.Sequential of ``model``: (the
    Sequential, the convolution's index in it, the convolution's name)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1],
                                                                   nn.BatchNorm2d):
                    yield module, i, f"{name}.{i}" if name else str(i)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv2d -> BatchNorm2d pair (inside an nn.Sequential)
    folded into one convolution: the integer kernels then quantize the real output."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module, i, _ in list(_conv_bn_pairs(model)):
        conv, bn = cast(nn.Conv2d, module[i]), cast(nn.BatchNorm2d, module[i + 1])
        module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


def load_folded(model: nn.Module, graph: nn.Module) -> None:
    """Write the weights of ``graph`` (``model`` with its BatchNorm folded, captured and
    trained: :func:`~qsegment.export.onnx.fake_quantized`) into ``model``, each folded
    BatchNorm made the identity (its bias the folded bias when the convolution has none),
    so that :func:`fold_batchnorm` gives ``graph``'s weights again and the int8 export
    quantizes what was trained."""
    import torch
    from torch import nn

    trained = dict(graph.named_parameters())
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trained.items():
            if name in own:
                own[name].copy_(value)
        for module, i, name in _conv_bn_pairs(model):
            conv, bn = cast(nn.Conv2d, module[i]), cast(nn.BatchNorm2d, module[i + 1])
            bn.weight.fill_(1.0)
            cast(torch.Tensor, bn.running_mean).zero_()
            cast(torch.Tensor, bn.running_var).fill_(1.0 - bn.eps)
            bn.bias.copy_(trained[f"{name}.bias"] if conv.bias is None else
                          torch.zeros_like(bn.bias))


def _quantizers() -> tuple[object, object]:
    """(LiteRT-Torch's static int8 quantizer, that quantizer plus our up-sampling rule)."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e.quantizer import (
        ComposableQuantizer,
        QuantizationAnnotation,
        Quantizer,
        SharedQuantizationSpec,
    )

    class ShareUpsampleQuantization(Quantizer):
        """Nearest up-sampling only copies values: give its output its input's scale, so
        no float island (dequantize, resize, quantize) is left in the decoder."""

        def annotate(self, graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for node in graph_module.graph.nodes:
                if node.op == "call_function" and "upsample_nearest" in str(node.target):
                    source = node.args[0]
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={source: SharedQuantizationSpec(source)},
                        output_qspec=SharedQuantizationSpec((source, node)), _annotated=True)
            return graph_module

        def validate(self, graph_module: torch.fx.GraphModule) -> None:
            pass

    base = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True,
                                                         is_dynamic=False))
    return base, ComposableQuantizer([base, ShareUpsampleQuantization()])


def _prepared(model: nn.Module, shape: Sequence[int]
              ) -> tuple[object, torch.fx.GraphModule]:
    """(quantizer, ``model`` captured at ``shape`` with PT2E observers inserted)."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    example = torch.zeros(*shape, device=next(model.parameters()).device)
    graph = torch.export.export(fold_batchnorm(model), (example,), strict=True).module()
    base, quantizer = _quantizers()
    return base, quantize_pt2e.prepare_pt2e(graph, quantizer)


def calibrate(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The PT2E observers' state after seeing ``images`` (N, 3, H, W), one at a time:
    the calibrated ranges, reusable at any input shape by :func:`convert_int8`."""
    import torch

    with captured_stderr(), contextlib.redirect_stdout(io.StringIO()):
        _, prepared = _prepared(model, (1, *images.shape[1:]))
        with torch.no_grad():
            for image in images:
                prepared(image[None])
    return {k: v.clone() for k, v in prepared.state_dict().items()
            if "activation_post_process" in k}


def convert_int8(model: nn.Module, calibration: torch.Tensor | None = None, *,
                 observers: dict[str, torch.Tensor] | None = None,
                 shape: Sequence[int] | None = None) -> bytes:
    """A fully int8 TFLite flatbuffer (NHWC int8 input and output) of ``model``.

    Either calibrated on ``calibration`` (N, 3, H, W), at that size, or built at
    ``shape`` (1, 3, H, W) from ``observers`` that :func:`calibrate` recorded. The
    toolchain's log lines are kept out of the way and shown only on failure.
    """
    if (calibration is None) == (observers is None):
        raise UsageError("give either calibration images or recorded observers")
    if calibration is not None:
        shape = (1, *calibration.shape[1:])
    elif shape is None:
        raise UsageError("give the input shape to build the recorded observers' model at")
    with captured_stderr() as lines, contextlib.redirect_stdout(io.StringIO()):
        try:
            return _convert_int8(model, calibration, observers, shape)
        except ConversionError:
            raise
        except Exception as err:  # torch.export, PT2E and the MLIR legalizer raise many
            # unrelated types; every one means the toolchain cannot convert this model
            raise ConversionError(f"the TFLite conversion failed: {err}\n"
                                  + "\n".join(lines[-20:])) from err


def quantized_graph(model: nn.Module, shape: Sequence[int],
                    calibration: torch.Tensor | None = None,
                    observers: dict[str, torch.Tensor] | None = None
                    ) -> tuple[object, torch.fx.GraphModule]:
    """(the quantizer, ``model`` captured at ``shape`` with PT2E's quantize/dequantize
    pairs), calibrated on ``calibration`` or with the ``observers`` :func:`calibrate`
    recorded: the int8 network every flatbuffer is converted from, and what
    :func:`~qsegment.export.onnx.export_onnx_int8` writes as ONNX."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    base, prepared = _prepared(model, shape)
    if calibration is not None:
        with torch.no_grad():
            for image in calibration:
                prepared(image[None])
    elif observers is not None:
        expected = {k for k in prepared.state_dict() if "activation_post_process" in k}
        if expected != set(observers):
            raise ConversionError(f"the recorded observers do not belong to this model "
                             f"({len(set(observers) ^ expected)} names differ)")
        prepared.load_state_dict(observers, strict=False)
    return base, quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)


def _convert_int8(model: nn.Module, calibration: torch.Tensor | None,
                  observers: dict[str, torch.Tensor] | None, shape: Sequence[int]) -> bytes:
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    base, quantized = quantized_graph(model, shape, calibration, observers)
    nhwc = litert_torch.to_channel_last_io(quantized, args=[0], outputs=[0])
    example = torch.zeros(shape[0], shape[2], shape[3], shape[1])
    edge = litert_torch.convert(nhwc, (example,), quant_config=QuantConfig(pt2e_quantizer=base))
    with tempfile.TemporaryDirectory(prefix="qsegment-tflite-") as tmp:
        path = Path(tmp) / "model.tflite"
        edge.export(str(path))
        return path.read_bytes()


def save_observers(path: str | Path, observers: dict[str, torch.Tensor]) -> Path:
    """Write calibrated observers (safetensors, atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in observers.items()},
                                             str(tmp)))
    return path


def load_observers(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def weights_digest(*tensor_dicts: dict[str, torch.Tensor]) -> str:
    """Short content hash of named tensors: the cache key of what was built from them."""
    import torch

    digest = hashlib.sha256()
    for tensors in tensor_dicts:
        for name, value in sorted(tensors.items()):
            digest.update(name.encode())
            digest.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def observers_for(model: SegmentationModel, weights: Path | None = None
                  ) -> dict[str, torch.Tensor]:
    """The calibrated observers of ``model``: the sidecar file shipped beside its
    ``weights``, else calibrated now on the photographs it learned from
    (:func:`calibration_inputs`, as its card records them) and cached (keyed by the
    weights and the :func:`calibration_view`) in :func:`cache_dir`."""
    from ..engine.config import TrainConfig
    from ..pretrained import read_card

    if weights is not None:
        sidecar = weights.with_suffix(".int8-observers.safetensors")
        if sidecar.is_file():
            return load_observers(sidecar)
    card = read_card(weights) if weights is not None else {}
    recipe = TrainConfig.recorded(card.get("config") or {})
    cached = cache_dir() / (f"{weights_digest(model.state_dict())}."
                            f"{calibration_view(recipe)}.observers.safetensors")
    if cached.is_file():
        return load_observers(cached)
    inputs = calibration_inputs(model, recipe)
    log.warning("calibrating the int8 model on %d training inputs (once; cached in %s)",
                len(inputs), cached.parent)
    observers = calibrate(model, inputs)
    save_observers(cached, observers)
    return observers


def calibration_view(recipe: TrainConfig) -> str:
    """How a model trained by ``recipe`` is calibrated (:func:`calibration_inputs`):
    "whole" images for CHASE_DB1 alone at its own scale, else "windows"."""
    return "whole" if recipe.datasets == ["chasedb1"] and not recipe.label_scale else "windows"


def calibration_inputs(model: SegmentationModel, recipe: TrainConfig) -> torch.Tensor:
    """What the int8 ranges are calibrated on: the training photographs of the data the
    model learned from (``recipe``, its card's). CHASE_DB1 alone at its own scale: its
    first 8 training images whole (as every shipped CHASE_DB1 model was calibrated). Any
    other data (a mixture, photographs rescaled to the training calibre, a folder of
    photographs of several sizes): :data:`MIXTURE_WINDOWS` windows of :data:`WINDOW` px
    drawn from all of them as the run saw them
    (:func:`~qsegment.deploy.tiling.calibration_tiles`, seeded), so that each camera's
    activations set the ranges: calibrated on CHASE_DB1 alone, ``qsegment-imx-av`` lost
    0.017 F1 in int8 on LES-AV's test split, on its own photographs 0.009
    (docs/RESULTS.md)."""
    import torch

    from ..data import training_inputs
    from ..data.mixture import run_parts
    from ..datasets import open_dataset
    from ..deploy.tiling import calibration_tiles

    if calibration_view(recipe) == "whole":
        dataset = open_dataset(recipe.folders[0])
        return torch.cat(list(training_inputs(8, dataset, multiple=model.size_multiple)))
    train = [sample for part in run_parts(recipe) for sample in part.train]
    return torch.from_numpy(calibration_tiles(train, WINDOW, MIXTURE_WINDOWS)[1])


def cache_dir() -> Path:
    """Where built flatbuffers are kept: ``tflite`` in the user cache
    (:func:`~qsegment.files.user_cache_dir`)."""
    return user_cache_dir("tflite")

