"""`qsegment export --target cpu-int8`: a shipped model's int8 files, made for real at a
shape it does not ship, run without PyTorch like the shipped ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from qsegment.checkpoint import load_model, read_checkpoint
from qsegment.cli import main
from qsegment.engine.config import TrainConfig
from qsegment.export import tflite
from qsegment.export.cpu import export_cpu_int8
from qsegment.inference.calibrate import Calibration, calibration_path
from qsegment.pretrained import AV_MODEL, DEFAULT_MODEL, read_card, resolve_checkpoint
from qsegment.runtimes.base import read_manifest

# in a fresh process that never imports PyTorch: the exported and the shipped files of
# qsegment-nearest on the same CHASE_DB1 crop (256x256, no FOV rim) and whole image
RUN_BOTH = """
import json, sys
import numpy as np
from qsegment import Segmenter
from qsegment.datasets import load_sample

image = np.round(load_sample(sys.argv[2], "Image_12R").image * 255).astype(np.uint8)
crop = image[300:556, 300:556]
ours = Segmenter.from_pretrained(sys.argv[1], runtime="tflite-int8")
shipped = Segmenter.from_pretrained("qsegment-nearest", runtime="tflite-int8")
a, b = ours.predict(crop).probability, shipped.predict(crop).probability
print(json.dumps({
    "shapes": [ours.runner.shape_for(256, 256), shipped.runner.shape_for(256, 256)],
    "tile": [ours.tile, ours.overlap], "threshold": ours.threshold == shipped.threshold,
    "interior_equal": bool(np.array_equal(a[:200, :200], b[:200, :200])),
    "crop_masks": float(((a >= ours.threshold) == (b >= ours.threshold)).mean()),
    "image_masks": float((ours.predict(image).mask == shipped.predict(image).mask).mean()),
    "torch": "torch" in sys.modules}))
"""


def test_cpu_int8_export_runs_without_pytorch_and_agrees_with_the_shipped_files(
        tmp_path, data_dir, capsys):
    out = tmp_path / "models"
    assert main(["export", "qsegment-nearest", "--target", "cpu-int8", "--shape", "256x256",
                 "-o", str(out)]) == 0
    assert "tflite-int8: qsegment-nearest.int8-256x256.tflite" in capsys.readouterr().out
    weights, shipped = out / "qsegment-nearest.safetensors", resolve_checkpoint("qsegment-nearest")
    manifest = read_manifest(weights)
    assert manifest["tflite"] == {"256x256": "qsegment-nearest.int8-256x256.tflite"}
    assert manifest["tile"] == {"shape": [256, 256], "margin": 56}
    assert manifest["onnx"] == "qsegment-nearest.int8.onnx" and not manifest["unsupported"]
    # the same weights and card; what the source ships for them (calibrated ranges, int8
    # ONNX) is copied, the 256x256 flatbuffer is built from those ranges
    ours_tensors, theirs_tensors = read_checkpoint(weights)[0], read_checkpoint(shipped)[0]
    assert ours_tensors.keys() == theirs_tensors.keys()
    assert all(ours_tensors[k].equal(theirs_tensors[k]) for k in ours_tensors)
    assert read_card(weights).threshold == read_card(shipped).threshold
    for suffix in (".int8-observers.safetensors", ".int8.onnx"):
        assert (weights.with_suffix(suffix).read_bytes()
                == shipped.with_suffix(suffix).read_bytes()), suffix
    # exported again, in place (every file is there already): the note lists them all
    note = export_cpu_int8(weights, out, shape=[(256, 256)]).to_dict()
    assert note["schema_version"] == 1 and note["target"] == "cpu-int8"
    assert sorted(note["files"]) == sorted(path.name for path in out.iterdir())
    assert note["weights"] == str(weights) and note["tflite"] == manifest["tflite"]

    done = subprocess.run([sys.executable, "-c", RUN_BOTH, str(weights), str(data_dir)],
                          capture_output=True, text=True, check=True)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert not run["torch"] and run["threshold"]
    assert run["shapes"] == [[256, 256], [512, 512]]  # each on its own flatbuffer
    assert run["tile"] == [[256, 256], 56]  # the manifest's tiling
    # bit for bit where the shipped model's padding (to 512) is out of the receptive field
    assert run["interior_equal"] and run["crop_masks"] > 0.98
    assert run["image_masks"] > 0.999  # 256x256 tiles against the shipped 400x1008 ones


@pytest.mark.parametrize(("shape", "message"), [
    ("96x96", "the tile 96x96 (the last shape) must exceed twice its margin, 56 px"),
    ("256x", "expected HEIGHTxWIDTH[,HEIGHTxWIDTH...] in pixels, got '256x'")])
def test_cpu_int8_export_refuses_a_shape_and_writes_nothing(tmp_path, capsys, shape, message):
    out = tmp_path / "models"
    command = ["export", "qsegment-nearest", "--target", "cpu-int8", "--shape", shape, "-o",
               str(out)]
    try:
        code = main(command)
    except SystemExit as exit_:  # refused by the option's parser
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_the_int8_onnx_draws_the_masks_of_the_int8_flatbuffers(tmp_path, data_dir):
    """The int8 ONNX quantized as the flatbuffers are (their recorded ranges) gives
    OpenVINO and ONNX Runtime LiteRT's masks on CHASE_DB1 validation images, as closely as
    TFLite's reference kernels agree with its default ones (0.994 here, without VNNI;
    ONNX Runtime's own min/max quantization agreed 0.957), at any multiple of the stride."""
    import numpy as np

    from qsegment import Segmenter
    from qsegment.checkpoint import load_model
    from qsegment.datasets import load_sample
    from qsegment.export.cpu import write_onnx_int8
    from qsegment.export.tflite import load_observers
    from qsegment.metrics import evaluate
    from qsegment.pretrained import DEFAULT_MODEL
    from qsegment.runtimes.base import with_shipped_tiling
    from qsegment.runtimes.onnxrt import OnnxInt8Runtime
    from qsegment.runtimes.openvino import OpenVinoInt8

    weights = resolve_checkpoint(DEFAULT_MODEL)
    model = load_model(weights)[0]
    path = write_onnx_int8(model, tmp_path / "model.int8.onnx", observers=load_observers(
        weights.with_suffix(".int8-observers.safetensors")))
    samples = [load_sample(data_dir, name) for name in ("Image_11L", "Image_12R", "Image_14L")]
    images = [np.round(sample.image * 255).astype(np.uint8) for sample in samples]
    litert = Segmenter.from_pretrained(runtime="tflite-int8", threads=1, threshold="card")
    reference = [litert.predict(image) for image in images]
    fovs, labels = [s.fov for s in samples], [s.label for s in samples]

    def dice(predictions, truths, threshold=litert.threshold):
        return evaluate(predictions, truths, fovs, threshold)["pooled"]["dice"]

    for runtime in (OpenVinoInt8, OnnxInt8Runtime):
        engine = with_shipped_tiling(runtime(path, 1, size_multiple=model.size_multiple),
                                     read_manifest(weights))
        ours = [Segmenter(engine, litert.threshold, calibration=litert.calibration).predict(image)
                for image in images]
        agreement = dice([p.mask.astype(np.float32) for p in ours],
                         [p.mask for p in reference], 0.5)
        assert agreement >= 0.99, (runtime.name, agreement)
        assert abs(dice([p.probability for p in ours], labels)
                   - dice([p.probability for p in reference], labels)) <= 0.001, runtime.name
        for shape in ((400, 1008), (256, 256 + model.size_multiple)):  # H, W stay dynamic
            assert engine.logits(np.zeros((1, 3, *shape), np.float32)).shape == (1, 1, *shape)


