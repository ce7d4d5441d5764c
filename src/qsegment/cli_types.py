"""Type functions for command-line options: each turns the text of one option into its
value or refuses it with a message, which argparse prints as one usage line (exit code 2).

Only the standard library and :mod:`qsegment.errors` are imported, so that building and
checking a command line costs no heavy import, and so that an export target's options
(:class:`qsegment.export.Option`) can use these too. A library check that raises a
:class:`~qsegment.errors.QsegmentError` becomes a type function with :func:`checked`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import QsegmentError

TypeFunction = Callable[[str], Any]


def _number(text: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def ranged(name: str, kind: type[int] | type[float], accepts: Callable[[float], bool],
            rule: str) -> TypeFunction:
    """A type function for numbers of ``kind`` that ``accepts``, ``rule`` saying which."""
    def parse(text: str) -> int | float:
        value = _number(text, kind)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = name
    return parse


positive_int = ranged("positive_int", int, lambda v: v >= 1, "a whole number >= 1")
non_negative_int = ranged("non_negative_int", int, lambda v: v >= 0, "a whole number >= 0")
positive_float = ranged("positive_float", float, lambda v: v > 0, "a number > 0")
non_negative_float = ranged("non_negative_float", float, lambda v: v >= 0, "a number >= 0")
# a decision threshold: 0 or 1 would make the mask all vessel or empty
probability = ranged("probability", float, lambda v: 0 < v < 1,
                      "a probability strictly between 0 and 1")


def threshold_rule(text: str) -> str | float:
    """``auto`` (a cut per image), ``card`` (the model card's) or a probability."""
    if text in ("auto", "card"):
        return text
    try:
        return probability(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected auto, card or a probability strictly between 0 and 1, got {text!r}"
        ) from None


fraction = ranged("fraction", float, lambda v: 0 <= v <= 1, "a share between 0 and 1")
# a per-step decay or momentum: 1 would never let go of the past
decay = ranged("decay", float, lambda v: 0 <= v < 1, "a decay in [0, 1)")
port = ranged("port", int, lambda v: 0 < v < 65536, "a TCP port (1-65535)")


def existing_file(text: str) -> Path:
    """A file that must exist (an input)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: {'a folder, not a file' if path.is_dir() else 'no such file'}")
    return path


def existing_dir(text: str) -> Path:
    """A folder that must exist (an input)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return path


def output_folder(text: str) -> Path:
    """A folder to write into: new, or an existing folder, but not a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: output path exists and is not a folder")
    return path


def output_file(suffix: str) -> TypeFunction:
    """A type function for a file to write, named ``*suffix``, that is not a folder."""
    def parse(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{text}: expected a {suffix} file name")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: a folder, not a {suffix} file")
        return path

    parse.__name__ = parse.__qualname__ = f"output_file_{suffix.lstrip('.')}"
    return parse


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def host(text: str) -> str:
    """An IP address or a host name (whether it resolves is the server's to find out)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        if not _HOSTNAME.fullmatch(text):
            raise argparse.ArgumentTypeError(
                f"expected an IP address or a host name, got {text!r}") from None
    return text


def url(text: str) -> str:
    """An http(s), ftp or file URL."""
    parts = urlparse(text)
    if parts.scheme not in ("http", "https", "ftp", "file") or not (parts.netloc or
                                                                    parts.path):
        raise argparse.ArgumentTypeError(f"expected an http(s), ftp or file URL, got {text!r}")
    return text


def checked(check: Callable[[str], object], name: str) -> TypeFunction:
    """A type function from a library check: the text as given where ``check`` accepts it;
    the :class:`~qsegment.errors.QsegmentError` it raises, as a usage error. The library
    and the command line then refuse a value with one rule and one message."""
    def parse(text: str) -> str:
        try:
            check(text)
        except QsegmentError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    parse.__name__ = parse.__qualname__ = name
    return parse


def registry_name(registry: Any) -> TypeFunction:
    """A type function for a row name of a :class:`qsegment.registry.Registry`; an unknown
    name is refused with the registry's own message, which lists the valid names."""
    return checked(registry.get, registry.kind.replace(" ", "_"))
