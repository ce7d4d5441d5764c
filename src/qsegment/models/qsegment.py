"""Q-Segment (Bonazzi et al., 2023; paper Section III-A, Table I).

A T-Net-like encoder-decoder with widths 16/32/64. Each ConvBlock is a 3x3
conv-BN-ReLU, a 1x1 conv-BN and a depthwise 3x3 conv-BN-ReLU. A 1x1 conv-BN
projection gives an additive skip around every block whose input is not the
image; the decoder adds the encoder's early (post-3x3) feature of the same level.
Up-sampling is either max-unpooling with the encoder's pooling indices (the
paper) or nearest-neighbour (what the Sony IMX500 converter accepts).

``qsegment-imx`` is the same network run at half resolution so that the sensor can
take inputs of 640x640 (see :class:`QSegmentIMX`); ``qsegment-half`` that network with
a refinement from the full-resolution image, for CPUs (:class:`QSegmentHalf`);
``qsegment-av`` the same network with an artery/vein head (:class:`QSegmentAV`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from .base import SegmentationModel
from .blocks import conv_bn

Upsample = Literal["nearest", "unpool"]


class ConvBlock(nn.Module):
    """3x3 conv-BN-ReLU -> 1x1 conv-BN -> depthwise 3x3 conv-BN-ReLU, plus an optional
    1x1 projection skip (from ``shortcut``, by default the input). Returns (early, out):
    the encoder passes ``early`` (the 3x3 feature) across to the decoder."""

    def __init__(self, cin: int, cout: int, *, skip: bool = True) -> None:
        super().__init__()
        self.conv3x3 = conv_bn(cin, cout, 3, relu=True)
        self.pointwise = conv_bn(cout, cout, 1)
        self.depthwise = conv_bn(cout, cout, 3, groups=cout, relu=True)
        self.skip: nn.Module | None = conv_bn(cin, cout, 1) if skip else None

    def forward(
        self, x: torch.Tensor, shortcut: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        early = self.conv3x3(x)
        out = self.depthwise(self.pointwise(early))
        if self.skip is not None:
            out = out + self.skip(x if shortcut is None else shortcut)
        return early, out


class _Down(nn.Module):
    """2x2 max-pooling; keeps the indices only when the decoder unpools."""

    def __init__(self, keep_indices: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2, return_indices=keep_indices)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.pool(x)
        return out if isinstance(out, tuple) else (out, None)


class _Unpool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        return self.unpool(x, indices)


class _Nearest(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        return self.up(x)


class QSegment(SegmentationModel):
    """The Q-Segment network; ``forward`` returns one-channel logits.

    ``widths`` gives one encoder level per entry (the paper's three: 16/32/64); each
    further level halves the resolution once more, doubling the receptive field at a
    small cost in parameters and compute (what the artery/vein head needs: a vessel's
    class shows over a wider neighbourhood than its presence).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64),
                 upsample: Upsample = "nearest") -> None:
        super().__init__()
        if upsample not in ("nearest", "unpool"):
            raise UsageError(f"upsample must be 'nearest' or 'unpool', got {upsample!r}")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise UsageError(f"widths must be one or more positive channel counts, got {widths}")
        self.upsample = upsample
        self.size_multiple = 2 ** len(widths)
        self.encoder = nn.ModuleList(
            [ConvBlock(cin, cout, skip=level > 0)
             for level, (cin, cout) in enumerate(zip((3, *widths[:-1]), widths, strict=True))])
        self.bottleneck = ConvBlock(widths[-1], widths[-1])
        outputs = (*widths[-2::-1], widths[0])  # each decoder level gives the next finer width
        self.decoder = nn.ModuleList(
            [ConvBlock(cin, cout) for cin, cout in zip(widths[::-1], outputs, strict=True)])
        self.down = _Down(keep_indices=upsample == "unpool")
        self.up = _Unpool() if upsample == "unpool" else _Nearest()
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_shape(x)
        skips = []
        for block in self.encoder:
            early, x = block(x)
            x, indices = self.down(x)
            skips.append((early, indices))
        x = self.bottleneck(x)[1]
        for block, (early, indices) in zip(self.decoder, reversed(skips), strict=True):
            up = self.up(x, indices)
            x = block(up + early, shortcut=up)[1]
        return self.head(x)


def qsegment(upsample: Upsample = "nearest", widths: Sequence[int] = (16, 32, 64)) -> QSegment:
    return QSegment(widths=widths, upsample=upsample)


HALF = 2  # the half-resolution networks' stride: a 2x2 stem, 2x2 phases out


def _run_at_half_resolution(model: QSegment) -> None:
    """Turn ``model`` into its half-resolution form (:class:`QSegmentIMX`): a 2x2 stride-2
    stem, a head that predicts each output's 2x2 phases, no projection skip in the last
    decoder block."""
    w1 = model.head.in_channels
    first, last = cast(ConvBlock, model.encoder[0]), cast(ConvBlock, model.decoder[-1])
    first.conv3x3[0] = nn.Conv2d(3, w1, HALF, stride=HALF)
    last.skip = None
    model.head = nn.Conv2d(w1, len(model.outputs) * HALF**2, 3, padding=1)
    model.size_multiple *= HALF


