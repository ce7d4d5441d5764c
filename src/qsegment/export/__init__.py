"""Export targets: one module each (heavy imports inside its functions) and one row here.

A row (:class:`ExportTarget`) says what the target takes and makes, declares its own
command-line options (``qsegment export --help`` is built from the rows), formats its
result for the terminal, and names the runtime that scores what it made
(``qsegment evaluate``). :func:`export` dispatches to it; a new target is one module
and one :func:`register_target` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import lookup, register, resolve


@dataclass(frozen=True)
class Option:
    """One command-line option of a target: argparse's flag and keywords; ``dest`` is
    the keyword the target's function receives."""

    flag: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ExportTarget:
    name: str
    summary: str
    function: str  # "module:function(source, out, **options) -> dict"
    source: str  # what the positional argument is for this target
    options: tuple[Option, ...] = ()
    report: str | None = None  # "module:function(note) -> list[str]" for the terminal
    scored_by: str | None = None  # the runtime `qsegment evaluate` scores the output with
    examples: tuple[str, ...] = field(default=())


TARGETS: dict[str, ExportTarget] = {}


def register_target(target: ExportTarget) -> ExportTarget:
    return register(TARGETS, target.name, target, "export target")


_SIZE = Option("--size", "square input size (default: the largest that fits the device)", int)

register_target(ExportTarget(
    "imx500", "Sony IMX500 / Raspberry Pi AI Camera: packerOut.zip from an MCT-quantized ONNX",
    "qsegment.export.imx500.convert:export_imx500",
    "MCT-quantized .onnx from `qsegment quantize`",
    options=(_SIZE,),
    report="qsegment.export.imx500.convert:report_lines",
    scored_by="mct-int8",
    examples=("qsegment export q/ptq.onnx --target imx500 -o deploy/",
              "qsegment export q/ptq.onnx --target imx500 --size 256 -o deploy256/")))

register_target(ExportTarget(
    "tflite-micro", "microcontrollers (Sony Spresense, Cortex-M4F): int8 .tflite and C sources "
    "from a checkpoint",
    "qsegment.export.tflite_micro:export_tflite_micro",
    "pretrained name, run folder or .safetensors",
    options=(_SIZE,
             Option("--board", "memory budget the default size must fit (spresense; --fit "
                    "prints every budget)"),
             Option("--fit", "also find the largest input for every budget and print the "
                    "table", action="store_true"),
             Option("--calibration", "training images to calibrate on (16)", int),
             Option("--data", "dataset folder for calibration (default: CHASE_DB1's)")),
    report="qsegment.export.tflite_micro:report_lines",
    scored_by="tflite-micro",
    examples=("qsegment export qsegment-nearest-312 --target tflite-micro -o mcu/",
              "qsegment export qsegment-nearest-312 --target tflite-micro --fit -o mcu/",
              "qsegment export runs/fast --target tflite-micro --size 96 -o mcu96/")))


def export(target: str, source: str | Path, out: str | Path, **options: object) -> dict:
    """Export ``source`` for ``target`` into ``out``; returns the target's note (a dict)."""
    return resolve(lookup(TARGETS, target, "export target").function)(source, out, **options)


def report(target: str, note: dict) -> list[str]:
    """The lines a terminal shows after ``target``'s export."""
    row = lookup(TARGETS, target, "export target")
    return resolve(row.report)(note) if row.report else [f"{target}: done"]


__all__ = ["TARGETS", "ExportTarget", "Option", "export", "register_target", "report"]
