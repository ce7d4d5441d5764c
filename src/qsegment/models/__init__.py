"""Model registry: Q-Segment and the paper's baselines, built by name (timm-style).

Adding a model is one module (an ``nn.Module`` subclassing :class:`SegmentationModel`
and a constructor function) and one row of :data:`MODELS` below.
"""

from __future__ import annotations

from typing import Any

from ..registry import Entry, Registry
from .base import SegmentationModel, pad_to_multiple
from .erfnet import ERFNet
from .m2unet import M2UNet
from .mobilenetv3 import MobileNetV3SmallLRASPP
from .qsegment import QSegment, QSegmentAV
from .tnet import TNet

# Row order is the order of `qsegment models` and of the paper's Table II.
MODELS: Registry[Entry] = Registry("architecture", [
    Entry("qsegment", "qsegment.models.qsegment:qsegment",
          "Q-Segment (paper): 16/32/64 encoder-decoder, ~0.11M params"),
    Entry("qsegment-imx", "qsegment.models.qsegment:qsegment_imx",
          "Q-Segment at half resolution for the IMX500 (fits 640x640), ~0.11M params"),
    Entry("qsegment-half", "qsegment.models.qsegment:qsegment_half",
          "qsegment-imx with a refinement of its logits from the full-resolution image, "
          "for CPUs, ~0.11M params"),
    Entry("qsegment-av", "qsegment.models.qsegment:qsegment_av",
          "Q-Segment with an artery/vein head: vessel, artery, vein, uncertain; ~0.11M params"),
    Entry("qsegment-imx-av", "qsegment.models.qsegment:qsegment_imx_av",
          "qsegment-av at half resolution for the IMX500; ~0.11M params"),
    Entry("tnet", "qsegment.models.tnet:tnet",
          "T-Net-like tiny net (Khan et al. 2022): widths 8/16/30, ~0.027M params"),
    Entry("m2unet", "qsegment.models.m2unet:m2unet",
          "M2U-Net (Laibacher et al. 2019): MobileNetV2 encoder, ~0.55M params"),
    Entry("erfnet", "qsegment.models.erfnet:erfnet",
          "ERFNet (Romera et al. 2017): factorized residual blocks, ~2.06M params"),
    Entry("mobilenetv3_small", "qsegment.models.mobilenetv3:mobilenetv3_small",
          "MobileNetV3-Small + LR-ASPP head (Howard et al. 2019), ~2.5M params"),
])


def list_models() -> list[str]:
    """Names of every registered model, in registry order."""
    return MODELS.names()


def create_model(name: str, **kwargs: Any) -> SegmentationModel:
    """Build a registered model by name; an unknown name lists the valid ones.

    Args:
        name: a row of :data:`MODELS` (``qsegment models`` lists them).
        **kwargs: the model constructor's keyword arguments (a card's ``model_args``).

    Returns:
        The model, with freshly initialised weights.

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists the names.
    """
    return MODELS.load(name)(**kwargs)


__all__ = [
    "MODELS",
    "ERFNet",
    "M2UNet",
    "MobileNetV3SmallLRASPP",
    "QSegment",
    "QSegmentAV",
    "SegmentationModel",
    "TNet",
    "create_model",
    "list_models",
    "pad_to_multiple",
]
