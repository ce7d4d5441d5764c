import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn import metrics as skm

from qsegment.datasets import load_sample
from qsegment.errors import UsageError
from qsegment.losses import (
    bce_dice_loss,
    boundary_weights,
    structure_cldice_loss,
    structure_loss,
)
from qsegment.metrics import best_threshold, confusion, evaluate, scores


@pytest.fixture(scope="module")
def label(data_dir):
    return torch.from_numpy(load_sample(data_dir, "Image_01L").label.astype(np.float32))[None, None]


def test_structure_loss_is_near_zero_for_a_perfect_prediction(label):
    perfect = (label * 2 - 1) * 30.0
    assert structure_loss(perfect, label).item() < 1e-3
    assert structure_loss(-perfect, label).item() > 10
    assert structure_loss(torch.zeros_like(label), label).item() > 0.5


def test_boundary_weights_are_highest_at_vessel_borders(label):
    w = boundary_weights(label)[0, 0].numpy()
    vessel = label[0, 0].numpy().astype(bool)
    border = vessel ^ ndimage.binary_erosion(vessel)
    square = np.ones((3, 3), bool)
    far = ~ndimage.binary_dilation(vessel, square, iterations=16)  # outside every 31x31 window
    assert np.allclose(w[far], 1.0)
    assert w[border].mean() > 1.5 * w[far].mean()
    near_border = ndimage.binary_dilation(border, square, iterations=2)
    assert near_border[np.unravel_index(np.argmax(w), w.shape)]


def test_separable_boundary_weights_equal_the_2d_pooling(label):
    direct = 1 + 5 * (F.avg_pool2d(label, 31, 1, 15) - label).abs()
    assert torch.allclose(boundary_weights(label), direct, atol=1e-5)


def test_structure_loss_matches_the_written_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 40, 40)
    target = (torch.rand(2, 1, 40, 40) > 0.8).float()
    w = 1 + 5 * (F.avg_pool2d(target, 31, 1, 15) - target).abs()
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    wbce = (w * bce).sum((2, 3)) / w.sum((2, 3))  # weighted, unlike PraNet's reduce= slip
    inter = (w * p * target).sum((2, 3))
    wiou = 1 - (inter + 1) / ((w * (p + target)).sum((2, 3)) - inter + 1)
    expected = (wbce + wiou).mean()
    assert structure_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    unweighted = F.binary_cross_entropy_with_logits(logits, target) + wiou.mean()
    assert abs(structure_loss(logits, target).item() - unweighted.item()) > 1e-3


def test_cldice_term_costs_a_broken_vessel_more_than_a_thinner_one():
    """Two predictions of a 5-px bar, each 25 pixels short: cut across, or thinned along
    an edge. The structure loss rates them alike; the clDice term only the cut."""
    target = torch.zeros(1, 1, 64, 64)
    target[..., 30:35, 4:60] = 1
    cut, thinned = target.clone(), target.clone()
    cut[..., 30:35, 30:35] = 0
    thinned[..., 34, 4:29] = 0
    logits = {name: (p * 2 - 1) * 8 for name, p in (("cut", cut), ("thinned", thinned))}
    structure = {k: structure_loss(v, target).item() for k, v in logits.items()}
    cldice = {k: structure_cldice_loss(v, target).item() - structure[k] for k, v in logits.items()}
    assert structure["cut"] == pytest.approx(structure["thinned"], abs=0.01)
    assert cldice["cut"] > 0.02 > 0.001 > cldice["thinned"]


def test_loss_registry():
    from qsegment.engine.config import LOSSES
    from qsegment.registry import UnknownNameError

    assert LOSSES.load("bce_dice") is bce_dice_loss
    with pytest.raises(UnknownNameError, match="unknown loss 'focal'; choose one of: structure"):
        LOSSES.load("focal")


