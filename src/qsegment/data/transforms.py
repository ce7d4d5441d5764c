"""Training augmentation (paper Section III-B) on image, label and FOV together.

torchvision's v2 transforms apply one random geometric transform to every
tensor of a sample; label and FOV are ``tv_tensors.Mask`` so they are rotated
with nearest-neighbour sampling and stay binary, while brightness only touches
the image.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F


class AcquisitionShift(v2.Transform):
    """What another camera, site or file format does to a photograph, on the image only
    (labels and FOV untouched), each shift drawn independently per sample: a colour cast
    and saturation change, gamma 0.6-1.6, contrast, red-free capture (luminance or the
    green channel alone, as three equal channels), defocus blur, sensor noise and JPEG
    compression at quality 30-95. Clean images stay common (about a third of samples are
    untouched), so that CHASE_DB1 itself is not traded away for robustness.

    ``colour=False`` leaves out the shifts of colour and tone (the cast, gamma, contrast,
    red-free) and keeps blur, noise and JPEG: an artery is told from a vein by its colour
    and brightness beside the vein's, which those shifts scramble (docs/RESULTS.md,
    "Colour shifts and the classes")."""

    _transformed_types = (tv_tensors.Image,)
    COLOUR_SHIFTS = ("colour", "gamma", "contrast", "red_free")

    def __init__(self, strength: float = 1.0, jpeg: float = 0.2, colour: bool = True) -> None:
        super().__init__()
        self.p = {"colour": 0.3, "gamma": 0.3, "contrast": 0.3, "red_free": 0.2,
                  "blur": 0.15, "noise": 0.15, "jpeg": jpeg}
        self.p = {k: 0.0 if k in self.COLOUR_SHIFTS and not colour else v * strength
                  for k, v in self.p.items()}

    def make_params(self, flat_inputs: list) -> dict:
        def uniform(low: float, high: float) -> float:
            return float(torch.empty(1).uniform_(low, high))

        on = {k: bool(torch.rand(1) < p) for k, p in self.p.items()}
        return {
            "gains": torch.empty(3).uniform_(0.85, 1.15) if on["colour"] else None,
            "saturation": uniform(0.6, 1.4) if on["colour"] else None,
            "gamma": float(torch.exp(torch.empty(1).uniform_(-0.51, 0.47))) if on["gamma"]
            else None,  # 0.6-1.6, log-uniform
            "contrast": uniform(0.7, 1.3) if on["contrast"] else None,
            "red_free": ("gray" if torch.rand(1) < 0.5 else "green") if on["red_free"] else None,
            "blur": uniform(0.5, 2.0) if on["blur"] else None,
            "noise": uniform(0.005, 0.03) if on["noise"] else None,
            "jpeg": int(torch.randint(30, 96, (1,))) if on["jpeg"] else None,
        }

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        x = inpt.as_subclass(torch.Tensor).clamp(0, 1)
        if params["gains"] is not None:
            x = F.adjust_saturation((x * params["gains"].to(x)[:, None, None]).clamp(0, 1),
                                    params["saturation"])
        if params["gamma"] is not None:
            x = F.adjust_gamma(x, params["gamma"])
        if params["contrast"] is not None:
            x = F.adjust_contrast(x, params["contrast"])
        if params["red_free"] == "gray":
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        elif params["red_free"] == "green":
            x = x[1:2].expand(3, -1, -1)
        if params["blur"] is not None:
            sigma = params["blur"]
            x = F.gaussian_blur(x, [2 * round(3 * sigma) + 1] * 2, [sigma, sigma])
        if params["noise"] is not None:
            x = (x + torch.randn_like(x) * params["noise"]).clamp(0, 1)
        if params["jpeg"] is not None:
            x = _jpeg(x, params["jpeg"])
        return tv_tensors.wrap(x.contiguous(), like=inpt)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` (3, H, W) in [0, 1] as it comes back from a JPEG file of ``quality``
    (Pillow's encoder: torchvision's is deprecated)."""
    pixels = (x.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1).to(x.device)


def paper_augmentation(crop: int | None = None, brightness: float = 0.2,
                       rotation: float = 1.0, rotate90: bool = False,
                       acquisition: bool = False, jpeg: float = 0.2,
                       acquisition_colour: bool = True) -> v2.Compose:
    """Brightness factor 0.2, horizontal and vertical flips (p=0.5 each), rotation within
    +-1 degree; optionally a random square crop first (the fast CPU recipe).

    ``rotate90`` adds a quarter turn with probability 0.5: with the flips, all eight
    symmetries of a square, so thin vessels are seen at every orientation (exact on
    square crops; on a whole non-square image the turn cuts the corners).

    ``acquisition`` trains for other cameras: the crop is taken at a random zoom of
    0.8-1.25 (vessel widths of other scales) and :class:`AcquisitionShift` follows the
    paper's transforms, JPEG-compressing a ``jpeg`` share of the samples, its colour and
    tone shifts left out without ``acquisition_colour``.
    """
    ops: list[v2.Transform] = []
    if crop is not None and acquisition:
        ops.append(ZoomedCrop(crop))
    elif crop is not None:
        ops.append(v2.RandomCrop(crop))
    if rotate90:
        ops.append(v2.RandomApply([v2.RandomRotation((90, 90))], p=0.5))
    ops += [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomVerticalFlip(0.5),
        v2.RandomRotation(rotation, interpolation=InterpolationMode.BILINEAR),
        v2.ColorJitter(brightness=brightness),
    ]
    if acquisition:
        ops.append(AcquisitionShift(jpeg=jpeg, colour=acquisition_colour))
    return v2.Compose(ops)


class ZoomedCrop(v2.RandomResizedCrop):
    """A ``crop`` x ``crop`` window that sees ``crop / z`` pixels of the image, z drawn in
    ``zoom``: vessels as wide as other cameras' at the training scale (masks resized by
    nearest neighbour, as RandomResizedCrop does)."""

    def __init__(self, crop: int, zoom: tuple[float, float] = (0.8, 1.25)) -> None:
        super().__init__(crop, antialias=True)
        self.crop, self.zoom = crop, zoom

    def make_params(self, flat_inputs: list) -> dict:
        image = next(x for x in flat_inputs if isinstance(x, tv_tensors.Image))
        height, width = F.get_size(image)
        z = float(torch.empty(1).uniform_(*self.zoom))
        side = min(round(self.crop / z), height, width)
        top = int(torch.randint(0, height - side + 1, (1,)))
        left = int(torch.randint(0, width - side + 1, (1,)))
        return {"top": top, "left": left, "height": side, "width": side}


def apply(transform: v2.Transform, image: torch.Tensor, label: torch.Tensor, fov: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``transform`` on a (3, H, W) float image and (1, H, W) label and FOV masks."""
    out = transform(tv_tensors.Image(image), tv_tensors.Mask(label), tv_tensors.Mask(fov))
    image, label, fov = (t.as_subclass(torch.Tensor) for t in out)
    return image, label, fov
