"""Export targets: one module each (heavy imports inside its functions) and one row here.

A row of :data:`TARGETS` (:class:`ExportTarget`) says what the target takes and makes,
declares its own command-line options (``qsegment export --help`` is built from the
rows), formats its result for the terminal, and names the runtime that scores what it
made (``qsegment evaluate``). :func:`export` dispatches to it; a new target is one module
and one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli_types import checked, existing_dir, positive_int
from ..registry import Entry, Registry, resolve
from .common import ExportNote, file_stem, shapes


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
class ExportTarget(Entry):
    """An export target's row: its target is ``function(source, out, **options)``, which
    returns an :class:`~qsegment.export.common.ExportNote`."""

    source: str  # what the positional argument is for this target
    options: tuple[Option, ...] = ()
    report: str | None = None  # "module:function(note) -> list[str]" for the terminal
    scored_by: str | None = None  # the runtime `qsegment evaluate` scores the output with
    examples: tuple[str, ...] = field(default=())


def _check_board(board: str) -> None:
    resolve("qsegment.export.tflite_micro:check_board")(board)  # its module holds the boards


_SHAPES = Option("--shape", "TFLite input shapes HxW[,HxW...] (cpu-int8: the last is the "
                 "default tile, default 512x512,960x1000,400x1008; tflite-int8: 400x1008)",
                 shapes)
_NAME = Option("--name", "what the files are called (the card's name, else the run folder's "
               "or file's)", file_stem)
_SOURCE = "pretrained name, run folder or .safetensors"
_SIZE = Option("--size", "square input size (default: the largest that fits the device)",
               positive_int)

def _format(name: str, function: str, description: str, example: str,
            options: tuple[Option, ...] = (_NAME,)) -> ExportTarget:
    """The row of a one-file format for another runtime (:mod:`qsegment.export.formats`)."""
    return ExportTarget(name, target=f"qsegment.export.formats:{function}",
                        description=description, source=_SOURCE, options=options,
                        report="qsegment.export.formats:report_lines", examples=(example,))


TARGETS: Registry[ExportTarget] = Registry("export target", [
    ExportTarget(
        "imx500",
        target="qsegment.export.imx500.convert:export_imx500",
        description="Sony IMX500 / Raspberry Pi AI Camera: packerOut.zip from an "
        "MCT-quantized ONNX",
        source="MCT-quantized .onnx from `qsegment quantize`",
        options=(_SIZE,),
        report="qsegment.export.imx500.convert:report_lines",
        scored_by="mct-int8",
        examples=("qsegment export q/ptq.onnx --target imx500 -o deploy/",
                  "qsegment export q/ptq.onnx --target imx500 --size 256 -o deploy256/")),
    ExportTarget(
        "tflite-micro",
        target="qsegment.export.tflite_micro:export_tflite_micro",
        description="microcontrollers (Sony Spresense, Cortex-M4F): int8 .tflite and C "
        "sources from a checkpoint",
        source=_SOURCE,
        options=(_SIZE,
                 Option("--board", "memory budget the default size must fit (spresense; --fit "
                        "prints every budget)", checked(_check_board, "board")),
                 Option("--fit", "also find the largest input for every budget and print the "
                        "table", action="store_true"),
                 Option("--calibration", "training images to calibrate on (16)", positive_int),
                 Option("--data", "dataset folder for calibration (default: CHASE_DB1's)",
                        existing_dir)),
        report="qsegment.export.tflite_micro:report_lines",
        scored_by="tflite-micro",
        examples=("qsegment export qsegment-nearest-312 --target tflite-micro -o mcu/",
                  "qsegment export qsegment-nearest-312 --target tflite-micro --fit -o mcu/",
                  "qsegment export runs/fast --target tflite-micro --size 96 -o mcu96/")),
    ExportTarget(
        "cpu-int8",
        target="qsegment.export.cpu:export_cpu_int8",
        description="CPUs without PyTorch: the weights with their int8 TFLite and ONNX "
        "files, calibrated ranges and manifest (as shipped)",
        source=_SOURCE,
        options=(_SHAPES, _NAME),
        report="qsegment.export.cpu:report_lines",
        scored_by="tflite-int8",
        examples=("qsegment export runs/fast --target cpu-int8 --name my-model -o models/",
                  "qsegment export qsegment-nearest --target cpu-int8 --shape 256x256 "
                  "-o small/")),
    _format("onnx", "export_onnx_file",
            "ONNX, float32, any batch and size (ONNX Runtime, TensorRT, OpenCV): NAME.onnx",
            "qsegment export qsegment-nearest --target onnx -o formats/"),
    _format("openvino", "export_openvino",
            "OpenVINO IR, static int8, any size (the openvino runtime's network): NAME.xml "
            "and NAME.bin", "qsegment export runs/fast --target openvino -o formats/"),
    _format("tflite-int8", "export_tflite_int8",
            "LiteRT, fully int8, one input shape per file (phones, Raspberry Pi): "
            "NAME.int8-HxW.tflite",
            "qsegment export qsegment-nearest --target tflite-int8 --shape 512x512 -o formats/",
            options=(_SHAPES, _NAME)),
])


def export(target: str, source: str | Path, out: str | Path, **options: object) -> ExportNote:
    """Export ``source`` for ``target`` into ``out``; returns the target's note."""
    return TARGETS.load(target)(source, out, **options)


def report(target: str, note: ExportNote) -> list[str]:
    """The lines a terminal shows after ``target``'s export."""
    row = TARGETS.get(target)
    return resolve(row.report)(note) if row.report else [f"{target}: done"]


__all__ = ["TARGETS", "ExportNote", "ExportTarget", "Option", "export", "report"]
