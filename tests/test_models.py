import json

import numpy as np
import pytest
import torch
from torch import nn

from qsegment.cli import main
from qsegment.data import to_tensors
from qsegment.datasets import load_sample
from qsegment.errors import UsageError
from qsegment.losses import structure_loss
from qsegment.models import QSegment, create_model, list_models, pad_to_multiple
from qsegment.models.profile import count_macs, count_parameters
from qsegment.pretrained import list_pretrained
from qsegment.registry import UnknownNameError

# Parameter counts of the paper's Table II (millions).
PAPER_PARAMS = {"qsegment": 0.104, "tnet": 0.026, "m2unet": 0.55, "erfnet": 2.06,
                "mobilenetv3_small": 2.5}


def test_registry_holds_the_paper_models():
    variants = ("qsegment-imx", "qsegment-half", "qsegment-av", "qsegment-imx-av")
    assert [m for m in list_models() if m not in variants] == list(PAPER_PARAMS)
    assert set(variants) <= set(list_models())
    with pytest.raises(UnknownNameError, match="choose one of: qsegment, qsegment-imx, "
                                               "qsegment-half, qsegment-av, qsegment-imx-av, "
                                               "tnet"):
        create_model("unet")


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_parameter_count_within_10_percent_of_paper(name):
    params = count_parameters(create_model(name)) / 1e6
    assert abs(params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.10, params


@pytest.mark.parametrize("name", PAPER_PARAMS)
@pytest.mark.parametrize("size", [(72, 88), (96, 120), (40, 256)])
def test_logits_at_input_resolution_for_sizes_divisible_by_8(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_size_not_divisible_by_8_is_refused_with_the_size_that_works(name):
    with pytest.raises(UsageError, match=r"divisible by 8.*pad to 72x96"):
        create_model(name)(torch.rand(1, 3, 70, 90))


def test_pad_to_multiple_pads_bottom_right():
    x = torch.ones(1, 3, 70, 90)
    padded, (h, w) = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (72, 96) and (h, w) == (70, 90)
    assert padded[..., :70, :90].eq(1).all() and padded[..., 70:, :].eq(0).all()


@pytest.fixture(scope="module")
def real_crop(data_dir):
    image, label, _ = to_tensors(load_sample(data_dir, "Image_01L"), 8)
    return image[None, :, 400:464, 400:464].repeat(2, 1, 1, 1), label[None, :, 400:464, 400:464]


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in PAPER_PARAMS]
                         + [("qsegment", {"upsample": "unpool"})])
def test_gradients_reach_every_parameter(name, kwargs, real_crop):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    image, label = real_crop
    structure_loss(model(image), label.repeat(2, 1, 1, 1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_qsegment_upsampling_modes():
    torch.manual_seed(0)
    nearest = QSegment(upsample="nearest").eval()
    unpool = QSegment(upsample="unpool").eval()
    unpool.load_state_dict(nearest.state_dict())  # same parameters, different decoder
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(nearest(x), unpool(x))
    assert not any(isinstance(m, nn.MaxUnpool2d) for m in nearest.modules())
    with pytest.raises(UsageError, match="upsample"):
        QSegment(upsample="bilinear")


def test_a_deeper_qsegment_adds_levels_around_the_papers(real_crop):
    """widths of four levels: the receptive field of one more pooling, the size multiple
    16, the paper's three levels' encoder unchanged, every parameter trained."""
    torch.manual_seed(0)
    paper, deeper = QSegment(), QSegment(widths=(16, 32, 64, 64))
    assert deeper.size_multiple == 16 and paper.size_multiple == 8
    shapes = {k: v.shape for k, v in paper.state_dict().items() if k.startswith("encoder.")}
    assert all(deeper.state_dict()[k].shape == shape for k, shape in shapes.items())
    assert len(deeper.decoder) == 4 and count_parameters(deeper) < 0.25e6
    image, label = real_crop
    structure_loss(deeper(image), label.repeat(2, 1, 1, 1)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() for p in deeper.parameters())
    with pytest.raises(UsageError, match="divisible by 16"):
        deeper(torch.rand(1, 3, 72, 72))
    with pytest.raises(UsageError, match="widths"):
        QSegment(widths=())


def test_mac_counter_matches_hand_count():
    conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1, groups=16))
    assert count_macs(conv, 10, 12) == (16 * 3 * 9 + 16 * 9) * 10 * 12


