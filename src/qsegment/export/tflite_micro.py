"""Microcontroller export: a fully int8 TFLite model for TensorFlow Lite Micro.

The conversion is :func:`qsegment.export.tflite.convert_int8`, calibrated on whole
training images resized to NxN, as the firmware will resize its camera frame.
Everything is checked with the real TFLite-Micro interpreter (PyPI
``tflite-micro``): it must accept every operator, and its recording allocator
gives the tensor arena the model needs. :func:`fit_table` finds the largest
square input for each memory budget in :data:`BUDGETS`; :func:`c_sources` writes
what a firmware project compiles.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .common import STEP, search_largest, staged_folder
from .tflite import (
    Int8Session,
    captured_stderr,
    convert_int8,
    dequantize_output,
    input_lut,
    quantization,
    quantize_input,
)

if TYPE_CHECKING:  # torch is imported where it is used: the CLI reads BUDGETS at start-up
    import torch
    from torch import nn

KIB = 1024
TFLM_ALIGNMENT = 16  # TFLite-Micro wants a 16-byte aligned tensor arena


class MicroError(RuntimeError):
    """The TFLite-Micro export cannot be done; the message says why and what to do."""


class UnsupportedOperatorError(MicroError):
    """The flatbuffer uses operators the TFLite-Micro interpreter does not have."""

    def __init__(self, missing: Sequence[str], operators: dict[str, int]) -> None:
        self.missing = list(missing)
        super().__init__(
            f"TFLite-Micro has no kernel for {', '.join(self.missing)} (the model uses "
            f"{', '.join(sorted(operators))}): replace those layers, or keep them out of the "
            "part that runs on the microcontroller")


@dataclass(frozen=True)
class Budget:
    """A microcontroller's SRAM and what the application keeps for itself."""

    label: str
    sram: int  # bytes
    reserve: int  # bytes left to the firmware: code, stack, camera frame
    model_in_sram: bool  # True where the program (and so the flatbuffer) runs from SRAM
    reserve_note: str

    def arena_limit(self, flatbuffer_bytes: int) -> int:
        """Bytes left for the tensor arena."""
        return self.sram - self.reserve - (flatbuffer_bytes if self.model_in_sram else 0)


BUDGETS: dict[str, Budget] = {
    "spresense": Budget(
        "Sony Spresense (Cortex-M4F, 1.5 MB SRAM)", 1536 * KIB, 512 * KIB, True,
        "512 KiB for NuttX, the application and a QVGA RGB565 camera frame (150 KiB); the "
        "Spresense loads its program from flash into SRAM, so the flatbuffer counts too"),
    "m4f-512k": Budget(
        "Cortex-M4F, 512 KB SRAM", 512 * KIB, 64 * KIB, False,
        "64 KiB for stack, heap and the application; the flatbuffer stays in flash"),
    "m4f-256k": Budget(
        "Cortex-M4F, 256 KB SRAM", 256 * KIB, 64 * KIB, False,
        "64 KiB for stack, heap and the application; the flatbuffer stays in flash"),
}


# --- inspection with the TFLite-Micro interpreter -------------------------------------

def _schema() -> object:
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


def _interpreter(flatbuffer: bytes) -> object:
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


