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
    detect_dataset,
    load_label,
    open_dataset,
)
from qsegment.datasets.base import shared_data_folder

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
    with pytest.raises(DatasetError, match=r"224\.png: label is not binary \(4 distinct"):
        load_label(path, raw.shape)
    label = load_label(path, raw.shape, vessel_classes=True)
    assert label.dtype == bool and np.array_equal(label, raw > 0)


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
    with pytest.raises(DatasetError, match=r"no NOPE folder given: pass --data DIR \(looked in"):
        shared_data_folder("NOPE-AV", "NOPE")


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
