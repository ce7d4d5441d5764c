"""The optic disc and CRAE / CRVE / AVR (issue #34): the revised Knudtson formulas by
hand, zones of a known disc, synthetic trees of known calibres, the locator on IDRiD
photographs it was not tuned on, and `qsegment analyze` on a manual artery/vein map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from qsegment import Segmenter
from qsegment.biomarkers.disc import Disc, locate_disc
from qsegment.biomarkers.equivalents import MIN_VESSELS, knudtson, measure_artery_vein
from qsegment.biomarkers.report import read_input
from qsegment.images import artery_vein_colours, artery_vein_image

SHARED = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()
IDRID, LES_AV = SHARED / "IDRiD-OD", SHARED / "LES-AV"


def test_knudtson_pairs_largest_with_smallest_and_carries_the_middle() -> None:
    k = 0.88
    # six: (10, 5), (9, 6), (8, 7) -> three; then the largest with the smallest, the
    # middle carried -> two; then one
    first = sorted([k * math.hypot(10, 5), k * math.hypot(9, 6), k * math.hypot(8, 7)])
    second = sorted([k * math.hypot(first[2], first[0]), first[1]])
    assert knudtson([5, 9, 7, 10, 6, 8], k) == pytest.approx(k * math.hypot(*second))
    odd = sorted([k * math.hypot(10, 6), 8])  # three: (10, 6) paired, 8 carried
    assert knudtson([6, 10, 8], k) == pytest.approx(k * math.hypot(*odd))
    assert knudtson([10, 6], 0.95) == pytest.approx(0.95 * math.hypot(10, 6))
    assert knudtson([7.5], k) == 7.5
    assert math.isnan(knudtson([], k))


def test_a_known_disc_gives_its_zones() -> None:
    disc = Disc(100.0, 120.0, 40.0)  # radius 20: zone B from 40 to 60 px from the centre
    zone = disc.zone((240, 240), "B")
    assert zone[100, 120 + 50] and zone[100 - 41, 120]
    assert not zone[100, 120 + 39] and not zone[100, 120 + 61]
    assert disc.mask((240, 240))[100, 120 + 19] and not disc.mask((240, 240))[100, 120 + 21]
    zone_c = disc.zone((240, 240), "C")  # 0.5 to 2 disc diameters beyond the margin
    assert zone_c[100, 120 + 99] and not zone_c[100, 120 + 101]


def _radial_tree(widths: dict[str, list[float]], size: int = 600) -> tuple[np.ndarray, Disc]:
    """A class map of straight vessels leaving a disc at (300, 300), diameter 100,
    arteries and veins alternating around it, each of its given width."""
    disc = Disc(size / 2, size / 2, 100.0)
    rows, cols = np.mgrid[:size, :size].astype(float) - size / 2
    classes = np.zeros((size, size), np.uint8)
    vessels = [(1, w) for w in widths["artery"]] + [(2, w) for w in widths["vein"]]
    for i, (value, width) in enumerate(vessels):
        angle = 2 * math.pi * i / len(vessels) + 0.3
        along = rows * math.sin(angle) + cols * math.cos(angle)
        across = -rows * math.cos(angle) + cols * math.sin(angle)
        classes[(np.abs(across) <= width / 2) & (along > 10) & (along < 280)] = value
    return classes, disc


def test_a_synthetic_tree_gives_the_knudtson_values_of_its_calibres() -> None:
    arteries, veins = [9.0, 8.0, 7.0, 6.0, 5.0, 5.0, 4.0], [13.0, 11.0, 9.0]
    classes, disc = _radial_tree({"artery": arteries, "vein": veins})
    analysis = measure_artery_vein(classes, disc)
    v = analysis.values
    assert v["zone_b_arteries"] == 7 and v["zone_b_veins"] == 3  # the six widest combined
    assert v["crae"] == pytest.approx(knudtson(arteries[:6], 0.88), rel=0.05)
    assert v["crve"] == pytest.approx(knudtson(veins, 0.95), rel=0.05)
    assert v["avr"] == pytest.approx(v["crae"] / v["crve"])
    assert sorted(u.kind for u in analysis.used) == ["artery"] * 6 + ["vein"] * 3
    in_mm = measure_artery_vein(classes, disc, mm_per_pixel=0.01).values
    assert in_mm["crae"] == pytest.approx(v["crae"] * 0.01)
    assert in_mm["avr"] == pytest.approx(v["avr"])


def test_too_few_vessels_one_class_or_no_disc_give_nan_with_the_reason() -> None:
    classes, disc = _radial_tree({"artery": [8.0], "vein": [12.0, 10.0]})
    few = measure_artery_vein(classes, disc)
    assert math.isnan(few.values["crae"]) and math.isnan(few.values["avr"])
    assert f"needs at least {MIN_VESSELS}" in few.reasons["crae"]
    assert math.isfinite(few.values["crve"])  # the rest of the row stays
    veins_only = measure_artery_vein(np.where(classes == 1, 0, classes), disc)
    assert veins_only.reasons["crae"] == "the map has no artery pixel"
    assert math.isnan(veins_only.values["artery_calibre_mean"])
    assert math.isfinite(veins_only.values["vein_calibre_mean"])
    missing = measure_artery_vein(classes, Disc.missing("no disc found"))
    assert missing.reasons["crve"] == "no optic disc: no disc found"
    assert math.isfinite(missing.values["vein_tortuosity"])


def _reference_disc(name: str) -> tuple[np.ndarray, float]:
    """IDRiD-OD's disc: the largest non-black blob of the masked photograph."""
    masked = np.asarray(Image.open(IDRID / "od_masks" / f"{name}_OD.jpg").convert("RGB"))
    labels, _ = ndimage.label(masked.max(axis=2) > 20)
    disc = ndimage.binary_fill_holes(labels == np.bincount(labels.ravel())[1:].argmax() + 1)
    return np.array(ndimage.center_of_mass(disc)), 2 * math.sqrt(disc.sum() / math.pi)


