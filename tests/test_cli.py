"""Every value is checked at the door (issue #30): each option of each sub-command, given
a bad value, ends in one usage line and exit code 2, before any work and any file.

The walk reads the parsers that :func:`qsegment.cli.build_parser` makes, so an option
added later is walked too: it needs a type function (:mod:`qsegment.cli_types`), choices,
or a row in :data:`FREE_TEXT`, and its type's bad values in :data:`BAD_VALUES`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qsegment import cli
from qsegment.cli import build_parser, main

DATA = Path(__file__).resolve().parents[1] / "../shared/data/CHASEDB1"
IMAGE = str((DATA / "Image_11L.jpg").resolve())

# Bad values of each type function (by its name) and of choices. Placeholders name the
# paths of the `places` fixture: one missing, one file, one folder, folders named as files.
BAD_VALUES: dict[str, list[str]] = {
    "choices": ["nope"],
    "positive_int": ["foo", "0", "-3", "1.5"],
    "non_negative_int": ["foo", "-3", "2.5"],
    "positive_float": ["foo", "0", "-1", "nan", "inf"],
    "non_negative_float": ["foo", "-1", "nan"],
    "probability": ["foo", "0", "1", "2", "-0.5"],
    "threshold_rule": ["foo", "0", "1", "Auto", "-0.5"],
    "fraction": ["foo", "-0.1", "1.5"],
    "decay": ["foo", "-0.1", "1"],
    "degrees": ["foo", "0", "180", "-45"],
    "port": ["foo", "0", "70000"],
    "existing_file": ["{missing}", "{folder}"],
    "existing_dir": ["{missing}", "{file}"],
    "config_folders": ["{missing}", "{file}", "{folder},{missing}"],
    "dataset_names": ["nope", "chasedb1,nope", "chasedb1,"],
    "positive_floats": ["foo", "0", "1,-1", "1,,2", "1,nan"],
    "output_folder": ["{file}"],
    "output_file_onnx": ["{folder_onnx}", "{missing}.txt"],
    "output_file_md": ["{folder_md}", "{missing}.txt"],
    "weights": ["nope", "{missing}.safetensors", "{folder}"],
    "weights_list": ["qsegment-nearest,nope", "{missing}"],
    "model_or_file": ["nope", "{missing}.onnx"],
    "architecture": ["nope"],
    "preset": ["nope", "{missing}.yaml"],
    "scale": ["foo", "0", "-2", "inf"],
    "device": ["gpu", "cuda:x"],
    "image_names": ["Image_01L,,Image_02L", ","],
    "ray_address": ["not an address", "http://head:10001"],
    "host": ["not a host!", "-bad-"],
    "url": ["not a url", "mailto:me@example.org"],
    "board": ["nope"],
    "_tile": ["0", "-3", "12x", "foo"],
    "_roi": ["1,2,3", "0,0,0,10", "-1,0,10,10", "a,b,c,d"],
    "_bridge": ["foo", "2", "-0.1"],
    "shapes": ["0x512", "512x", "512x512,foo"],
    "file_stem": ["a/b", ".hidden", ""],
}
# Options that take any text, and why that is right. Keep this short.
FREE_TEXT = {
    # inputs are files, folders or glob patterns (batch: also URIs and lists): each is
    # resolved on its own, and one that is missing fails alone (exit code 1)
    ("predict", "inputs"), ("batch", "inputs"), ("analyze", "inputs"),
}


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(action, (argparse._HelpAction,
                                                         argparse._VersionAction))


def _kind(action: argparse.Action) -> str | None:
    if action.choices is not None:
        return "choices"
    return getattr(action.type, "__name__", None)


def _walk() -> list[tuple[str, str]]:
    """(command, dest or flag) of every option that takes a value."""
    return [(name, a.option_strings[-1] if a.option_strings else a.dest)
            for name, command in _commands(build_parser()).items()
            for a in command._actions if _takes_value(a)]


def _action(command: str, option: str) -> argparse.Action:
    """The action of a flag, or of a positional by its dest."""
    return next(a for a in _commands(build_parser())[command]._actions
                if (option in a.option_strings if option.startswith("-")
                    else not a.option_strings and a.dest == option))


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    """Paths for valid and bad values; ``out`` is where a command would write."""
    (tmp_path / "a_file.txt").write_text("not a folder")
    for folder in ("a_folder", "folder.onnx", "folder.md"):
        (tmp_path / folder).mkdir()
    (tmp_path / "network.rpk").write_bytes(b"")
    return {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "a_file.txt"),
            "folder": str(tmp_path / "a_folder"),
            "folder_onnx": str(tmp_path / "folder.onnx"),
            "folder_md": str(tmp_path / "folder.md"), "out": str(tmp_path / "out"),
            "network": str(tmp_path / "network.rpk")}


def _valid(command: str, action: argparse.Action, places: dict[str, str]) -> list[str]:
    """A valid value for a required argument."""
    if action.dest == "out":
        return [places["out"] + ("/q.onnx" if command == "quantize" else "")]
    return {"inputs": [IMAGE], "network": [places["network"]], "action": ["download"],
            "dataset": ["chasedb1"], "model": ["qsegment-nearest"]}[action.dest]


def _command_line(command: str, tested: argparse.Action, value: str,
                  places: dict[str, str]) -> list[str]:
    """``command`` with its required arguments valid and ``tested`` given ``value``."""
    positionals, optionals = [], []
    for a in _commands(build_parser())[command]._actions:
        if a.dest == tested.dest and a.option_strings == tested.option_strings:
            if a.option_strings:  # --flag=VALUE: a value may start with "-"
                optionals.append(f"{a.option_strings[-1]}={value}")
            else:
                positionals.append(value)
        elif not a.option_strings and a.nargs not in ("?", "*") and _takes_value(a):
            positionals += _valid(command, a, places)
        elif a.option_strings and a.required:
            optionals += [a.option_strings[-1], *_valid(command, a, places)]
    return [command, *positionals, *optionals]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``qsegment ARGV``."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.splitlines()


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _handlers_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value that passes the door would run the command: fail instead of working."""
    def reached(args: argparse.Namespace) -> int:
        raise AssertionError(f"qsegment {args.command} ran with a bad value")

    real = build_parser

    def guarded(only: str | None = None) -> argparse.ArgumentParser:
        parser = real(only)
        for command in _commands(parser).values():
            command.set_defaults(handler=reached)
        return parser

    monkeypatch.setattr(cli, "build_parser", guarded)


