"""HRF-AV and LES-AV on the real data: layout, split, vessel maps from the artery/vein
labels, the given FOV masks, detection and the strict checks. HRF's photographs are
8 MP: these tests decode one of them; the rest reads LES-AV's."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsegment.datasets import (
    ChaseDB1,
    DatasetError,
    HrfAv,
    LesAv,
    default_data_dir,
    detect_dataset,
    load_label,
    load_split,
    open_dataset,
)
from qsegment.datasets.base import dataset_folder

SHARED = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()
HRF, LES = SHARED / "HRF-AV", SHARED / "LES-AV"
LES_FILES = (("images", "{}.png"), ("1st_manual", "{}.png"), ("mask", "{}_mask.gif"))


def _raw(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _link(source: Path, to: Path, name: str) -> None:
    """Link one LES-AV image's photograph, label and mask from ``source`` (a split folder)
    into ``to``."""
    for folder, file in LES_FILES:
        (to / folder).mkdir(parents=True, exist_ok=True)
        (to / folder / file.format(name)).symlink_to(source / folder / file.format(name))


@pytest.fixture
def les_copy(tmp_path: Path) -> Path:
    """LES-AV with one training image (12) and one test image (224), linked, to damage."""
    out = tmp_path / "LES-AV"
    for part, name in (("training", "12"), ("test", "224")):
        _link(LES / part, out / part, name)
    return out


def test_hrf_av_names_and_the_folders_split():
    hrf = HrfAv(HRF)
    names = hrf.names()
    assert len(names) == 45 and names[:3] == ["01_dr", "01_g", "01_h"] and names[-1] == "15_h"
    split = hrf.default_split
    assert split.train == tuple(f"{i:02d}_{x}" for i in range(1, 9) for x in ("dr", "g", "h"))
    assert split.val == tuple(f"{i:02d}_{x}" for i in range(9, 16) for x in ("dr", "g", "h"))
    assert hrf.image_path("01_dr") == HRF / "training/images/01_dr.JPG"  # as published
    assert hrf.image_path("09_g") == HRF / "test/images/09_g.jpg"
    assert hrf.label_path("09_g", 1) == HRF / "test/1st_manual/09_g_AVmanual.png"
    assert hrf.fov_path("09_g") == HRF / "test/mask/09_g_mask.tif"


def test_les_av_names_and_the_folders_split():
    les = LesAv(LES)
    split = les.default_split
    assert len(les.names()) == 22 and len(split.train) == len(split.val) == 11
    assert set(split.train) == {p.stem for p in (LES / "training/images").iterdir()}
    assert set(split.val) == {p.stem for p in (LES / "test/images").iterdir()}
    assert "224" in split.val and "12" in split.train


def test_hrf_av_sample_is_the_vessel_map_inside_the_given_mask():
    """The one HRF photograph these tests decode."""
    s = HrfAv(HRF).sample("09_h")
    assert s.image.shape == (2336, 3504, 3) and s.image.dtype == np.float32
    assert s.label.shape == s.fov.shape == (2336, 3504)
    assert s.label.dtype == bool and s.fov.dtype == bool
    assert np.array_equal(s.label, _raw(HRF / "test/1st_manual/09_h_AVmanual.png") > 0)
    assert np.array_equal(s.fov, _raw(HRF / "test/mask/09_h_mask.tif") > 0)
    assert 0.05 < s.label[s.fov].mean() < 0.15  # vessels are a small part of the retina
    assert s.label[~s.fov].mean() < 0.001
    assert not s.label.flags.writeable and not s.fov.flags.writeable


def test_les_av_sample_of_the_larger_camera():
    s = LesAv(LES).sample("34")
    assert s.image.shape == (1958, 2196, 3) and s.image.dtype == np.float32
    assert s.label.dtype == bool and s.label.shape == s.fov.shape == (1958, 2196)
    assert 0.05 < s.label[s.fov].mean() < 0.2 and 0.5 < s.fov.mean() < 0.9


def test_the_fov_is_the_mask_file_not_derived(les_copy):
    mask = les_copy / "test/mask/224_mask.gif"
    given = _raw(mask) > 0
    edited = given.copy()
    edited[:300] = False  # no derived FOV looks like this
    mask.unlink()
    Image.fromarray(edited.astype(np.uint8) * 255).save(mask)
    fov = LesAv(les_copy).sample("224").fov
    assert given[:300].any() and not fov[:300].any() and np.array_equal(fov, edited)


def test_an_artery_vein_label_is_refused_as_binary_and_read_with_vessel_classes():
    path = LES / "test/1st_manual/224.png"
    raw = _raw(path)
    assert set(np.unique(raw)) == {0, 1, 2, 3}  # background, artery, vein, uncertain
    with pytest.raises(DatasetError, match=r"224\.png: label is not binary: values 0, 1, 2, "
                                           r"3; expected 0 and one other value"):
        load_label(path, raw.shape)
    label = load_label(path, raw.shape, vessel_classes=True)
    assert label.dtype == bool and np.array_equal(label, raw > 0)


def _replace(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as the PNG/GIF ``path`` (a link of les_copy becomes a file)."""
    path.unlink()
    Image.fromarray(array).save(path)


