"""Losses on logits. The paper's is PraNet's structure loss (Section III-C). Their names
are rows of :data:`qsegment.engine.config.LOSSES`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def boundary_weights(target: torch.Tensor, kernel: int = 31, gain: float = 5.0) -> torch.Tensor:
    """1 + gain * |avgpool_kxk(target) - target|: largest where the label changes within
    the window, i.e. at vessel borders and on thin vessels, and 1 far from any vessel.

    The k x k mean (zero padding counted) is taken as a k x 1 then a 1 x k mean: the
    same values up to rounding, for 2k instead of k^2 reads per pixel (9x faster at
    k=31 on the CPU, where the 2-D pooling cost a third of a training step).
    """
    half = kernel // 2
    rows = F.avg_pool2d(target, (kernel, 1), stride=1, padding=(half, 0))
    local_mean = F.avg_pool2d(rows, (1, kernel), stride=1, padding=(0, half))
    return 1.0 + gain * (local_mean - target).abs()


def structure_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Weighted BCE + weighted IoU, averaged over the batch (PraNet, Fan et al. 2020).

    PraNet's published code passes ``reduce='none'`` (not ``reduction``) to the BCE,
    which silently makes its BCE a plain unweighted mean. This is the intended form:
    the BCE is weighted per pixel by :func:`boundary_weights`, like the IoU term.
    """
    target = target.float()
    weights = boundary_weights(target)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    wbce = (weights * bce).sum((2, 3)) / weights.sum((2, 3))
    prob = torch.sigmoid(logits.float())
    inter = (prob * target * weights).sum((2, 3))
    union = ((prob + target) * weights).sum((2, 3))
    wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
    return (wbce + wiou).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain BCE + soft Dice over the batch: a simple, well-behaved alternative."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    prob = torch.sigmoid(logits.float())
    dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + 1.0 - dice


def structure_cldice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`structure_loss` + 2 x soft clDice (Shit et al., CVPR 2021; MONAI's): the
    centrelines of each map must lie inside the other's vessels, which costs a thin
    vessel broken into pieces more than a pixel-wise loss does. Five erosions reach the
    centreline of vessels up to about 11 px wide. Measured in docs/BIOMARKERS.md: fewer
    end points, not yet the annotators' maps."""
    from monai.losses import SoftclDiceLoss

    target = target.float()
    cldice = SoftclDiceLoss(iter_=5)(torch.sigmoid(logits.float()), target)
    return structure_loss(logits, target) + 2.0 * cldice


UNKNOWN_CLASS = 255  # in an artery/vein target: a vessel pixel whose class is not labelled


def artery_vein_loss(vessel_loss: Loss) -> Loss:
    """The loss of an artery/vein model (:class:`~qsegment.models.qsegment.QSegmentAV`)
    from a vessel loss: ``vessel_loss`` on channel 0 against ``target > 0``, plus the
    cross-entropy of channels 1-3 (artery, vein, uncertain given a vessel) on the
    labelled vessel pixels only. ``target`` is a class map (0 background, 1 artery,
    2 vein, 3 uncertain, :data:`UNKNOWN_CLASS` a vessel of a dataset without
    artery/vein labels, which trains the vessel channel alone)."""

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        vessel = vessel_loss(logits[:, :1], (target > 0).float())
        classes = target[:, 0].long() - 1
        classes = torch.where((classes >= 0) & (classes < logits.shape[1] - 1), classes, -100)
        if not bool((classes >= 0).any()):
            return vessel
        return vessel + F.cross_entropy(logits[:, 1:].float(), classes, ignore_index=-100)

    return loss
