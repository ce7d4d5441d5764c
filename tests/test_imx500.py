"""INT8 quantization (MCT), the IMX500 converter and the camera's pure functions, on real
CHASE_DB1 images with the real toolchain (Java and imxconv-pt must be present)."""

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qsegment import load_model
from qsegment.cli import main
from qsegment.data import calibration_images, to_input
from qsegment.deploy.camera import (
    CameraError,
    FrameRate,
    decode_output,
    overlay_in_roi,
    probability,
    status_text,
    vessel_mask,
)
from qsegment.errors import UsageError
from qsegment.export.common import search_largest
from qsegment.export.imx500 import convert
from qsegment.export.imx500.convert import (
    Imx500Error,
    ModelTooLargeError,
    export_imx500,
    largest_fitting_size,
    memory_report,
)
from qsegment.export.imx500.quantize import export_quantized, quantize, quantize_model
from qsegment.inference.maps import predict_proba
from qsegment.runtimes.base import ModelFileError
from qsegment.runtimes.onnxrt import MctOnnxRuntime as QuantizedOnnxModel

SIZE = 256
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, data_dir):
    """PTQ of the shipped model at 256x256 on 4 training images, via the library entry."""
    path = tmp_path_factory.mktemp("q") / "ptq.onnx"
    card = quantize("qsegment-nearest", path, size=SIZE, calibration=4, data=data_dir)
    return path, card


@pytest.fixture(scope="module")
def int8_logits(quantized, split):
    """Logits of the int8 ONNX (ONNX Runtime) on a real validation image at 256x256."""
    image = to_input(split[1][0].image, SIZE).numpy()
    return QuantizedOnnxModel(quantized[0])(image)


def test_quantize_writes_onnx_and_card(quantized):
    path, card = quantized
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(card.to_dict()))
    assert card["format"] == "mct-onnx" and card["method"] == "ptq" and card["size"] == SIZE
    assert card["calibration"]["count"] == 4 and len(set(card["calibration"]["images"])) == 4
    assert card["source_checkpoint"] == "qsegment-nearest"
    assert {"model-compression-toolkit", "mct-quantizers", "imx500-converter"} <= set(
        card["versions"])
    assert 0.98 < card["agreement"]["float_vs_int8"]["mask_agreement"] < 1.0
    assert not list(path.parent.glob(".*tmp"))


def test_ort_matches_mct_quantized_pytorch(split, tmp_path):
    """ONNX Runtime (mct_quantizers custom ops) against MCT's quantized PyTorch model.

    Tolerance: both compute the same 8-bit grid, but float accumulation order differs
    (first conv: ~4e-6), so a few values round to the neighbouring step and that
    cascades. Required: >= 84 % of logits bit-identical (the share depends on the CPU's
    float kernels: 84.95 % on an AMD EPYC with AVX-512, above 85 % on the Intel Xeon of
    earlier runs), every difference a whole number of output steps and at most 8 steps,
    mean |prob diff| < 0.002, masks agree on >= 99.8 % of pixels, and the ORT-MCT gap at
    most a quarter of the int8-float gap.
    """
    model, card = load_model("qsegment-nearest")
    threshold = card["threshold"]["value"]
    _, images = calibration_images(split[0], SIZE, 4)
    qmodel, _ = quantize_model(model, images, "ptq")
    x = to_input(split[1][2].image, SIZE)
    with torch.no_grad():
        mct, fp = qmodel(x).numpy(), model(x).numpy()
    ort = QuantizedOnnxModel(export_quantized(qmodel, tmp_path / "q.onnx", images))(x.numpy())
    diff = np.abs(ort - mct)
    step = np.min(np.diff(np.unique(mct)))  # the output quantizer's step
    assert (diff == 0).mean() >= 0.84
    assert np.allclose(diff / step, np.round(diff / step), atol=1e-3)
    assert diff.max() <= 8 * step
    p_ort, p_mct, p_fp = (probability(a) for a in (ort, mct, fp))
    assert np.abs(p_ort - p_mct).mean() < 0.002
    assert ((p_ort >= threshold) == (p_mct >= threshold)).mean() >= 0.998
    assert np.abs(p_ort - p_mct).mean() <= 0.25 * np.abs(p_mct - p_fp).mean()


