"""PyTorch eager: the reference every other runtime is compared with."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

from .base import Runtime


class TorchRuntime(Runtime):
    """A module (built elsewhere: it opens no file) on its own device; numpy in, numpy
    out."""

    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.size_multiple = cast(int, model.size_multiple)  # SegmentationModel's int
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()
