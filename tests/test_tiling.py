"""ROI tiling for the in-sensor network (qsegment.deploy.tiling, `qsegment camera --tiles`):
the plan's geometry, stitching, the camera's tile cycle and start-up checks, and the
simulation with a real MCT int8 network on a real CHASE_DB1 image."""

import json
import os

import numpy as np
import pytest

from qsegment.cli import main
from qsegment.deploy.camera import (
    SENSOR_FRAME,
    CameraError,
    TiledPreview,
    centred_square,
    require_input_size,
    sensor_to_preview,
    tiled_overlay,
    tiling_plan,
)
from qsegment.deploy.tiling import (
    TileCycler,
    blend_window,
    fov_box,
    native_tiles,
    plan_tiles,
    simulate,
    simulate_image,
    stitch,
)
from qsegment.errors import UsageError

os.environ.setdefault("OMP_NUM_THREADS", "1")
SIZE = 312  # the IMX500's input
SIM_SIZE = 256  # the simulation's int8 network: smaller, so the test stays short


@pytest.fixture(scope="module")
def sample(split):
    return split[1][0]


def _union(plan) -> np.ndarray:
    covered = np.zeros(plan.frame, bool)
    for x, y, w, h in plan.rois:
        covered[y:y + h, x:x + w] = True
    return covered


def _neighbour_overlaps(plan) -> list[int]:
    """Overlap of each tile with its right and lower neighbour, in frame pixels."""
    grid = np.array(plan.rois).reshape(plan.rows, plan.cols, 4)
    across = grid[:, :-1, 0] + plan.side - grid[:, 1:, 0]
    down = grid[:-1, :, 1] + plan.side - grid[1:, :, 1]
    return [*across.ravel(), *down.ravel()]


@pytest.mark.parametrize("tiles", [1, 2, 4, 9, 12, 16, 40])
def test_plan_covers_the_fov_with_overlapping_squares_inside_the_frame(sample, tiles):
    frame, box = sample.fov.shape, fov_box(sample.fov)
    plan = plan_tiles(frame, SIZE, tiles, box, halo=16)
    assert 1 <= plan.tiles == plan.rows * plan.cols <= tiles
    x, y, w, h = box
    assert _union(plan)[y:y + h, x:x + w].all()
    assert _union(plan)[sample.fov].all()
    for rx, ry, rw, rh in plan.rois:
        assert rw == rh == plan.side >= SIZE
        assert rx >= 0 and ry >= 0 and rx + rw <= frame[1] and ry + rh <= frame[0]
    assert all(o >= plan.overlap >= 16 for o in _neighbour_overlaps(plan))
    assert plan.resize_factor == pytest.approx(SIZE / plan.side)


def test_more_tiles_shrink_the_roi_down_to_native_resolution(sample):
    frame, box = sample.fov.shape, fov_box(sample.fov)
    sides = [plan_tiles(frame, SIZE, k, box).side for k in range(1, 21)]
    assert sides == sorted(sides, reverse=True) and sides[0] == max(box[2:])
    native = native_tiles(frame, SIZE, box)
    assert native == 16  # CHASE_DB1's 920-px FOV at 312: a 4x4 grid
    assert plan_tiles(frame, SIZE, native, box).side == SIZE
    assert plan_tiles(frame, SIZE, native - 1, box).side > SIZE
    assert plan_tiles(frame, SIZE, 100, box).tiles == native  # no more tiles than needed


def test_a_box_at_the_frame_border_gets_rois_shifted_inside_the_frame():
    plan = plan_tiles((960, 999), SIZE, 1, box=(950, 900, 49, 60))
    assert plan.rois == ((999 - SIZE, 960 - SIZE, SIZE, SIZE),)
    corner = plan_tiles((960, 999), SIZE, 4, box=(0, 0, 100, 400))
    assert (corner.rows, corner.cols) == (2, 1)
    assert all(x == 0 and y >= 0 for x, y, _, _ in corner.rois)


