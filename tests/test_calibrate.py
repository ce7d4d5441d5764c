"""Label-free per-image calibration (issue #31) on real CHASE_DB1 photographs: the scale
from the vessels' calibre, the expected-Dice cut, the quality flags and the fit."""

import logging

import numpy as np
import pytest
from PIL import Image

from qsegment import Segmenter
from qsegment.cli import main
from qsegment.datasets import load_sample
from qsegment.engine.calibrate import SHIFTS, fit_calibration, fit_scale_rule
from qsegment.engine.evaluate import table_iv
from qsegment.errors import UsageError
from qsegment.inference.calibrate import (
    HISTOGRAM_BINS,
    Calibration,
    calibration_path,
    expected_dice_bin,
    expected_dice_cut,
    histogram,
    map_histogram,
    vessel_calibre,
)
from qsegment.metrics import evaluate
from qsegment.pretrained import DEFAULT_MODEL, read_card, resolve_checkpoint
from qsegment.runtimes import auto_runtimes, open_weights

RUNTIME = auto_runtimes()[0][0]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter.from_pretrained(DEFAULT_MODEL, runtime=RUNTIME, threads=1)


@pytest.fixture(scope="module")
def photograph(data_dir):
    sample = load_sample(data_dir, "Image_12R")  # validation: never fitted on
    return sample, np.round(sample.image * 255).astype(np.uint8)


def _dice(mask, sample):
    fov = sample.fov
    return 2 * (mask & sample.label & fov).sum() / ((mask & fov).sum() + (sample.label & fov).sum())


def test_the_default_model_ships_its_calibration():
    calibration = Calibration.beside(resolve_checkpoint(DEFAULT_MODEL))
    assert calibration is not None and "training images" in calibration.fitted_on
    assert 0.3 < calibration.width_gamma < 1.0 and 5 < calibration.vessel_width < 20


def test_chase_keeps_its_scale_and_gets_a_cut_of_its_own(segmenter, photograph):
    sample, rgb = photograph
    out = segmenter.predict(rgb)
    assert (out.scale, out.scale_rule, out.fov_scale, out.quality) == (1.0, "fov", 1.0, ())
    assert out.threshold_rule == "auto" and 0.5 < out.threshold < 0.95
    card = Segmenter.from_pretrained(DEFAULT_MODEL, threshold="card", runtime=RUNTIME)
    fixed = card.predict(rgb)
    assert fixed.threshold_rule == "card" and fixed.threshold == read_card(
        resolve_checkpoint(DEFAULT_MODEL)).threshold_value
    assert abs(_dice(out.mask, sample) - _dice(fixed.mask, sample)) < 0.02
    number = Segmenter.from_pretrained(DEFAULT_MODEL, threshold=0.7, runtime=RUNTIME)
    assert (number.predict(rgb).threshold, number.predict(rgb).threshold_rule) == (0.7, "fixed")


def test_the_vessels_correct_the_fov_rule(segmenter, photograph):
    """A narrower-field camera, simulated: the central 700 px of the photograph inside a
    round field of view. The FOV rule enlarges it 1.33x (its field is smaller than
    CHASE's 917 px), though its vessels already have CHASE's calibre; the vessels' rule
    brings it back near 1, and the map is better for it (Dice +0.0066 for `qsegment-half`,
    over +0.01 for the default before it)."""
    sample, rgb = photograph
    side, y0, x0 = 700, 130, 149
    yy, xx = np.mgrid[:side, :side]
    inside = (yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= (side / 2 - 4) ** 2
    crop = np.where(inside[..., None], rgb[y0:y0 + side, x0:x0 + side], 0).astype(np.uint8)
    label = sample.label[y0:y0 + side, x0:x0 + side] & inside
    out = segmenter.predict(crop)
    fov_only = Segmenter.from_pretrained(DEFAULT_MODEL, runtime=RUNTIME, scale="fov").predict(crop)
    assert fov_only.scale == pytest.approx(917 / 690, rel=0.02) and out.fov_scale == fov_only.scale
    assert out.scale_rule == "vessels" and 0.8 < out.scale < 1.15, out.scale
    crop_sample = type(sample)(sample.name, crop, label, inside, sample.path)
    assert _dice(out.mask, crop_sample) > _dice(fov_only.mask, crop_sample) + 0.005


def test_a_crop_without_a_rim_keeps_its_scale_and_says_so(segmenter, photograph):
    """No FOV rim: the widest vessels of a crop need not be the widest there are, so
    neither rule rescales it."""
    _, rgb = photograph
    out = segmenter.predict(rgb[200:600, 200:700], "crop.png")
    assert (out.scale, out.scale_rule, out.quality) == (1.0, "none", ("no-fov",))


def test_a_blank_image_falls_back_and_says_so_once(segmenter, caplog):
    blank = np.full((300, 400, 3), 30, dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="qsegment"):
        out = segmenter.predict(blank, "blank.png")
    assert out.scale == 1.0 and set(out.quality) == {"no-fov", "no-vessels"}
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("qsegment")]
    assert len(lines) == 2 and all(line.startswith("blank.png: ") for line in lines)


