"""Vessel biomarkers: shapes with known answers, bad input, and the file runner on real
CHASE_DB1 masks and a photograph."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage.draw import line, polygon
from skimage.morphology import skeletonize

from qsegment.biomarkers import (
    BRIDGE_LOW,
    MM_PER_DEGREE,
    BiomarkerError,
    InputError,
    PixelSize,
    SourceValues,
    agreement,
    agreement_markdown,
    agreement_table,
    agreement_values,
    analyze,
    box_counting_dimension,
    bridge_gaps,
    icc_a1,
    measure,
    measure_photograph,
    pixel_size,
    read_input,
)
from qsegment.biomarkers.report import AGREEMENT_FIELDS, ROW_COLUMNS
from qsegment.datasets.fov import fov_diameter, fov_mask, fov_mask_diameter
from qsegment.errors import UsageError


def band(shape: tuple[int, int], p0, p1, width: float) -> np.ndarray:
    """A straight vessel of ``width`` px (perpendicular) from p0 to p1, (row, col)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    out = np.zeros(shape, bool)
    if width <= 1:
        rr, cc = line(*np.round(p0).astype(int), *np.round(p1).astype(int))
    else:
        d = (p1 - p0) / np.hypot(*(p1 - p0))
        n = np.array([-d[1], d[0]]) * width / 2
        corners = np.array([p0 + n, p1 + n, p1 - n, p0 - n])
        rr, cc = polygon(corners[:, 0], corners[:, 1], shape)
    out[rr, cc] = True
    return out


def towards(start, degrees: float, length: float) -> np.ndarray:
    """The point ``length`` px from ``start`` at ``degrees`` above the +x axis."""
    a = math.radians(degrees)
    return np.asarray(start, float) + length * np.array([-math.sin(a), math.cos(a)])


def half_circle(radius: int, size: int = 300) -> np.ndarray:
    theta = np.linspace(0, math.pi, 8 * radius)
    out = np.zeros((size, size), bool)
    out[np.round(200 - radius * np.sin(theta)).astype(int),
        np.round(150 + radius * np.cos(theta)).astype(int)] = True
    return skeletonize(out)


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("angle", [0, 22.5, 45, 70])
def test_a_straight_line_is_straight_and_as_long_as_drawn(angle, width):
    start = np.array([250.0, 40.0])
    end = towards(start, angle, 200)
    v = measure(band((300, 300), start, end, width)).values
    drawn = np.hypot(*(np.round(end) - np.round(start))) if width == 1 else 200.0
    assert v["vessel_length"] == pytest.approx(drawn, rel=0.03)
    assert v["tortuosity"] == pytest.approx(1.0, abs=0.005)
    assert v["curvature"] < 0.006  # rad/px: pixel staircase left after smoothing
    assert (v["segments"], v["end_points"], v["branch_points"]) == (1, 2, 0)


@pytest.mark.parametrize("radius", [30, 60])
def test_a_half_circle_has_arc_chord_pi_over_2_and_curvature_1_over_r(radius):
    analysis = measure(half_circle(radius))
    v = analysis.values
    assert v["tortuosity"] == pytest.approx(math.pi / 2, rel=0.02)
    assert v["curvature"] == pytest.approx(1 / radius, rel=0.05)
    assert v["vessel_length"] == pytest.approx(math.pi * radius, rel=0.02)
    assert analysis.segments[0].arc_chord == pytest.approx(math.pi / 2, rel=0.02)


@pytest.mark.parametrize("width", [3, 5, 9])
@pytest.mark.parametrize("angle", [0, 30, 45])
def test_calibre_of_lines_of_known_width(width, angle):
    start = np.array([250.0, 40.0])
    v = measure(band((300, 300), start, towards(start, angle, 200), width)).values
    for name in ("calibre_mean", "calibre_median", "calibre_widest"):
        assert v[name] == pytest.approx(width, abs=1.0), name


def sierpinski_carpet(level: int) -> np.ndarray:
    out = np.ones((1, 1), bool)
    for _ in range(level):
        hole = np.zeros_like(out)
        out = np.block([[out, out, out], [out, hole, out], [out, out, out]])
    return out


