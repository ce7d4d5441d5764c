"""Size and compute of a model, measured from the model itself (the models table)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UsageError
from ..images import round_up


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (what papers report)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, height: int = 960, width: int = 960) -> int:
    """Multiply-accumulates of one forward pass on a (1, 3, H, W) input.

    Counted by PyTorch's FlopCounterMode (conv, matmul; MACs = FLOPs / 2) on the
    meta device, so no arithmetic is done and any size is instant.
    """
    meta = _to_meta(model).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, height, width, device="meta"))
    return counter.get_total_flops() // 2


def _to_meta(model: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    return clone.to_empty(device="meta")


def model_stats(model: nn.Module, height: int = 960, width: int = 960) -> dict[str, float]:
    """Parameters, fp32 and int8 weight sizes (MB, 1e6 bytes) and GMACs at H x W."""
    params = count_parameters(model)
    return {
        "params": params,
        "params_m": params / 1e6,
        "fp32_mb": params * 4 / 1e6,
        "int8_mb": params / 1e6,
        "gmacs": count_macs(model, height, width) / 1e9,
    }


def receptive_radius(model: nn.Module, size: int = 384, largest: int = 2048) -> int:
    """How far (pixels) one input pixel reaches in the output, measured by perturbing it:
    the margin a tile needs for its kept interior to equal the whole image's map. Probed
    at every offset of the network's pooling grid (the reach depends on it) in the middle
    of a ``size`` x ``size`` random image (logit changes over 1e-5 count); where the reach
    touches the border, probed again at twice the size, up to ``largest`` (a deeper
    network, e.g. four levels at half resolution, reaches past 384 px)."""
    multiple = getattr(model, "size_multiple", 1)
    size = round_up(size, multiple)
    centre = size // 2 // multiple * multiple
    base = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    probes = base.repeat(multiple + 1, 1, 1, 1)  # the first stays unperturbed: the reference
    probes = probes.to(next(model.parameters()).device)  # a model training on a GPU too
    for k in range(multiple):
        probes[k + 1, :, centre + k, centre + k] += 0.5
    with torch.no_grad():
        out = model.eval()(probes)[:, 0]
    changed = (out[1:] - out[:1]).abs() > 1e-5
    radius = 0
    for k in range(multiple):
        ys, xs = torch.nonzero(changed[k], as_tuple=True)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == size - 1 or xs.max() == size - 1:
            if 2 * size > largest:
                raise UsageError(f"the receptive field reaches past a {size}x{size} probe")
            return receptive_radius(model, 2 * size, largest)
        at = centre + k
        radius = max(radius, int((ys - at).abs().max()), int((xs - at).abs().max()))
    return radius
