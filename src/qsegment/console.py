"""Keeping native libraries' chatter out of the user's terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what is written to file descriptor 2, by Python or by native code
    (TFLite-Micro and LiteRT log there); the lines are in the yielded list afterwards.
    Logging handlers that a library adds meanwhile (bound to the capture) are removed."""
    lines: list[str] = []
    handlers = list(logging.root.handlers)
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink):
                yield lines
        finally:
            logging.root.handlers[:] = handlers
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().splitlines())