def test_fractal_dimension_of_shapes_with_known_dimension():
    square = np.ones((512, 512), bool)
    assert measure(square, square).values["fractal_dimension"] == pytest.approx(2, abs=0.01)
    horizontal = np.zeros((512, 512), bool)
    horizontal[200, 6:506] = True
    assert box_counting_dimension(horizontal).dimension == pytest.approx(1, abs=0.05)
    rows, cols = np.indices((512, 512))
    triangle = box_counting_dimension((rows & cols) == cols)  # Pascal's triangle mod 2
    assert triangle.dimension == pytest.approx(math.log(3) / math.log(2), abs=0.01)
    carpet = box_counting_dimension(sierpinski_carpet(6))  # 729 px, boxes of 2..128 px
    assert carpet.dimension == pytest.approx(math.log(8) / math.log(3), abs=0.05)
    assert carpet.r2 > 0.99 and carpet.box_sizes == (2, 4, 8, 16, 32, 64, 128)


@pytest.mark.parametrize("width", [1, 5])
def test_t_junction(width):
    t = band((300, 300), (100, 30), (100, 270), width) | band((300, 300), (100, 150),
                                                             (260, 150), width)
    v = measure(t).values
    assert (v["branch_points"], v["end_points"], v["segments"], v["crossings"]) == (1, 3, 3, 0)
    assert v["branching_angle"] == pytest.approx(90, abs=3)


@pytest.mark.parametrize("width", [1, 5])
@pytest.mark.parametrize("half_angle", [20, 30, 45])
def test_symmetric_y_junction(width, half_angle):
    fork = np.array([150.0, 150.0])
    y = band((300, 300), fork, towards(fork, -90, 120), width)  # the stem, downwards
    for side in (1, -1):
        y |= band((300, 300), fork, towards(fork, 90 + side * half_angle, 120), width)
    v = measure(y).values
    assert (v["branch_points"], v["end_points"], v["segments"]) == (1, 3, 3)
    assert v["branching_angle"] == pytest.approx(2 * half_angle, abs=3)


def test_a_crossing_is_one_junction_of_four():
    x = band((300, 300), (150, 30), (150, 270), 5) | band((300, 300), (30, 150), (270, 150), 5)
    v = measure(x).values
    assert (v["crossings"], v["branch_points"], v["end_points"], v["segments"]) == (1, 0, 4, 4)
    assert math.isnan(v["branching_angle"])


def test_bridge_gaps_joins_a_vessel_cut_where_its_probability_dips():
    """A 5-px vessel cut by a 6-px gap where the map reads 0.5 becomes one vessel with two
    ends (not two with four); a gap reading under ``low`` stays cut; a 9-px speck that
    nothing joins is dropped, and the vessel is not widened."""
    vessel = band((120, 300), (60, 20), (60, 280), 5)
    gap = np.zeros_like(vessel)
    gap[:, 147:153] = True
    probability = np.where(vessel, 0.9, 0.02)
    probability[vessel & gap] = 0.5
    cut = (probability >= 0.8).copy()
    cut[20:23, 200:203] = True  # a speck
    assert measure(cut).values["end_points"] == 4
    bridged = bridge_gaps(cut, probability, low=BRIDGE_LOW)
    v = measure(bridged).values
    assert (v["end_points"], v["segments"], v["branch_points"]) == (2, 1, 0)
    assert not bridged[20:23, 200:203].any() and not (bridged & ~vessel).any()
    assert (bridged & gap).sum() <= 6 + 2  # a 1-px centreline, not the 5-px vessel
    assert measure(bridge_gaps(cut, probability, low=0.6)).values["end_points"] == 4
    with pytest.raises(BiomarkerError, match="probability map is 300x119"):
        bridge_gaps(cut, probability[:119])
    with pytest.raises(BiomarkerError, match="is uint8: give the model's float map"):
        bridge_gaps(cut, np.round(probability * 255).astype(np.uint8))


