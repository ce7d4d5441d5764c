"""OpenVINO on the CPU: the ``openvino`` runtime, running the static int8 ONNX (QDQ) that
ships beside the weights.

OpenVINO compiles a network for one input shape at a time (about a second: it picks
its kernels for that shape), so each shape an image needs is compiled on first use and
the last few compiled networks stay in memory. Every compiled network is also kept on
disk in OpenVINO's model cache, one folder per network file under ``openvino`` in the
user cache (:func:`~qsegment.files.user_cache_dir`), so that the next process loads it
instead of compiling. The folder is keyed by the file's content and the OpenVINO build
(OpenVINO itself loads a blob that another version wrote), and OpenVINO keys each blob
by the network's shape and the settings; a blob it cannot import (truncated, garbled) it
deletes and compiles afresh (tests/test_openvino.py), so a stale or corrupt cache is
rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from ..console import captured_stderr
from ..files import user_cache_dir
from ..images import round_up
from .base import ModelFileError, Runtime, shipped_int8_onnx

if TYPE_CHECKING:
    from openvino import InferRequest, Model


def import_openvino() -> ModuleType:
    """``openvino``, imported without its model converter (``openvino.tools.ovc``) and its
    usage statistics. Why: qsegment reads ONNX and IR with the runtime alone; the converter
    costs 45-60 ms of every cold start (a tenth of a one-image ``qsegment predict``), and
    its statistics package writes ``~/intel/openvino_ga_cid`` and ``stats`` on import,
    where qsegment writes nothing in the home folder but its cache.
    ``openvino.convert_model`` still works: the converter is imported when first asked
    for. (Where openvino was imported before, it is left as it is.)"""
    # None in sys.modules makes an import fail: openvino's __init__ passes over the
    # converter, and the converter (if imported later) takes its own statistics stub
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    if "openvino" not in sys.modules:
        sys.modules["openvino.tools.ovc"] = None  # type: ignore[assignment]
        try:
            import openvino
        finally:
            del sys.modules["openvino.tools.ovc"]
        openvino.__dict__.setdefault("__getattr__", _converter_on_demand)
    import openvino

    return openvino


def _converter_on_demand(name: str) -> object:
    """``openvino``'s module ``__getattr__`` (PEP 562): its ``convert_model``, imported
    when first asked for (:func:`import_openvino` left it out)."""
    if name != "convert_model":
        raise AttributeError(f"module 'openvino' has no attribute {name!r}")
    from openvino.tools.ovc import convert_model

    return convert_model


class OpenVinoInt8(Runtime):
    """An ONNX file (the shipped ``NAME.int8.onnx``, or one that
    :func:`qsegment.export.cpu.openvino_int8` quantized), or the OpenVINO IR
    (``NAME.xml`` and ``.bin``) that ``qsegment export --target openvino`` wrote,
    compiled by OpenVINO for the CPU for each input shape it is given, on ``threads``
    threads (default: one per CPU). At most ``max_compiled`` compiled networks stay in
    memory (least recently used dropped first)."""

    name = "openvino"
    accepts_uint8 = True
    # Images up to this size run whole, larger ones in tiles fitted to them: a whole
    # 2048x2048 image peaks at 404 MB with qsegment-half and 599 MB with the full-resolution
    # qsegment-nearest-transfer-jpeg, and a 3504x2336 photograph in four tiles runs 1.2x
    # faster than in the fifteen of 1024 px (on 1.50x its pixels, their margins) at 425 MB
    # (docs/BENCHMARKS.md); LiteRT needs its 400x1008 tiles even for a CHASE_DB1 image.
    tile_shape = (2048, 2048)
    fits_tiles = True

    def __init__(self, path: str | Path, threads: int | None = None, size_multiple: int = 1,
                 max_compiled: int = 3) -> None:
        ov = import_openvino()

        self.path = Path(path)
        self.core = ov.Core()
        try:
            with captured_stderr():  # the frontends it tries print their parse errors
                self.network = self.core.read_model(str(self.path))
        except RuntimeError as err:
            why = [line for line in str(err).splitlines()
                   if line.strip() and not line.startswith("Exception from")]
            raise ModelFileError(f"{self.path}: OpenVINO cannot read it "
                                 f"({(why or ['no reason given'])[0].strip()})") from err
        self.threads = threads or os.cpu_count() or 1
        self.size_multiple = size_multiple
        self.max_compiled = max_compiled
        weights = self.path.with_suffix(".bin")  # an IR's (.xml) weights
        key = (self.path.read_bytes() + (weights.read_bytes() if weights.is_file() else b"")
               + ov.get_version().encode())
        digest = hashlib.sha256(key).hexdigest()[:16]
        self.cache = user_cache_dir("openvino", f"{self.path.stem}-{digest}")
        self._requests: OrderedDict[tuple[int | bool, ...], InferRequest] = OrderedDict()

    @classmethod
    def from_weights(cls, weights: Path, threads: int | None = None) -> OpenVinoInt8 | None:
        """The int8 ONNX shipped beside ``weights`` (no PyTorch needed); None where there
        is none."""
        shipped = shipped_int8_onnx(weights)
        return None if shipped is None else cls(shipped[0], threads, size_multiple=shipped[1])

    @classmethod
    def from_file(cls, path: str | Path) -> OpenVinoInt8:
        return cls(path)

    def request(self, shape: tuple[int, ...], pixels: bool = False) -> InferRequest:
        """The inference request of the network compiled for inputs of exactly ``shape``,
        compiled (or loaded from the cache) on first use: float (N, 3, H, W) in [0, 1] to
        logits, or with ``pixels`` uint8 RGB (N, H, W, 3) to probabilities, the
        conversions and the sigmoid compiled into the network (:meth:`outputs_uint8`)."""
        key = (*shape, pixels)
        if key in self._requests:
            self._requests.move_to_end(key)
            return self._requests[key]
        network = self.network.clone()
        if pixels:
            network = _from_pixels(network, shape)
        else:
            network.reshape(list(shape))
        # f32 for the float parts: on CPUs with bf16 (Sapphire Rapids, Zen 4) OpenVINO
        # would run them in bf16, which moves the int8 levels the network lands on and,
        # for qsegment-half, 1.3 % of the mask's vessel pixels (docs/BENCHMARKS.md)
        # threads pinned to cores only where they take every core: OpenVINO pins each
        # process's threads from the first core, so two one-thread workers (qsegment batch)
        # would share one core and leave the other idle
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(self.cache),
                  "ENABLE_CPU_PINNING": self.threads >= (os.cpu_count() or 1)}
        request = self.core.compile_model(network, "CPU", config).create_infer_request()
        self._requests[key] = request
        while len(self._requests) > self.max_compiled:
            self._requests.popitem(last=False)
        return request

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        return self.request(x.shape).infer({0: x}, share_inputs=True)[0]

    def outputs_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """The sigmoid of every output channel (C, H, W) of an (H, W, 3) uint8 RGB image,
        zero-padded to the size multiple: OpenVINO itself converts the pixels, runs the
        network and the sigmoid, so nothing of the image's size is done in numpy but the
        padding."""
        height, width = rgb.shape[:2]
        m = self.size_multiple
        padded = np.zeros((1, round_up(height, m), round_up(width, m), 3), np.uint8)
        padded[0, :height, :width] = rgb
        outputs = self.request(padded.shape, pixels=True).infer({0: padded},
                                                                 share_inputs=True)[0]
        return outputs[0, :, :height, :width]


def _from_pixels(network: Model, shape: tuple[int, ...]) -> Model:
    """``network`` for uint8 RGB inputs of ``shape`` (N, H, W, 3), with the sigmoid of its
    logits as output: OpenVINO's pre- and post-processing steps."""
    import openvino.opset13 as ops
    from openvino import Layout, Type
    from openvino.preprocess import PrePostProcessor

    n, height, width, channels = shape
    network.reshape([n, channels, height, width])
    steps = PrePostProcessor(network)
    steps.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC"))
    steps.input().model().set_layout(Layout("NCHW"))
    steps.input().preprocess().convert_element_type(Type.f32).scale(255.0)
    steps.output().postprocess().custom(lambda logits: ops.sigmoid(logits).output(0))
    return steps.build()