def test_too_few_tiles_or_impossible_geometry_is_a_clear_error():
    with pytest.raises(UsageError, match=r"1 tile\(s\) cannot cover the 999x960 box.*"
                                         r"side <= 960.*use at least 2 tiles"):
        plan_tiles((960, 999), SIZE, 1)
    assert plan_tiles((960, 999), SIZE, 2).tiles == 2
    with pytest.raises(UsageError, match="smaller than the 312x312 network input"):
        plan_tiles((300, 999), SIZE, 4)
    with pytest.raises(UsageError, match="leaves the 999x960 frame"):
        plan_tiles((960, 999), SIZE, 4, box=(500, 0, 600, 600))
    with pytest.raises(UsageError, match="halo < size"):
        plan_tiles((960, 999), SIZE, 4, halo=SIZE)
    with pytest.raises(UsageError, match="at least one tile"):
        plan_tiles((960, 999), SIZE, 0)
    with pytest.raises(UsageError, match="FOV mask is empty"):
        fov_box(np.zeros((4, 4), bool))


def test_stitching_a_constant_returns_it_and_nothing_outside_the_tiles(sample):
    plan = plan_tiles(sample.fov.shape, SIZE, 4, fov_box(sample.fov))  # resized tiles
    stitched = stitch([np.full((SIZE, SIZE), 0.37, np.float32)] * plan.tiles, plan)
    assert np.array_equal(stitched.covered, _union(plan))
    assert np.allclose(stitched.probability[stitched.covered], 0.37, atol=1e-6)
    assert (stitched.probability[~stitched.covered] == 0).all()
    half = stitch([np.full((SIZE, SIZE), 0.37, np.float32)] * 2 + [None] * 2, plan)
    assert half.covered.sum() < stitched.covered.sum()


def test_stitching_native_tiles_cut_from_a_real_map_gives_the_map_back(sample):
    from qsegment import Segmenter

    prob = Segmenter.from_pretrained().predict(sample.image).probability
    plan = plan_tiles(sample.fov.shape, SIZE, 16, fov_box(sample.fov))
    assert plan.side == SIZE
    tiles = [prob[y:y + h, x:x + w] for x, y, w, h in plan.rois]
    stitched = stitch(tiles, plan)
    assert np.abs(stitched.probability - prob)[stitched.covered].max() < 1e-5
    assert stitched.covered[sample.fov].all()


def test_blending_hides_each_tiles_border_where_a_neighbour_overlaps(sample):
    """Tiles that are wrong in a 2-px band along their borders (as zero padding makes
    the network there): where a neighbour's interior overlaps, the stitched map keeps
    the interior's value; an unweighted mean would give 0.5."""
    plan = plan_tiles(sample.fov.shape, SIZE, 16, fov_box(sample.fov))
    band = np.ones((SIZE, SIZE), np.float32)
    band[:2], band[-2:], band[:, :2], band[:, -2:] = 0, 0, 0, 0
    stitched = stitch([band] * plan.tiles, plan)
    x, y, w, h = plan.box
    inner = stitched.probability[y + 2:y + h - 2, x + 2:x + w - 2]
    assert inner.min() > 0.8


def test_blend_window_falls_towards_the_borders():
    window = blend_window(40, 30, ramp=10)
    assert window.shape == (40, 30) and window.min() > 0 and window.max() == 1
    assert window[20, 0] < window[20, 5] < window[20, 15] == 1
    assert np.allclose(window, window[::-1, ::-1])


def test_cycler_order_settling_and_complete_flag():
    plan = plan_tiles((960, 999), SIZE, 4, (32, 19, 922, 922))
    cycler = TileCycler(plan)
    assert cycler.roi == plan.rois[0] and not cycler.complete
    seen = [cycler.add(np.full((SIZE, SIZE), i, np.float32)) for i in range(plan.tiles)]
    assert seen == [*plan.rois[1:], plan.rois[0]] and cycler.complete
    assert [m[0, 0] for m in cycler.latest] == [0, 1, 2, 3]
    cycler.add(np.full((SIZE, SIZE), 9, np.float32))  # the newest map replaces the oldest
    assert cycler.latest[0][0, 0] == 9 and cycler.status() == "tile 2/4"

    settling = TileCycler(plan, settle_frames=2)
    outputs = [settling.add(np.zeros((SIZE, SIZE), np.float32)) for _ in range(6)]
    assert outputs == [None, None, plan.rois[1], None, None, plan.rois[2]]
    assert settling.status() == "tile 3/4 (map 2/4)"
    single = TileCycler(plan_tiles((960, 999), SIZE, 1, (32, 19, 922, 922)))
    assert single.add(np.zeros((SIZE, SIZE))) is None and single.complete


