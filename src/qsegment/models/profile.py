"""Size and compute of a model, measured from the model itself (the models table)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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