class MicroModel:
    """A fully int8 flatbuffer run by TFLite-Micro (``runtime="tflm"``) or by the LiteRT
    interpreter, with its reference kernels (``"litert-ref"``: the arithmetic TFLite-Micro
    implements, so outputs must be bit-identical) or its default optimized ones
    (``"litert"``, XNNPACK: other rounding). ``runner(x)`` maps an (N, 3, S, S) float32
    RGB batch in [0, 1] to float logits (N, 1, S, S), quantizing and dequantizing with
    the flatbuffer's own parameters; :meth:`raw` gives the int8 output."""

    size_multiple = STEP
    RUNTIMES = ("tflm", "litert-ref", "litert")

    def __init__(self, source: str | Path | bytes, runtime: str = "tflm") -> None:
        if runtime not in self.RUNTIMES:
            raise ValueError(f"runtime must be one of {self.RUNTIMES}, got {runtime!r}")
        self.path = None if isinstance(source, bytes) else Path(source)
        self.flatbuffer = source if isinstance(source, bytes) else self.path.read_bytes()
        self.runtime = runtime
        self._invoked = False
        card = None if self.path is None else self.path.with_suffix(".json")
        self.card = json.loads(card.read_text()) if card and card.is_file() else {}
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
        self.size = self.input_shape[1]

    def arena_bytes(self) -> int:
        """Tensor arena bytes the model needs, as TFLite-Micro's recording allocator
        reports after an inference (head, the planned activations, plus tail, the
        persistent data)."""
        if self.runtime != "tflm":
            raise ValueError("only the TFLite-Micro interpreter measures its arena")
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
        if x.ndim != 4 or x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"this TFLite model takes (N, 3, {self.size}, {self.size}) "
                             f"inputs, got {tuple(x.shape)}: infer at size {self.size}")
        q = quantize_input(x, *self.input_quantization)
        return np.stack([self._run(image[None]) for image in q])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return dequantize_output(self.raw(x), *self.output_quantization)


# --- C sources ------------------------------------------------------------------------

def _resolver_method(op: str) -> str:
    """MicroMutableOpResolver method for a builtin name (CONV_2D -> AddConv2D)."""
    return "Add" + "".join(p if p[0].isdigit() else p.capitalize() for p in op.split("_"))


def logit_threshold(probability: float, scale: float, zero_point: int) -> int:
    """Smallest int8 output that means ``sigmoid(logit) >= probability``."""
    logit = math.log(probability / (1 - probability))
    return int(np.clip(math.ceil(logit / scale + zero_point - 1e-9), -128, 127))


def c_sources(flatbuffer: bytes, facts: dict, name: str = "qsegment") -> tuple[str, str]:
    """(model_data.h, model_data.cc): the flatbuffer as a 16-byte aligned array, the
    operators to register, the arena size and the input/output conventions."""
    size = facts["size"]
    (in_scale, in_zero), (out_scale, out_zero) = facts["input_quantization"], \
        facts["output_quantization"]
    threshold = facts["threshold"]["value"]
    ops = facts["operators"]
    lut = input_lut(in_scale, in_zero)
    resolver = "\n".join(f"//   resolver.{_resolver_method(op)}();" for op in ops)
    header = f"""// {name}: fully int8 TFLite model for TensorFlow Lite Micro.
// Generated by `qsegment export --target tflite-micro` ({facts['source']}, {size}x{size}).
// Input : int8 [1, {size}, {size}, 3] NHWC RGB; the whole fundus resized to {size}x{size},
//         each 8-bit pixel p mapped through {name}_input_lut[p] (no mean, no std).
// Output: int8 [1, {size}, {size}, 1] vessel logits; logit = (q - {out_zero}) * {out_scale!r}.
//         A pixel is vessel when q >= {name.upper()}_VESSEL_THRESHOLD
//         (probability >= {threshold:.4f}, the threshold chosen on the training images).
// Operators to register (tflite::MicroMutableOpResolver<{len(ops)}> resolver;):
{resolver}
#ifndef {name.upper()}_MODEL_DATA_H_
#define {name.upper()}_MODEL_DATA_H_

#include <stdint.h>

#define {name.upper()}_INPUT_SIZE {size}
#define {name.upper()}_INPUT_SCALE {in_scale!r}f
#define {name.upper()}_INPUT_ZERO_POINT ({in_zero})
#define {name.upper()}_OUTPUT_SCALE {out_scale!r}f
#define {name.upper()}_OUTPUT_ZERO_POINT ({out_zero})
#define {name.upper()}_VESSEL_THRESHOLD ({logit_threshold(threshold, out_scale, out_zero)})
// Measured with TFLite-Micro's recording allocator, rounded up to {TFLM_ALIGNMENT} bytes;
// declare the arena as: alignas({TFLM_ALIGNMENT}) static uint8_t arena[{name.upper()}_ARENA_SIZE];
#define {name.upper()}_ARENA_SIZE {facts['arena_bytes_aligned']}

extern const unsigned char {name}_model[];
extern const unsigned int {name}_model_len;
extern const int8_t {name}_input_lut[256];

#endif  // {name.upper()}_MODEL_DATA_H_
"""

    def rows(values: Sequence[int], per_line: int) -> str:
        return ",\n".join("  " + ", ".join(str(v) for v in values[i:i + per_line])
                          for i in range(0, len(values), per_line))

    hex_bytes = [f"0x{b:02x}" for b in flatbuffer]
    source = f"""// Generated by `qsegment export --target tflite-micro`; see model_data.h.
#include "model_data.h"

alignas({TFLM_ALIGNMENT}) const unsigned char {name}_model[] = {{
{rows(hex_bytes, 16)}
}};
const unsigned int {name}_model_len = {len(flatbuffer)};

const int8_t {name}_input_lut[256] = {{
{rows([int(v) for v in lut], 16)}
}};
"""
    return header, source


