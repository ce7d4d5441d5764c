"""Checkpoints as safetensors (never pickle) with a JSON card beside them.

A training checkpoint holds the model weights under ``model.`` and, for
``--resume``, the optimizer tensors under ``optim.`` and the RNG state; the
non-tensor state (epoch, scheduler, optimizer hyper-parameters) travels as JSON
in the safetensors metadata. Every write goes to a temporary file in the same
folder first and is then renamed, so a kill never leaves a half-written file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .card import Card
from .errors import CheckpointError
from .files import atomic_write
from .models import SegmentationModel, create_model
from .pretrained import DEFAULT_MODEL, read_card, resolve_checkpoint

__all__ = ["CheckpointError", "load_model", "load_weights", "read_checkpoint",
           "save_checkpoint"]


def save_checkpoint(path: Path, model: nn.Module, meta: dict | None = None,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Save the model's state dict (plus ``extra`` tensors) with JSON ``meta``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    metadata = {"qsegment": json.dumps(meta or {}, default=str)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors and the JSON meta of a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("qsegment", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    return tensors, meta


def _leads(own: torch.Tensor, loaded: torch.Tensor) -> bool:
    """Whether ``loaded`` fits the first outputs of ``own`` (dimension 0)."""
    return (own.ndim == loaded.ndim >= 1 and own.shape[1:] == loaded.shape[1:]
            and loaded.shape[0] < own.shape[0])


def _leading(own: torch.Tensor, loaded: torch.Tensor) -> torch.Tensor:
    """``loaded`` where it has ``own``'s shape; else ``own`` with its first outputs
    replaced by ``loaded``."""
    if own.shape == loaded.shape:
        return loaded
    merged = own.clone()
    merged[:loaded.shape[0]] = loaded
    return merged


def load_weights(model: nn.Module, path: Path, matching_only: bool = False) -> dict:
    """Load the model weights of a checkpoint into ``model``; returns its meta.

    ``matching_only``: load only the tensors whose name and shape ``model`` shares (to
    start a related architecture, e.g. ``qsegment-imx``, from a Q-Segment checkpoint),
    and, where the model's outputs extend the vessel output (``qsegment-av``), into a
    layer with more outputs (its head) its first outputs; their names are listed in the
    meta under ``"loaded"``."""
    tensors, meta = read_checkpoint(path)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    if matching_only:
        own = model.state_dict()
        extends = len(getattr(model, "outputs", ())) > 1  # outputs after the vessel's
        state = {k: _leading(own[k], v) for k, v in state.items()
                 if k in own and (own[k].shape == v.shape or (extends and _leads(own[k], v)))}
        if not state:
            raise CheckpointError(f"{path}: no weights fit {type(model).__name__}")
        model.load_state_dict(state, strict=False)
        return {**meta, "loaded": sorted(state)}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__}: {err}") from err
    return meta


def load_model(source: str | Path = DEFAULT_MODEL) -> tuple[SegmentationModel, Card]:
    """Build the model a checkpoint's card names, load its weights, return (model, card).

    ``source`` is a shipped name, a run folder or a .safetensors file
    (:func:`qsegment.pretrained.resolve_checkpoint`). The model is in eval mode. The card
    (:class:`qsegment.card.Card`; see docs/RESULTS.md) records data, split, recipe,
    threshold and measured metrics.

    Args:
        source: a shipped weights name, a run folder or a .safetensors file.

    Returns:
        The model with its weights, in eval mode, and its card.

    Raises:
        CheckpointError: ``source`` is no weights name, run folder or readable
            checkpoint, has no card naming its model, or its weights do not fit it.
        CardError: the card beside the checkpoint cannot be read.
        UnknownNameError: the card names an architecture that is not registered.
    """
    path = resolve_checkpoint(source)
    card = read_card(path)
    model = create_model(card.model, **card.model_args)
    load_weights(model, path)
    return model.eval(), card


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into flat tensors and JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
