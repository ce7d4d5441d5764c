"""Training on several datasets at once (issue #32): shares, one vessel scale, per-dataset
validation, and a card that says what was used."""

import csv
from collections import Counter

import numpy as np
import pytest

from qsegment.cli import main
from qsegment.data import SegmentationDataset
from qsegment.data.mixture import (
    REFERENCE_LABEL_CALIBRE,
    at_label_scale,
    label_scale,
    run_parts,
    visits,
)
from qsegment.datasets import DatasetError, Sample, Split, open_dataset
from qsegment.engine.config import ConfigError
from qsegment.engine.train import load_config, train
from qsegment.inference.calibrate import vessel_calibre


def test_each_dataset_takes_its_share_of_an_epoch():
    assert visits([20], [1.0], 4) == [4]  # one dataset: as --repeats alone
    assert visits([20, 24, 11], [1, 1, 1], 4) == [4, 3, 7]  # about a third each of 220
    assert visits([20, 11], [1, 3], 1) == [1, 2]
    with pytest.raises(DatasetError, match="2 dataset weight"):
        visits([20, 24, 11], [1, 1], 4)
    with pytest.raises(DatasetError, match="positive"):
        visits([20, 11], [1, 0], 4)


def test_an_epoch_lists_each_image_its_visits(data_dir):
    samples = [open_dataset(data_dir).sample(name) for name in ("Image_01L", "Image_02R")]
    uniform = SegmentationDataset(samples, repeats=3)
    assert uniform.order == [0, 1] * 3  # index i is image i % N, as before mixtures
    mixed = SegmentationDataset(samples, repeats=[1, 3])
    assert len(mixed) == 4 and Counter(mixed.order) == {0: 1, 1: 3}


def test_a_photograph_is_brought_to_chase_calibre():
    """An 8-megapixel HRF photograph (45 deg) and a LES-AV one end with labelled vessels
    as wide as CHASE_DB1's; image, label and FOV stay aligned."""
    for name, image in (("hrf-av", "01_dr"), ("les-av", "34")):
        sample = open_dataset(None, name).sample(image)
        factor = label_scale(sample)
        scaled = at_label_scale(sample)
        assert 0.5 < factor < 1.0, (name, factor)  # both cameras see vessels wider than CHASE's
        height, width = sample.label.shape
        assert scaled.label.shape == scaled.fov.shape == scaled.image.shape[:2] == (
            round(height * factor), round(width * factor))
        calibre = vessel_calibre(scaled.label.astype(np.float32))
        assert calibre == pytest.approx(REFERENCE_LABEL_CALIBRE, rel=0.08), name
        assert abs(scaled.fov.mean() - sample.fov.mean()) < 0.005


def test_label_scaling_keeps_only_the_resized_photographs():
    """Each photograph is read uncached and only its resized copy kept: the process's
    caches do not grow (HRF-AV's 45 photographs at full size would hold 5.4 GB for the
    whole run), and the copy is the cached sample's, resized."""
    from qsegment.data.mixture import training_parts
    from qsegment.datasets.base import _sample, load_image

    dataset = open_dataset(None, "les-av")
    _sample.cache_clear()
    load_image.cache_clear()
    part = training_parts([dataset], Split(("34",), ("279",)), label_scaled=True)[0]
    assert _sample.cache_info().currsize == load_image.cache_info().currsize == 0
    for scaled, name in ((part.train[0], "34"), (part.val[0], "279")):
        expected = at_label_scale(dataset.sample(name))
        for field in ("image", "label", "fov", "classes"):
            assert np.array_equal(getattr(scaled, field), getattr(expected, field)), field
    assert part.train_scales == [label_scale(dataset.sample("34"))]


