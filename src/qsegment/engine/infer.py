"""Running a model on whole images: resize, pad, forward, sigmoid, crop, resize back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import pad_to_multiple

TTA_MODES = ("none", "flip", "d8")


def symmetries(tta: str = "none") -> list[tuple[bool, tuple[int, ...]]]:
    """The views a test-time augmentation averages, as (transpose, flipped dims):
    ``none`` the image itself; ``flip`` also its horizontal, vertical and double flips
    (4 views); ``d8`` also their transposes, all eight symmetries of a square (8 views).
    The model is not equivariant to these, so averaging them smooths its errors; it
    costs one forward pass per view."""
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of: "
                         f"{', '.join(TTA_MODES)}")
    flips = [()] if tta == "none" else [(), (-1,), (-2,), (-2, -1)]
    turns = (False, True) if tta == "d8" else (False,)
    return [(turn, dims) for turn in turns for dims in flips]


def _view(x: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` seen through one symmetry: transposed, then flipped."""
    x = x.transpose(-1, -2) if transpose else x
    return x.flip(dims) if dims else x


def _unview(x: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`_view`: flipped back, then transposed back."""
    x = x.flip(dims) if dims else x
    return x.transpose(-1, -2) if transpose else x


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
                  size: int | tuple[int, int] | None = None, tta: str = "none"
                  ) -> np.ndarray:
    """Vessel probability map (H, W) of an RGB image (H, W, 3) in [0, 1].

    ``model`` is a PyTorch model or any callable from an (N, 3, H, W) float32 array
    to logits (an ONNX Runtime session: :class:`qsegment.export.onnx.OnnxModel`).
    With ``size`` the image is first resized to that inference resolution (as a
    camera would deliver it) and the probabilities are resized back to H x W.
    ``tta`` averages the logits over the views of :func:`symmetries`.
    """
    torch_model = isinstance(model, nn.Module)
    device = next(model.parameters()).device if torch_model else torch.device("cpu")
    h, w = np.shape(image)[:2]
    x, (hh, ww) = pad_to_multiple(to_input(image, size).to(device), _size_multiple(model))
    views = symmetries(tta)

    def forward(view: torch.Tensor) -> torch.Tensor:
        view = view.contiguous()
        out = model(view) if torch_model else torch.from_numpy(model(view.numpy()))
        return out.float()

    logits = sum(_unview(forward(_view(x, *v)), *v) for v in views) / len(views)
    logits = logits[..., :hh, :ww]
    if size is not None:
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[0, 0].cpu().numpy()