def test_models_command_json(capsys):
    assert main(["models", "--json", "--size", "96"]) == 0
    table = json.loads(capsys.readouterr().out)
    rows = {r["model"]: r for r in table["models"]}
    assert list(rows) == list_models()
    q = rows["qsegment"]
    assert rows["qsegment-imx"]["gmacs"] < 0.35 * q["gmacs"]  # its body runs at half size
    assert q["params"] == count_parameters(create_model("qsegment"))
    assert q["fp32_mb"] == pytest.approx(4 * q["int8_mb"])
    assert q["gmacs"] * 1e9 == count_macs(create_model("qsegment"), 96, 96)
    # every shipped weights file says what it learned from, with the data's terms
    shipped = {w["weights"]: w for w in table["weights"]}
    assert set(shipped) == set(list_pretrained())
    assert all(w["architecture"] in rows and "CC BY 4.0" in w["trained_on"]
               for w in shipped.values())
    # MACs grow with the pixel count
    assert main(["models", "--json", "--size", "192"]) == 0
    big = {r["model"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert big["qsegment"]["gmacs"] == pytest.approx(4 * q["gmacs"], rel=0.01)


def test_qsegment_imx_predicts_full_resolution_from_interleaved_phases(real_crop):
    """The IMX500 variant: <= 0.15M parameters, full-resolution logits that are exactly
    the sensor's phases interleaved by the host's NumPy depth-to-space, sizes in 16s."""
    from qsegment.runtimes.base import depth_to_space

    model = create_model("qsegment-imx").eval()
    assert count_parameters(model) <= 150_000 and model.size_multiple == 16
    image = real_crop[0][:1]
    with torch.no_grad():
        phases, full = model.forward_phases(image), model(image)
    assert phases.shape == (1, 4, 32, 32) and full.shape == (1, 1, 64, 64)
    assert np.array_equal(depth_to_space(phases.numpy(), 2), full.numpy())
    assert full[0, 0, 1, 0] == phases[0, 2, 0, 0] and full[0, 0, 0, 1] == phases[0, 1, 0, 0]
    with pytest.raises(UsageError, match=r"divisible by 16.*pad to 80x96"):
        model(torch.rand(1, 3, 72, 88))
    with pytest.raises(UsageError, match="expected a multiple of 4 phase channels"):
        depth_to_space(np.zeros((1, 3, 4, 4), np.float32), 2)


def test_qsegment_imx_trains_every_parameter(real_crop):
    torch.manual_seed(0)
    model = create_model("qsegment-imx").train()
    image, label = real_crop
    structure_loss(model(image), label.repeat(2, 1, 1, 1)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() for p in model.parameters())


def test_qsegment_half_starts_as_the_half_resolution_weights_it_refines(real_crop):
    """--init from qsegment-imx weights fills all but the refinement, whose last
    convolution starts at zero: the same logits; the loss then reaches the refinement."""
    from qsegment.checkpoint import load_model, load_weights
    from qsegment.pretrained import resolve_checkpoint

    torch.manual_seed(0)
    half = create_model("qsegment-half")
    meta = load_weights(half, resolve_checkpoint("qsegment-imx-transfer"), matching_only=True)
    refinement = {n for n in half.state_dict() if n.startswith("refine_")}
    assert set(half.state_dict()) - set(meta["loaded"]) == refinement
    imx, _ = load_model("qsegment-imx-transfer")
    image, label = real_crop
    with torch.no_grad():
        assert torch.equal(half.eval()(image), imx.eval()(image))
    assert count_parameters(half) - count_parameters(imx) < 5000 and half.size_multiple == 16
    structure_loss(half.train()(image), label.repeat(2, 1, 1, 1)).backward()
    assert half.refine_out.weight.grad.abs().sum() > 0


def test_receptive_radius_of_known_stacks():
    """A 5x5 convolution reaches 2 pixels; two 3x3 around a 2x2 pool and a nearest x2
    reach further, by the pooling grid; a reach past the probe is probed again larger, and
    past the largest probe refused."""
    from qsegment.models.profile import receptive_radius

    torch.manual_seed(0)
    assert receptive_radius(nn.Conv2d(3, 1, 5, padding=2), size=64) == 2
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2),
                           nn.Conv2d(4, 4, 3, padding=1), nn.Upsample(scale_factor=2),
                           nn.Conv2d(4, 1, 1))
    pooled.size_multiple = 2
    assert receptive_radius(pooled, size=64) == 4  # 1 + 2 (pooled 3x3) + 1 (grid offset)
    wide = nn.Conv2d(3, 1, 31, padding=15)
    assert receptive_radius(wide, size=24) == 15  # probed again at 48: past 24's border
    with pytest.raises(UsageError, match="reaches past a 24x24 probe"):
        receptive_radius(wide, size=24, largest=24)
