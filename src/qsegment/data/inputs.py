"""From images to network inputs: the one resize used for inference, calibration and
training at a deployment size, and the calibration batches of the int8 paths."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..datasets import FundusDataset, Sample, open_dataset
from ..errors import UsageError
from ..images import network_input
from ..models import pad_to_multiple


def to_input(image: np.ndarray | torch.Tensor, size: int | tuple[int, int] | None = None
             ) -> torch.Tensor:
    """(1, C, H, W) float32 tensor of an image (H, W, C) in [0, 1], resized to ``size``
    (bilinear, antialiased) if given: :func:`qsegment.images.network_input`, the one
    resize used for inference and calibration."""
    return torch.from_numpy(network_input(np.asarray(image), size, 1)[0])


def training_inputs(count: int, data: str | Path | FundusDataset | None = None,
                    size: int | None = None, multiple: int = 1) -> Iterator[torch.Tensor]:
    """The first ``count`` training images of the dataset's split as (1, 3, H, W) model
    inputs, at full resolution (padded to ``multiple``) or resized to ``size``:
    calibration data for the CPU int8 runtimes."""
    dataset = open_dataset(data)
    for name in dataset.default_split.train[:count]:
        yield pad_to_multiple(to_input(dataset.sample(name).image, size), multiple)[0]


def calibration_images(samples: Sequence[Sample], size: int, count: int, seed: int = 0
                       ) -> tuple[list[str], torch.Tensor]:
    """(names, (count, 3, size, size) batch): ``count`` training images drawn at random
    (seeded), each resized whole to size x size, as a camera's ISP scales its view."""
    if not 0 < count <= len(samples):
        raise UsageError(f"calibration needs 1..{len(samples)} images, got {count}")
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    chosen = [samples[i] for i in sorted(order)]
    return [s.name for s in chosen], torch.cat([to_input(s.image, size) for s in chosen])