def test_cpu_int8_export_keeps_the_per_image_calibration(tmp_path):
    """The default model's calibration (``--scale auto --threshold auto``) goes with it."""
    note = export_cpu_int8(DEFAULT_MODEL, tmp_path, shape=[(256, 256)], name="mine")
    assert "mine.calibration.json" in note.files
    assert ((tmp_path / "mine.calibration.json").read_bytes()
            == calibration_path(resolve_checkpoint(DEFAULT_MODEL)).read_bytes())
    assert Calibration.beside(tmp_path / "mine.safetensors") is not None


def test_int8_ranges_are_calibrated_on_what_the_model_learned_from(tmp_path, monkeypatch):
    """Weights without their ranges: a CHASE_DB1 model is calibrated on CHASE_DB1 images
    whole, the artery/vein mixture on windows of its own training photographs (as its card
    records them), each cached under its own name."""
    import torch

    seen = []

    def inputs(model, recipe):
        seen.append((recipe.datasets, recipe.label_scale, tflite.calibration_view(recipe)))
        return torch.rand(1, 3, 64, 64)

    monkeypatch.setattr(tflite, "calibration_inputs", inputs)
    monkeypatch.setenv("QSEGMENT_CACHE", str(tmp_path / "cache"))
    for name in (DEFAULT_MODEL, AV_MODEL):
        source = resolve_checkpoint(name)
        bare = tmp_path / name / source.name  # the weights and card, not their ranges
        bare.parent.mkdir()
        shutil.copy(source, bare)
        tflite.observers_for(load_model(bare)[0], bare)
    assert seen == [(["chasedb1"], False, "whole"),
                    (["chasedb1", "hrf-av", "les-av"], True, "windows")]
    cached = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "cache" / "tflite").iterdir())
    assert cached == ["whole.observers.safetensors", "windows.observers.safetensors"]


def test_calibration_windows_are_the_photographs_at_the_training_calibre():
    """A label-scaled run's calibration inputs: :data:`~qsegment.export.tflite.WINDOW`-px
    windows of its training photographs, seeded, of image values."""
    model = load_model(AV_MODEL)[0]
    recipe = TrainConfig(dataset="les-av", label_scale=True)
    windows = tflite.calibration_inputs(model, recipe)
    assert windows.shape == (tflite.MIXTURE_WINDOWS, 3, tflite.WINDOW, tflite.WINDOW)
    assert float(windows.min()) >= 0 and float(windows.max()) <= 1
    assert float(windows.mean()) > 0.05  # inside the photographs, not padding
    assert not bool((windows[0] == windows[1]).all())
    assert bool((tflite.calibration_inputs(model, recipe) == windows).all())