DEPLOY = {"size": SIZE, "memory": {"size": SIZE, "fits": True},
          "input": {"shape": [1, 3, SIZE, SIZE]},
          "output": {"shape": [1, 1, SIZE, SIZE], "threshold": 0.75}}


def test_camera_plan_is_checked_against_deploy_json():
    plan = tiling_plan(DEPLOY, 16)
    assert plan.frame == SENSOR_FRAME and plan.box == centred_square() == (508, 0, 3040, 3040)
    assert plan.tiles == 16 and plan.size == SIZE
    fov = (1200, 700, 1300, 1300)
    assert tiling_plan(DEPLOY, 64, fov).side == SIZE  # a small fundus: native
    require_input_size((SIZE, SIZE), plan)
    with pytest.raises(CameraError, match="network file takes 320x320 inputs but deploy"):
        require_input_size((320, 320), plan)
    with pytest.raises(CameraError, match=r"pass --info deploy\.json"):
        tiling_plan({}, 4)
    with pytest.raises(CameraError, match="no valid network input size"):
        tiling_plan({**DEPLOY, "size": None}, 4)
    with pytest.raises(CameraError, match=r"inconsistent: size 312 but input shape \[1, 3, 320"):
        tiling_plan({**DEPLOY, "input": {"shape": [1, 3, 320, 320]}}, 4)
    with pytest.raises(CameraError, match="inconsistent: size 312 but output shape"):
        tiling_plan({**DEPLOY, "output": {"shape": [1, 2, SIZE, SIZE]}}, 4)
    phased = {**DEPLOY, "output_phases": 2, "output": {"shape": [1, 4, SIZE // 2, SIZE // 2]}}
    assert tiling_plan(phased, 4).size == SIZE  # qsegment-imx: 2x2 phases of the map
    with pytest.raises(CameraError, match="inconsistent: size 312 but output shape"):
        tiling_plan({**phased, "output_phases": 1}, 4)
    with pytest.raises(CameraError, match="output_phases 5 for size 312"):
        tiling_plan({**phased, "output_phases": 5}, 4)
    with pytest.raises(CameraError, match="memory report is for 256x256"):
        tiling_plan({**DEPLOY, "memory": {"size": 256}}, 4)
    with pytest.raises(CameraError, match="leaves the 4056x3040 frame"):
        tiling_plan(DEPLOY, 4, (3000, 0, 2000, 2000))


def test_cli_refuses_a_bad_deploy_json_before_opening_the_camera(tmp_path, capsys):
    """The camera is never reached: without picamera2 here it would say so instead."""
    info = tmp_path / "deploy.json"
    info.write_text(json.dumps({**DEPLOY, "input": {"shape": [1, 3, 256, 256]}}))
    network = tmp_path / "network.rpk"
    network.write_bytes(b"")
    assert main(["camera", str(network), "--info", str(info), "--tiles", "4"]) == 2
    err = capsys.readouterr().err
    assert "deploy.json is inconsistent" in err and "picamera2" not in err
    with pytest.raises(SystemExit) as refused:
        main(["camera", str(network), "--tiles", "0"])
    assert refused.value.code == 2
    assert "argument --tiles: expected a whole number >= 1" in capsys.readouterr().err
    info.write_text(json.dumps(DEPLOY))
    assert main(["camera", str(network), "--info", str(info), "--tiles", "16"]) == 2
    out, err = capsys.readouterr()
    assert "4x4 ROIs of 791x791 sensor pixels" in out and "picamera2 is not available" in err


def test_preview_overlay_follows_the_tiles(sample):
    """TiledPreview sets the ROIs in the plan's order and tints only where a tile reported."""
    plan = tiling_plan(DEPLOY, 4)
    requested = []
    preview = TiledPreview(plan, 0.5, requested.append)
    preview.start()
    assert requested == [plan.rois[0]]
    frame = np.zeros((480, 640, 4), np.uint8)  # XBGR preview showing the whole sensor
    sensor = (0, 0, SENSOR_FRAME[1], SENSOR_FRAME[0])
    assert sensor_to_preview(sensor, sensor, (640, 480)) == (0, 0, 640, 480)
    assert sensor_to_preview((2028, 1520, 1014, 760), (1014, 760, 2028, 1520),
                             (640, 480)) == (320, 240, 320, 240)
    vessels = np.ones((SIZE, SIZE), np.float32) * 5  # logits: vessel everywhere
    shown = preview.show(frame, vessels, sensor)
    assert requested == [plan.rois[0], plan.rois[1]] and shown.shape == (480, 640, 3)
    x, y, w, h = sensor_to_preview(plan.rois[0], sensor, (640, 480))
    tinted = shown[..., 1] > 0
    assert tinted[y + 2:y + h - 2, x + 2:x + w - 2].all()
    assert tinted.sum() == pytest.approx(w * h, rel=0.05)
    assert preview.mask().shape == (round(3040 * plan.resize_factor),
                                    round(4056 * plan.resize_factor))
    assert tiled_overlay(frame, preview.cycler, 0.5, sensor).shape == (480, 640, 3)


@pytest.fixture(scope="module")
def native_int8(tmp_path_factory, data_dir):
    """The default model (trained on native-resolution crops), PTQ at 256x256 on 4
    training images, in ONNX Runtime."""
    from qsegment.export.imx500.quantize import quantize
    from qsegment.runtimes.onnxrt import MctOnnxRuntime

    path = tmp_path_factory.mktemp("tiling") / "transfer256.onnx"
    quantize("qsegment-nearest-transfer", path, size=SIM_SIZE, calibration=4, data=data_dir)
    return MctOnnxRuntime(path)


def test_native_tiles_beat_the_whole_fundus_view_in_simulation(native_int8, sample):
    """On one validation image, inside a 480-px square of its FOV: native tiles of that
    square (4 ROIs) against the single ROI over the whole FOV (k=1, shrunk ~3.6x)."""
    from qsegment.metrics import evaluate

    frame, (x, y, w, h) = sample.fov.shape, fov_box(sample.fov)
    square = (x + (w - 480) // 2, y + (h - 480) // 2, 480, 480)
    native = plan_tiles(frame, SIM_SIZE, native_tiles(frame, SIM_SIZE, square), square)
    assert native.tiles == 4 and native.resize_factor == 1
    region = np.zeros(frame, bool)
    region[square[1]:square[1] + 480, square[0]:square[0] + 480] = True

    def dice(plan) -> float:
        prob = simulate_image(native_int8, sample.image, plan).probability
        return evaluate([prob], [sample.label], [sample.fov & region],
                        native_int8.card.threshold_value)["pooled"]["dice"]

    whole = plan_tiles(frame, SIM_SIZE, 1, fov_box(sample.fov))
    tiled, single = dice(native), dice(whole)
    assert tiled > single + 0.05 and tiled > 0.75, (tiled, single)
    row = simulate(native_int8, [sample], 1)  # the library's row on the whole FOV
    assert row["tiles"] == 1 and row["side"] == [whole.side] * 2
    assert 0.5 < row["pooled"]["dice"] < tiled


def test_calibration_tiles_are_native_windows_of_the_fov():
    """A tile is the photograph's own pixels (no resize), inside the FOV's ROI plan,
    the same draw for the same seed; more tiles than photographs cycle through them."""
    from qsegment.datasets import open_dataset
    from qsegment.deploy.tiling import calibration_tiles

    les = open_dataset(None, "les-av")
    samples = [les.sample("224"), les.sample("240")]
    names, batch = calibration_tiles(samples, 256, 3, seed=1)
    assert batch.shape == (3, 3, 256, 256) and batch.dtype == np.float32
    assert [n.split("@")[0] for n in names].count(names[0].split("@")[0]) == 2
    for name, window in zip(names, batch, strict=True):
        photograph, corner = name.split("@")
        x, y = (int(v) for v in corner.split(","))
        sample = samples[["224", "240"].index(photograph)]
        assert np.array_equal(window.transpose(1, 2, 0), sample.image[y:y + 256, x:x + 256])
        assert sample.fov[y:y + 256, x:x + 256].mean() > 0.1
    assert calibration_tiles(samples, 256, 3, seed=1)[0] == names