def test_bridging_a_model_map_brings_its_end_points_towards_the_annotators(data_dir,
                                                                           segmenter):
    """On a CHASE validation image the model's cut has far more end points than the
    first observer's map (thin vessels in pieces); bridged, fewer, and nearer theirs."""
    photo = np.asarray(Image.open(data_dir / "Image_12L.jpg"))
    label = read_input(data_dir / "Image_12L_1stHO.png")[1]
    prediction = segmenter.predict(photo)
    human = measure_photograph(photo, label).values["end_points"]
    cut = measure_photograph(photo, prediction.mask).values
    bridged = measure_photograph(photo, prediction.mask,
                                 probability=prediction.probability).values
    assert cut == measure_photograph(photo, prediction.mask, probability=prediction.probability,
                                     bridge=None).values
    assert human < bridged["end_points"] < 0.75 * cut["end_points"]
    assert abs(bridged["area_density"] / cut["area_density"] - 1) < 0.03


def test_millimetres_convert_each_unit_by_its_power():
    start = np.array([150.0, 20.0])
    vessel = band((300, 300), start, towards(start, 30, 250), 5)
    px, mm = measure(vessel).values, measure(vessel, mm_per_pixel=0.01)
    assert mm.pixel_size.unit == "mm" and mm.pixel_size.units()["length_density"] == "1/mm"
    assert mm.values["vessel_length"] == pytest.approx(px["vessel_length"] * 0.01)
    assert mm.values["vessel_area"] == pytest.approx(px["vessel_area"] * 1e-4)
    assert mm.values["calibre_mean"] == pytest.approx(px["calibre_mean"] * 0.01)
    assert mm.values["curvature"] == pytest.approx(px["curvature"] * 100)
    assert mm.values["length_density"] == pytest.approx(px["length_density"] * 100)
    for same in ("area_density", "tortuosity", "fractal_dimension", "segments"):
        assert mm.values[same] == px[same]
    disc = np.hypot(*(np.mgrid[-250:250, -250:250] + 0.5)) < 240  # 480 px wide
    by_angle = measure(vessel[:300, :300], None, fov_degrees=45)
    assert by_angle.pixel_size.mm_per_pixel == pytest.approx(45 * MM_PER_DEGREE / 300)
    assert measure(disc, disc, fov_degrees=45).pixel_size.mm_per_pixel == pytest.approx(
        45 * MM_PER_DEGREE / 480)
    cut = disc[100:380]  # the sensor cuts the disc at the top and bottom: still 480 px wide
    assert pixel_size(cut, fov_degrees=45).mm_per_pixel == pytest.approx(
        45 * MM_PER_DEGREE / 480)


def test_the_fov_diameter_of_a_photograph_is_its_fov_masks(data_dir):
    """``--scale auto``'s fast estimate from the photograph and the biomarkers' FOV
    diameter (behind ``fov_degrees``) are one measure: they agree on CHASE_DB1."""
    for name in ("Image_01L", "Image_11L"):
        image = np.asarray(Image.open(data_dir / f"{name}.jpg"))
        estimate, exact = fov_diameter(image), fov_mask_diameter(fov_mask(image))
        assert 880 < exact < 960 and estimate == pytest.approx(exact, abs=8)  # 4 px thumbnail
    crop = image[300:700, 300:700]  # inside the retina: no rim, so no diameter
    assert fov_diameter(crop) is None and fov_mask_diameter(fov_mask(crop)) == 400
    assert fov_mask_diameter(np.zeros((5, 5), bool)) is None


def test_the_old_scale_names_still_work_and_warn():
    vessel = band((100, 100), (50, 10), (50, 90), 3)
    analysis = measure(vessel, mm_per_pixel=0.02)
    with pytest.warns(DeprecationWarning, match="use VesselAnalysis.pixel_size"):
        assert analysis.scale == analysis.pixel_size == PixelSize(0.02, "mm_per_pixel")
    from qsegment import biomarkers

    with pytest.warns(DeprecationWarning, match="use pixel_size"):
        assert biomarkers.pixel_scale(vessel, fov_degrees=30) == pixel_size(vessel, fov_degrees=30)
    with pytest.warns(DeprecationWarning, match="use PixelSize"):
        assert biomarkers.Scale is PixelSize
    with pytest.raises(AttributeError):
        biomarkers.Scales  # noqa: B018


