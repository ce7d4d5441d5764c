"""`qsegment export --target onnx|openvino|tflite-int8`: one file for someone else's
runtime, its input contract, and a check that it reproduces qsegment's runtime; each file
is then opened here by its own library alone, as a user's code would."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qsegment.cli import main
from qsegment.datasets import load_sample
from qsegment.pretrained import read_card, resolve_checkpoint

MODEL = "qsegment-nearest"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """Each target's note, from the command line, into one folder."""
    out = tmp_path_factory.mktemp("formats")
    for target, extra in (("onnx", []), ("openvino", []),
                          ("tflite-int8", ["--shape", "256x256,250x250"])):
        assert main(["export", MODEL, "--target", target, "-o", str(out), *extra]) == 0
    return {target: json.loads((out / f"{MODEL}.{target}.json").read_text()) | {"out": out}
            for target in ("onnx", "openvino", "tflite-int8")}


@pytest.fixture(scope="module")
def crop(data_dir) -> np.ndarray:
    """A 256x256 CHASE_DB1 crop (vessels, no FOV rim), (1, 3, H, W) in [0, 1]."""
    image = load_sample(data_dir, "Image_12R").image[300:556, 300:556]
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32)


def test_each_file_reproduces_its_runtime_on_a_real_image(exported):
    for target, note in exported.items():
        assert note["schema_version"] == 1 and note["target"] == target
        check = note["check"]
        assert check["image"].startswith("Image_11L (CHASE_DB1)")
        same = check[f"vs_{target}_runtime"]
        if target == "tflite-int8":  # the runtime pads 256x256 into its shipped 512x512:
            assert same["mask_agreement"] > 0.995  # the zeros beyond change the rim a bit
        else:
            assert same["mask_agreement"] == 1.0 and same["logit_max_abs"] < 1e-4, target
        assert check["vs_float_network"]["mask_agreement"] > 0.99, target
        assert all((note["out"] / f).stat().st_size == n for f, n in note["bytes"].items())
    assert exported["onnx"]["check"]["vs_float_network"]["logit_max_abs"] < 1e-3
    assert exported["onnx"]["files"] == [f"{MODEL}.onnx"]
    assert exported["openvino"]["files"] == [f"{MODEL}.bin", f"{MODEL}.xml"]
    # shapes are rounded up to the network's size multiple (8)
    assert exported["tflite-int8"]["files"] == [f"{MODEL}.int8-256x256.tflite"] * 2
    threshold = read_card(resolve_checkpoint(MODEL)).threshold_value
    assert f">= {threshold:.4f}" in exported["onnx"]["contract"]["vessel"]


def test_onnx_runs_in_onnx_runtime_at_any_multiple_of_the_stride(exported, crop):
    import onnxruntime as ort

    from qsegment.export.cpu import torch_runtime

    session = ort.InferenceSession(str(exported["onnx"]["out"] / f"{MODEL}.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = crop[..., :248, :200]  # multiples of 8, not square
    (logits,) = session.run(["logits"], {"image": x})
    reference = torch_runtime(resolve_checkpoint(MODEL)).logits(x)
    assert logits.shape == (1, 1, 248, 200) and np.abs(logits - reference).max() < 1e-3


def test_the_openvino_ir_runs_in_openvino_as_the_openvino_runtime(exported, crop):
    import openvino as ov

    from qsegment import Segmenter

    model = ov.Core().read_model(str(exported["openvino"]["out"] / f"{MODEL}.xml"))
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}  # as the runtime compiles it (bf16 CPUs)
    logits = ov.Core().compile_model(model, "CPU", f32).create_infer_request().infer({0: crop})[0]
    runtime = Segmenter.from_pretrained(MODEL, runtime="openvino").runner
    assert np.array_equal(logits, runtime.logits(crop))
    assert {op.get_type_name() for op in model.get_ops()} >= {"FakeQuantize", "Convolution"}


def test_the_tflite_file_runs_in_litert_alone(exported, crop):
    from ai_edge_litert.interpreter import Interpreter

    note = exported["tflite-int8"]
    file = note["files"][0]
    interpreter = Interpreter(model_path=str(note["out"] / file))
    interpreter.allocate_tensors()
    (source,), (sink,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(source["shape"]) == [1, 256, 256, 3] and source["dtype"] == np.int8
    scale, zero = note["contract"]["quantization"][file]["input"]
    assert (scale, zero) == pytest.approx(source["quantization"])
    q = np.clip(np.round(crop[0].transpose(1, 2, 0) / scale) + zero, -128, 127)
    interpreter.set_tensor(source["index"], q.astype(np.int8)[None])
    interpreter.invoke()
    out_scale, out_zero = note["contract"]["quantization"][file]["output"]
    logits = (interpreter.get_tensor(sink["index"]).astype(np.float32) - out_zero) * out_scale
    from qsegment.export.cpu import torch_runtime

    reference = torch_runtime(resolve_checkpoint(MODEL)).logits(crop)[0].transpose(1, 2, 0)
    threshold = read_card(resolve_checkpoint(MODEL)).threshold_value
    cut = np.log(threshold / (1 - threshold))
    assert ((logits >= cut) == (reference >= cut)).mean() > 0.98


def test_trained_weights_without_shipped_files_export_too(tmp_path, capsys):
    """A run's weights (no int8 files beside them): the float ONNX needs nothing more."""
    shipped = resolve_checkpoint(MODEL)
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(shipped.with_suffix(suffix), run / f"last{suffix}")
    assert main(["export", str(run), "--target", "onnx", "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / f"{MODEL}.onnx").is_file()  # the card's name
    assert "vs onnx runtime: masks agree on 100.0000% of pixels" in capsys.readouterr().out


def test_an_option_of_another_target_is_refused(tmp_path, capsys):
    assert main(["export", MODEL, "--target", "onnx", "--shape", "256x256",
                 "-o", str(tmp_path)]) == 2
    assert "--shape do(es) not apply to --target onnx" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
