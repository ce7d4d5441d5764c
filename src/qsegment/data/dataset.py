"""PyTorch dataset over loaded samples: tensors padded to the network's multiple."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..datasets import VESSEL_CLASSES, DatasetError, Sample
from .inputs import to_input
from .transforms import apply


def resize_sample(sample: Sample, size: int | tuple[int, int]) -> Sample:
    """The sample as a camera at ``size`` (N for N x N, or (height, width)) would see it:
    the image resized as for inference (:func:`qsegment.data.inputs.to_input`), label
    and FOV resized by area and re-binarised at 0.5; an artery/vein map gives each vessel
    pixel of the new label the class that covers most of it."""
    import torch.nn.functional as F

    shape = (size, size) if isinstance(size, int) else size

    def area(array: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return F.interpolate(x[None] if x.ndim == 3 else x[None, None], size=shape,
                             mode="area")[0].numpy()

    label = area(sample.label)[0] >= 0.5
    classes = None
    if sample.classes is not None:
        shares = area(np.stack([sample.classes == c for c in range(1, len(VESSEL_CLASSES))]))
        classes = np.where(label, shares.argmax(0) + 1, 0).astype(np.uint8)
    image = to_input(sample.image, shape)[0].permute(1, 2, 0).numpy()
    return Sample(name=sample.name, image=image, label=label, fov=area(sample.fov)[0] >= 0.5,
                  path=sample.path, classes=classes)


Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # image, label, fov


def to_tensors(sample: Sample, multiple: int, device: torch.device | str = "cpu") -> Tensors:
    """(image (3, H', W'), label (1, H', W'), fov (1, H', W')) as float32, zero-padded
    bottom/right so that H' and W' are multiples of ``multiple``; the padding lies
    outside the FOV, so it never counts in the loss mask or the metrics; on ``device``."""
    return _windows(sample, (0, 0, *_padded_shape(sample, multiple)), device)


def _padded_shape(sample: Sample, multiple: int) -> tuple[int, int]:
    height, width = sample.label.shape
    return height + (-height) % multiple, width + (-width) % multiple


def _windows(sample: Sample, box: tuple[int, int, int, int], device: torch.device | str
             ) -> Tensors:
    """The (top, left, height, width) ``box`` of the sample's image, label and FOV as
    (C, height, width) float32 copies on ``device``, zero where it runs past the arrays'
    bottom or right edge."""
    top, left, height, width = box

    def window(array: np.ndarray) -> torch.Tensor:
        part = torch.from_numpy(array[top:top + height, left:left + width].astype(np.float32))
        part = part.permute(2, 0, 1) if part.ndim == 3 else part[None]
        out = torch.zeros((part.shape[0], height, width))
        out[:, :part.shape[1], :part.shape[2]] = part
        return out.to(device)

    return window(sample.image), window(sample.label), window(sample.fov)


def augment(transform: v2.Transform, sample: Sample, multiple: int = 1,
            device: torch.device | str = "cpu") -> Tensors:
    """``transform`` on ``sample``'s tensors (:func:`to_tensors`), with the same random
    draws and result; a leading random crop (the CPU recipes' first step) draws its window
    on the padded size and cuts it from the sample's arrays, so that only the window is
    converted to float, padded and moved to ``device``: a 3504x2336 photograph costs a
    sample what a CHASE image does."""
    crop, *rest = getattr(transform, "transforms", [transform])
    plain_crop = type(crop) is v2.RandomCrop and crop.padding is None and not crop.pad_if_needed
    if not (plain_crop or isinstance(crop, v2.RandomResizedCrop)):
        return apply(transform, *to_tensors(sample, multiple, device))
    padded = _padded_shape(sample, multiple)
    params = crop.make_params([tv_tensors.Image(torch.zeros(1, 1, 1).expand(3, *padded))])
    image, label, fov = _windows(
        sample, (params["top"], params["left"], params["height"], params["width"]), device)
    if not plain_crop:  # the window is resized to the crop size
        whole = {**params, "top": 0, "left": 0}
        image, label, fov = (crop.transform(wrap(t), whole).as_subclass(torch.Tensor) for wrap, t
                             in ((tv_tensors.Image, image), (tv_tensors.Mask, label),
                                 (tv_tensors.Mask, fov)))
    return apply(v2.Compose(rest), image, label, fov) if rest else (image, label, fov)


class SegmentationDataset(Dataset):
    """Samples as (image, label, fov) tensors, augmented when a transform is given.

    ``repeats`` lists each image that many times per epoch (or image ``i``
    ``repeats[i]`` times: a mixture's shares): with small random crops an "epoch" over
    20 images would otherwise be a handful of steps. The samples' arrays are the only
    copy of the photographs; each item's tensors are made when it is drawn
    (:func:`augment`) and put on ``device``, where the augmentation then runs: on a GPU
    that keeps full-resolution training from waiting on the CPU.
    """

    def __init__(self, samples: Sequence[Sample], transform: v2.Transform | None = None,
                 repeats: int | Sequence[int] = 1, multiple: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if not samples:
            raise DatasetError("no samples given")
        self.samples, self.transform = list(samples), transform
        self.multiple, self.device = multiple, device
        counts = [repeats] * len(samples) if isinstance(repeats, int) else list(repeats)
        # all images once, then again: with one count for all, index i is image i % N
        self.order = [i for visit in range(max(counts)) for i, count in enumerate(counts)
                      if visit < count]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Tensors:
        sample = self.samples[self.order[index]]
        if self.transform is None:
            return to_tensors(sample, self.multiple, self.device)
        return augment(self.transform, sample, self.multiple, self.device)
