"""ERFNet baseline (Romera, Alvarez, Bergasa and Arroyo, "ERFNet: Efficient Residual
Factorized ConvNet for Real-Time Semantic Segmentation", IEEE T-ITS 2018 / 2017).

Encoder: downsampler 3->16, downsampler 16->64, five non-bottleneck-1D blocks at
64 channels, downsampler 64->128, then twice the four non-bottleneck-1D blocks
with dilations 2, 4, 8, 16 (output stride 8). A downsampler concatenates a
strided 3x3 conv with a 2x2 max-pool of its input (ENet-style). A
non-bottleneck-1D block is a residual block of two factorized 3x3 convs, each a
3x1 then a 1x3 conv, the second pair dilated. Decoder: transposed-conv
up-sampler 128->64, two non-bottleneck-1D blocks, up-sampler 64->16, two blocks,
and a 2x2 transposed conv to the output. Dropout as in the paper (0.03 at 64
channels, 0.3 at 128 channels, none in the decoder).

Parameter count with one output channel: **2,063,021** (with the paper's 20
Cityscapes classes it is 2,064,256, the paper's 2.06M). Every stride is 2, so H, W
divisible by 8 come back at the input size exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SegmentationModel

_BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """Halve H, W: concat(strided 3x3 conv to ``cout - cin`` channels, 2x2 max-pool),
    then BN and ReLU. Pooling keeps the input's information at no parameter cost."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorized (3x1 then 1x3) 3x3 convs; the second pair is
    dilated by ``dilation`` to widen the receptive field without extra weights."""

    def __init__(self, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv3x1_1(x))
        out = torch.relu(self.bn1(self.conv1x3_1(out)))
        out = torch.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return torch.relu(out + x)


class UpsamplerBlock(nn.Module):
    """Double H, W exactly with a 3x3 transposed conv (stride 2), then BN and ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1,
                                       bias=True)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class ERFNet(SegmentationModel):
    """ERFNet encoder-decoder; ``forward`` returns one-channel logits."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            DownsamplerBlock(3, 16),
            DownsamplerBlock(16, 64),
            *(NonBottleneck1D(64, dropout=0.03) for _ in range(5)),
            DownsamplerBlock(64, 128),
            *(NonBottleneck1D(128, dropout=0.3, dilation=d) for d in (2, 4, 8, 16) * 2),
        )
        self.decoder = nn.Sequential(
            UpsamplerBlock(128, 64),
            NonBottleneck1D(64),
            NonBottleneck1D(64),
            UpsamplerBlock(64, 16),
            NonBottleneck1D(16),
            NonBottleneck1D(16),
            nn.ConvTranspose2d(16, out_channels, 2, stride=2, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        return self.decoder(self.encoder(x))


def erfnet() -> ERFNet:
    """Build ERFNet with one output (vessel) channel."""
    return ERFNet(out_channels=1)