@pytest.mark.parametrize("name", ["IDRiD_41", "IDRiD_47", "IDRiD_53"])
def test_the_locator_finds_held_out_idrid_discs(name: str) -> None:
    photo = np.asarray(Image.open(IDRID / "images" / f"{name}.jpg").convert("RGB"))
    centre, diameter = _reference_disc(name)
    disc = locate_disc(photo)
    assert disc.found
    assert math.hypot(disc.row - centre[0], disc.col - centre[1]) <= 0.25 * diameter
    assert disc.diameter == pytest.approx(diameter, rel=0.25)


def test_no_disc_in_the_photograph_is_said() -> None:
    photo = np.asarray(Image.open(IDRID / "images" / "IDRiD_41.jpg").convert("RGB"))
    centre, _ = _reference_disc("IDRiD_41")
    half = photo[:, : photo.shape[1] // 2] if centre[1] > photo.shape[1] / 2 \
        else photo[:, photo.shape[1] // 2:]
    half = np.ascontiguousarray(half)  # the half without the disc, located as predict does
    disc = locate_disc(half, vessels=Segmenter.from_pretrained().predict(half).mask)
    assert not disc.found and "outside the photograph" in disc.reason
    assert locate_disc(np.zeros((64, 64, 3), np.uint8)).reason == "empty field of view"


def test_predict_av_colour_maps_read_back_as_classes(tmp_path: Path) -> None:
    classes, _ = _radial_tree({"artery": [8.0], "vein": [12.0]}, size=200)
    classes[0, :4] = [0, 1, 2, 3]
    path = tmp_path / "x_av.png"
    Image.fromarray(artery_vein_colours(classes)).save(path)
    assert read_input(path)[0] == "classes"
    assert np.array_equal(read_input(path)[1], classes)
    artery_vein_image(classes).save(path)  # what predict --av writes: a palette PNG
    assert read_input(path)[0] == "classes"
    assert np.array_equal(read_input(path)[1], classes)
    Image.fromarray(classes).save(tmp_path / "coded.png")
    kind, coded = read_input(tmp_path / "coded.png")
    assert kind == "classes" and np.array_equal(coded, classes)


def test_analyze_measures_a_manual_artery_vein_map_around_its_photographs_disc(
        tmp_path: Path) -> None:
    from qsegment.cli import main

    label = LES_AV / "test" / "1st_manual" / "224.png"
    assert main(["analyze", str(label), "-o", str(tmp_path / "with"), "--photographs",
                 str(LES_AV / "test" / "images"), "--mm-per-pixel", "0.005"]) == 0
    row = json.loads((tmp_path / "with" / "biomarkers.json").read_text())["rows"][0]
    assert row["kind"] == "classes" and row["disc_source"] == "located"
    assert 0.4 < row["avr"] < 1.0  # the manual map's AVR, an adult's
    assert row["crae"] < row["crve"] and row["units"]["crae"] == "mm"
    assert row["zone_b_arteries"] >= 6 and row["zone_b_veins"] >= 6
    assert (tmp_path / "with" / "224_biomarkers.png").is_file()
    assert main(["analyze", str(label), "-o", str(tmp_path / "without"), "--no-figures"]) == 0
    row = json.loads((tmp_path / "without" / "biomarkers.json").read_text())["rows"][0]
    assert row["crae"] is None and "--photographs" in row["reasons"]["crae"]
    assert row["artery_calibre_mean"] > 0  # measured without the disc


def test_bench_equivalents_compares_two_saved_runs_photograph_by_photograph(
        tmp_path: Path) -> None:
    """`bench_equivalents.py --from A --against B` puts B's model values where A's manual
    ones were, pairing the photographs by dataset and name: a run against itself agrees
    exactly; against a run that read every CRAE 1 px wider and lacks a photograph, the
    bias is -1 px on the photographs both hold."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    calibres = zip(rng.uniform(20, 30, 6), rng.uniform(35, 45, 6), strict=True)
    rows = [{"dataset": "les-av", "image": str(i), "model": {
        "crae": float(c), "crve": float(v), "avr": float(c / v)}, "manual": {
        "crae": float(c + 2), "crve": float(v), "avr": float((c + 2) / v)}}
        for i, (c, v) in enumerate(calibres)]
    wider = [{**r, "model": {**r["model"], "crae": r["model"]["crae"] + 1}} for r in rows[1:]]
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_equivalents.py"
    for name, reference in (("self", rows), ("wider", wider)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"images": reference}))
    (tmp_path / "run.json").write_text(json.dumps({"images": rows}))
    for name in ("self", "wider"):
        subprocess.run([sys.executable, str(script), "--from", str(tmp_path / "run.json"),
                        "--against", str(tmp_path / f"{name}.json"), "--out",
                        str(tmp_path / name)], check=True, capture_output=True)
    same = json.loads((tmp_path / "self" / "equivalents.json").read_text())["summary"]
    assert all(same[m]["icc"] == pytest.approx(1.0) and same[m]["images"] == 6
               for m in ("crae", "crve", "avr"))
    shifted = json.loads((tmp_path / "wider" / "equivalents.json").read_text())["summary"]
    assert shifted["crae"]["images"] == 5 and shifted["crae"]["bias"] == pytest.approx(-1.0)
    assert shifted["crve"]["bias"] == pytest.approx(0.0)
    assert (tmp_path / "wider" / "equivalents_bland_altman.png").is_file()


def test_bench_equivalents_reads_one_offset_per_group_of_photographs(tmp_path: Path) -> None:
    """The table by group: HRF-AV's kinds of eye apart (names ending _h, _dr), LES-AV
    whole; a model that reads one group's CRAE 20 % narrower shows 0.8 there and 1.0
    elsewhere, and with each group's offset divided out agrees exactly (ICC 1) where as
    measured it does not."""
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    rows = []
    for dataset, image, factor in [("hrf-av", f"0{i}_h", 0.8) for i in range(1, 5)] + [
            ("hrf-av", f"0{i}_dr", 1.0) for i in range(1, 5)] + [
            ("les-av", str(i), 1.0) for i in range(4)]:
        crae, crve = rng.uniform(20, 30), rng.uniform(35, 45)
        rows.append({"dataset": dataset, "image": image,
                     "manual": {"crae": crae, "crve": crve, "avr": crae / crve},
                     "model": {"crae": factor * crae, "crve": crve, "avr": factor * crae / crve}})
    (tmp_path / "run.json").write_text(json.dumps({"images": rows}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_equivalents.py"
    subprocess.run([sys.executable, str(script), "--from", str(tmp_path / "run.json"), "--out",
                    str(tmp_path / "out")], check=True, capture_output=True)
    saved = json.loads((tmp_path / "out" / "equivalents.json").read_text())
    groups = saved["groups"]["groups"]
    assert set(groups) == {"hrf-av h", "hrf-av dr", "les-av"}
    assert groups["hrf-av h"]["crae"] == pytest.approx(0.8) and groups["hrf-av h"]["images"] == 4
    assert groups["hrf-av dr"]["crae"] == pytest.approx(1.0)
    assert groups["les-av"]["crve"] == pytest.approx(1.0)
    assert saved["summary"]["crae"]["icc"] < 0.9
    assert saved["groups"]["icc_without_group_offsets"]["crae"] == pytest.approx(1.0)


def test_bench_widths_reads_a_known_bar_the_same_in_a_mask_and_a_photograph() -> None:
    """A straight dark bar 9 px wide on a flat background, blurred as a camera blurs it:
    the mask reader and the photograph's half-depth reader both give its width, from cuts
    along the centreline's normal; a dip too shallow to be a vessel reads NaN."""
    import runpy

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" /
                               "bench_widths.py"))
    mask = np.zeros((100, 100), bool)
    mask[:, 46:55] = True  # columns 46-54: 9 px, centred on column 50
    photo = ndimage.gaussian_filter(np.where(mask, 60.0, 120.0), 1.5).astype(np.float32)
    centreline = np.stack([np.arange(20, 80), np.full(60, 50)], axis=1)
    widths = bench["vessel_widths"](centreline, [mask.astype(np.float32)], photo, 15.0)
    assert widths == pytest.approx([9.0, 9.0], abs=0.3)
    faint = np.where(mask, 119.0, 120.0).astype(np.float32)
    assert math.isnan(bench["vessel_widths"](centreline, [mask.astype(np.float32)], faint,
                                             15.0)[1])


