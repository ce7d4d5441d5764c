"""Fully int8 TFLite models, for microcontrollers and for fast CPU inference.

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
:class:`LiteRtInt8Model`, the ``tflite-int8`` runtime of ``qsegment predict``,
builds one flatbuffer per image shape (cached on disk) and runs it with LiteRT's
XNNPACK kernels.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this at start-up
    import torch
    from torch import nn


class ConversionError(RuntimeError):
    """The int8 TFLite conversion failed; the message carries the converter's log."""


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2, by Python or by native code
    (TFLite-Micro and LiteRT log there); the lines are in the yielded list afterwards."""
    lines: list[str] = []
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().splitlines())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Conv2d -> BatchNorm2d pair (inside an nn.Sequential)
    folded into one convolution: the integer kernels then quantize the real output."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


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


def _prepared(model: nn.Module, shape: Sequence[int]) -> tuple[object, object]:
    """(quantizer, ``model`` captured at ``shape`` with PT2E observers inserted)."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    graph = torch.export.export(fold_batchnorm(model), (torch.zeros(*shape),),
                                strict=True).module()
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
        raise ValueError("give either calibration images or recorded observers")
    with captured_stderr() as log, contextlib.redirect_stdout(io.StringIO()):
        try:
            return _convert_int8(model, calibration, observers, shape)
        except Exception as err:
            raise ConversionError(f"the TFLite conversion failed: {err}\n"
                                  + "\n".join(log[-20:])) from err


def _convert_int8(model: nn.Module, calibration: torch.Tensor | None,
                  observers: dict[str, torch.Tensor] | None,
                  shape: Sequence[int] | None) -> bytes:
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    if calibration is not None:
        shape = (1, *calibration.shape[1:])
    base, prepared = _prepared(model, shape)
    if calibration is not None:
        with torch.no_grad():
            for image in calibration:
                prepared(image[None])
    else:
        expected = {k for k in prepared.state_dict() if "activation_post_process" in k}
        if expected != set(observers):
            raise ValueError(f"the recorded observers do not belong to this model "
                             f"({len(set(observers) ^ expected)} names differ)")
        prepared.load_state_dict(observers, strict=False)
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
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

    from ..checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in observers.items()},
                                             str(tmp)))
    return path


def load_observers(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _digest(*tensor_dicts: dict[str, torch.Tensor]) -> str:
    """Short content hash of named tensors: the cache key of what was built from them."""
    import torch

    digest = hashlib.sha256()
    for tensors in tensor_dicts:
        for name, value in sorted(tensors.items()):
            digest.update(name.encode())
            digest.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def observers_for(model: nn.Module, sidecar: Path | None = None,
                  data: str | Path | None = None, count: int = 8) -> dict[str, torch.Tensor]:
    """The calibrated observers of ``model``: the ``sidecar`` file shipped beside its
    weights, else calibrated now on ``count`` CHASE_DB1 training images at full
    resolution and cached (keyed by the weights) in :func:`cache_dir`."""
    import torch

    from ..engine.infer import training_inputs

    if sidecar is not None and sidecar.is_file():
        return load_observers(sidecar)
    cached = cache_dir() / f"{_digest(model.state_dict())}.observers.safetensors"
    if cached.is_file():
        return load_observers(cached)
    print(f"qsegment: calibrating the int8 model on {count} CHASE_DB1 training images "
          f"(once; cached in {cached.parent})", file=sys.stderr)
    observers = calibrate(model, torch.cat(list(training_inputs(count, data))))
    save_observers(cached, observers)
    return observers


def publish_int8(model: nn.Module, weights: Path, shape: tuple[int, int] = (960, 1000),
                 data: str | Path | None = None) -> list[Path]:
    """Ship the ``tflite-int8`` runtime beside ``weights`` (NAME.safetensors): the observers
    calibrated on CHASE_DB1 training images (``NAME.int8-observers.safetensors``) and the
    model built for one common padded shape (``NAME.int8-HxW.tflite``; a CHASE image)."""
    from ..checkpoint import atomic_write

    stem = weights.with_suffix(".int8")
    observers = observers_for(model, data=data)
    built = Path(f"{stem}-{shape[0]}x{shape[1]}.tflite")
    flatbuffer = convert_int8(model, observers=observers, shape=(1, 3, *shape))
    atomic_write(built, lambda tmp: tmp.write_bytes(flatbuffer))
    return [save_observers(Path(f"{stem}-observers.safetensors"), observers), built]


def quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero point) of an interpreter's tensor details (LiteRT or TFLite-Micro)."""
    q = detail["quantization_parameters"]
    return float(q["scales"][0]), int(q["zero_points"][0])


def input_lut(scale: float, zero_point: int) -> np.ndarray:
    """int8 model input for each 8-bit pixel value 0..255 (the model reads pixel/255)."""
    pixels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.round(pixels / scale) + zero_point, -128, 127).astype(np.int8)


def cache_dir() -> Path:
    """Where built flatbuffers are kept: ``$QSEGMENT_CACHE``, else ~/.cache/qsegment."""
    root = os.environ.get("QSEGMENT_CACHE") or Path.home() / ".cache" / "qsegment"
    return Path(root) / "tflite"