def test_empty_full_and_fovless_maps_give_nan_with_reasons():
    empty = measure(np.zeros((100, 100), bool)).values
    assert empty["area_density"] == 0 and empty["segments"] == 0
    assert empty["vessel_length"] == 0 and math.isnan(empty["fractal_dimension"])
    full = measure(np.ones((100, 100), bool))
    assert full.values["area_density"] == 1 and math.isnan(full.values["tortuosity"])
    assert "not a vessel tree" in full.reasons["tortuosity"] and full.warnings
    no_fov = measure(band((100, 100), (50, 10), (50, 90), 3), np.zeros((100, 100), bool),
                     fov_degrees=45)
    assert all(math.isnan(v) for v in no_fov.values.values() if v != 0)
    assert no_fov.reasons["area_density"] == "empty field of view" and no_fov.warnings
    speck = np.zeros((50, 50), bool)
    speck[20:23, 20:23] = True
    assert measure(speck).values["segments"] == 0


def test_bad_input_is_refused_with_a_message_that_says_why():
    with pytest.raises(BiomarkerError, match="not binary: 256 distinct values"):
        measure(np.arange(256, dtype=np.uint8).reshape(16, 16))
    with pytest.raises(BiomarkerError, match="must match"):
        measure(np.zeros((10, 12), bool), np.ones((12, 10), bool))
    with pytest.raises(BiomarkerError, match="2-D"):
        measure(np.zeros((10, 10, 3), bool))
    with pytest.raises(BiomarkerError, match="not both"):
        measure(np.zeros((10, 10), bool), mm_per_pixel=0.01, fov_degrees=45)
    assert measure((band((60, 60), (30, 5), (30, 55), 3) * 255).astype(np.uint8)).values[
        "segments"] == 1  # 0/255 is binary
    with pytest.raises(InputError, match="must match"):
        measure_photograph(np.zeros((20, 30, 3), np.uint8), np.zeros((30, 20), bool))
    black = measure_photograph(np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), bool))
    assert "no field of view" in black.warnings[-1]


def test_read_input_tells_masks_from_photographs(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "mask.png")
    Image.fromarray(np.array([[0, 7], [7, 9]], np.uint8)).save(tmp_path / "gray.png")
    rgb = np.random.default_rng(0).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    kind, mask = read_input(tmp_path / "mask.png")
    assert kind == "mask" and mask.tolist() == [[False, True], [True, False]]
    assert read_input(tmp_path / "photo.png")[0] == "photograph"
    with pytest.raises(InputError, match="3 values is neither a binary mask"):
        read_input(tmp_path / "gray.png")


