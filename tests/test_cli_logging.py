"""Which log lines a ``qsegment`` command prints: ours under "qsegment:", other libraries'
under their own names and only with ``--verbose`` (issue #30: MCT's warnings came out
during ``qsegment quantize`` as "qsegment: DepthwiseConv2D is not in model.")."""

from __future__ import annotations

import argparse
import logging

import pytest

from qsegment import cli
from qsegment.console import configure_logging
from qsegment.errors import UsageError

LIBRARY = "Model Compression Toolkit"  # the logger MCT writes its warnings to


@pytest.fixture
def chatty_models(monkeypatch: pytest.MonkeyPatch):
    """``qsegment models`` replaced by a command during which a library and qsegment log."""
    def models(args: argparse.Namespace) -> int:
        logging.getLogger(LIBRARY).warning("DepthwiseConv2D is not in model.")
        logging.getLogger(LIBRARY).info("an info line of the library")
        logging.getLogger("qsegment.export.tflite").warning("a message of ours")
        return 0

    monkeypatch.setattr(cli, "_models", models)
    yield
    configure_logging()  # leave logging as a plain command run leaves it


def test_library_warnings_are_hidden_and_ours_shown(chatty_models, capsys) -> None:
    assert cli.main(["models"]) == 0
    assert capsys.readouterr().err.splitlines() == ["qsegment: a message of ours"]


@pytest.mark.parametrize("argv", [["--verbose", "models"], ["-v", "models"],
                                  ["models", "--verbose"], ["models", "-v"]])
def test_verbose_shows_library_warnings_under_their_own_name(chatty_models, capsys,
                                                             argv: list[str]) -> None:
    assert cli.main(argv) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{LIBRARY}: DepthwiseConv2D is not in model.", "qsegment: a message of ours"]


def test_repeated_runs_print_each_line_once(chatty_models, capsys) -> None:
    for _ in range(3):
        cli.main(["--verbose", "models"])
    assert capsys.readouterr().err.count("a message of ours") == 3


def test_an_error_line_names_the_command_after_the_global_flag(monkeypatch, capsys) -> None:
    def models(args: argparse.Namespace) -> int:
        raise UsageError("--size must be positive")

    monkeypatch.setattr(cli, "_models", models)
    assert cli.main(["--verbose", "models"]) == 2
    assert capsys.readouterr().err == "qsegment models: error: --size must be positive\n"
    configure_logging()
