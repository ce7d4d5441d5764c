"""Loading a model with its card: a shipped pretrained name, a run folder or a checkpoint.

Finding weights and reading their card need no PyTorch (the card lives in the
safetensors metadata, read with safetensors' numpy API); only :func:`load_model`
builds the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .card import Card
from .errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# weights robust to other cameras, within 0.005 Dice of the best one-pass ones on CHASE_DB1
# (docs/RESULTS.md, "Other cameras")
DEFAULT_MODEL = "qsegment-nearest-transfer-jpeg"


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


def read_card(path: Path) -> Card:
    """The card of a checkpoint: in its metadata, else the JSON beside it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("qsegment", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    card = Card.from_dict(meta["card"]) if meta.get("card") else Card.beside(path)
    if not card.model:
        raise CheckpointError(f"{path}: no card naming its model (expected a qsegment checkpoint)")
    return card


def load_model(source: str | Path = DEFAULT_MODEL) -> tuple[nn.Module, Card]:
    """Build the model a checkpoint's card names, load its weights, return (model, card).

    The model is in eval mode. The card (:class:`qsegment.card.Card`; see
    docs/RESULTS.md) records data, split, recipe, threshold and measured metrics.
    """
    from .checkpoint import load_weights
    from .models import create_model

    path = resolve_checkpoint(source)
    card = read_card(path)
    model = create_model(card.model, **card.model_args)
    load_weights(model, path)
    return model.eval(), card
