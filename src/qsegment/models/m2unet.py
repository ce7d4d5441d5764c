"""M2U-Net baseline (Laibacher, Weyde and Jalali, "M2U-Net: Effective and Efficient
Retinal Vessel Segmentation for Real-World Applications", CVPR Workshops 2019).

Encoder: the first 14 layers of MobileNetV2 (stem conv and the inverted-residual
stages with 16, 24, 32, 64 and 96 channels, output stride 16), taken from
``torchvision.models.mobilenet_v2(weights=None)``; no pretrained weights are
loaded (the paper starts from ImageNet weights, we train from scratch).
Decoder: at each level the coarser map is bilinearly up-sampled to the encoder
feature's size, concatenated with it, and passed through a *contractive*
bottleneck block (an inverted residual whose 1x1 expansion ratio is 0.15, i.e. it
shrinks the channels) that halves the concatenated width: 96+32 -> 64,
64+24 -> 44, 44+16 -> 30. The last block concatenates the input image
(30+3 = 33 channels) at full resolution and contracts to one logit channel; as
in the reference design, that block's last layer is a 1x1 conv + BatchNorm, so
the logits come out of a one-channel BatchNorm (no activation).

Parameter count: **549,748** (the paper: 0.55M); 542,528 of them are MobileNetV2's.
Up-sampling goes to the skip's exact size, so any H, W divisible by 8 works even
though the deepest feature has stride 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2

from .base import SegmentationModel
from .blocks import conv_bn

# Slices of torchvision's MobileNetV2 ``features``: one per encoder level
# (strides 2, 4, 8 and 16; 16, 24, 32 and 96 channels).
_ENCODER_SLICES = ((0, 2), (2, 4), (4, 7), (7, 14))
_ENCODER_CHANNELS = (16, 24, 32, 96)


class ContractiveBlock(nn.Module):
    """Inverted residual with expansion ratio < 1: 1x1 conv down to
    ``round(cin * expand_ratio)`` channels, depthwise 3x3, 1x1 conv to ``cout``
    (linear bottleneck, no activation). Cheap way to merge concatenated features."""

    def __init__(self, cin: int, cout: int, expand_ratio: float = 0.15) -> None:
        super().__init__()
        hidden = max(1, round(cin * expand_ratio))
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1, bias=False), nn.ReLU6(inplace=True),
            conv_bn(hidden, hidden, 3, groups=hidden, bias=False), nn.ReLU6(inplace=True),
            conv_bn(hidden, cout, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class M2UNet(SegmentationModel):
    """MobileNetV2 encoder + contractive-bottleneck decoder; one-channel logits."""

    def __init__(self, expand_ratio: float = 0.15) -> None:
        super().__init__()
        features = mobilenet_v2(weights=None).features
        self.encoder = nn.ModuleList(features[a:b] for a, b in _ENCODER_SLICES)
        # Decoder widths: concatenated channels halved at each level, as in the paper.
        c1, c2, c3, c4 = _ENCODER_CHANNELS
        d3 = (c4 + c3) // 2      # 64 at stride 8
        d2 = (d3 + c2) // 2      # 44 at stride 4
        d1 = (d2 + c1) // 2      # 30 at stride 2
        self.decoder = nn.ModuleList([
            ContractiveBlock(c4 + c3, d3, expand_ratio),
            ContractiveBlock(d3 + c2, d2, expand_ratio),
            ContractiveBlock(d2 + c1, d1, expand_ratio),
            ContractiveBlock(d1 + 3, 1, expand_ratio),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        skips = [x]
        out = x
        for stage in self.encoder:
            out = stage(out)
            skips.append(out)
        skips.pop()  # the deepest feature is the decoder's starting point, not a skip
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            up = F.interpolate(out, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            out = block(torch.cat([up, skip], dim=1))
        return out


def m2unet(expand_ratio: float = 0.15) -> M2UNet:
    """Build M2U-Net; ``expand_ratio`` sizes the decoder's contractive blocks."""
    return M2UNet(expand_ratio=expand_ratio)