WALK = _walk()


@pytest.mark.parametrize(("command", "option"), WALK, ids=[" ".join(o) for o in WALK])
def test_every_option_refuses_a_bad_value_in_one_line(command, option, places, tmp_path,
                                                      monkeypatch, capsys):
    action = _action(command, option)
    kind = _kind(action)
    if (command, action.dest) in FREE_TEXT:
        return
    assert kind in BAD_VALUES, (f"qsegment {command} {option}: parse it with a type function "
                                "(qsegment.cli_types) or choices, and list its bad values here")
    _handlers_fail(monkeypatch)
    before = _files(tmp_path)
    for bad in BAD_VALUES[kind]:
        bad = bad.format(**places)
        code, err = _run(_command_line(command, action, bad, places), capsys)
        assert code == 2, (option, bad)
        assert len(err) == 1, (option, bad, err)
        name = argparse._get_action_name(action)
        assert err[0].startswith(f"qsegment {command}: error: argument {name}: "), err[0]
        assert "Traceback" not in err[0]
    assert _files(tmp_path) == before


@pytest.mark.parametrize("argv", [
    ["train", "--arch", "nope", "--out", "{out}"],
    ["train", "--out", "{out}", "--loss", "nope"],
    ["train", "--out", "{out}", "--dataset", "nope"],
    ["evaluate", "nope"],
    ["evaluate", "{missing}.onnx"],
    ["predict", IMAGE, "-o", "{out}", "--runtime", "nope"],
    ["predict", IMAGE, "-o", "{out}", "--scale", "foo"],
    ["predict", IMAGE, "-o", "{out}", "--threshold", "2"],
    ["export", "qsegment-nearest", "--target", "nope", "-o", "{out}"],
    ["camera", "{missing}.rpk"],
    ["camera", "{network}", "--info", "{missing}.json"],
    ["predict", IMAGE, "-o", "{out}", "--tile", "0"],
    ["models", "--size", "-3"],
], ids=lambda argv: " ".join(argv[:1] + [a for a in argv[1:] if "{" not in a and "/" not in a]))
def test_the_issue_s_cases_end_in_one_line(argv, places, tmp_path, capsys):
    """The commands of issue #30, run as they are (no handler is replaced)."""
    code, err = _run([a.format(**places) for a in argv], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"qsegment {argv[0]}: error: argument ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("argv", "line"), [
    (["predict", IMAGE], "qsegment predict: error: the following arguments are required: "
                         "-o/--out"),
    (["nope"], "qsegment: error: argument COMMAND: invalid choice: 'nope' (choose from "),
    (["models", "--nope"], "qsegment: error: unrecognized arguments: --nope"),
    ([], "qsegment: error: the following arguments are required: COMMAND"),
])
def test_argparse_s_own_errors_are_one_line(argv, line, capsys):
    code, err = _run(argv, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(line), err


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["bench", "--model", "qsegment", "tnet"], "arch", ["qsegment", "tnet"]),
    (["train", "--out", "runs/x", "--model", "tnet"], "model", "tnet"),  # TrainConfig.model
])
def test_the_old_architecture_flag_still_works_with_a_warning(argv, dest, value, capsys):
    assert getattr(build_parser().parse_args(argv), dest) == value
    assert capsys.readouterr().err == f"qsegment {argv[0]}: --model is deprecated, use --arch\n"


