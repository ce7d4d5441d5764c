"""What the registries (models, datasets, runtimes, export targets) share: a name is
added once, an unknown name fails with the list of known ones, and an entry may name
its implementation as ``"module:attribute"`` so that listing names imports nothing."""

from __future__ import annotations

from importlib import import_module
from typing import Any, TypeVar

T = TypeVar("T")


def register(table: dict[str, T], name: str, item: T, kind: str) -> T:
    """Add ``item`` under ``name``; a second entry of the same name is a bug."""
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered twice")
    table[name] = item
    return item


def lookup(table: dict[str, T], name: str, kind: str) -> T:
    """The entry ``name``, or a ValueError listing the valid names."""
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(table)}")
    return table[name]


def resolve(spec: str) -> Any:
    """The object a ``"module:attribute"`` string names, imported now."""
    module, attribute = spec.split(":")
    return getattr(import_module(module), attribute)