def test_bench_widths_reads_zone_b_vessels_three_ways(tmp_path: Path) -> None:
    """`bench_widths.py` on one HRF-AV and one LES-AV training photograph: the six widest
    zone-B arteries and veins of each manual map, each read in the manual mask, the
    model's mask and the photograph, the readers within a factor of two of each other
    on most vessels, and the table by group and class."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_widths.py"
    run = subprocess.run([sys.executable, str(script), "--limit", "1", "--runtime", "openvino",
                          "--out", str(tmp_path)], check=True, capture_output=True, text=True)
    saved = json.loads((tmp_path / "widths.json").read_text())
    vessels = saved["vessels"]
    assert {v["dataset"] for v in vessels} == {"hrf-av", "les-av"}
    assert all(sum(v["kind"] == kind and v["image"] == image for v in vessels) == 6
               for image in {v["image"] for v in vessels} for kind in ("artery", "vein"))
    widths = np.array([[v["manual"], v["model"], v["photograph"]] for v in vessels])
    read = np.isfinite(widths).all(axis=1)
    assert read.mean() > 0.75 and (widths[read] > 2).all()
    ratios = widths[read][:, 1:] / widths[read][:, :1]
    assert np.mean((ratios > 0.5) & (ratios < 2)) > 0.9
    assert set(saved["summary"]) == {f"{g} {k}" for g in ("hrf-av dr", "les-av")
                                     for k in ("artery", "vein")}
    assert "| hrf-av dr artery |" in run.stdout
    assert (tmp_path / "widths.png").stat().st_size > 10_000
