"""One registry of segmentation models, built by name (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..registry import lookup, register

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable:
    """Decorator adding a model constructor to the registry under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _DESCRIPTIONS[name] = description
        return register(_MODELS, name, fn, "model")

    return wrap


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_MODELS)


def describe_model(name: str) -> str:
    """One-line description of a registered model."""
    lookup(_MODELS, name, "model")
    return _DESCRIPTIONS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; an unknown name lists the valid ones."""
    return lookup(_MODELS, name, "model")(**kwargs)