# --- size search and export -----------------------------------------------------------

def tiles(size: int, height: int = 960, width: int = 999, overlap: int = 16) -> int:
    """Tiles of size x size (``overlap`` pixels shared by neighbours) that cover a
    height x width image at full resolution: how a microcontroller would segment a whole
    CHASE_DB1 photograph with the full-resolution model."""
    stride = size - overlap
    return math.ceil(max(height - overlap, 1) / stride) * math.ceil(max(width - overlap, 1)
                                                                      / stride)


def fit_table(model: nn.Module, calibration: torch.Tensor,
              budgets: dict[str, Budget] = BUDGETS) -> list[dict]:
    """For each budget: the largest square input (multiple of 8) whose measured arena
    (plus, where the program runs from SRAM, the flatbuffer) fits. Quantization parameters
    do not change the arena, so one calibration image per size is enough."""
    import torch.nn.functional as F

    measured: dict[int, tuple[int, int]] = {}

    def measure(size: int) -> tuple[int, int]:
        if size not in measured:
            images = F.interpolate(calibration[:1], size=(size, size), mode="bilinear",
                                   antialias=True)
            flatbuffer = convert_int8(model, images)
            measured[size] = (measure_arena(flatbuffer), len(flatbuffer))
        return measured[size]

    arena64, _ = measure(64)
    rows = []
    for key, budget in budgets.items():
        def fits(size: int, budget: Budget = budget) -> bool:
            arena, flash = measure(size)
            return arena <= budget.arena_limit(flash)

        guess = int(64 * math.sqrt(max(budget.arena_limit(0), 1) / arena64))
        best = search_largest(fits, guess)
        arena, flash = measure(best) if best else (None, None)
        rows.append({"budget": key, "label": budget.label, "sram": budget.sram,
                     "reserve": budget.reserve, "reserve_note": budget.reserve_note,
                     "model_in_sram": budget.model_in_sram, "largest_size": best,
                     "arena_bytes": arena, "flatbuffer_bytes": flash,
                     "tiles_960x999": tiles(best) if best else None})
    return rows