def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(N, H, W, 3) int8 model input of an (N, 3, H, W) float batch in [0, 1]."""
    q = np.round(x.transpose(0, 2, 3, 1) / scale) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_output(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(N, 1, H, W) float logits of an (N, H, W, 1) int8 output."""
    return ((q.astype(np.float32) - zero_point) * scale).transpose(0, 3, 1, 2)


class Int8Session:
    """A fully int8 flatbuffer in LiteRT with its lookup tables; one input shape. The
    default XNNPACK kernels run on ``threads`` threads; ``reference=True`` takes TFLite's
    reference kernels instead (the integer arithmetic TFLite-Micro implements)."""

    def __init__(self, flatbuffer: bytes, threads: int = 1, reference: bool = False) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        kernels = OpResolverType.BUILTIN_REF if reference else OpResolverType.AUTO
        with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_content=flatbuffer, num_threads=threads,
                                           experimental_op_resolver_type=kernels)
            self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        out = self.interpreter.get_output_details()[0]
        self.input_index, self.output_index = inp["index"], out["index"]
        self.shape = tuple(int(d) for d in inp["shape"])  # (1, H, W, 3)
        self.input_quantization, self.output_quantization = quantization(inp), quantization(out)
        self.lut = input_lut(*self.input_quantization)
        # scale 1/255 and zero point -128 make the lookup a flip of the sign bit
        self.lut_is_flip = np.array_equal(self.lut.astype(np.int16), np.arange(-128, 128))
        scale, zero = self.output_quantization
        codes = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64)
        # indexed by the output's bytes read as uint8: probability of each int8 logit
        self.probability_lut = (1 / (1 + np.exp(-(codes - zero) * scale))).astype(np.float32)

    def run(self, quantized: np.ndarray) -> np.ndarray:
        """int8 (H, W, 1) output of an int8 (1, H, W, 3) input."""
        self.interpreter.set_tensor(self.input_index, quantized)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Float logits (N, 1, H, W) of an (N, 3, H, W) float batch in [0, 1]."""
        q = quantize_input(x, *self.input_quantization)
        outputs = np.stack([self.run(image[None]) for image in q])
        return dequantize_output(outputs, *self.output_quantization)


class LiteRtInt8Model:
    """A model as fully int8 TFLite, run by LiteRT (XNNPACK kernels) on the CPU.

    ``runner(x)`` maps an (N, 3, H, W) float32 batch in [0, 1] to float logits, like
    :class:`qsegment.export.onnx.OnnxModel`; :meth:`probability_uint8` is the fast path
    from an 8-bit RGB image (a lookup table quantizes the input, another gives the
    probability of each int8 output). One flatbuffer per input shape: looked up as
    ``{prebuilt}-{H}x{W}.tflite`` (shipped beside the weights), then in
    :func:`cache_dir`, else built from ``observers`` (about 10 s, once) and cached,
    keyed by the weights and observers.
    """

    size_multiple = 8

    def __init__(self, model: nn.Module, observers: dict[str, torch.Tensor],
                 threads: int | None = None, prebuilt: str | Path | None = None) -> None:
        self.model = model.eval()
        self.observers = observers
        self.threads = threads or os.cpu_count() or 1
        self.prebuilt = prebuilt
        self.key = _digest(model.state_dict(), observers)
        self._sessions: dict[tuple[int, int], Int8Session] = {}

    def flatbuffer_path(self, height: int, width: int) -> Path:
        """Where the flatbuffer for a padded height x width input is (or will be) cached."""
        return cache_dir() / f"{self.key}-{height}x{width}.tflite"

    def session(self, height: int, width: int) -> Int8Session:
        """The interpreter for a padded height x width input, built on first use."""
        if (height, width) not in self._sessions:
            self._sessions[(height, width)] = Int8Session(self._flatbuffer(height, width),
                                                       self.threads)
        return self._sessions[(height, width)]

    def _flatbuffer(self, height: int, width: int) -> bytes:
        from ..checkpoint import atomic_write

        path = self.flatbuffer_path(height, width)
        shipped = self.prebuilt and Path(f"{self.prebuilt}-{height}x{width}.tflite")
        for found in (shipped, path):
            if found and found.is_file():
                return found.read_bytes()
        print(f"qsegment: building the int8 TFLite model for {height}x{width} inputs "
              f"(once, about 10 s; cached in {path.parent})", file=sys.stderr)
        flatbuffer = convert_int8(self.model, observers=self.observers,
                                  shape=(1, 3, height, width))
        atomic_write(path, lambda tmp: tmp.write_bytes(flatbuffer))
        return flatbuffer

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session(*x.shape[2:]).logits(x)

    def probability_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """Vessel probability (H, W) of an (H, W, 3) uint8 RGB image, padded to the
        network's multiple with black (the quantized 0) and cropped back."""
        height, width = rgb.shape[:2]
        m = self.size_multiple
        session = self.session(-(-height // m) * m, -(-width // m) * m)
        q = np.full(session.shape, session.input_quantization[1], dtype=np.int8)
        if session.lut_is_flip:
            np.bitwise_xor(rgb, 0x80, out=q.view(np.uint8)[0, :height, :width])
        else:
            np.take(session.lut, rgb, out=q[0, :height, :width])
        out = session.run(q)[:height, :width, 0]
        return session.probability_lut[out.view(np.uint8)]