class QSegmentIMX(QSegment):
    """Q-Segment at half resolution, for the IMX500's 8 MB: a 2x2 stride-2 stem (a learned
    space-to-depth) replaces the first 3x3 convolution, and the head predicts the four
    2x2 phases of the full-resolution logits, interleaved by ``pixel_shuffle``.

    Why: the converter pads tensors of up to 32 channels to 32 lanes after depthwise
    convolutions and resizes, so every full-resolution activation costs 32 bytes per
    pixel whatever its width; at half resolution the network fits 640x640 instead of
    312x312 (measured in docs/DEPLOY_IMX500.md). The converter has no DepthToSpace, so
    the sensor returns the phases (:meth:`forward_phases`) and the host interleaves
    them (:func:`depth_to_space`, a reshape). The last decoder block has no projection
    skip: holding its input was the memory peak.
    """

    factor = HALF
    init_from: tuple[str, ...] = ("qsegment",)  # --init from Q-Segment weights: all but
    # the stem and head fit

    def __init__(self, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__(widths=widths, upsample="nearest")
        _run_at_half_resolution(self)

    def forward_phases(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C*4, H/2, W/2) logits, each output's four phases together: what the sensor
        computes and returns."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.forward_phases(x), self.factor)


def depth_to_space(phases: torch.Tensor, factor: int) -> torch.Tensor:
    """Interleave (N, factor**2, h, w) phase logits into (N, 1, h*factor, w*factor)."""
    return F.pixel_shuffle(phases, factor)


def qsegment_imx(widths: Sequence[int] = (16, 32, 64)) -> QSegmentIMX:
    return QSegmentIMX(widths=widths)


class QSegmentHalf(QSegment):
    """The half-resolution network of :class:`QSegmentIMX`, for CPUs, with a refinement
    of its logits from the full-resolution image: the image's 2x2 blocks as channels
    (space-to-depth) and the logits' four phases, each through a 3x3 convolution, summed,
    and a third 3x3 convolution whose output is added to the phases.

    Why: at half resolution the edges of thin vessels are drawn from features that each
    cover a 2x2 block; the refinement redraws them from the image's own pixels (each
    output block sees a 10x10 window of them). It works on half-resolution tensors of
    ``refine`` channels, which int8 engines run well: the same refinement on
    full-resolution tensors of 1 to 8 channels took OpenVINO's int8 forward of a CHASE_DB1
    image from 13 to 37 ms, this one to 18 ms (docs/BENCHMARKS.md). Its last convolution
    starts at zero, so the network starts as the half-resolution weights it is
    initialised from. Two summed convolutions rather than one over a concatenation: the
    same function, but int8 export gives a concatenation's inputs one scale, which would
    take the image off its 1/255 pixel scale. Not for the sensor (:class:`QSegmentIMX`).
    """

    init_from = ("qsegment", "qsegment-imx")  # --init: all but the refinement fit

    def __init__(self, widths: Sequence[int] = (16, 32, 64), refine: int = 16) -> None:
        super().__init__(widths=widths, upsample="nearest")
        _run_at_half_resolution(self)
        phases = len(self.outputs) * HALF**2
        self.refine_image = nn.Conv2d(3 * HALF**2, refine, 3, padding=1)
        self.refine_logits = nn.Conv2d(phases, refine, 3, padding=1, bias=False)
        self.refine_out = nn.Conv2d(refine, phases, 3, padding=1)
        for parameter in self.refine_out.parameters():
            nn.init.zeros_(parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = super().forward(x)
        hidden = F.relu(self.refine_image(F.pixel_unshuffle(x, HALF))
                        + self.refine_logits(phases))
        return depth_to_space(phases + self.refine_out(hidden), HALF)


def qsegment_half(widths: Sequence[int] = (16, 32, 64), refine: int = 16) -> QSegmentHalf:
    return QSegmentHalf(widths=widths, refine=refine)


class QSegmentAV(QSegment):
    """Q-Segment with an artery/vein head: four output channels, the vessel logit (as
    every model here gives it) and the logits of artery, vein and uncertain *given a
    vessel* (softmax over the three).

    Why this factorisation: the vessel map stays the vessel model's, trained with the
    same loss and threshold, and a pixel's class is only asked where there is a vessel
    (:func:`qsegment.losses.artery_vein_loss`); the labels' "uncertain" class (3: crossings
    and vessels the graders could not tell) is a class of its own, as BF-Net (Zhou et
    al., MICCAI 2021) predicts and scores it. 435 more parameters than Q-Segment.
    """

    outputs = ("vessel", "artery", "vein", "uncertain")
    init_from = ("qsegment",)  # --init from vessel weights: all fit, the head's channel 0 too

    def __init__(self, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__(widths=widths, upsample="nearest")
        self.head = nn.Conv2d(widths[0], len(self.outputs), 3, padding=1)


def qsegment_av(widths: Sequence[int] = (16, 32, 64)) -> QSegmentAV:
    return QSegmentAV(widths=widths)


class QSegmentIMXAV(QSegmentIMX):
    """The artery/vein head of :class:`QSegmentAV` on the half-resolution network of
    :class:`QSegmentIMX`: the sensor returns each output's four phases (16 channels) and
    the host interleaves them into the four full-resolution maps."""

    outputs = QSegmentAV.outputs
    init_from = ("qsegment", "qsegment-imx", "qsegment-av")


def qsegment_imx_av(widths: Sequence[int] = (16, 32, 64)) -> QSegmentIMXAV:
    return QSegmentIMXAV(widths=widths)