def format_fit_table(rows: list[dict]) -> str:
    """Markdown table of :func:`fit_table`."""
    lines = ["| target | SRAM | reserve | largest input | arena | flatbuffer | "
             "tiles for a 960x999 image (16 px overlap) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = f"{r['largest_size']}x{r['largest_size']}" if r["largest_size"] else "none"
        where = " (in SRAM)" if r["model_in_sram"] else " (flash)"
        arena = f"{r['arena_bytes'] / KIB:.0f} KiB" if r["arena_bytes"] else "-"
        flash = f"{r['flatbuffer_bytes'] / KIB:.0f} KiB{where}" if r["flatbuffer_bytes"] else "-"
        lines.append(f"| {r['label']} | {r['sram'] // KIB} KiB | {r['reserve'] // KIB} KiB | "
                     f"{size} | {arena} | {flash} | {r['tiles_960x999'] or '-'} |")
    return "\n".join(lines)


def export_tflite_micro(source: str | Path, out: str | Path, size: int | None = None,
                        calibration: int = 16, board: str = "spresense", fit: bool = False,
                        data: str | Path | None = None, seed: int = 0) -> dict:
    """Quantize a checkpoint to a fully int8 TFLite model and write, into the folder
    ``out``: ``qsegment.tflite``, ``qsegment.json`` (the card), ``model_data.h`` and
    ``model_data.cc``. ``size`` defaults to the largest that fits ``board``'s budget;
    ``fit`` also measures every budget in :data:`BUDGETS`. Returns the card."""
    import torch

    from ..checkpoint import write_json
    from ..data import load_split
    from ..engine.infer import to_input
    from ..engine.train import git_commit
    from ..pretrained import checkpoint_reference, load_model
    from ..quantize import agreement, calibration_images, package_versions

    if board not in BUDGETS:
        raise MicroError(f"unknown board {board!r}; choose one of: {', '.join(BUDGETS)}")
    if size is not None and (size <= 0 or size % STEP):
        raise MicroError(f"--size must be a positive multiple of {STEP}, got {size}")
    model, float_card = load_model(source)
    train, val = load_split(data)
    fit_rows = None
    if fit or size is None:
        _, probe = calibration_images(train, 64, 1, seed)
        fit_rows = fit_table(model, probe, BUDGETS if fit else {board: BUDGETS[board]})
        if size is None:
            size = next(r["largest_size"] for r in fit_rows if r["budget"] == board)
            if size is None:
                raise MicroError(f"no input size fits {BUDGETS[board].label}")
    names, images = calibration_images(train, size, calibration, seed)
    start = time.perf_counter()
    flatbuffer = convert_int8(model, images)
    convert_s = time.perf_counter() - start
    ops = operators(flatbuffer)
    micro = MicroModel(flatbuffer)  # raises on an operator TFLite-Micro lacks
    threshold = float((float_card.get("threshold") or {}).get("value", 0.5))
    probe = to_input(val[0].image, size)
    with torch.no_grad():
        float_logits = model(probe).numpy()
    micro_raw = micro.raw(probe.numpy())
    arena = micro.arena_bytes()
    card = {
        "format": "tflite-int8",
        "name": f"{float_card.get('name', float_card['model'])} int8 tflite-micro",
        "model": float_card["model"], "model_args": float_card.get("model_args", {}),
        "source_checkpoint": checkpoint_reference(source), "source": str(source), "size": size,
        "input": {"shape": list(micro.input_shape), "layout": "NHWC", "dtype": "int8",
                  "colour": "RGB", "model_expects": "RGB in [0, 1], no mean/std",
                  "resize": "the whole image to NxN (bilinear, antialiased)"},
        "input_quantization": list(micro.input_quantization),
        "output_quantization": list(micro.output_quantization),
        "threshold": {"value": threshold, "rule": "the float model's, chosen on training images"},
        "calibration": {"images": names, "count": len(names), "seed": seed,
                        "how": "whole training images resized to NxN (bilinear, antialiased)"},
        "operators": ops, "flatbuffer_bytes": len(flatbuffer), "arena_bytes": arena,
        "arena_bytes_aligned": -(-arena // TFLM_ALIGNMENT) * TFLM_ALIGNMENT,
        "agreement": {"image": val[0].name,
                      **{f"tflm_vs_{runtime}": lsb_difference(
                          micro_raw, MicroModel(flatbuffer, runtime).raw(probe.numpy()))
                         for runtime in ("litert-ref", "litert")},
                      "float_vs_tflm": agreement(
                          float_logits, dequantize_output(micro_raw, *micro.output_quantization),
                          threshold)},
        "convert_s": round(convert_s, 1),
        "versions": package_versions(), "git_commit": git_commit(),
    }
    if fit_rows is not None:
        card["fit"] = fit_rows
    header, source_cc = c_sources(flatbuffer, card)
    with staged_folder(Path(out)) as staging:
        (staging / "qsegment.tflite").write_bytes(flatbuffer)
        (staging / "model_data.h").write_text(header)
        (staging / "model_data.cc").write_text(source_cc)
        write_json(staging / "qsegment.json", card)
    return card

