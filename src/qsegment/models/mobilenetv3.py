"""MobileNetV3-Small with an LR-ASPP segmentation head (Howard et al., "Searching for
MobileNetV3", ICCV 2019, Section 6.3 / Fig. 10).

Backbone: ``torchvision.models.mobilenet_v3_small(weights=None, dilated=True)``
``.features`` (no pretrained weights). As in the paper's segmentation setup, the
last stage uses dilation instead of stride, so the deep feature has stride 16; the
stride-8 feature (24 channels, after the third block) is the low-level input.
The paper's segmentation models also halve the last stage's channels ("reduced
tail"); we keep the full-width stage, which matters only for the parameter count.

Head (LR-ASPP): a 1x1 conv-BN-ReLU branch on the deep feature, multiplied by a
global-average-pool -> 1x1 conv -> sigmoid gating branch; bilinear up-sampling
to stride 8; a 1x1 conv to the logit plus a 1x1 conv of the low-level feature;
bilinear up-sampling to the input size. Global pooling (as torchvision's LR-ASPP)
replaces the paper's fixed 49x49 pooling so that any input size works.

Parameter budget: the Q-Segment paper's Table II lists MobileNetV3-Small at 2.5M,
which is the ImageNet classifier's count (2,542,856 = 927,008 in ``features`` +
1,615,848 in the classifier). The feature extractor plus the paper's 128-wide
head would be only ~1.08M, so to compare at the size the paper states we keep the
classifier's 1024-wide layer as a 1x1 conv-BN-Hardswish (576 -> 1024, stride 16)
and give the head 480 channels, so that the head stands in for the 1000-way
classifier layer it replaces. Total: **2,503,866 parameters** (+0.2% over 2.5M).
``head_channels=128`` (the paper's head width, still on the 1024-wide stage)
gives 1,781,562 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_small

from .base import SegmentationModel

_LOW_LEVEL_END = 4  # features[:4] ends at stride 8 with 24 channels
_LOW_CHANNELS = 24
_DEEP_CHANNELS = 576
_LAST_CHANNELS = 1024


class LRASPPHead(nn.Module):
    """Lite Reduced ASPP: gated 1x1 features from the deep map, fused at stride 8
    with a linear projection of the low-level map. Cheap global context."""

    def __init__(self, low_channels: int, high_channels: int, inner: int,
                 out_channels: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inner, 1),
            nn.Sigmoid(),
        )
        self.high_classifier = nn.Conv2d(inner, out_channels, 1)
        self.low_classifier = nn.Conv2d(low_channels, out_channels, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.high_classifier(x) + self.low_classifier(low)


class MobileNetV3SmallLRASPP(SegmentationModel):
    """MobileNetV3-Small (dilated, stride 16) + 1024-wide 1x1 stage + LR-ASPP head."""

    def __init__(self, head_channels: int = 480) -> None:
        super().__init__()
        features = mobilenet_v3_small(weights=None, dilated=True).features
        self.low = features[:_LOW_LEVEL_END]
        self.high = nn.Sequential(
            *features[_LOW_LEVEL_END:],
            nn.Conv2d(_DEEP_CHANNELS, _LAST_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(_LAST_CHANNELS),
            nn.Hardswish(inplace=True),
        )
        self.head = LRASPPHead(_LOW_CHANNELS, _LAST_CHANNELS, head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        low = self.low(x)
        out = self.head(low, self.high(low))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def mobilenetv3_small(head_channels: int = 480) -> MobileNetV3SmallLRASPP:
    """Build MobileNetV3-Small + LR-ASPP; ``head_channels`` sizes the head (paper: 128)."""
    return MobileNetV3SmallLRASPP(head_channels=head_channels)
