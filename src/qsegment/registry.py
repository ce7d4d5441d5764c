"""The one shape of every registry in qsegment: models, shipped weights, datasets, runtimes,
export targets, losses, optimizers and schedulers.

A :class:`Registry` holds rows. A row (:class:`Entry` or a subclass that adds fields) has
a name, a one-line description and names its implementation as ``"module:attribute"``,
so that listing names (``--help``, choices) imports nothing heavy. A name is added once;
an unknown name raises :class:`UnknownNameError`, which lists the valid ones and which the
command line reports in one line with exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Generic, TypeVar

from .errors import UsageError


class UnknownNameError(UsageError):
    """A name that its registry does not hold; the message lists the valid ones."""


@dataclass(frozen=True)
class Entry:
    """One row: ``target`` is the implementation as ``"module:attribute"``."""

    name: str
    target: str
    description: str

    def load(self) -> Any:
        """The implementation, imported now."""
        return resolve(self.target)


def resolve(spec: str) -> Any:
    """The object a ``"module:attribute"`` string names, imported now."""
    module, _, attribute = spec.partition(":")
    return getattr(import_module(module), attribute)


R = TypeVar("R", bound=Entry)


class Registry(Generic[R]):
    """Rows of one ``kind`` (e.g. "model"), in the order they were added."""

    def __init__(self, kind: str, rows: Iterable[R] = ()) -> None:
        self.kind = kind
        self._rows: dict[str, R] = {}
        for row in rows:
            self.add(row)

    def add(self, row: R) -> R:
        """Add ``row``; a second row of the same name is a bug."""
        if row.name in self._rows:
            raise ValueError(f"{self.kind} {row.name!r} is registered twice")
        self._rows[row.name] = row
        return row

    def remove(self, name: str) -> R:
        """Take a row out again (a row that a test added)."""
        return self._rows.pop(self.get(name).name)

    def names(self) -> list[str]:
        return list(self._rows)

    def get(self, name: str) -> R:
        """The row ``name``; :class:`UnknownNameError` lists the valid names."""
        if name not in self._rows:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: "
                                   f"{', '.join(self._rows) or 'none'}")
        return self._rows[name]

    def load(self, name: str) -> Any:
        """The implementation of the row ``name``."""
        return self.get(name).load()

    def describe(self) -> dict[str, str]:
        """Each name with its one-line description."""
        return {name: row.description for name, row in self._rows.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[R]:
        return iter(list(self._rows.values()))

    def __len__(self) -> int:
        return len(self._rows)