def test_the_calibre_follows_the_scale_and_the_cut_follows_the_map(segmenter, photograph):
    _, rgb = photograph
    maps = {f: Segmenter(segmenter.runner, scale=f).predict(rgb).probability for f in (0.6, 1.0)}
    small = np.asarray(Image.fromarray(rgb).resize((599, 576), Image.Resampling.BILINEAR))
    at_small = Segmenter(segmenter.runner, scale="none").predict(small).probability
    assert vessel_calibre(at_small) < 0.85 * vessel_calibre(maps[1.0])
    assert vessel_calibre(np.zeros((200, 200))) is None
    assert vessel_calibre(np.ones((200, 200))) is None  # all vessel: no width (and no hang)
    platt = (1.0, -1.5)
    unsure = maps[1.0] * 0.8  # the same ranking, less sure: a lower cut
    assert expected_dice_cut(unsure, platt) < expected_dice_cut(maps[1.0], platt)


def test_the_histogram_counts_as_numpy_does(segmenter, photograph):
    """The cut's histogram (np.bincount of the scaled map in 16 bits, a third of
    np.histogram's time) bins a real map and the bins' own edges, in float32 and float64,
    exactly as ``np.histogram`` does; the counts from a bin up are the pixels at or above
    its lower edge, which is how the map's share above its cut is read."""
    _, rgb = photograph
    probability = segmenter.predict(rgb).probability
    edges = np.arange(HISTOGRAM_BINS + 1, dtype=np.float32) / HISTOGRAM_BINS
    for values in (probability, edges, np.nextafter(edges, np.float32(0)).clip(0, 1),
                   edges.astype(np.float64)):
        assert np.array_equal(histogram(values), np.histogram(
            values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0])
    counts = histogram(probability)
    for cut_bin in (1, 100, 256, 393, HISTOGRAM_BINS - 1):
        assert counts[cut_bin:].sum() == (probability >= cut_bin / HISTOGRAM_BINS).sum()


def test_the_cut_from_a_quarter_of_the_pixels_is_the_whole_maps(segmenter, data_dir):
    """The cut is read from every other row and column of the map (:func:`map_histogram`):
    on training photographs, at the scale the calibration chose and at two others, the
    expected-Dice cut of that quarter is the cut of every pixel."""
    platt = segmenter.calibration.platt
    for name in ("Image_01L", "Image_05R", "Image_09L"):
        rgb = np.round(load_sample(data_dir, name).image * 255).astype(np.uint8)
        for scale in ("auto", 0.7, 1.4):
            probability = Segmenter(segmenter.runner, scale=scale).predict(rgb).probability
            assert expected_dice_bin(map_histogram(probability), platt) == \
                expected_dice_bin(histogram(probability), platt)


def test_the_ridge_counts_are_scipys(segmenter, photograph):
    """The calibre's ridge, eroded as bits (:func:`_ridge_counts`), has at each taxicab
    distance as many pixels as SciPy's distance transform and 3x3 maximum give, on a real
    map cut at two levels and on random masks whose widths do and do not fill their last
    64-pixel word (the frame's edge is not background, as for SciPy)."""
    from scipy.ndimage import distance_transform_cdt, maximum_filter

    from qsegment.inference.calibrate import _ridge_counts

    def scipys(mask: np.ndarray) -> np.ndarray:
        distance = distance_transform_cdt(mask, metric="taxicab")
        ridge = mask & (distance >= maximum_filter(distance, size=3, mode="constant"))
        return np.bincount(distance[ridge])

    probability = segmenter.predict(photograph[1]).probability
    rng = np.random.default_rng(0)
    masks = [probability >= 0.2, probability >= 0.5]
    masks += [rng.random((int(h), int(w))) < share
              for h, w, share in [(1, 1, 0.0), (40, 64, 0.8), (33, 65, 0.9), (70, 128, 0.7),
                                  (64, 63, 0.95), (5, 200, 0.6), (200, 3, 0.9)]]
    for mask in masks:
        ours, reference = _ridge_counts(mask), scipys(mask)
        size = max(ours.size, reference.size)
        assert np.array_equal(np.pad(ours, (0, size - ours.size)),
                              np.pad(reference, (0, size - reference.size))), mask.shape