def test_a_large_photograph_is_validated_in_tiles_that_give_its_whole_map():
    """A PyTorch model's map of a photograph larger than a tile (validation, the training
    threshold) is made in tiles with a margin of its receptive radius: the whole map,
    without the whole photograph's activations."""
    from qsegment.checkpoint import load_model
    from qsegment.engine.evaluate import _tiled_probability, predict_samples
    from qsegment.inference.maps import as_runtime, predict_proba
    from qsegment.models.profile import receptive_radius

    model, _ = load_model()
    sample = open_dataset(None, "hrf-av").sample("01_dr")
    crop = np.s_[600:1800, 1000:2300]  # 1200x1300: over the 1024 px tile both ways
    part = Sample(sample.name, sample.image[crop], sample.label[crop], sample.fov[crop],
                  sample.path)
    tiler = _tiled_probability(model, as_runtime(model), "none").__self__  # a Segmenter's
    assert tiler.tile == (1024, 1024) and tiler.overlap > receptive_radius(model)
    tiled = predict_samples(model, [part])[0]
    whole = predict_proba(model, part.image)
    assert tiled.shape == whole.shape == (1200, 1300) and (whole >= 0.5).mean() > 0.03
    assert np.abs(tiled - whole).max() < 1e-4


def test_a_mixture_needs_consistent_options(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="2 dataset weight"):
        load_config("multi", dataset_weights=[1, 1])
    with pytest.raises(ConfigError, match="one data folder per dataset"):
        load_config("multi", data=str(data_dir))
    with pytest.raises(ConfigError, match="drop --train-images"):
        load_config("multi", train_images=["Image_01L"])
    with pytest.raises(SystemExit) as refused:
        main(["train", "--out", str(tmp_path / "x"), "--dataset", "chasedb1,drive"])
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_a_missing_image_of_a_mixture_fails_before_training(tmp_path, data_dir):
    """A dataset folder that lacks a file of its split stops the run before any epoch,
    naming the file."""
    partial = tmp_path / "CHASEDB1"
    partial.mkdir()
    for path in data_dir.iterdir():
        if not path.name.startswith("Image_14R"):
            (partial / path.name).symlink_to(path)
    cfg = load_config("multi", dataset="chasedb1,les-av", data=f"{partial},")
    with pytest.raises(DatasetError, match="Image_14R"):
        run_parts(cfg)
    with pytest.raises(DatasetError, match="Image_14R"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_mixture_trains_validates_and_records_each_dataset(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("multi", dataset="chasedb1,les-av", dataset_weights=[1, 3], epochs=1,
                      repeats=1, crop=64, resize=256, batch_size=8, threads=1)
    card = train(cfg, out, progress=False)
    data = card["data"]
    assert [d["dataset"] for d in data["datasets"]] == ["CHASE_DB1", "LES-AV"]
    assert data["shares"] == [0.25, 0.75] and "10.7 px" in data["scale"]
    assert len(data["datasets"][1]["train"]) == 11  # LES-AV's own split
    for metrics in (card["val_metrics"], card["val_metrics_at_threshold"]):
        each = metrics["datasets"]
        assert set(each) == {"chasedb1", "les-av"}
        assert metrics["pooled"]["dice"] == pytest.approx(
            np.mean([m["pooled"]["dice"] for m in each.values()]))
        assert len(each["les-av"]["per_image"]) == 11
    with (out / "log.csv").open() as f:
        row = next(csv.DictReader(f))
    assert row["val_dice_les-av"] != "" and row["val_dice_chasedb1"] != ""
    assert int(row["step"]) == -(-(20 * 1 + 11 * 2) // 8)  # 42 samples: 6 batches


def test_the_scale_rule_reaches_every_training_camera():
    """A mixture's calibration must correct the FOV rule as far as its training cameras
    need: LES-AV's 45 deg photograph (34) needs 1.5x; CHASE_DB1's stay near 1."""
    from qsegment.data.mixture import training_parts
    from qsegment.engine.calibrate import fov_rule_corrections

    parts = training_parts([open_dataset(None, "les-av"), open_dataset(None, "chasedb1")],
                           label_scaled=True)
    les, chase = (fov_rule_corrections([part]) for part in parts)
    assert len(les) == 11 and len(chase) == 20
    assert max(les) == les[parts[0].split.train.index("34")] > 1.4
    assert all(0.8 < c < 1.25 for c in chase)