def _random_case(seed):
    rng = np.random.default_rng(seed)
    label = rng.random((30, 40)) > 0.85
    prob = np.clip(label * 0.5 + rng.random((30, 40)) * 0.7, 0, 1).astype(np.float32)
    fov = rng.random((30, 40)) > 0.2
    return prob, label, fov


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_metrics_equal_scikit_learn(threshold):
    cases = [_random_case(s) for s in range(3)]
    result = evaluate(*zip(*cases, strict=True), threshold=threshold)
    p = np.concatenate([pr[f] for pr, _, f in cases])
    t = np.concatenate([lb[f] for _, lb, f in cases])
    pred = p >= threshold
    expected = {
        "dice": skm.f1_score(t, pred), "acc": skm.accuracy_score(t, pred),
        "auc": skm.roc_auc_score(t, p), "se": skm.recall_score(t, pred),
        "sp": skm.recall_score(t, pred, pos_label=False), "iou": skm.jaccard_score(t, pred),
        "mcc": skm.matthews_corrcoef(t, pred),
    }
    assert result["pooled"] == pytest.approx(expected)
    prob0, label0, fov0 = cases[0]
    first = result["per_image"][0]
    assert first["dice"] == pytest.approx(skm.f1_score(label0[fov0], prob0[fov0] >= threshold))
    assert result["mean"]["dice"] == pytest.approx(np.mean([m["dice"] for m in
                                                            result["per_image"]]))


def test_metrics_ignore_pixels_outside_the_fov():
    prob, label, fov = _random_case(5)
    wrong_outside = np.where(fov, prob, 1.0 - label)
    assert evaluate([prob], [label], [fov]) == evaluate([wrong_outside], [label], [fov])
    c = confusion(prob, label, fov)
    assert c.tp + c.fp + c.fn + c.tn == fov.sum()
    assert scores(c)["acc"] < 1.0


def test_best_threshold_maximizes_dice():
    cases = [_random_case(s) for s in range(2)]
    t = best_threshold(*zip(*cases, strict=True))
    dice = lambda th: evaluate(*zip(*cases, strict=True), threshold=th)["pooled"]["dice"]  # noqa: E731
    assert all(dice(t) >= dice(g) - 1e-12 for g in np.linspace(0.05, 0.95, 19))


def test_a_large_pool_gets_the_exact_threshold_from_bin_counts(data_dir, monkeypatch):
    """Over :data:`EXACT_AUC_PIXELS` the threshold comes from per-image bin counts (no
    sort of all pixels): on two real CHASE_DB1 maps it is scikit-learn's (the int8
    map's 238 probabilities are far apart: the binned edge alone would lie 0.017 below),
    and draws the same pooled Dice; the pool's AUC from per-image counts is its exact AUC
    within 1e-5."""
    from qsegment import Segmenter, metrics

    samples = [load_sample(data_dir, name) for name in ("Image_01L", "Image_02R")]
    segmenter = Segmenter.from_pretrained(scale="none", threshold=0.5)
    case = ([segmenter.predict(s.image).probability for s in samples],
            [s.label for s in samples], [s.fov for s in samples])
    monkeypatch.setattr(metrics, "EXACT_AUC_PIXELS", 0)  # 2 M pixels: as 20 would be
    binned = best_threshold(*case)
    monkeypatch.setattr(metrics, "EXACT_AUC_PIXELS", 1 << 40)
    exact = best_threshold(*case)
    assert 0.3 < exact < 0.99 and abs(binned - exact) < 1 / metrics.AUC_BINS
    exact_auc = evaluate(*case)["pooled"]["auc"]
    monkeypatch.setattr(metrics, "EXACT_AUC_PIXELS", 0)  # the pool's AUC from summed counts
    pooled = evaluate(*case, threshold=binned)["pooled"]
    assert pooled["auc"] == pytest.approx(exact_auc, abs=1e-5) and 0.95 < exact_auc < 1
    assert pooled["dice"] == evaluate(*case, threshold=exact)["pooled"]["dice"]


def test_shape_mismatch_is_an_error():
    prob, label, fov = _random_case(0)
    with pytest.raises(UsageError, match="shape mismatch"):
        evaluate([prob[:-1]], [label], [fov])
