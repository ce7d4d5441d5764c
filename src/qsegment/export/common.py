"""What the export targets share: the note each returns (:class:`ExportNote`), the size
search (their output folder is written with :func:`qsegment.files.atomic_folder`), and
the type functions of their options (light: ``qsegment export --help`` reads them)."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..card import Card, Threshold
from ..files import write_json

log = logging.getLogger(__name__)

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


def search_largest(usage: Callable[[int], float], start: int, step: int,
                   budget: str = "the budget") -> int | None:
    """Largest multiple of ``step`` that fits and whose next multiple does not, where
    ``usage(size)`` is the share of the budget a size needs (it fits at <= 1). Memory
    grows about with the area, so each measurement aims the next probe at the edge
    (``size / sqrt(share)``); probes stay inside the bracket found so far and bisect it
    when the aim falls outside, so a wrong aim costs probes, not the answer; no size is
    probed twice. None if even ``step`` does not fit. Each probe is logged (a search of
    real conversions takes minutes), naming the ``budget``."""
    lo, hi = 0, None  # the largest size known to fit, the smallest above it known not to
    probe = max(step, start // step * step)
    log.warning("searching the largest square input that fits %s, measuring each size tried",
                budget)
    while hi is None or hi - lo > step:
        share = usage(probe)
        log.warning("  %dx%d: %.1f %% of %s%s", probe, probe, 100 * share, budget,
                    "" if share <= 1 else ": does not fit")
        lo, hi = (probe, hi) if share <= 1 else (lo, probe)
        aim = min(int(probe / max(share, 1e-6) ** 0.5), 4 * probe) // step * step
        if hi is None:
            probe = max(aim, lo + step)
        elif hi - lo > step:
            probe = aim if lo < aim < hi else lo + (hi - lo) // step // 2 * step
    return lo or None


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
