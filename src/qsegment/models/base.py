"""What every segmentation model here shares: input checks and logits out."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import UsageError
from ..images import round_up


class SegmentationModel(nn.Module):
    """Base class: ``forward`` maps (N, 3, H, W) images in [0, 1] to (N, C, H, W) logits,
    one channel per name in ``outputs``.

    Channel 0 is always the vessel logit, so that every vessel consumer (thresholds,
    calibration, runtimes, the sensor) reads an artery/vein model as a vessel model.
    ``size_multiple`` is the factor H and W must be divisible by (the total stride of
    its pooling): the one place that number lives. Callers pad to it
    (:func:`qsegment.models.pad_to_multiple`) and tile on it.
    """

    size_multiple: int = 8
    outputs: ClassVar[tuple[str, ...]] = ("vessel",)

    def check_input_shape(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):  # torch.fx tracing (MCT's model reader): no shapes
            return
        if x.ndim != 4 or x.shape[1] != 3:
            raise UsageError(f"expected a (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise UsageError(
                f"{type(self).__name__} needs H and W divisible by {m}, got {h}x{w}; "
                f"pad to {round_up(h, m)}x{round_up(w, m)} (qsegment.models.pad_to_multiple)"
            )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad H and W (bottom/right) up to a multiple; returns the padded tensor and (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph))
    return x, (h, w)
