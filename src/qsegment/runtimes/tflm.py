"""TFLite-Micro's own interpreter (PyPI ``tflite-micro``) as a runtime: what a
microcontroller would compute, bit for bit, and the tensor arena it needs.

:class:`MicroModel` runs a fully int8 flatbuffer at its fixed size; with
``runtime="litert-ref"`` or ``"litert"`` it runs in LiteRT instead (reference kernels,
which must match TFLite-Micro exactly, or XNNPACK).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..card import Card
from ..console import captured_stderr
from ..errors import QsegmentError, UsageError
from .base import Runtime
from .litert import Int8Session, dequantize_output, quantization, quantize_input


class MicroError(QsegmentError, RuntimeError):
    """The TFLite-Micro export cannot be done; the message says why and what to do."""


class UnsupportedOperatorError(MicroError):
    """The flatbuffer uses operators the TFLite-Micro interpreter does not have."""

    def __init__(self, missing: Sequence[str], operators: dict[str, int]) -> None:
        self.missing = list(missing)
        super().__init__(
            f"TFLite-Micro has no kernel for {', '.join(self.missing)} (the model uses "
            f"{', '.join(sorted(operators))}): replace those layers, or keep them out of the "
            "part that runs on the microcontroller")


class MicroInterpreter(Protocol):
    """What :class:`MicroModel` uses of ``tflite_micro``'s interpreter (untyped there)."""

    def get_input_details(self, index: int) -> dict[str, Any]: ...
    def get_output_details(self, index: int) -> dict[str, Any]: ...
    def set_input(self, input_data: np.ndarray, index: int) -> None: ...
    def invoke(self) -> int: ...
    def get_output(self, index: int) -> np.ndarray: ...
    def print_allocations(self) -> None: ...


def _schema() -> ModuleType:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def operators(flatbuffer: bytes) -> dict[str, int]:
    """Builtin operator name -> count in the flatbuffer's main graph."""
    from tflite_micro.python.tflite_micro import runtime

    fb = _schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(flatbuffer, 0))
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [runtime.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    return dict(sorted(Counter(names[codes[op.opcodeIndex]]
                               for op in model.subgraphs[0].operators).items()))


def _interpreter(flatbuffer: bytes) -> MicroInterpreter:
    """A TFLite-Micro interpreter with an arena ample for the model's input size, or
    :class:`UnsupportedOperatorError` naming the operators it lacks (from its own log)."""
    from tflite_micro.python.tflite_micro import runtime

    fb = _schema()
    graph = fb.Model.GetRootAsModel(flatbuffer, 0).Subgraphs(0)
    pixels = int(np.prod(graph.Tensors(graph.Inputs(0)).ShapeAsNumpy()))
    arena = 16 * 2**20 + 64 * pixels  # Q-Segment needs ~22 bytes per input value
    with captured_stderr() as log:
        try:
            return runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena)
        except RuntimeError as err:
            failure = err
    missing = sorted({m.group(1) for line in log
                      if (m := re.search(r"Didn't find op for builtin opcode '(\w+)'", line))})
    if missing:
        raise UnsupportedOperatorError(missing, operators(flatbuffer))
    raise MicroError(f"TFLite-Micro could not load the model: {failure}; "
                     + " ".join(line.strip() for line in log if line.strip()))


def measure_arena(flatbuffer: bytes) -> int:
    """Tensor arena bytes the model needs (:meth:`MicroModel.arena_bytes`)."""
    return MicroModel(flatbuffer).arena_bytes()


def lsb_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How far two int8 outputs are apart, in quantization steps."""
    lsb = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_lsb": int(lsb.max()), "identical_fraction": float((lsb == 0).mean())}


class MicroModel(Runtime):
    """A fully int8 flatbuffer run by TFLite-Micro (``runtime="tflm"``) or by the LiteRT
    interpreter, with its reference kernels (``"litert-ref"``: the arithmetic TFLite-Micro
    implements, so outputs must be bit-identical) or its default optimized ones
    (``"litert"``, XNNPACK: other rounding). ``runner(x)`` maps an (N, 3, S, S) float32
    RGB batch in [0, 1] to float logits (N, 1, S, S), quantizing and dequantizing with
    the flatbuffer's own parameters; :meth:`raw` gives the int8 output."""

    name = "tflite-micro"
    RUNTIMES = ("tflm", "litert-ref", "litert")

    def __init__(self, source: str | Path | bytes, runtime: str = "tflm") -> None:
        if runtime not in self.RUNTIMES:
            raise UsageError(f"runtime must be one of {self.RUNTIMES}, got {runtime!r}")
        self.path: Path | None = None
        if isinstance(source, bytes):
            self.flatbuffer = source
        else:
            self.path = Path(source)
            self.flatbuffer = self.path.read_bytes()
        self.runtime = runtime
        self._invoked = False
        self.card = Card() if self.path is None else Card.beside(self.path)
        if runtime == "tflm":
            self._micro = _interpreter(self.flatbuffer)
            inp, out = self._micro.get_input_details(0), self._micro.get_output_details(0)
            self.input_quantization, self.output_quantization = (quantization(inp),
                                                                 quantization(out))
            self.input_shape = tuple(int(d) for d in inp["shape"])
        else:
            self._lite = Int8Session(self.flatbuffer, reference=runtime == "litert-ref")
            self.input_quantization = self._lite.input_quantization
            self.output_quantization = self._lite.output_quantization
            self.input_shape = self._lite.shape
        self.size = self.size_multiple = self.fixed_size = self.input_shape[1]

    @classmethod
    def from_file(cls, path: str | Path) -> MicroModel:
        return cls(path)

    def arena_bytes(self) -> int:
        """Tensor arena bytes the model needs, as TFLite-Micro's recording allocator
        reports after an inference (head, the planned activations, plus tail, the
        persistent data)."""
        if self.runtime != "tflm":
            raise UsageError("only the TFLite-Micro interpreter measures its arena")
        if not self._invoked:
            self._run(np.full(self.input_shape, self.input_quantization[1], np.int8))
        with captured_stderr() as log:
            self._micro.print_allocations()
        for line in log:
            if m := re.search(r"Arena allocation total (\d+) bytes", line):
                return int(m.group(1))
        raise MicroError("TFLite-Micro did not report its arena use: " + " ".join(log))

    def _run(self, quantized: np.ndarray) -> np.ndarray:
        if self.runtime != "tflm":
            return self._lite.run(quantized)
        self._micro.set_input(quantized, 0)
        self._micro.invoke()
        self._invoked = True
        return self._micro.get_output(0)[0]

    def raw(self, x: np.ndarray) -> np.ndarray:
        """int8 output (N, S, S, 1) of an (N, 3, S, S) float batch."""
        self.check_input(x, self.path or "this TFLite model")
        q = quantize_input(x, *self.input_quantization)
        return np.stack([self._run(image[None]) for image in q])

    def logits(self, x: np.ndarray) -> np.ndarray:
        return dequantize_output(self.raw(x), *self.output_quantization)

