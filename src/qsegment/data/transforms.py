"""Training augmentation (paper Section III-B) on image, label and FOV together.

torchvision's v2 transforms apply one random geometric transform to every
tensor of a sample; label and FOV are ``tv_tensors.Mask`` so they are rotated
with nearest-neighbour sampling and stay binary, while brightness only touches
the image.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2


def paper_augmentation(crop: int | None = None, brightness: float = 0.2,
                       rotation: float = 1.0, rotate90: bool = False) -> v2.Compose:
    """Brightness factor 0.2, horizontal and vertical flips (p=0.5 each), rotation within
    +-1 degree; optionally a random square crop first (the fast CPU recipe).

    ``rotate90`` adds a quarter turn with probability 0.5: with the flips, all eight
    symmetries of a square, so thin vessels are seen at every orientation (exact on
    square crops; on a whole non-square image the turn cuts the corners).
    """
    ops: list[v2.Transform] = [] if crop is None else [v2.RandomCrop(crop)]
    if rotate90:
        ops.append(v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5))
    ops += [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=brightness),
    ]
    return v2.Compose(ops)


def apply(transform: v2.Transform, image: torch.Tensor, label: torch.Tensor, fov: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``transform`` on a (3, H, W) float image and (1, H, W) label and FOV masks."""
    out = transform(tv_tensors.Image(image), tv_tensors.Mask(label), tv_tensors.Mask(fov))
    return tuple(t.as_subclass(torch.Tensor) for t in out)
