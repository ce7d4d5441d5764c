"""A whole image's vessel map from a runtime: resize, pad, forward (each test-time view),
average, crop, resize back, sigmoid; and the rescale that brings a photograph to the
training images' scale. Everything between the runtime's calls is numpy.

``model`` is any :class:`~qsegment.runtimes.base.Runtime`, or a PyTorch module (run by
the ``torch`` runtime). PyTorch is imported only to resize (``size``) or to wrap a module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..datasets.fov import TRAINING_FOV_DIAMETER
from ..datasets.fov import fov_diameter as measure_fov_diameter
from ..errors import UsageError
from ..images import network_input, resize_bilinear, resize_image
from ..runtimes.base import Runtime, sigmoid

if TYPE_CHECKING:
    from torch import nn

TTA_MODES = ("none", "flip", "d8")


def symmetries(tta: str = "none") -> list[tuple[bool, tuple[int, ...]]]:
    """The views a test-time augmentation averages, as (transpose, flipped axes):
    ``none`` the image itself; ``flip`` also its horizontal, vertical and double flips
    (4 views); ``d8`` also their transposes, all eight symmetries of a square (8 views).
    The model is not equivariant to these, so averaging them smooths its errors; it
    costs one forward pass per view."""
    if tta not in TTA_MODES:
        raise UsageError(f"unknown test-time augmentation {tta!r}; choose one of: "
                         f"{', '.join(TTA_MODES)}")
    flips = [()] if tta == "none" else [(), (-1,), (-2,), (-2, -1)]
    turns = (False, True) if tta == "d8" else (False,)
    return [(turn, axes) for turn in turns for axes in flips]


def _view(x: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """``x`` (N, C, H, W) seen through one symmetry: transposed, then flipped."""
    x = x.swapaxes(-1, -2) if transpose else x
    return np.flip(x, axes) if axes else x


def _unview(x: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`_view`: flipped back, then transposed back."""
    x = np.flip(x, axes) if axes else x
    return x.swapaxes(-1, -2) if transpose else x


def as_runtime(model: Runtime | nn.Module) -> Runtime:
    """A runtime as it is; a PyTorch module on the ``torch`` runtime."""
    if isinstance(model, Runtime):
        return model
    from ..runtimes.pytorch import TorchRuntime

    return TorchRuntime(model)


def predict_outputs(model: Runtime | nn.Module, image: np.ndarray,
                    size: int | tuple[int, int] | None = None, tta: str = "none"
                    ) -> np.ndarray:
    """Every output channel's logits (C, H, W) of an RGB image (H, W, 3) in [0, 1]
    (channel 0 the vessel; an artery/vein model's classes after it), averaged over the
    ``tta`` views of :func:`symmetries`. With ``size`` the image is first resized to that
    inference resolution (as a camera would deliver it) and the logits are resized back."""
    runtime = as_runtime(model)
    h, w = np.shape(image)[:2]
    x, (hh, ww) = network_input(image, size, runtime.size_multiple)

    def view_logits(view: tuple[bool, tuple[int, ...]]) -> np.ndarray:
        return _unview(runtime.logits(np.ascontiguousarray(_view(x, *view))), *view)

    first, *others = symmetries(tta)
    total = view_logits(first)
    for view in others:
        total = total + view_logits(view)
    logits = (total / (1 + len(others)))[..., :hh, :ww]
    if size is not None:
        logits = resize_bilinear(np.ascontiguousarray(logits), (h, w), antialias=False)
    return logits[0]


def predict_logits(model: Runtime | nn.Module, image: np.ndarray,
                   size: int | tuple[int, int] | None = None, tta: str = "none") -> np.ndarray:
    """Vessel logits (H, W) of an RGB image (H, W, 3) in [0, 1]: channel 0 of
    :func:`predict_outputs`."""
    return predict_outputs(model, image, size, tta)[0]


def predict_proba(model: Runtime | nn.Module, image: np.ndarray,
                  size: int | tuple[int, int] | None = None, tta: str = "none") -> np.ndarray:
    """Vessel probability map (H, W) of an RGB image (H, W, 3) in [0, 1]
    (:func:`predict_logits`, then the sigmoid)."""
    return sigmoid(predict_logits(model, image, size, tta))


Scale = str | float  # "auto", "fov", "none" or a factor
SCALE_RULES = ("auto", "fov", "none")
MIN_RESCALE = 0.1  # factors within 10 % of 1 leave the image as it is


def check_scale(scale: Scale) -> None:
    """Refuse a scale that is neither ``auto``, ``fov``, ``none`` nor a positive number."""
    if scale in SCALE_RULES:
        return
    try:
        ok = 0 < float(scale) < float("inf")
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"scale must be auto, fov, none or a positive factor, not {scale!r}")


def fov_scale(image: np.ndarray, fov_diameter: float = TRAINING_FOV_DIAMETER) -> float | None:
    """The factor that gives the field of view of ``image`` the training images' diameter
    (``fov_diameter``), so that vessels are about as wide as the network learned them; 1
    within 10 % of it (CHASE_DB1 itself); None where no FOV rim shows (a crop inside the
    retina, a blank image)."""
    diameter = measure_fov_diameter(image)
    if diameter is None:
        return None
    factor = fov_diameter / diameter
    return 1.0 if abs(factor - 1.0) < MIN_RESCALE else factor


def scale_factor(image: np.ndarray, scale: Scale,
                 fov_diameter: float = TRAINING_FOV_DIAMETER) -> float:
    """How much to resize ``image`` before the network, without a first pass: ``"none"``
    1; a number, that factor; ``"auto"`` and ``"fov"`` the FOV rule (:func:`fov_scale`; 1
    where no rim shows). The vessel rule of ``auto`` needs the map
    (:func:`qsegment.inference.calibrate.calibrated_map`)."""
    if scale == "none":
        return 1.0
    if scale not in SCALE_RULES:
        check_scale(scale)
        return float(scale)
    return fov_scale(image, fov_diameter) or 1.0


def at_scale(image: np.ndarray, factor: float,
             probability: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``probability`` of ``image`` resized by ``factor``; the map stays at that scale."""
    if factor == 1.0:
        return probability(image)
    h, w = image.shape[:2]
    return probability(resize_image(image, (max(1, round(h * factor)), max(1, round(w * factor)))))
