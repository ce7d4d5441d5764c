"""PyTorch dataset over loaded samples: tensors padded to the network's multiple."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
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
    image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))
    label = torch.from_numpy(sample.label.astype(np.float32))[None]
    fov = torch.from_numpy(sample.fov.astype(np.float32))[None]
    h, w = image.shape[-2:]
    pad = (0, (-w) % multiple, 0, (-h) % multiple)
    image, label, fov = (torch.nn.functional.pad(t, pad).to(device) for t in (image, label, fov))
    return image, label, fov


class SegmentationDataset(Dataset):
    """Samples as (image, label, fov) tensors, augmented when a transform is given.

    ``repeats`` lists each image that many times per epoch (or image ``i``
    ``repeats[i]`` times: a mixture's shares): with small random crops an "epoch" over
    20 images would otherwise be a handful of steps. The tensors are made
    once and kept on ``device``: on a GPU the augmentation then runs there too, which
    keeps full-resolution training from waiting on the CPU.
    """

    def __init__(self, samples: Sequence[Sample], transform: v2.Transform | None = None,
                 repeats: int | Sequence[int] = 1, multiple: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if not samples:
            raise DatasetError("no samples given")
        self.tensors = [to_tensors(s, multiple, device) for s in samples]
        self.transform = transform
        counts = [repeats] * len(samples) if isinstance(repeats, int) else list(repeats)
        # all images once, then again: with one count for all, index i is image i % N
        self.order = [i for visit in range(max(counts)) for i, count in enumerate(counts)
                      if visit < count]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> Tensors:
        tensors = self.tensors[self.order[index]]
        return tensors if self.transform is None else apply(self.transform, *tensors)
