"""One registry of segmentation models, built by name (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable:
    """Decorator adding a model constructor to the registry under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_MODELS)


def describe_model(name: str) -> str:
    """One-line description of a registered model."""
    _check_name(name)
    return _DESCRIPTIONS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; an unknown name lists the valid ones."""
    _check_name(name)
    return _MODELS[name](**kwargs)


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_MODELS)}")
