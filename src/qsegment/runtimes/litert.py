"""Fully int8 TFLite models run by LiteRT on the CPU: the ``tflite-int8`` runtime.

:class:`Int8Session` is one flatbuffer in one interpreter, with lookup tables that
quantize 8-bit pixels and turn int8 logits into probabilities, so the path from a
uint8 image to the mask never leaves numpy. :class:`LiteRtInt8` holds a model's
sessions, one per padded image shape (TFLite graphs have a fixed shape), each opened
from a flatbuffer file: shipped beside the weights, or made by the caller for another
shape (:func:`qsegment.export.cpu.litert_int8` builds and caches them). The
interpreters kept alive are bounded.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np

from ..console import captured_stderr
from ..images import round_up
from .base import ModelFileError, Runtime, read_manifest


def quantization(detail: dict) -> tuple[float, int]:
    """(scale, zero point) of an interpreter's tensor details (LiteRT or TFLite-Micro)."""
    q = detail["quantization_parameters"]
    return float(q["scales"][0]), int(q["zero_points"][0])


def input_lut(scale: float, zero_point: int) -> np.ndarray:
    """int8 model input for each 8-bit pixel value 0..255 (the model reads pixel/255)."""
    pixels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.round(pixels / scale) + zero_point, -128, 127).astype(np.int8)

def quantize_input(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(N, H, W, 3) int8 model input of an (N, 3, H, W) float batch in [0, 1]."""
    q = np.round(x.transpose(0, 2, 3, 1) / scale) + zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def dequantize_output(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(N, C, H, W) float logits of an (N, H, W, C) int8 output."""
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
        """int8 (H, W, C) output of an int8 (1, H, W, 3) input."""
        self.interpreter.set_tensor(self.input_index, quantized)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Float logits (N, C, H, W) of an (N, 3, H, W) float batch in [0, 1]."""
        q = quantize_input(x, *self.input_quantization)
        outputs = np.stack([self.run(image[None]) for image in q])
        return dequantize_output(outputs, *self.output_quantization)


class LiteRtInt8(Runtime):
    """A model as fully int8 TFLite, run by LiteRT (XNNPACK kernels) on the CPU.

    :meth:`logits` takes an (N, 3, H, W) float32 batch in [0, 1]; :meth:`outputs_uint8`
    is the fast path from an 8-bit RGB image (a lookup table quantizes the input, another
    gives the probability of each int8 output). A TFLite graph has one input shape: an
    image is padded (black, bottom/right) up to the smallest shape in ``flatbuffers``
    (the files shipped beside the weights) that holds it, so nothing is built at run
    time. Only without such a shape, and where the caller gives ``build`` (the file for
    an exact padded height x width: export's job, which needs PyTorch), does an image
    run at its own padded shape. At most ``max_sessions`` interpreters stay alive (least
    recently used dropped first).
    """

    name = "tflite-int8"
    accepts_uint8 = True

    def __init__(self, flatbuffers: dict[tuple[int, int], Path], size_multiple: int,
                 build: Callable[[int, int], Path] | None = None,
                 threads: int | None = None, max_sessions: int = 2) -> None:
        self.flatbuffers = dict(sorted(flatbuffers.items(), key=lambda kv: kv[0][0] * kv[0][1]))
        self.size_multiple = size_multiple
        self.build = build
        self.threads = threads or os.cpu_count() or 1
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[tuple[int, int], Int8Session] = OrderedDict()

    @classmethod
    def from_weights(cls, weights: Path, threads: int | None = None) -> LiteRtInt8 | None:
        """The flatbuffers shipped beside ``weights`` (their manifest lists them), run on
        ``threads`` threads (default: one per CPU); None where there are none. Needs no
        PyTorch."""
        info = read_manifest(weights)
        shapes = {cast(tuple[int, int], tuple(int(n) for n in shape.split("x"))):  # "HxW"
                  weights.with_name(name) for shape, name in info.get("tflite", {}).items()}
        return cls(shapes, info["size_multiple"], threads=threads) if shapes else None

    @classmethod
    def from_file(cls, path: str | Path) -> LiteRtInt8:
        """One flatbuffer, at the one shape it was built for."""
        session = Int8Session(Path(path).read_bytes(), os.cpu_count() or 1)
        height, width = session.shape[1:3]
        runtime = cls({(height, width): Path(path)}, 1)
        runtime._sessions[(height, width)] = session
        runtime.fixed_size = height if height == width else None
        return runtime

    def shape_for(self, height: int, width: int) -> tuple[int, int]:
        """The input shape an image of height x width runs at: the smallest shipped shape
        that holds it, else its own size padded to the network's multiple."""
        for shape in self.flatbuffers:
            if shape[0] >= height and shape[1] >= width:
                return shape
        m = self.size_multiple
        return round_up(height, m), round_up(width, m)

    def session(self, height: int, width: int) -> Int8Session:
        """The interpreter for an input of exactly height x width, loaded or built on first
        use."""
        shape = (height, width)
        if shape in self._sessions:
            self._sessions.move_to_end(shape)
            return self._sessions[shape]
        session = Int8Session(self._flatbuffer(height, width), self.threads)
        self._sessions[shape] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def _flatbuffer(self, height: int, width: int) -> bytes:
        if (height, width) in self.flatbuffers:
            return self.flatbuffers[(height, width)].read_bytes()
        if self.build is None:
            shipped = ", ".join(f"{h}x{w}" for h, w in self.flatbuffers) or "none"
            raise ModelFileError(
                f"no int8 TFLite model holds a {height}x{width} input (shipped: {shipped}): "
                "tile the image (Segmenter(tile=...)), or export one for that shape: "
                f"qsegment export MODEL --target cpu-int8 --shape {height}x{width} -o DIR")
        return self.build(height, width).read_bytes()

    def logits(self, x: np.ndarray) -> np.ndarray:
        height, width = x.shape[2:]
        shape = self.shape_for(height, width)
        padded = np.pad(x, ((0, 0), (0, 0), (0, shape[0] - height), (0, shape[1] - width)))
        return self.session(*shape).logits(padded)[..., :height, :width]

    def outputs_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """The sigmoid of every output channel (C, H, W) of an (H, W, 3) uint8 RGB image,
        padded with black (the quantized 0) up to its shape (:meth:`shape_for`) and cropped
        back."""
        height, width = rgb.shape[:2]
        session = self.session(*self.shape_for(height, width))
        q = np.full(session.shape, session.input_quantization[1], dtype=np.int8)
        if session.lut_is_flip:
            np.bitwise_xor(rgb, 0x80, out=q.view(np.uint8)[0, :height, :width])
        else:
            np.take(session.lut, rgb, out=q[0, :height, :width])
        out = session.run(q)[:height, :width].transpose(2, 0, 1)
        return session.probability_lut[out.view(np.uint8)]
