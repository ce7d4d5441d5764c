"""``--runtime auto``, the default: the fastest int8 runtime installed for this CPU, which
it names with ``--verbose`` and in the outputs, falling back in one line to the next one
where the first is missing or broken (issue #35)."""

from __future__ import annotations

import shutil
import sys

import pytest

import qsegment.runtimes as runtimes
from qsegment import Segmenter
from qsegment.cli import main
from qsegment.pretrained import DEFAULT_MODEL, resolve_checkpoint
from qsegment.runtimes import auto_runtimes


@pytest.fixture
def x86(monkeypatch):
    """This machine seen as x86-64, where OpenVINO goes first."""
    monkeypatch.setattr(runtimes.platform, "machine", lambda: "x86_64")


@pytest.fixture
def image(data_dir):
    return data_dir / "Image_11L.jpg"


def test_the_order_follows_the_cpu():
    assert auto_runtimes("aarch64")[0] == auto_runtimes("armv7l")[0] == ["tflite-int8"]
    assert auto_runtimes("x86_64")[0] == auto_runtimes("AMD64")[0] == ["openvino",
                                                                      "tflite-int8"]


def test_on_arm_auto_is_litert(monkeypatch):
    monkeypatch.setattr(runtimes.platform, "machine", lambda: "aarch64")
    assert Segmenter.from_pretrained().runtime == "tflite-int8"


def test_auto_opens_the_first_of_the_order_on_this_machine():
    segmenter = Segmenter.from_pretrained()
    assert segmenter.runtime == auto_runtimes()[0][0]


def test_verbose_and_the_summary_name_the_chosen_runtime(x86, image, tmp_path, capsys):
    assert main(["--verbose", "predict", str(image), "-o", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "runtime auto: openvino (x86-64: OpenVINO first, LiteRT next)" in err
    assert "runtime openvino" in out and (tmp_path / "Image_11L_mask.png").is_file()


def test_a_missing_openvino_falls_back_to_litert(x86, image, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails as uninstalled
    assert main(["-v", "predict", str(image), "-o", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "runtime auto: openvino is not installed (no module openvino); trying " \
           "tflite-int8" in err
    assert "runtime tflite-int8" in out


def test_a_broken_openvino_file_warns_in_one_line_and_falls_back(x86, data_dir, tmp_path,
                                                                 capsys):
    """A damaged int8 ONNX: one warning line (shown without --verbose), LiteRT runs, and
    the damaged file is left as it was."""
    weights = resolve_checkpoint(DEFAULT_MODEL)
    copy = tmp_path / "weights"
    copy.mkdir()
    for file in weights.parent.glob(f"{DEFAULT_MODEL}.*"):
        shutil.copy(file, copy)
    damaged = copy / f"{DEFAULT_MODEL}.int8.onnx"
    damaged.write_bytes(b"not an ONNX file")
    image = data_dir / "Image_11L.jpg"
    assert main(["predict", str(image), "--model", str(copy / weights.name),
                 "-o", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    warning = [line for line in err.splitlines() if "runtime auto" in line]
    assert len(warning) == 1 and "openvino failed" in warning[0]
    assert f"{DEFAULT_MODEL}.int8.onnx: OpenVINO cannot read it (Unable to read" in warning[0]
    assert "runtime tflite-int8" in out
    assert damaged.read_bytes() == b"not an ONNX file"