def _colour(label: np.ndarray) -> np.ndarray:
    """An artery/vein map drawn in colour (artery red, vein blue, uncertain green), as
    other sets publish them: gray, it is 0, 76, 29, 150."""
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255], [0, 255, 0]], np.uint8)
    return palette[label]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: np.where(raw == 3, 7, raw).astype(np.uint8),
     r"1st_manual/224\.png: label has values 0, 1, 2, 7; expected 0-3 \(background, artery, "
     r"vein, uncertain\)"),
    (lambda raw: (raw > 0).astype(np.uint8) * 255,  # a vessel map where classes belong
     r"1st_manual/224\.png: label has values 0, 255; expected 0-3"),
    (_colour, r"1st_manual/224\.png: label has values 0, 29, 76, 150; expected 0-3"),
])
def test_an_artery_vein_label_outside_0_to_3_is_refused_with_the_values(les_copy, damage,
                                                                          message):
    path = les_copy / "test/1st_manual/224.png"
    _replace(path, damage(_raw(path)))
    with pytest.raises(DatasetError, match=message):
        load_split(LesAv(les_copy))  # what training and evaluation read first


@pytest.mark.parametrize(("damage", "message"), [
    (lambda mask: np.asarray(Image.fromarray(mask).resize((1000, 900))),
     r"mask/224_mask\.gif: FOV mask is 1000x900 but its image is 1620x1444"),
    (lambda mask: np.where(mask > 0, np.arange(mask.shape[1]) % 200, 0).astype(np.uint8),
     r"mask/224_mask\.gif: FOV mask is not binary: values 0, 1, 2, 3, 4, 5, \.\.\. \(200 in "
     r"all\); expected 0 and one other value"),
])
def test_a_mismatched_fov_mask_is_named(les_copy, damage, message):
    path = les_copy / "test/mask/224_mask.gif"
    _replace(path, damage(_raw(path)))
    with pytest.raises(DatasetError, match=message):
        load_split(LesAv(les_copy))


def test_a_binary_label_is_zero_and_one_other_value(tmp_path, data_dir):
    """Any one value beside 0 is vessel (0/1, 0/255, 0/7); two values without 0 have no
    safe cut and are refused, naming them."""
    raw = _raw(data_dir / "Image_11L_1stHO.png")
    vessels = raw > 0
    path = tmp_path / "label.png"
    for low, high in ((0, 1), (0, 255), (0, 7)):
        Image.fromarray(np.where(vessels, high, low).astype(np.uint8)).save(path)
        assert np.array_equal(load_label(path, raw.shape), vessels)
    Image.fromarray(np.where(vessels, 200, 100).astype(np.uint8)).save(path)
    with pytest.raises(DatasetError, match=r"label\.png: label is not binary: values 100, 200; "
                                           r"expected 0 and one other value \(0/1 or 0/255\)"):
        load_label(path, raw.shape)


def test_detect_dataset_picks_each_set(data_dir, les_copy):
    assert type(detect_dataset(HRF)) is HrfAv
    assert type(detect_dataset(LES)) is LesAv
    assert type(detect_dataset(data_dir)) is ChaseDB1
    part = detect_dataset(les_copy)  # a partial copy is still LES-AV, with its folders' split
    assert type(part) is LesAv and part.default_split.train == ("12",)
    assert part.default_split.val == ("224",)