def test_quantized_runner_in_predict_proba(quantized, split):
    """The runner plugs into predict_proba at its size and refuses any other size."""
    runner = QuantizedOnnxModel(quantized[0])
    sample = split[1][1]
    prob = predict_proba(runner, sample.image, SIZE)
    assert prob.shape == sample.label.shape and 0 <= prob.min() <= prob.max() <= 1
    model, _ = load_model("qsegment-nearest")
    float_prob = predict_proba(model, sample.image, SIZE)
    assert np.abs(prob - float_prob)[sample.fov].mean() < 0.02
    with pytest.raises(UsageError, match="infer at size 256"):
        predict_proba(runner, sample.image, 320)


def test_float_onnx_is_refused(tmp_path, capsys):
    from qsegment.export.onnx import export_onnx

    model, _ = load_model("qsegment-nearest")
    path = export_onnx(model, tmp_path / "float.onnx")
    with pytest.raises(ModelFileError, match="not an MCT-quantized ONNX"):
        QuantizedOnnxModel(path)
    assert main(["export", str(path), "--target", "imx500", "-o", str(tmp_path / "out")]) == 2
    assert "not an MCT-quantized ONNX" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_java_is_reported(quantized, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"  # PATH with the converter but without java
    bin_dir.mkdir()
    converter = Path(sys.executable).parent / "imxconv-pt"
    (bin_dir / "imxconv-pt").symlink_to(converter)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(Imx500Error, match=r"java not found on PATH.*Java 17"):
        export_imx500(quantized[0], tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_converter_failure_shows_its_log(quantized, tmp_path):
    broken = tmp_path / "broken.onnx"  # an MCT ONNX whose weights were cut away
    import onnx

    model = onnx.load(str(quantized[0]))
    del model.graph.initializer[:3]
    onnx.save(model, str(broken))
    with pytest.raises(Imx500Error, match=r"imxconv-pt failed .*its last lines:\n"):
        memory_report(broken)


def test_search_largest_aims_at_the_edge_and_bisects_when_the_aim_is_wrong(caplog):
    calls: list[int] = []

    def counted(usage):
        def measure(n):
            calls.append(n)
            return usage(n)
        return measure

    def area(n):  # memory that grows with the area: the last fit is 312
        return (n / 316) ** 2

    with caplog.at_level(logging.WARNING, logger="qsegment"):
        assert search_largest(counted(area), 200, 8, "the test's room") == 312
    assert len(calls) <= 4
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("qsegment")]
    assert len(logged) == len(calls) + 1 and "fits the test's room" in logged[0]
    assert logged[-1] == "  320x320: 102.5 % of the test's room: does not fit"  # each probe
    # the converter's activations as measured (memory dips at 296): aimed, five reports
    converter = {256: 0.77, 288: 0.975, 296: 0.891, 312: 0.961, 320: 1.004, 328: 1.26}
    calls.clear()
    assert search_largest(counted(converter.__getitem__), 256, 8) == 312
    assert calls == [256, 288, 296, 312, 320]
    calls.clear()  # a usage that says nothing of the edge: bisection still finds it
    assert search_largest(counted(lambda n: 0.1 if n <= 312 else 10.0), 200, 8) == 312
    assert len(calls) <= 12 and len(set(calls)) == len(calls)  # no size probed twice
    assert search_largest(area, 2000, 8) == 312
    assert search_largest(lambda n: 1.0 if n <= 8 else 50.0, 600, 8) == 8
    assert search_largest(lambda n: float("inf"), 64, 8) is None


@pytest.mark.slow
def test_ptq_export_end_to_end_with_the_real_converter(quantized, tmp_path, monkeypatch):
    """PTQ ONNX -> imxconv-pt at 256x256: packerOut.zip, memory report, normalisation note;
    the converter's temporary folders are gone."""
    tmp = tmp_path / "tmpdir"  # all temporary folders, the converter's TMPDIR among them
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    exported = export_imx500(quantized[0], tmp_path / "deploy", size=SIZE)
    out, note = tmp_path / "deploy", exported.details
    assert (out / "packerOut.zip").stat().st_size > 50_000
    assert (out / "qsegment_MemoryReport.json").is_file() and (out / "dnnParams.xml").is_file()
    assert sorted(exported.files) == sorted(p.name for p in out.iterdir())
    deploy = json.loads((out / "deploy.json").read_text())
    assert deploy == json.loads(json.dumps(exported.to_dict()))
    assert deploy["schema_version"] == 1 and deploy["target"] == "imx500"
    assert note["size"] == SIZE and note["memory"]["fits"]
    assert note["memory"]["required"] < note["memory"]["available"] == 8388480
    assert note["input"]["colour_order"] == "RGB" and "[0, 1]" in note["input"]["model_expects"]
    assert "v/256" in note["input"]["camera_must_apply"]
    assert note["output"]["threshold"] == pytest.approx(quantized[1]["threshold"]["value"])
    assert note["conversion_s"] > 0 and "warning" not in note
    assert list(tmp.iterdir()) == [] and not list(tmp_path.glob(".deploy*"))


@pytest.mark.slow
def test_memory_fit_search_and_too_large(quantized, tmp_path, monkeypatch):
    """The search's size passes the converter's memory check and the next size up does
    not; asking for the next size up stops with required vs available and the fit, from
    the search's reports (cached beside the ONNX) without asking the converter again."""
    largest, reports = largest_fitting_size(quantized[0])
    assert largest is not None and largest % 8 == 0
    assert reports[largest].fits and not reports[largest + 8].fits
    monkeypatch.setattr(convert, "memory_report", None)  # from here on, the cache alone
    assert largest_fitting_size(quantized[0]) == (largest, reports)
    cache = quantized[0].with_name(quantized[0].stem + ".imx500-fit.json")
    kept = cache.read_text()
    cache.write_text(kept.replace('"converter": "', '"converter": "0.'))  # another version's
    with pytest.raises(TypeError):  # not used: the search asks the (absent) converter
        largest_fitting_size(quantized[0])
    cache.write_text(kept)
    with pytest.raises(ModelTooLargeError) as err:
        export_imx500(quantized[0], tmp_path / "big", size=largest + 8)
    message = str(err.value)
    assert f"at {largest + 8}x{largest + 8} needs" in message and "has 8.00 MB" in message
    assert f"use --size {largest}" in message
    assert err.value.required > err.value.available and err.value.largest == largest
    assert not (tmp_path / "big").exists() and not list(tmp_path.glob(".big*"))


def test_decode_threshold_overlay_on_real_output(quantized, int8_logits, split):
    """The camera's decoding of the int8 network's output (picamera2 hands float arrays
    in several layouts) and the overlay, on a real validation image."""
    size, threshold = SIZE, quantized[1]["threshold"]["value"]
    logits = int8_logits[0, 0]
    for layout in (int8_logits, [int8_logits[0]], [logits[..., None]], logits.ravel()):
        assert np.array_equal(decode_output(layout, size), logits)
    assert np.array_equal(decode_output([logits], size, transpose=True), logits.T)
    with pytest.raises(CameraError, match="cannot read an output tensor of shape"):
        decode_output([np.zeros((2, size, size))], size)
    mask = vessel_mask(logits, threshold)
    sample = split[1][0]
    reference = to_input(sample.label[..., None], size)[0, 0].numpy() >= 0.5
    dice = 2 * (mask & reference).sum() / (mask.sum() + reference.sum())
    assert 0.05 < mask.mean() < 0.3 and dice > 0.6
    frame = np.round(to_input(sample.image, (240, 320))[0].permute(1, 2, 0).numpy() * 255)
    frame = np.dstack([frame.astype(np.uint8), np.full((240, 320), 255, np.uint8)])  # XBGR
    roi = (40, 0, 240, 240)
    shown = overlay_in_roi(frame, mask, roi)
    assert shown.shape == (240, 320, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown[:, :40], frame[:, :40, :3])  # outside the region: untouched
    tinted = (shown[..., 1].astype(int) - frame[..., 1]) > 20
    assert 0.5 * mask.mean() < tinted[:, 40:280].mean() < 1.5 * mask.mean()
    assert overlay_in_roi(frame, mask, (300, 200, 240, 240)).shape == (240, 320, 3)  # clipped


def test_frame_rate_and_status_text():
    meter = FrameRate(window=5)
    assert meter.tick(0.0) is None
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        fps = meter.tick(t)
    assert fps == pytest.approx(10.0)
    assert status_text(fps, (12.34, 1.5)) == "DNN 12.3 ms | DSP 1.5 ms | 10.0 fps"
    assert status_text(None, None) == "DNN -- ms | -- fps"


def test_cli_evaluate_int8_beside_float(quantized, data_dir, tmp_path, capsys):
    """`qsegment evaluate model.onnx`: int8 in ONNX Runtime and float at the same size."""
    out = tmp_path / "eval"
    assert main(["evaluate", str(quantized[0]), "--data", str(data_dir), "--out", str(out),
                 "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "qsegment-nearest @ 256x256" in printed and "int8 ptq @ 256x256" in printed
    result = json.loads((out / "metrics.json").read_text())
    assert len(result["rows"]) == 2 and abs(result["dice_drop"]) < 0.02
    assert main(["evaluate", str(quantized[0]), "--size", "320", "--data", str(data_dir)]) == 2
    assert "runs at 256x256 only" in capsys.readouterr().err


@pytest.fixture(scope="module")
def imx_quantized(tmp_path_factory, data_dir):
    """PTQ of the shipped IMX500 variant (``qsegment-imx``) at 128x128 on 4 images."""
    path = tmp_path_factory.mktemp("imx") / "imx.onnx"
    return path, quantize("qsegment-imx", path, size=128, calibration=4, data=data_dir)


@pytest.mark.parametrize("variant,outputs", [("imx_quantized", ["vessel"]),
                                             ("imx_av_quantized", ["vessel", "artery", "vein",
                                                                   "uncertain"])])
def test_imx_variant_returns_phases_that_the_host_interleaves(variant, outputs, split,
                                                              request):
    """The sensor graph stops at the 2x2 phases of each output (the converter has no
    DepthToSpace): 4 maps for the vessel variant, 16 for the artery/vein one, each
    output's four together; the int8 runtime and the camera's decoder interleave them
    into the full-resolution maps."""
    from qsegment.runtimes.base import depth_to_space

    path, card = request.getfixturevalue(variant)
    channels = len(outputs)
    assert card["output_phases"] == 2 and card["outputs"] == outputs
    assert card["agreement"]["float_vs_int8"]["mask_agreement"] > 0.97
    runner = QuantizedOnnxModel(path)
    x = to_input(split[1][0].image, 128).numpy()
    raw = runner.session.run(None, {runner.input_name: x})[0]
    full = runner.logits(x)
    assert raw.shape == (1, 4 * channels, 64, 64) and full.shape == (1, channels, 128, 128)
    assert np.array_equal(full, depth_to_space(raw, 2))
    assert np.array_equal(full[:, :1], depth_to_space(raw[:, :4], 2))  # the vessel's own 4
    decoded = full[0, 0] if channels == 1 else full[0]
    for layout in (raw, [raw[0]], [raw[0].transpose(1, 2, 0)]):
        assert np.array_equal(decode_output(layout, 128, phases=2, channels=channels), decoded)
    what = "a vessel map" if channels == 1 else f"{channels} maps"
    with pytest.raises(CameraError, match=f"as 2x2 phases of {what}"):
        decode_output([raw[0, :3]], 128, phases=2, channels=channels)


def test_imx_variant_converts_with_its_phases_in_deploy_json(imx_quantized, tmp_path):
    note = export_imx500(imx_quantized[0], tmp_path / "deploy", size=128).details
    assert (tmp_path / "deploy" / "packerOut.zip").is_file()
    assert note["output_phases"] == 2 and note["output"]["shape"] == [1, 4, 64, 64]
    assert "interleave" in note["output"]["meaning"]


@pytest.mark.slow
def test_imx_variant_fits_640_in_the_sensor(imx_quantized):
    """Why the variant exists: the converter fits it into the 8 MB at 640x640 (Q-Segment
    itself stops at 312x312); 720x720 does not fit (its limit is 704: the converter's
    tiling makes the memory non-monotone, docs/DEPLOY_IMX500.md)."""
    fit, over = memory_report(imx_quantized[0], 640), memory_report(imx_quantized[0], 720)
    assert fit.fits and fit.required <= fit.available == 8388480
    assert not over.fits and over.required > over.available


@pytest.fixture(scope="module")
def imx_av_quantized(tmp_path_factory, data_dir):
    """The artery/vein variant (``qsegment-imx-av``): one epoch of the av preset on
    CHASE_DB1 and LES-AV at 256x256 from the shipped half-resolution vessel weights
    (which fit it whole but for the head), then PTQ at 128x128 on 4 images."""
    from qsegment.engine.train import load_config, train

    root = tmp_path_factory.mktemp("imx-av")
    cfg = load_config("av", model="qsegment-imx-av", model_args={},
                      init="qsegment-imx-transfer", dataset="chasedb1,les-av", epochs=1,
                      repeats=1, crop=64, resize=256, batch_size=8, threads=1)
    train(cfg, root / "run", progress=False)
    path = root / "imx-av.onnx"
    return path, quantize(root / "run", path, size=128, calibration=4, data=data_dir)


def test_quantize_calibrates_on_tiles_of_the_artery_vein_datasets(imx_av_quantized, tmp_path,
                                                                 data_dir, capsys):
    """``--dataset les-av --calibration-view tiles``: the windows come from LES-AV's
    training photographs (at the run's training scale), the agreement probe from its
    validation split; one folder for two datasets is refused before any work."""
    from qsegment.datasets import open_dataset

    run, out = imx_av_quantized[0].parent / "run", tmp_path / "tiles.onnx"
    assert main(["quantize", str(run), "-o", str(out), "--size", "128", "--calibration", "3",
                 "--dataset", "les-av", "--calibration-view", "tiles"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    calibration, split = card["calibration"], open_dataset(None, "les-av").default_split
    assert calibration["datasets"] == ["les-av"] and calibration["view"] == "tiles"
    photographs = [name.split("@")[0] for name in calibration["images"]]
    assert len(set(photographs)) == 3 and set(photographs) <= set(split.train)
    assert card["agreement"]["image"] in split.val
    assert "3 training-image tiles of les-av" in capsys.readouterr().out
    assert main(["quantize", str(run), "-o", str(tmp_path / "two.onnx"), "--size", "128",
                 "--dataset", "chasedb1,les-av", "--data", str(data_dir)]) == 2
    assert "1 data folder(s) for 2 dataset(s)" in capsys.readouterr().err
    assert not (tmp_path / "two.onnx").exists()


def test_imx_av_variant_is_shown_by_class_on_the_camera_preview(imx_av_quantized, split):
    """The camera tints an artery/vein network's vessels by class: the class map lies on
    the vessel mask, and each class gets its colour."""
    from qsegment.deploy.camera import shown_map
    from qsegment.images import AV_COLOURS

    path, card = imx_av_quantized
    logits = QuantizedOnnxModel(path).logits(to_input(split[1][0].image, 128).numpy())[0]
    probabilities = probability(logits)
    assert np.allclose(probabilities[1:].sum(0), 1, atol=1e-5)
    classes = shown_map(probabilities, card["threshold"]["value"])
    assert np.array_equal(classes > 0, vessel_mask(logits[0], card["threshold"]["value"]))
    assert classes.any() and set(np.unique(classes)) <= {0, 1, 2, 3}
    frame = np.zeros((200, 200, 3), np.uint8)
    shown = overlay_in_roi(frame, classes, (36, 36, 128, 128))
    for value in np.unique(classes[classes > 0]):
        tinted = shown[36:164, 36:164][classes == value]
        assert (tinted == np.round(0.6 * AV_COLOURS[value])).all()


def test_camera_saves_the_photograph_under_its_map_for_analyze(tmp_path, capsys):
    """`qsegment camera --save` writes, beside the preview, the region of the untinted
    frame that the map covers at the map's size, and the map as `predict` writes it: the
    pair `qsegment analyze --photographs` measures (a LES-AV photograph as the frame,
    its manual classes in the region at 704x704 as the sensor's map)."""
    from PIL import Image

    from qsegment.datasets import fov_mask, load_classes, open_dataset
    from qsegment.deploy.camera import region_photograph, save_shot

    les = open_dataset(None, "les-av")
    frame = np.asarray(Image.open(les.image_path("224")).convert("RGB"))  # 1620x1444
    classes = load_classes(les.label_path("224", 1), frame.shape[:2])
    region = (100, 0, 1444, 1444)  # x, y, width, height
    sensor_map = np.asarray(Image.fromarray(classes[:, 100:1544]).resize(
        (704, 704), Image.Resampling.NEAREST))
    preview = overlay_in_roi(frame, sensor_map, region)
    files = save_shot(tmp_path, 30, preview, frame, region, sensor_map)
    assert [f.name for f in files] == ["frame_000030.png", "photo_000030.png",
                                       "photo_000030_av.png"]
    photo = np.asarray(Image.open(files[1]))
    assert photo.shape == (704, 704, 3)
    assert np.array_equal(np.asarray(Image.open(files[2])), sensor_map)
    vessels = sensor_map > 0
    assert fov_mask(photo)[vessels].mean() > 0.99  # the map lies on its photograph
    beyond = region_photograph(frame, (1400, 0, 440, 440), (440, 440))  # 220 px past the edge
    assert not beyond[:, 221:].any() and beyond[:, :219].any()
    out = tmp_path / "bio"
    assert main(["analyze", str(files[2]), "--photographs", str(tmp_path), "-o", str(out),
                 "--no-figures"]) == 0
    row = json.loads((out / "biomarkers.json").read_text())["rows"][0]
    assert row["fov_source"].startswith("photograph") and row["disc_diameter"] > 20
    assert row["crae"] > 0 and row["crve"] > row["crae"]
    assert not (tmp_path / "photo_000030_mask.png").exists()
    save_shot(tmp_path, 60, preview, frame, region, vessels)  # a vessel model's mask
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo_000060_mask.png")) > 0,
                          vessels)


def test_imx_av_variant_converts_and_tiles_with_its_maps_in_deploy_json(imx_av_quantized,
                                                                       tmp_path):
    """deploy.json says the sensor returns 16 maps and names them; the camera's tiling
    plan accepts it, and stitching blends all four maps of each tile."""
    from qsegment.deploy.camera import tiling_plan
    from qsegment.deploy.tiling import stitch

    note = export_imx500(imx_av_quantized[0], tmp_path / "deploy", size=128).details
    assert (tmp_path / "deploy" / "packerOut.zip").is_file()
    assert note["output"]["shape"] == [1, 16, 64, 64]
    assert note["output"]["outputs"] == ["vessel", "artery", "vein", "uncertain"]
    plan = tiling_plan(note, 4)
    assert plan.size == 128 and plan.tiles == 4
    maps = [np.stack([np.full((128, 128), v, np.float32) for v in (0.9, 0.2, 0.7, 0.1)])
            ] * plan.tiles
    stitched = stitch(maps, plan, scale=0.25)
    assert stitched.probability.shape == (4, 760, 1014)
    inside = stitched.probability[:, stitched.covered]
    assert np.allclose(inside, [[0.9], [0.2], [0.7], [0.1]], atol=1e-6)
    # the preview tints a tile's vessels in its class's colour: here veins, in blue
    from qsegment.deploy.camera import TiledPreview
    from qsegment.images import AV_COLOURS

    preview = TiledPreview(plan, 0.5, lambda roi: None)
    veins = np.stack([np.full((128, 128), v, np.float32) for v in (5.0, 0.0, 3.0, -1.0)])
    sensor = (0, 0, plan.frame[1], plan.frame[0])
    shown = preview.show(np.zeros((480, 640, 3), np.uint8), veins, sensor)
    tinted = shown[shown.any(-1)]
    assert len(tinted) and (tinted == np.round(0.6 * AV_COLOURS[2])).all()
    assert set(np.unique(preview.mask())) == {0, 2}


def test_sensor_tiles_score_an_artery_vein_photograph_as_the_camera_tiles_it(
        imx_av_quantized, tmp_path, capsys):
    """The int8 file in native ROI tiles (SensorTiles) gives the map the camera's own
    stitching gives for the same plan, and `evaluate --task av` scores it on LES-AV."""
    from qsegment.datasets import Split, open_dataset
    from qsegment.deploy.tiling import (
        SensorTiles,
        native_tiles,
        plan_tiles,
        simulate_image,
    )
    from qsegment.engine.evaluate import table_av

    path, card = imx_av_quantized
    runner = QuantizedOnnxModel(path)
    sensor = SensorTiles(runner)
    les = open_dataset(None, "les-av")
    image = les.sample("224").image[400:700, 500:900]  # 300x400: 3x4 tiles of 128 px
    frame = image.shape[:2]
    plan = plan_tiles(frame, 128, native_tiles(frame, 128))
    assert plan.side == 128 and plan.tiles == 12
    camera = simulate_image(runner, image, plan).probability
    logits = sensor.logits(image.transpose(2, 0, 1)[None].astype(np.float32))
    assert logits.shape == (1, 4, *frame)
    assert np.allclose(probability(logits[0]), camera, atol=1e-4)
    result = table_av(sensor, card, les, Split((), ("224",)), progress=False,
                      figures=False, scale=0.5)
    assert 0 <= result["mean"]["weighted"]["f1"] <= 1 and result["vessel_dice"] > 0.3
    assert main(["evaluate", str(path), "--task", "av", "--dataset", "les-av", "--size",
                 "256"]) == 2
    assert "in native ROI tiles" in capsys.readouterr().err


def test_a_segmenter_runs_the_sensor_file_whole_with_its_float_models_calibration(
        imx_av_quantized, tmp_path):
    """`Segmenter.from_sensor_file` (what bench_equivalents.py measures CRAE, CRVE and
    AVR of) hands the file a photograph larger than its own tile whole, so that the file's ROI
    windows cover it as the camera's would, not windows inside tiles of 1024 px; the
    file's calibration is its float model's, by name, and none where that model is gone."""
    from qsegment import Segmenter
    from qsegment.datasets import open_dataset
    from qsegment.deploy.tiling import SensorTiles
    from qsegment.inference.calibrate import Calibration
    from qsegment.pretrained import AV_MODEL, resolve_checkpoint

    path, card = imx_av_quantized
    photograph = open_dataset(None, "les-av").sample("224").image  # 1620x1444
    assert max(photograph.shape[:2]) > 1024
    rgb = np.round(photograph * 255).astype(np.uint8)
    segmenter = Segmenter.from_sensor_file(path, scale="none", artery_vein=True)
    assert segmenter.name == path.name and segmenter.runtime == SensorTiles.name
    prediction = segmenter.predict(rgb)
    sensor = SensorTiles.from_file(path)
    whole = probability(sensor.logits(rgb.transpose(2, 0, 1)[None] / np.float32(255))[0])
    assert np.abs(prediction.probability - whole[0]).max() < 1e-5
    assert set(np.unique(prediction.classes)) <= {0, 1, 2, 3}
    shipped = Calibration.beside(resolve_checkpoint(AV_MODEL))
    assert shipped is not None
    for i, (source, expected) in enumerate(((AV_MODEL, shipped),
                                             (str(tmp_path / "gone"), None))):
        moved = tmp_path / f"card{i}.onnx"
        moved.write_bytes(path.read_bytes())
        moved.with_suffix(".json").write_text(json.dumps({**card.to_dict(),
                                                          "source_checkpoint": source}))
        assert SensorTiles.from_file(moved).float_calibration() == expected


def test_predict_takes_the_sensor_file_as_its_model(imx_av_quantized, data_dir, tmp_path,
                                                    capsys):
    """`qsegment predict --model FILE.onnx --av --biomarkers` writes the class map that
    `Segmenter.from_sensor_file` gives (the camera's tiles on the host) and measures it,
    the runtime named in the row; a --runtime for it, or `analyze --agreement` with it, is
    refused with one line naming the file."""
    from PIL import Image

    from qsegment import Segmenter

    path, _ = imx_av_quantized
    photo = data_dir / "Image_11L.jpg"
    assert main(["predict", str(photo), "-o", str(tmp_path), "--model", str(path), "--av",
                 "--biomarkers"]) == 0
    expected = Segmenter.from_sensor_file(path, artery_vein=True).predict(
        np.asarray(Image.open(photo).convert("RGB")))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "Image_11L_av.png")),
                          expected.classes)
    row = json.loads((tmp_path / "biomarkers.json").read_text())["rows"][0]
    assert row["runtime"] == "in-sensor ROI tiles" and row["model"] == path.name
    for name in ("crae", "crve", "avr"):  # a value, or NaN with its reason
        assert (row[name] or 0) > 0 or row["reasons"][name], name
    capsys.readouterr()
    for command in (["predict", str(photo), "-o", str(tmp_path), "--runtime", "openvino"],
                    ["analyze", "--agreement", "-o", str(tmp_path)]):
        assert main([*command, "--model", str(path)]) == 2
        error = capsys.readouterr().err
        assert str(path) in error and len(error.strip().splitlines()) == 1, error