def test_icc_matches_shrout_and_fleiss_1979():
    # Shrout & Fleiss (1979), Table 2: 6 targets, 4 judges; ICC(2,1) = 0.29
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                        [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc_a1(ratings) == pytest.approx(0.2898, abs=5e-4)
    assert icc_a1(np.column_stack([ratings[:, 0], ratings[:, 0]])) == pytest.approx(1)


def test_agreement_table_of_identical_and_biased_sources():
    rng = np.random.default_rng(1)
    values = []
    for i in range(8):
        truth = {f: float(rng.uniform(1, 2)) for f in AGREEMENT_FIELDS}
        for source, factor in (("observer1", 1.0), ("observer2", 1.1), ("model", 1.0),
                               ("model_float", 1.0)):
            values.append(SourceValues(f"im{i}", source,
                                       {f: v * factor for f, v in truth.items()}))
    table = agreement_table(values)
    row = table[0]
    assert row.biomarker == AGREEMENT_FIELDS[0] and row.images == 8
    assert row.model_mard == 0 and row.model_icc == pytest.approx(1)
    assert row.observer2_mard == pytest.approx(0.1) and row.goal_met
    assert row.int8_vs_float_mard == 0
    assert agreement_markdown(table).count("\n") == len(AGREEMENT_FIELDS) + 1


@pytest.fixture(scope="module")
def segmenter():
    from qsegment import Segmenter

    return Segmenter.from_pretrained()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_analyze_real_masks_a_photograph_and_a_corrupt_file(tmp_path, data_dir, segmenter):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("Image_11L_1stHO.png", "Image_12R_1stHO.png", "Image_11L.jpg"):
        shutil.copy(data_dir / name, inputs / name)
    (inputs / "corrupt.jpg").write_bytes((data_dir / "Image_13L.jpg").read_bytes()[:2000])
    files = sorted(inputs.iterdir())
    before = {p.name: digest(p) for p in files}
    seen = []
    rows = analyze(files, tmp_path / "out", segmenter=segmenter,
                   progress=lambda done, total, name: seen.append((done, total)))
    assert seen[-1] == (4, 4) and {p.name: digest(p) for p in files} == before
    by_name = {r.name: r for r in rows}
    assert by_name["corrupt"].status == "error" and "corrupt.jpg" in by_name["corrupt"].error
    for name in ("Image_11L_1stHO", "Image_12R_1stHO", "Image_11L"):
        row = by_name[name]
        assert row.status == "ok", row
        values = row.values
        assert 0.03 < values["area_density"] < 0.2 and 1.2 < values["fractal_dimension"] < 1.6
        assert 1.0 < values["tortuosity"] < 1.2 and values["branch_points"] > 10
        assert (tmp_path / "out" / f"{name}_biomarkers.png").stat().st_size > 10_000
        with open(tmp_path / "out" / f"{name}_segments.csv") as f:
            assert len(list(csv.DictReader(f))) == values["segments"]
    photo, label = by_name["Image_11L"], by_name["Image_11L_1stHO"]
    found = segmenter.predict(np.asarray(Image.open(inputs / "Image_11L.jpg").convert("RGB")))
    assert photo.kind == "photograph" and photo.threshold == found.threshold
    assert photo.runtime == segmenter.runtime and label.kind == "mask"
    # the model's map against the label of the same image, both per FOV pixel
    label_in_fov = measure_photograph(np.asarray(Image.open(data_dir / "Image_11L.jpg")),
                                      read_input(data_dir / "Image_11L_1stHO.png")[1])
    assert photo.values["area_density"] == pytest.approx(label_in_fov.values["area_density"],
                                                         rel=0.3)
    with open(tmp_path / "out" / "biomarkers.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [r.name for r in rows]
    assert tuple(table[0]) == ROW_COLUMNS
    assert float(table[2]["calibre_mean"]) == pytest.approx(rows[2].values["calibre_mean"])
    assert table[3]["area_density"] == "" and table[3]["status"] == "error"  # corrupt.jpg
    document = json.loads((tmp_path / "out" / "biomarkers.json").read_text())
    assert document["schema_version"] == 2
    assert [r["name"] for r in document["rows"]] == [r.name for r in rows]
    assert all(list(r) == [*ROW_COLUMNS, "units"] for r in document["rows"])  # errors too
    assert document["rows"][2]["units"]["length_density"] == "1/px"
    assert len(document["rows"]) == 4 and "tortuosity" in document["fields"]


def test_analyze_never_writes_over_an_input(tmp_path):
    mask = band((64, 64), (32, 4), (32, 60), 3).astype(np.uint8) * 255
    Image.fromarray(mask).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_biomarkers.png")
    before = digest(tmp_path / "a_biomarkers.png")
    rows = analyze([tmp_path / "a.png", tmp_path / "a_biomarkers.png"], tmp_path)
    assert [r.status for r in rows] == ["error", "ok"] and "overwrite" in rows[0].error
    assert digest(tmp_path / "a_biomarkers.png") == before


def test_agreement_values_on_one_validation_image(data_dir, segmenter):
    values = agreement_values(data_dir, segmenter=segmenter, names=["Image_11L"])
    assert [v.source for v in values] == ["observer1", "observer2", "model"]
    first, second, model = (v.values for v in values)
    assert first["area_density"] == pytest.approx(second["area_density"], rel=0.3)
    assert model["area_density"] == pytest.approx(first["area_density"], rel=0.3)
    train = agreement_values(data_dir, segmenter=segmenter, names=["Image_01L"], images="train")
    assert [(v.name, v.source) for v in train] == [("Image_01L", s) for s in
                                                         ("observer1", "observer2", "model")]
    with pytest.raises(UsageError, match="'val' or 'train'"):
        agreement_values(data_dir, segmenter=segmenter, images="test")


def test_agreement_files_say_how_they_were_made(tmp_path, data_dir, segmenter):
    names = ["Image_11L", "Image_11R", "Image_12L"]
    table = agreement(data_dir, tmp_path, segmenter=segmenter, names=names, bridge=0.5)
    document = json.loads((tmp_path / "agreement.json").read_text())
    assert document["schema_version"] == 2
    assert document["settings"] == {
        "images": "val", "names": names, "bridge": 0.5, "min_object_px": 0,
        "mm_per_pixel": None, "fov_degrees": None,
        "models": {"model": f"{segmenter.name} ({segmenter.runtime})"}}
    assert [r["biomarker"] for r in document["table"]] == [r.biomarker for r in table]
    assert len(document["values"]) == 3 * len(names)
    assert (tmp_path / "agreement.md").read_text().startswith("| biomarker |")


def test_cli_predict_biomarkers_equal_analyze_of_the_photograph(tmp_path, data_dir, capsys):
    """`predict --biomarkers` and `analyze` of the same photograph write the same row
    (same model, threshold, FOV, scale), and `analyze --threshold` cuts elsewhere; a mask
    without its photograph is measured over the whole frame; a missing file fails with
    exit code 1, the others still measured."""
    from qsegment.cli import main
    from qsegment.pretrained import DEFAULT_MODEL

    photo = data_dir / "Image_12L.jpg"
    assert main(["predict", str(photo), "-o", str(tmp_path / "p"), "--biomarkers",
                 "--fov-degrees", "30"]) == 0
    assert main(["analyze", str(photo), str(tmp_path / "p" / "Image_12L_mask.png"),
                 str(tmp_path / "missing.png"), "-o", str(tmp_path / "a"),
                 "--fov-degrees", "30", "--no-figures"]) == 1
    err = capsys.readouterr().err
    assert "missing.png: no such file or folder" in err
    predicted = json.loads((tmp_path / "p" / "biomarkers.json").read_text())["rows"]
    analyzed = {r["name"]: r for r in json.loads(
        (tmp_path / "a" / "biomarkers.json").read_text())["rows"]}
    row = analyzed["Image_12L"]
    assert len(predicted) == 1 and predicted[0]["model"] == row["model"] == DEFAULT_MODEL
    for key in ("area_density", "fractal_dimension", "tortuosity", "calibre_mean",
                "threshold", "mm_per_pixel"):
        assert predicted[0][key] == pytest.approx(row[key]), key
    assert row["length_unit"] == "mm" and 0.005 < row["mm_per_pixel"] < 0.02
    mask = analyzed["Image_12L_mask"]
    assert mask["kind"] == "mask" and mask["fov_source"].startswith("whole frame")
    assert mask["area_density"] < row["area_density"]  # the same vessels over a larger area
    assert not (tmp_path / "a" / "Image_12L_biomarkers.png").exists()  # --no-figures
    assert main(["analyze", str(photo), "-o", str(tmp_path / "low"), "--threshold", "0.5",
                 "--fov-degrees", "30", "--no-figures"]) == 0
    lower = json.loads((tmp_path / "low" / "biomarkers.json").read_text())["rows"][0]
    assert lower["threshold"] == 0.5 < row["threshold"]
    assert lower["area_density"] > row["area_density"]  # a lower cut keeps more vessel
    assert row["bridge"] == predicted[0]["bridge"] == BRIDGE_LOW
    assert main(["analyze", str(photo), "-o", str(tmp_path / "cut"), "--bridge", "none",
                 "--fov-degrees", "30", "--no-figures"]) == 0
    cut = json.loads((tmp_path / "cut" / "biomarkers.json").read_text())["rows"][0]
    assert cut["bridge"] is None and cut["end_points"] > row["end_points"]
    with pytest.raises(SystemExit):
        main(["analyze", str(photo), "-o", str(tmp_path / "bad"), "--bridge", "2"])
    assert "2 is not a probability between 0 and 1" in capsys.readouterr().err


def test_the_bridge_defaults_of_the_front_ends_are_the_library_s(capsys):
    import inspect

    from qsegment.batch import segment_batch
    from qsegment.cli import main

    assert inspect.signature(segment_batch).parameters["bridge"].default == BRIDGE_LOW
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert f"({BRIDGE_LOW}: qsegment.biomarkers.BRIDGE_LOW)" in \
        " ".join(capsys.readouterr().out.split())
