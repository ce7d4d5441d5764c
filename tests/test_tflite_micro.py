"""Microcontroller export: a real int8 TFLite conversion of the shipped network, run by the
real TFLite-Micro interpreter (PyPI tflite-micro) on real CHASE_DB1 images."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from qsegment import load_model
from qsegment.card import Card
from qsegment.cli import main
from qsegment.data import calibration_images, to_input
from qsegment.export.tflite import convert_int8
from qsegment.export.tflite_micro import (
    BUDGETS,
    Budget,
    export_tflite_micro,
    fit_table,
    logit_threshold,
    tiles,
)
from qsegment.runtimes.tflm import (
    MicroModel,
    UnsupportedOperatorError,
    lsb_difference,
    measure_arena,
    operators,
)

SIZE = 48
MODEL = "qsegment-nearest-312"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_dir):
    """The export's folder and its card (the note's details)."""
    out = tmp_path_factory.mktemp("mcu") / "mcu"
    note = export_tflite_micro(MODEL, out, size=SIZE, calibration=2, data=data_dir)
    assert note.target == "tflite-micro" and note.out == out
    assert sorted(note.files) == sorted(p.name for p in out.iterdir()) == [
        "model_data.cc", "model_data.h", "qsegment.json", "qsegment.tflite"]
    return out, note.details


def test_export_is_fully_int8_and_checked_by_tflite_micro(exported):
    out, card = exported
    assert json.loads((out / "qsegment.json").read_text()) == json.loads(json.dumps(card))
    assert Card.read(out / "qsegment.json").size == SIZE == card["size"]
    flatbuffer = (out / "qsegment.tflite").read_bytes()
    assert card["flatbuffer_bytes"] == len(flatbuffer)
    # no float island: every operator TFLite-Micro runs is an integer kernel
    assert set(card["operators"]) <= {"ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D",
                                      "QUANTIZE", "RESIZE_NEAREST_NEIGHBOR"}
    assert card["operators"] == operators(flatbuffer)
    assert card["input"]["shape"] == [1, SIZE, SIZE, 3] and card["input"]["dtype"] == "int8"
    assert card["arena_bytes"] == measure_arena(flatbuffer) > 0
    assert card["agreement"]["tflm_vs_litert-ref"]["max_lsb"] == 0
    assert card["agreement"]["float_vs_tflm"]["mask_agreement"] > 0.97


def test_tflite_micro_matches_tflite_on_real_images(exported, split):
    out, _ = exported
    _, val = split
    batch = np.concatenate([to_input(s.image, SIZE).numpy() for s in val[:3]])
    micro = MicroModel(out / "qsegment.tflite")
    reference = MicroModel(out / "qsegment.tflite", "litert-ref")
    optimized = MicroModel(out / "qsegment.tflite", "litert")
    raw = micro.raw(batch)
    assert raw.dtype == np.int8 and raw.shape == (3, SIZE, SIZE, 1)
    # TFLite's reference kernels implement the same integer arithmetic: bit-identical
    assert lsb_difference(raw, reference.raw(batch))["max_lsb"] == 0
    # XNNPACK rounds differently; the masks still agree almost everywhere
    t = micro.card["threshold"]["value"]
    masks = [1 / (1 + np.exp(-r(batch))) >= t for r in (micro, optimized)]
    assert (masks[0] == masks[1]).mean() > 0.99
    # and the float model at the same size sees the same vessels
    model, _ = load_model(MODEL)
    with torch.no_grad():
        float_mask = torch.sigmoid(model(torch.from_numpy(batch))).numpy() >= t
    assert (float_mask == masks[0]).mean() > 0.97


def test_arena_grows_with_the_input_size(split):
    train, _ = split
    model, _ = load_model(MODEL)
    _, images = calibration_images(train, 64, 1)
    small = measure_arena(convert_int8(model, images[:, :, :32, :32]))
    large = measure_arena(convert_int8(model, images))
    assert 0 < small < large
    assert large / small == pytest.approx(4, rel=0.25)  # activations scale with the area


def test_an_operator_tflite_micro_lacks_is_refused():
    class SignHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sign(self.conv(x))

    flatbuffer = convert_int8(SignHead().eval(), torch.rand(2, 3, 16, 16))
    with pytest.raises(UnsupportedOperatorError, match="no kernel for SIGN") as err:
        measure_arena(flatbuffer)
    assert err.value.missing == ["SIGN"]
    with pytest.raises(UnsupportedOperatorError):
        MicroModel(flatbuffer)


def test_c_sources_hold_the_flatbuffer_and_compile(exported, tmp_path):
    out, card = exported
    flatbuffer = (out / "qsegment.tflite").read_bytes()
    source = (out / "model_data.cc").read_text()
    array = source.split("qsegment_model[] = {")[1].split("};")[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", array)) == flatbuffer
    assert f"qsegment_model_len = {len(flatbuffer)};" in source
    header = (out / "model_data.h").read_text()
    assert f"#define QSEGMENT_INPUT_SIZE {SIZE}" in header
    assert f"#define QSEGMENT_ARENA_SIZE {card['arena_bytes_aligned']}" in header
    for op in ("AddConv2D", "AddDepthwiseConv2D", "AddMaxPool2D", "AddResizeNearestNeighbor"):
        assert f"resolver.{op}();" in header
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler to check the sources with")
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-c", str(out / "model_data.cc"),
                    "-o", str(tmp_path / "model_data.o")], check=True)


def test_integer_threshold_and_lut_match_the_float_rule():
    scale, zero, t = 0.0982, 35, 0.79
    q = np.arange(-128, 128)
    probability = 1 / (1 + np.exp(-(q - zero) * scale))
    assert np.array_equal(q >= logit_threshold(t, scale, zero), probability >= t)


def test_tiles_cover_a_chase_image():
    assert tiles(1024) == 1  # one tile holds the whole 960x999 photograph
    assert tiles(512) == 4  # 2 x 2: 2 * 496 + 16 >= 999
    assert tiles(504) == 6  # 2 x 3: 2 * 488 + 16 >= 960 but < 999
    assert tiles(312) == 16  # 4 x 4: 3 * 296 + 16 < 960 <= 4 * 296 + 16
    counts = [tiles(s) for s in range(64, 1024, 8)]
    assert counts == sorted(counts, reverse=True)


def test_fit_table_picks_the_largest_size_whose_arena_and_firmware_fit(split):
    """A budget with room for the 64x64 arena but not the 72x72 one gets 64x64; where the
    program runs from SRAM the flatbuffer counts too, and the firmware keeps its reserve."""
    model, _ = load_model(MODEL)
    _, probe = calibration_images(split[0], 64, 1)
    arena64 = measure_arena(convert_int8(model, probe))
    arena72 = measure_arena(convert_int8(model, torch.nn.functional.interpolate(
        probe, size=(72, 72), mode="bilinear", antialias=True)))
    assert arena64 < arena72
    reserve = 4096
    budget = Budget("test", (arena64 + arena72) // 2 + reserve, reserve, False, "test")
    row = fit_table(model, probe, {"test": budget})[0]
    assert row["largest_size"] == 64 and row["arena_bytes"] == arena64
    in_sram = Budget("test", budget.sram, reserve, True, "test")
    assert fit_table(model, probe, {"test": in_sram})[0]["largest_size"] < 64
    for b in BUDGETS.values():  # every real budget keeps the firmware's reserve
        assert b.arena_limit(row["flatbuffer_bytes"]) == b.sram - b.reserve - (
            row["flatbuffer_bytes"] if b.model_in_sram else 0)


def test_cli_export_then_evaluate_the_int8_model(exported, data_dir, capsys):
    out, _ = exported
    assert main(["evaluate", str(out / "qsegment.tflite"), "--data", str(data_dir),
                 "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "int8 tflite-micro @ 48x48" in printed and "int8 minus float Dice" in printed


def test_cli_refuses_a_bad_size(tmp_path, data_dir, capsys):
    assert main(["export", MODEL, "--target", "tflite-micro", "--size", "50", "-o",
                 str(tmp_path / "x"), "--data", str(data_dir)]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    (tmp_path / "some.onnx").write_bytes(b"")
    assert main(["export", str(tmp_path / "some.onnx"), "--target", "imx500", "--fit", "-o",
                 str(tmp_path / "y")]) == 2
    assert "--fit do(es) not apply to --target imx500" in capsys.readouterr().err
