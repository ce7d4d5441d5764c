"""Publishing a run as shipped weights, with the files the CPU int8 runtimes read."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..pretrained import WEIGHTS_DIR, load_model
from .onnx import export_onnx, quantize_onnx_int8
from .tflite import publish_int8


def publish(run: str | Path, name: str, dest: Path = WEIGHTS_DIR, cpu_int8: bool = True) -> Path:
    """Copy a run's last weights (no optimizer state) and card to ``dest/NAME.*``, with
    the CPU int8 runtimes' files: ``NAME.int8.onnx`` (static int8 for ONNX Runtime) and
    the ``tflite-int8`` observers and built model (:func:`qsegment.export.tflite.publish_int8`);
    ``cpu_int8=False`` for models they cannot express, such as max-unpooling.

    This is how the shipped weights were made; the card keeps the run's config, split,
    threshold, metrics and git commit, plus the name.
    """
    model, card = load_model(run)
    card = card.replace(name=name, source_run=str(run))
    path = Path(dest) / f"{name}.safetensors"
    save_checkpoint(path, model, {"card": card.to_dict()})
    card.write(path.with_suffix(".json"))
    if cpu_int8:
        with tempfile.TemporaryDirectory() as tmp:  # for predict --runtime onnx-int8
            fp32 = export_onnx(model, Path(tmp) / "model.onnx", (960, 1000))
            quantize_onnx_int8(fp32, path.with_suffix(".int8.onnx"),
                               multiple=model.size_multiple)
        publish_int8(model, path)  # for predict --runtime tflite-int8 (the default)
    return path