def test_arch_is_the_architecture_and_model_the_weights(capsys):
    parser = build_parser()
    assert parser.parse_args(["bench", "--arch", "qsegment", "tnet"]).arch == ["qsegment", "tnet"]
    assert parser.parse_args(["train", "--out", "x", "--arch", "tnet"]).model == "tnet"
    for command in ("evaluate", "quantize"):
        assert parser.parse_args([command, "qsegment-nearest", *(
            ["-o", "q.onnx"] if command == "quantize" else [])]).model == "qsegment-nearest"
    assert capsys.readouterr().err == ""  # the new spellings warn about nothing
    help_text = _commands(parser)["train"].format_help()
    assert "--arch ARCH" in help_text and "structure_cldice" in help_text
    assert "--model" not in help_text  # the old spelling works, but is not advertised
    assert "MODEL" in _commands(parser)["evaluate"].format_usage()


def _valid_lines(places: dict[str, str]) -> list[list[str]]:
    """A command line with many options for each command, all valid."""
    out = places["out"]
    return [
        ["models", "--size", "96"],
        ["data", "download", "chasedb1", "--to", out, "--url", "https://example.org/c.zip"],
        ["train", "--out", out, "--preset", "paper", "--epochs", "3", "--loss", "bce_dice",
         "--lr", "0.01", "--momentum", "0", "--ema", "0.999", "--teacher-mix", "1",
         "--init", "qsegment-nearest", "--teacher", "qsegment-nearest,qsegment-nearest-long",
         "--train-images", "Image_01L,Image_02R", "--data", str(DATA), "--device", "cuda:1",
         "--crop", "0", "--max-minutes", "0.5"],
        ["evaluate", "qsegment-nearest", "--size", "336", "256", "--data", str(DATA),
         "--scale", "none"],
        ["calibrate", "qsegment-nearest", "--dataset", "chasedb1", "--data", str(DATA),
         "--runtime", "tflite-int8"],
        ["predict", IMAGE, "-o", out, "--threshold", "0.4", "--tile", "400x1008",
         "--scale", "1.5", "--fov-degrees", "45", "--bridge", "none", "--workers", "1"],
        ["batch", IMAGE, "-o", out, "--address", "ray://head:10001", "--workers", "2",
         "--mm-per-pixel", "0.01"],
        ["analyze", "-o", out, "--agreement", "--min-object-px", "0"],
        ["quantize", "qsegment-nearest", "-o", out + "/q.onnx", "--lr", "1e-3", "--seed", "0"],
        ["export", "qsegment-nearest", "--target", "tflite-micro", "--board", "m4f-256k",
         "--size", "96", "-o", out],
        ["camera", places["network"], "--fov", "0,0,3040,3040", "--threshold", "0.5",
         "--settle-frames", "0"],
        ["bench", "--size", "64", "--runtime", "onnx", "--out", out + "/b.md"],
        ["app", "--host", "0.0.0.0", "--port", "8080", "--max-megapixels", "40"],
    ]


def test_valid_values_pass_the_door(places):
    parser = build_parser()
    parsed = [parser.parse_args(line) for line in _valid_lines(places)]
    assert parsed[2].train_images == ["Image_01L", "Image_02R"] and parsed[2].momentum == 0
    assert parsed[5].threshold == 0.4 and parsed[5].tile == (400, 1008)
    assert parsed[5].bridge is None and parsed[10].fov == (0, 0, 3040, 3040)
    assert parsed[4].dataset == "chasedb1" and parsed[4].runtime == "tflite-int8"
    assert [p.command for p in parsed] == list(_commands(parser))


def test_a_command_builds_its_own_parser_alone():
    """A run builds only its command's parser: `qsegment predict` pays for neither the web
    app's nor the downloader's imports; `qsegment --help` still lists every command."""
    assert list(_commands(build_parser())) == list(cli.COMMANDS)
    assert all(list(_commands(build_parser(name))) == [name] for name in cli.COMMANDS)
    code = ("import sys; from qsegment.cli import build_parser; build_parser('predict'); "
            "print(sorted({'qsegment.app', 'qsegment.datasets.download'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["-v", "models", "--json"], ["models", "-v", "--json"]])
def test_the_command_is_found_after_a_global_option(argv, capsys):
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)


def test_checking_values_imports_no_pytorch(places):
    """The door is torch-free: `--help` and a refused value cost no PyTorch import (only
    --arch, of the commands that train or benchmark, reads the model registry)."""
    code = ("import json, sys; from qsegment.cli import build_parser; p = build_parser(); "
            "[p.parse_args(line) for line in json.loads(sys.argv[1])]; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(_valid_lines(places))],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
