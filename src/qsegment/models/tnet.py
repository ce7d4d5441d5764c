"""T-Net-like tiny baseline (Khan et al., "T-Net: A Resource-Constrained Tiny
Convolutional Neural Network for Medical Image Segmentation", WACV 2022).

T-Net has no official code; its paper reports about 0.026M parameters. Q-Segment
(see :mod:`qsegment.models.qsegment`) has T-Net's encoder-decoder topology at
double width, so this baseline reuses :class:`~qsegment.models.qsegment.QSegment`
unchanged and only narrows it.

Width choice: the uniform halving 8/16/32 gives 29,217 parameters, 12% above
0.026M. Keeping 8/16 at the two outer levels and using 30 channels at the
deepest level and the bottleneck (8/16/30) gives **27,005 parameters** (+3.9%
over 0.026M), the closest even-width setting (8/16/28 gives 24,889, -4.3%).
Only the deepest level is narrowed because that is where the weights are
(3x3 convs at 30-32 channels); the high-resolution levels, which matter for thin
vessels, keep T-Net-like widths. This is an approximation of T-Net's size, not a
reproduction of its exact layers (its group-convolution details are not public).
"""

from __future__ import annotations

from .qsegment import QSegment, Upsample

TNET_WIDTHS: tuple[int, int, int] = (8, 16, 30)


class TNet(QSegment):
    """Q-Segment's topology at T-Net's size (widths 8/16/30, ~0.027M params)."""

    def __init__(self, widths: tuple[int, int, int] = TNET_WIDTHS,
                 upsample: Upsample = "nearest") -> None:
        super().__init__(widths=widths, upsample=upsample)


def tnet(upsample: Upsample = "nearest", widths: tuple[int, int, int] = TNET_WIDTHS) -> TNet:
    """Build the T-Net baseline; ``upsample`` as for Q-Segment ("nearest" or "unpool")."""
    return TNet(widths=widths, upsample=upsample)
