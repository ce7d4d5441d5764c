"""Writing files and folders so that a kill never leaves a half-written one: write a
temporary one beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    """The process's umask; reading it means setting it, so it is put straight back."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], object]) -> None:
    """Write ``path`` whole or not at all: ``content`` (bytes, or text as UTF-8) goes into
    a temporary file beside it, which is then renamed over it. For a writer that wants a
    file name of its own (``np.save``, ``savefig``, a Parquet writer), ``content`` is a
    function that writes that temporary path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if callable(content):
            content(Path(tmp))
        else:
            Path(tmp).write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``out`` to fill; on success it replaces ``out`` (what
    was there is removed), on failure it is deleted: ``out`` is never left half-written.
    A folder cannot be renamed over another, so the old one is moved aside first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; make it an ordinary folder
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


def write_json(path: str | Path, data: object) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def user_cache_dir(*parts: str) -> Path:
    """The folder of what qsegment keeps between runs (built models, downloads):
    ``$QSEGMENT_CACHE``, else ``$XDG_CACHE_HOME/qsegment``, else ``~/.cache/qsegment``,
    with ``parts`` below it."""
    root = (os.environ.get("QSEGMENT_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qsegment")
    return Path(root, *parts)
