"""The openvino runtime on real CHASE_DB1 images: it runs the shipped int8 ONNX as ONNX
Runtime does, compiles once per shape into OpenVINO's model cache, and a broken or stale
cache is rebuilt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsegment import Segmenter
from qsegment.cli import main
from qsegment.datasets import load_sample
from qsegment.metrics import evaluate
from qsegment.pretrained import DEFAULT_MODEL, resolve_checkpoint
from qsegment.runtimes.openvino import OpenVinoInt8

VALIDATION = ("Image_11L", "Image_12R", "Image_14L")  # 3 of the default split's validation


def rgb8(sample) -> np.ndarray:
    """The 8-bit RGB a decoded file gives (the samples are the JPEG's pixels / 255)."""
    return np.round(sample.image * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def crop(data_dir) -> np.ndarray:
    return rgb8(load_sample(data_dir, "Image_11L"))[300:556, 300:556]


def loaded_from_cache(runtime: OpenVinoInt8, shape: tuple[int, ...]) -> bool:
    return bool(runtime.request(shape).get_compiled_model().get_property("LOADED_FROM_CACHE"))


def test_openvino_draws_the_masks_of_litert_and_onnx_runtime(data_dir):
    """The shipped int8 ONNX has the int8 flatbuffers' quantization: on CHASE_DB1
    validation images OpenVINO's masks agree with LiteRT's (issue #35; on CPUs with bf16
    only because OpenVINO's float parts are asked for in f32: 0.9865 on the eight for the
    default, 0.9930 in f32, docs/BENCHMARKS.md) and with ONNX Runtime's on the same file,
    and so does their Dice against the first observer."""
    samples = [load_sample(data_dir, name) for name in VALIDATION]
    segmenters = {name: Segmenter.from_pretrained(runtime=name)
                  for name in ("openvino", "tflite-int8", "onnx-int8")}
    openvino = segmenters["openvino"]
    assert openvino.runner.path == segmenters["onnx-int8"].runner.path
    assert openvino.runner.path.name == f"{DEFAULT_MODEL}.int8.onnx"
    assert openvino.tile == (2048, 2048)
    results = {name: [s.predict(rgb8(sample)) for sample in samples]
               for name, s in segmenters.items()}
    fovs = [sample.fov for sample in samples]
    assert all(r.mask.shape == (960, 999) and r.probability.dtype == np.float32
               for r in results["openvino"])
    for other in ("tflite-int8", "onnx-int8"):
        between = evaluate([r.mask.astype(np.float32) for r in results["openvino"]],
                           [r.mask for r in results[other]], fovs, 0.5)
        assert between["pooled"]["dice"] >= 0.99, other
    dice = {name: evaluate([r.probability for r in runs], [s.label for s in samples], fovs,
                           openvino.threshold)["pooled"]["dice"]
            for name, runs in results.items()}
    assert dice["openvino"] > 0.82 and abs(dice["openvino"] - dice["tflite-int8"]) <= 0.001


def test_openvino_computes_the_float_parts_in_f32_whatever_the_cpu_offers(crop):
    """OpenVINO's own choice on a CPU with bf16 (this machine's) would move the masks of
    the test above; f32 makes them the same on every x86-64 CPU."""
    import openvino as ov

    runtime = OpenVinoInt8.from_weights(resolve_checkpoint(DEFAULT_MODEL))
    compiled = runtime.request((1, 3, *crop.shape[:2])).get_compiled_model()
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_openvino_pins_its_threads_only_when_it_takes_every_core(crop):
    """Pinned, two one-thread workers (``qsegment batch``) would both run on the first core:
    on this 2-core machine two such processes took 2.0-2.2 s for 20 CHASE images each,
    against 1.0-1.1 s unpinned (docs/BENCHMARKS.md)."""
    weights = resolve_checkpoint(DEFAULT_MODEL)
    shape = (1, 3, *crop.shape[:2])
    for threads, pinned in ((1, os.cpu_count() == 1), (os.cpu_count(), True)):
        compiled = OpenVinoInt8.from_weights(weights, threads).request(shape).get_compiled_model()
        assert compiled.get_property("ENABLE_CPU_PINNING") is pinned, threads


def test_openvino_is_imported_without_its_converter_which_comes_when_asked_for():
    """The converter (45-60 ms of a cold start) is left out of the import, and neither it
    nor its usage statistics load until `openvino.convert_model` is asked for."""
    code = ("import sys; from qsegment.runtimes.openvino import import_openvino\n"
            "ov = import_openvino(); loaded = lambda: 'openvino.tools.ovc' in sys.modules\n"
            "before = loaded(); convert = ov.convert_model\n"
            "print(before, loaded(), callable(convert), sys.modules['openvino_telemetry'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert result.stdout.split() == ["False", "True", "True", "None"]


def test_a_second_process_loads_the_compiled_network_from_the_cache(tmp_path, crop):
    np.save(tmp_path / "crop.npy", crop)
    script = ("import json, sys, numpy as np\n"
              "from qsegment import Segmenter\n"
              "s = Segmenter.from_pretrained(runtime='openvino')\n"
              "s.predict(np.load(sys.argv[1]))\n"
              "compiled = s.runner.request((1, 3, 256, 256)).get_compiled_model()\n"
              "print(json.dumps({'cached': compiled.get_property('LOADED_FROM_CACHE'),\n"
              "                  'cache': str(s.runner.cache)}))\n")
    env = {**os.environ, "QSEGMENT_CACHE": str(tmp_path / "cache")}
    runs = [json.loads(subprocess.run([sys.executable, "-c", script, str(tmp_path / "crop.npy")],
                                      env=env, check=True, capture_output=True, text=True,
                                      timeout=120).stdout.splitlines()[-1])
            for _ in range(2)]
    assert [run["cached"] for run in runs] == [False, True]
    cache = Path(runs[0]["cache"])
    assert cache.parent == tmp_path / "cache" / "openvino" and any(cache.iterdir())


@pytest.mark.parametrize("damage", [lambda blob: b"not a compiled network" * 100,
                                    lambda blob: blob[:len(blob) // 2],
                                    lambda blob: blob[:4096] + bytes(len(blob) - 4096)],
                         ids=["garbage", "truncated", "zeroed"])
def test_a_corrupt_cache_is_rebuilt_not_used(damage, crop, tmp_path, monkeypatch):
    monkeypatch.setenv("QSEGMENT_CACHE", str(tmp_path))
    weights = resolve_checkpoint(DEFAULT_MODEL)
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32) / 255
    first = OpenVinoInt8.from_weights(weights, threads=1)
    reference = first.logits(x)
    assert reference.shape == (1, 1, 256, 256) and reference.dtype == np.float32
    blobs = {path: path.read_bytes() for path in first.cache.iterdir()}
    assert blobs
    for path, blob in blobs.items():
        path.write_bytes(damage(blob))
    again = OpenVinoInt8.from_weights(weights, threads=1)
    assert again.cache == first.cache
    np.testing.assert_array_equal(again.logits(x), reference)
    assert not loaded_from_cache(again, x.shape)
    rebuilt = OpenVinoInt8.from_weights(weights, threads=1)
    np.testing.assert_array_equal(rebuilt.logits(x), reference)
    assert loaded_from_cache(rebuilt, x.shape)


def test_another_openvino_build_gets_a_cache_of_its_own(crop, tmp_path, monkeypatch):
    """OpenVINO loads a blob that another version wrote: the folder is keyed by the build."""
    import openvino

    monkeypatch.setenv("QSEGMENT_CACHE", str(tmp_path))
    weights = resolve_checkpoint(DEFAULT_MODEL)
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], np.float32) / 255
    OpenVinoInt8.from_weights(weights, threads=1).logits(x)
    monkeypatch.setattr(openvino, "get_version", lambda: "2025.0.0-0-older")
    older = OpenVinoInt8.from_weights(weights, threads=1)
    assert older.cache.parent == tmp_path / "openvino" and not older.cache.exists()
    older.logits(x)
    assert not loaded_from_cache(older, x.shape)
    assert len(list((tmp_path / "openvino").iterdir())) == 2


def test_an_unreadable_model_file_is_named(tmp_path):
    from qsegment.runtimes.base import ModelFileError

    bad = tmp_path / "model.int8.onnx"
    bad.write_bytes(b"not an ONNX file")
    with pytest.raises(ModelFileError, match=r"model\.int8\.onnx: OpenVINO cannot read it"):
        OpenVinoInt8.from_file(bad)


def test_a_network_without_shipped_files_is_quantized_and_compiled(crop):
    """The row's build function: a network (a trained run has no int8 files) becomes the
    static int8 ONNX in a temporary folder, which OpenVINO has read before it goes."""
    from qsegment.checkpoint import load_model
    from qsegment.export.cpu import open_runtime

    model, _ = load_model(resolve_checkpoint(DEFAULT_MODEL))
    runtime = open_runtime("openvino", model)
    assert isinstance(runtime, OpenVinoInt8) and not runtime.path.exists()
    assert runtime.size_multiple == model.size_multiple
    shipped = Segmenter.from_pretrained(runtime="openvino", threshold="card", scale="none")
    built = Segmenter(runtime, shipped.threshold, scale="none")
    assert (built.predict(crop).mask == shipped.predict(crop).mask).mean() > 0.99


def test_a_missing_openvino_names_the_extra(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails as uninstalled
    code = main(["predict", str(data_dir / "Image_11L.jpg"), "-o", str(tmp_path),
                 "--runtime", "openvino"])
    assert code == 2 and "pip install 'qsegment[fast]'" in capsys.readouterr().err


def test_pixels_go_in_as_uint8_and_come_out_as_the_sigmoid_of_the_logits(crop):
    """The uint8 path (conversion and sigmoid compiled into the network) gives what the
    float path and numpy's sigmoid give."""
    from qsegment.runtimes.base import sigmoid

    runtime = Segmenter.from_pretrained(runtime="openvino").runner
    assert runtime.accepts_uint8
    through_pixels = runtime.probability_uint8(crop[:250, :249])  # padded to 256x256 inside
    x = np.zeros((1, 3, 256, 256), np.float32)
    x[0, :, :250, :249] = crop[:250, :249].transpose(2, 0, 1) / np.float32(255)
    expected = sigmoid(runtime.logits(x))[0, 0]
    assert through_pixels.shape == (250, 249) and through_pixels.dtype == np.float32
    # the same arithmetic up to float rounding (OpenVINO folds the division by 255 into
    # the input's multiplication), which moves an activation to the next step of its int8
    # grid here and there: a mean probability difference under 1e-3 on an AVX2 EPYC, 0.0025
    # on an AVX-512 VNNI Xeon, whose int8 kernels round elsewhere
    assert np.abs(through_pixels - expected[:250, :249]).mean() < 5e-3
    cut = Segmenter.from_pretrained().threshold
    # masks: 0.9977 of the pixels agree on the AVX-512 VNNI Xeon (> 0.999 on AVX2)
    assert ((through_pixels >= cut) == (expected[:250, :249] >= cut)).mean() > 0.995


def test_openvino_fits_its_tiles_to_a_large_image_without_seams(data_dir):
    """A 960x1800 image in tiles of at most 1024: OpenVINO compiles any shape cheaply, so
    its tiles shrink to fit the image (two of 960x960 across, not two of 1024) and the
    stitched map is the whole image's, as with the one tile shape."""
    pair = [rgb8(load_sample(data_dir, name)) for name in ("Image_11L", "Image_13L")]
    big = np.concatenate(pair, axis=1)[:, :1800]
    model = "qsegment-nearest-transfer-jpeg"  # a 52 px margin (qsegment-half's is 112)
    tiled = Segmenter.from_pretrained(model, runtime="openvino", scale="none", tile=1024)
    rows, columns = tiled.windows(*big.shape[:2])
    assert len(rows) == 1 and [b - a for a, b, _, _ in columns] == [960, 960]
    whole = Segmenter.from_pretrained(model, runtime="openvino", scale="none", tile=(960, 1800))
    assert np.abs(tiled.probability(big) - whole.probability(big)).max() < 1e-3
