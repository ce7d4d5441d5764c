"""What the export targets share: the size search and the atomic output folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


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


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``out`` to build an export in; on success it replaces
    ``out`` (an older export there is removed), on failure it is deleted: ``out`` is
    never left half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the export is an ordinary folder
    try:
        yield staging
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
