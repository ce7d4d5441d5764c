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
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..console import captured_stderr
from ..files import user_cache_dir
from .base import ModelFileError, Runtime, shipped_int8_onnx

if TYPE_CHECKING:
    from openvino import InferRequest


class OpenVinoInt8(Runtime):
    """An ONNX file (the shipped ``NAME.int8.onnx``, or one that
    :func:`qsegment.export.cpu.openvino_int8` quantized), or the OpenVINO IR
    (``NAME.xml`` and ``.bin``) that ``qsegment export --target openvino`` wrote,
    compiled by OpenVINO for the CPU for each input shape it is given, on ``threads``
    threads (default: one per CPU). At most ``max_compiled`` compiled networks stay in
    memory (least recently used dropped first)."""

    name = "openvino"
    # Images up to this size run whole: OpenVINO runs a whole CHASE_DB1 image (960x1008)
    # at about 210 MB, where LiteRT needs its 400x1008 tiles (issue #35's measurements).
    tile_shape = (1024, 1024)

    def __init__(self, path: str | Path, threads: int | None = None, size_multiple: int = 1,
                 max_compiled: int = 3) -> None:
        import openvino as ov

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
        self._requests: OrderedDict[tuple[int, ...], InferRequest] = OrderedDict()

    @classmethod
    def from_weights(cls, weights: Path, threads: int | None = None) -> OpenVinoInt8 | None:
        """The int8 ONNX shipped beside ``weights`` (no PyTorch needed); None where there
        is none."""
        shipped = shipped_int8_onnx(weights)
        return None if shipped is None else cls(shipped[0], threads, size_multiple=shipped[1])

    @classmethod
    def from_file(cls, path: str | Path) -> OpenVinoInt8:
        return cls(path)

    def request(self, shape: tuple[int, ...]) -> InferRequest:
        """The inference request of the network compiled for inputs of exactly ``shape``
        (N, 3, H, W), compiled (or loaded from the cache) on first use."""
        if shape in self._requests:
            self._requests.move_to_end(shape)
            return self._requests[shape]
        network = self.network.clone()
        network.reshape(list(shape))
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                  "CACHE_DIR": str(self.cache)}
        request = self.core.compile_model(network, "CPU", config).create_infer_request()
        self._requests[shape] = request
        while len(self._requests) > self.max_compiled:
            self._requests.popitem(last=False)
        return request

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        return self.request(x.shape).infer({0: x}, share_inputs=True)[0]