def test_open_by_name_finds_the_shared_folders():
    assert open_dataset(None, "hrf-av").root == HRF
    assert open_dataset(None, "les-av").root == LES


def test_a_dataset_s_folder_from_its_variable_the_shared_data_or_the_cache(
        les_copy, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("QSEGMENT_DATA_LES_AV", str(les_copy))
    assert open_dataset(None, "les-av").root == les_copy
    assert open_dataset(None, "hrf-av").root == HRF  # each set has its own variable
    monkeypatch.setenv("QSEGMENT_DATA_CHASEDB1", str(tmp_path / "chase"))
    monkeypatch.setenv("QSEGMENT_DATA", str(data_dir))
    assert default_data_dir() == tmp_path / "chase"  # the set's own name first
    monkeypatch.delenv("QSEGMENT_DATA_CHASEDB1")
    assert default_data_dir() == data_dir  # CHASE_DB1's variable of old still works
    monkeypatch.setenv("QSEGMENT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match=(
            r"no NOPE folder found in \$QSEGMENT_DATA_NOPE_AV \(not set\), .*shared/data/NOPE-AV, "
            r".*cache/data/NOPE-AV: pass --data DIR, set QSEGMENT_DATA_NOPE_AV=DIR, or put the "
            r"folder at .*cache/data/NOPE-AV \(`qsegment data download nope-av`")):
        dataset_folder("nope-av", "NOPE-AV", "NOPE")
    (tmp_path / "cache/data/NOPE-AV").mkdir(parents=True)  # where `qsegment data` puts it
    assert dataset_folder("nope-av", "NOPE-AV", "NOPE") == tmp_path / "cache/data/NOPE-AV"


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "test/mask/224_mask.gif").unlink(),
     r"test/mask/224_mask\.gif: missing FOV mask for 224\.png"),
    (lambda d: (d / "training/1st_manual/12.png").unlink(),
     r"training/1st_manual/12\.png: missing label for 12\.png"),
    (lambda d: (d / "test/images/notes.txt").write_text("hello"),
     r"test/images/notes\.txt: unexpected file in LES-AV's images/ \(expected N\.png\)"),
    (lambda d: (d / "test/mask/224_mask.png").write_bytes(b""),
     r"test/mask/224_mask\.png: unexpected file in LES-AV's mask/ \(expected N_mask\.gif\)"),
    (lambda d: (d / "test/images/224.png").unlink(),
     r"test/1st_manual/224\.png: label without image"),
    (lambda d: (d / "validation").mkdir(),
     r"LES-AV/validation: unexpected in LES-AV's folder \(expected training/, test/ here\)"),
    (lambda d: _link(LES / "test", d / "training", "224"),
     r"test/images/224\.png: '224' is also .*training/images/224\.png"),
])
def test_a_broken_copy_names_the_file(les_copy, damage, message):
    (les_copy / "README.md").write_text("notes sit beside the data")  # and are no error
    damage(les_copy)
    with pytest.raises(DatasetError, match=message):
        LesAv(les_copy)
    with pytest.raises(DatasetError, match=message):  # detection says it too
        detect_dataset(les_copy)


def test_evaluate_scores_the_test_images_of_a_detected_les_av(les_copy, tmp_path, capsys):
    from qsegment.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(les_copy), "--no-figures", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pooled over 1 validation images, inside the FOV" in printed
    assert "cut per image: 0." in printed  # the default model's calibration: both cuts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == ["12"] and metrics["val_images"] == ["224"]
    assert "second_observer" not in metrics
    pooled = next(iter(metrics["rows"].values()))["pooled"]
    assert pooled["dice"] > 0.7 and pooled["auc"] > 0.95  # issue #31: 0.83 and 0.98 on all 11
    # --dataset names the reader: HRF-AV's refuses LES-AV's files, before any inference
    assert main(["evaluate", "--dataset", "hrf-av", "--data", str(les_copy)]) != 0
    assert "12.png: unexpected file in HRF-AV's images/" in capsys.readouterr().err
