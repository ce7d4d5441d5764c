"""Terminal concerns: which log lines reach the user, and keeping native libraries'
chatter out of the user's terminal."""

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


class _StderrLines(logging.Handler):
    """Log lines to whatever ``sys.stderr`` is when they come (a redirect, pytest's capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # logging's rule: a handler that fails reports it, never raises
            self.handleError(record)


def _install(logger: logging.Logger, fmt: str, level: int) -> logging.Handler:
    """A fresh stderr handler on ``logger``, replacing the one an earlier call installed."""
    for old in [h for h in logger.handlers if isinstance(h, _StderrLines)]:
        logger.removeHandler(old)
    handler = _StderrLines(level)
    handler.setFormatter(logging.Formatter(fmt))
    logger.addHandler(handler)
    return handler


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == "qsegment" or record.name.startswith("qsegment.")


def configure_logging(verbose: bool = False) -> None:
    """Where a command's log lines go: ours (loggers under ``qsegment``) as
    ``qsegment: message`` at WARNING and above (INFO and above when ``verbose``: which
    runtime ``auto`` chose and why); other libraries' under their own logger
    names (``name: message``), at WARNING and above, and only when ``verbose``: their
    warnings are about their own internals (MCT's "DepthwiseConv2D is not in model."), and
    under our name they would read as ours. Calling it again replaces what it set up."""
    ours = logging.getLogger("qsegment")
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    _install(ours, "qsegment: %(message)s", ours.level)
    # Silent unless verbose, the root handler still stands in for logging's last resort,
    # which would print any library's warning that reaches no handler.
    libraries = _install(logging.getLogger(), "%(name)s: %(message)s",
                         logging.WARNING if verbose else logging.CRITICAL + 1)
    libraries.addFilter(lambda record: not _is_ours(record))
