"""Running a model on whole images: resize, pad, forward, sigmoid, crop, resize back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import pad_to_multiple


def _size_multiple(model: object) -> int:
    inner = getattr(model, "module", model)  # DDP-wrapped or not
    return getattr(inner, "size_multiple", 8)


def to_input(image: np.ndarray | torch.Tensor, size: int | tuple[int, int] | None = None
             ) -> torch.Tensor:
    """(1, 3, H, W) float32 tensor of an RGB image (H, W, 3) in [0, 1], resized to ``size``
    (bilinear, antialiased) if given: the one resize used for inference and calibration."""
    x = torch.tensor(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def training_inputs(count: int, data: str | Path | None = None, size: int | None = None
                    ) -> Iterator[torch.Tensor]:
    """The first ``count`` training images of the default split as (1, 3, H, W) model
    inputs, at full resolution (padded to a multiple of 8) or resized to ``size``:
    calibration data for the CPU int8 runtimes."""
    from ..data import Split, default_data_dir, load_sample

    root = data or default_data_dir()
    for name in Split().train[:count]:
        yield pad_to_multiple(to_input(load_sample(root, name).image, size))[0]


@torch.inference_mode()
def predict_proba(model: nn.Module | Callable[[np.ndarray], np.ndarray],
                  image: np.ndarray | torch.Tensor,
                  size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Vessel probability map (H, W) of an RGB image (H, W, 3) in [0, 1].

    ``model`` is a PyTorch model or any callable from an (N, 3, H, W) float32 array
    to logits (an ONNX Runtime session: :class:`qsegment.export.onnx.OnnxModel`).
    With ``size`` the image is first resized to that inference resolution (as a
    camera would deliver it) and the probabilities are resized back to H x W.
    """
    torch_model = isinstance(model, nn.Module)
    device = next(model.parameters()).device if torch_model else torch.device("cpu")
    h, w = np.shape(image)[:2]
    x, (hh, ww) = pad_to_multiple(to_input(image, size).to(device), _size_multiple(model))
    logits = model(x) if torch_model else torch.from_numpy(model(x.numpy()))
    logits = logits[..., :hh, :ww].float()
    if size is not None:
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[0, 0].cpu().numpy()
