"""Export targets (one module each; heavy imports stay inside the functions).

``TARGETS`` is the one table of deployment targets: name -> (module:function,
what it produces). :func:`export` dispatches to it; a new target is one module
and one row.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

TARGETS: dict[str, tuple[str, str]] = {
    "imx500": ("qsegment.export.imx500:export_imx500",
               "Sony IMX500 / Raspberry Pi AI Camera: packerOut.zip from an MCT-quantized ONNX"),
    "tflite-micro": ("qsegment.export.tflite_micro:export_tflite_micro",
                     "microcontrollers (Sony Spresense, Cortex-M4F): int8 .tflite and C sources "
                     "from a checkpoint"),
}


def export(target: str, source: str | Path, out: str | Path, **options: object) -> dict:
    """Export ``source`` for ``target`` into ``out``; returns the target's note (a dict)."""
    if target not in TARGETS:
        raise ValueError(f"unknown export target {target!r}; choose one of: {', '.join(TARGETS)}")
    module, function = TARGETS[target][0].split(":")
    return getattr(import_module(module), function)(source, out, **options)