def test_fit_scale_rule_recovers_a_power_law():
    factors = (0.5, 0.7, 1.0, 1.4)
    eyes = np.array([[0.9], [1.0], [1.1]])
    widths = 10.0 * eyes * np.asarray(factors) ** 0.6
    reference, gamma, dead_band = fit_scale_rule(widths, factors)
    assert gamma == pytest.approx(0.6) and reference == pytest.approx(10.0 * 0.9966, rel=1e-3)
    # the eye farthest from the reference (0.9 against 0.9966) sets the band
    assert dead_band == pytest.approx((0.9966 / 0.9) ** (1 / 0.6) - 1, rel=1e-3)
    with pytest.raises(UsageError):
        fit_scale_rule(widths, (0.5, 0.7, 0.8, 1.4))


def test_fit_on_two_training_images(split):
    train = split[0][:2]
    weights = resolve_checkpoint(DEFAULT_MODEL)
    runner = Segmenter(open_weights(RUNTIME, weights, 1), scale="none")
    shifts = {k: SHIFTS[k] for k in ("none", "contrast 0.4", "blur 3")}
    calibration, report = fit_calibration(lambda rgb: runner.predict(rgb).probability, train,
                                          read_card(weights).threshold_value, shifts,
                                          progress=False)
    assert 0.3 < calibration.width_gamma < 1.0 and 8 < calibration.vessel_width < 16
    assert 0 <= calibration.dead_band < 1 and "2 training images" in calibration.fitted_on
    assert len(report["conditions"]) == 3 + 4 and 0.7 < report["mean_dice"] < 0.9
    with pytest.raises(UsageError):
        fit_calibration(lambda rgb: rgb, train, 0.5, {"blur 3": SHIFTS["blur 3"]})


def test_evaluate_scores_the_fixed_and_the_per_image_cut(data_dir, split):
    from qsegment.datasets import Split

    weights = resolve_checkpoint(DEFAULT_MODEL)
    result = table_iv(open_weights(RUNTIME, weights, 1), read_card(weights), data_dir,
                      split=Split(("Image_01L",), ("Image_11L", "Image_12R")), figures=False,
                      progress=False, scale="auto", calibration=Calibration.beside(weights))
    fixed, per_image = result["rows"].values()
    assert len(per_image["cuts"]) == 2 and per_image["scales"] == fixed["scales"] == [1.0, 1.0]
    assert fixed["pooled"]["auc"] == per_image["pooled"]["auc"]  # same maps, other cuts
    assert fixed["pooled"]["dice"] != per_image["pooled"]["dice"]


def test_per_image_thresholds_in_metrics(photograph):
    sample, _ = photograph
    prob = np.clip(sample.label * 0.7 + np.linspace(0, 0.3, sample.label.size).reshape(
        sample.label.shape), 0, 1)
    both = evaluate([prob, prob], [sample.label] * 2, [sample.fov] * 2, [0.5, 0.9])
    one = [evaluate([prob], [sample.label], [sample.fov], t)["pooled"]["dice"] for t in (0.5, 0.9)]
    assert [m["dice"] for m in both["per_image"]] == pytest.approx(one)
    with pytest.raises(UsageError):
        evaluate([prob], [sample.label], [sample.fov], [0.5, 0.9])


def test_predict_says_how_each_image_was_scaled_and_cut(data_dir, tmp_path, capsys):
    assert main(["predict", str(data_dir / "Image_11L.jpg"), "-o", str(tmp_path),
                 "--runtime", RUNTIME]) == 0
    out = capsys.readouterr().out
    assert "threshold 0." in out and "(auto)" in out and "scale 1.000 (fov)" in out
    assert main(["predict", str(data_dir / "Image_11L.jpg"), "-o", str(tmp_path / "card"),
                 "--runtime", RUNTIME, "--threshold", "card", "--scale", "fov"]) == 0
    assert "(card)" in capsys.readouterr().out


def test_a_broken_calibration_file_names_itself(tmp_path):
    from qsegment.card import CardError

    weights = tmp_path / "model.safetensors"
    calibration_path(weights).write_text('{"vessel_width": 1}')
    with pytest.raises(CardError, match=r"model\.calibration\.json"):
        Calibration.beside(weights)
    assert Calibration.beside(tmp_path / "other.safetensors") is None
