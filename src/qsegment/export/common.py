"""What the export targets share: the note each returns (:class:`ExportNote`), the size
search (their output folder is written with :func:`qsegment.files.atomic_folder`), and
the type functions of their options (light: ``qsegment export --help`` reads them)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..card import Card, Threshold
from ..files import write_json

EXPORT_NOTE_VERSION = 1  # the "schema_version" of a note's JSON; raised when its shape changes


@dataclass(frozen=True)
class ExportNote:
    """What an export target made: the files it wrote into the folder ``out`` and its own
    facts (``details``: size, memory, agreement... as the target's ``report`` reads them).

    Its JSON (:meth:`to_dict`) carries ``schema_version``, ``target`` and ``files`` (names
    relative to the folder the JSON lies in, so that the folder can move) before the
    details.
    """

    target: str
    out: Path
    files: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": EXPORT_NOTE_VERSION, "target": self.target,
                "files": list(self.files), **self.details}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


def default_name(weights: Path, card: Card) -> str:
    """What exported files are called by default: the card's name, else the run folder's
    (for its ``last.safetensors``) or the weights file's."""
    return card.name or (weights.parent.name if weights.stem == "last" else weights.stem)


def float_threshold(float_card: Card) -> Threshold:
    """An int8 model's decision threshold: its float model's, chosen on training images."""
    return Threshold(float_card.threshold_value, "the float model's, chosen on training images")


def check_size(size: int | None, multiple: int, error: type[Exception]) -> None:
    """Refuse a square input size the network cannot take (None: to be searched)."""
    if size is not None and (size <= 0 or size % multiple):
        raise error(f"--size must be a positive multiple of {multiple} (the network's "
                    f"stride), got {size}")


def search_largest(fits: Callable[[int], bool], start: int, step: int) -> int | None:
    """Largest multiple of ``step`` for which ``fits`` holds (monotone: True below a limit),
    starting from a guess: gallop away from it until the limit is bracketed, then bisect.
    None if even ``step`` does not fit."""
    start = max(step, start // step * step)
    if fits(start):
        lo, delta = start, step
        while fits(lo + delta):
            lo, delta = lo + delta, delta * 2
        hi = lo + delta
    else:
        hi, delta = start, step
        while hi - delta >= step and not fits(hi - delta):
            hi, delta = hi - delta, delta * 2
        if hi - delta >= step:
            lo = hi - delta
        elif hi > step and fits(step):
            lo = step
        else:
            return None
    while hi - lo > step:
        mid = lo + (hi - lo) // step // 2 * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``HxW[,HxW...]``: input shapes in pixels, e.g. ``512x512,400x1008``."""
    found = [re.fullmatch(r"\s*(\d+)x(\d+)\s*", part) for part in text.split(",")]
    sizes = tuple((int(m[1]), int(m[2])) for m in found if m)
    if len(sizes) < len(found) or any(n < 1 for size in sizes for n in size):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH[,HEIGHTxWIDTH...] in pixels, "
                                         f"got {text!r}")
    return sizes


def file_stem(text: str) -> str:
    """A name that files are called after (``NAME.safetensors``): no folder, no leading
    dot."""
    if not re.fullmatch(r"[\w][\w.+-]*", text):
        raise argparse.ArgumentTypeError(f"expected a file name without a folder (letters, "
                                         f"digits, . _ + -), got {text!r}")
    return text
