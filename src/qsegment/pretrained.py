"""Loading a model with its card: a shipped pretrained name, a run folder or a checkpoint."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch import nn

from .checkpoint import (
    CheckpointError,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    write_json,
)
from .export.onnx import export_onnx, quantize_onnx_int8
from .models import create_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "qsegment-nearest"


def list_pretrained() -> list[str]:
    """Names of the weights shipped inside the package: those with a card (the int8
    observers beside ``qsegment-nearest`` are not a model)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors")
                  if p.with_suffix(".json").is_file())


def resolve_checkpoint(source: str | Path) -> Path:
    """A shipped name, a run folder (its ``last.safetensors``) or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        path = path / "last.safetensors"
    elif not path.exists() and (WEIGHTS_DIR / f"{source}.safetensors").is_file():
        path = WEIGHTS_DIR / f"{source}.safetensors"
    if not path.is_file():
        shipped = ", ".join(list_pretrained()) or "none"
        raise CheckpointError(f"{source}: no such checkpoint, run folder or pretrained name "
                              f"(shipped: {shipped})")
    return path


def checkpoint_reference(source: str | Path) -> str:
    """How a card names its source checkpoint so that it resolves from anywhere: a shipped
    name as is, a path made absolute."""
    return str(source) if str(source) in list_pretrained() else str(Path(source).resolve())


def load_model(source: str | Path = DEFAULT_MODEL) -> tuple[nn.Module, dict]:
    """Build the model a checkpoint's card names, load its weights, return (model, card).

    The model is in eval mode. The card (see docs/RESULTS.md) records data, split,
    recipe, threshold and measured metrics.
    """
    path = resolve_checkpoint(source)
    _, meta = read_checkpoint(path)
    card = meta.get("card")
    if card is None:
        sidecar = path.with_suffix(".json")
        card = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    if not card or "model" not in card:
        raise CheckpointError(f"{path}: no card naming its model (expected a qsegment checkpoint)")
    model = create_model(card["model"], **card.get("model_args", {}))
    load_weights(model, path)
    return model.eval(), card


def publish(run: str | Path, name: str, dest: Path = WEIGHTS_DIR, cpu_int8: bool = True) -> Path:
    """Copy a run's last weights (no optimizer state) and card to ``dest/NAME.*``, with
    the CPU int8 runtimes' files: ``NAME.int8.onnx`` (static int8 for ONNX Runtime) and
    the ``tflite-int8`` observers and built model (:func:`qsegment.export.tflite.publish_int8`);
    ``cpu_int8=False`` for models they cannot express, such as max-unpooling.

    This is how the shipped weights were made; the card keeps the run's config, split,
    threshold, metrics and git commit, plus the name.
    """
    model, card = load_model(run)
    card = {**card, "name": name, "source_run": str(run)}
    path = Path(dest) / f"{name}.safetensors"
    save_checkpoint(path, model, {"card": card})
    write_json(path.with_suffix(".json"), card)
    if cpu_int8:
        with tempfile.TemporaryDirectory() as tmp:  # for predict --runtime onnx-int8
            fp32 = export_onnx(model, Path(tmp) / "model.onnx", (960, 1000))
            quantize_onnx_int8(fp32, path.with_suffix(".int8.onnx"))
        from .export.tflite import publish_int8

        publish_int8(model, path)  # for predict --runtime tflite-int8 (the default)
    return path
