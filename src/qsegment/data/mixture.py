"""Several datasets as one training set: every photograph at one vessel scale, every
dataset its share of an epoch.

Cameras differ in size and field angle, so a vessel is 9 px wide in one set and 18 px
in another. With labels at hand, each training photograph is resized so that its
labelled vessels have CHASE_DB1's calibre (:func:`at_label_scale`); at inference the
label-free rule of :mod:`qsegment.inference.calibrate` brings a new photograph there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..datasets import DatasetError, FundusDataset, Sample, Split, open_dataset
from ..inference.calibrate import vessel_calibre
from .dataset import resize_sample

if TYPE_CHECKING:
    from ..engine.config import TrainConfig

# px: the geometric mean over CHASE_DB1's 20 training labels of the calibre of their widest
# vessels (qsegment.inference.calibrate.vessel_calibre); every dataset of a mixture is
# brought to it, so CHASE_DB1 stays near its own scale (0.86-1.20 per photograph)
REFERENCE_LABEL_CALIBRE = 10.70


def label_scale(sample: Sample) -> float:
    """The factor that gives ``sample``'s labelled vessels :data:`REFERENCE_LABEL_CALIBRE`."""
    calibre = vessel_calibre(np.asarray(sample.label, dtype=np.float32))
    if calibre is None:
        raise DatasetError(f"{sample.path}: its label has too few vessels to read their "
                           "calibre, so the photograph cannot be brought to the training scale")
    return REFERENCE_LABEL_CALIBRE / calibre


def at_label_scale(sample: Sample, factor: float | None = None) -> Sample:
    """``sample`` resized (image, label and FOV together) to the training vessel scale
    (by ``factor`` where its :func:`label_scale` is known)."""
    factor = label_scale(sample) if factor is None else factor
    height, width = sample.label.shape
    return resize_sample(sample, (round(height * factor), round(width * factor)))


def visits(sizes: Sequence[int], weights: Sequence[float], repeats: int) -> list[int]:
    """How often each dataset's photographs appear in an epoch of ``repeats`` times all
    photographs, so that dataset ``i`` (``sizes[i]`` photographs) takes the share
    ``weights[i] / sum(weights)`` of the samples (at least one visit each)."""
    if len(sizes) != len(weights) or not sizes:
        raise DatasetError(f"{len(weights)} dataset weight(s) for {len(sizes)} dataset(s)")
    if any(w <= 0 or not math.isfinite(w) for w in weights):
        raise DatasetError(f"dataset weights must be positive, not {list(weights)}")
    epoch, total = repeats * sum(sizes), sum(weights)
    return [max(1, round(epoch * w / total / n)) for n, w in zip(sizes, weights, strict=True)]


@dataclass(frozen=True)
class Part:
    """One dataset of a run: its split and its (rescaled) samples."""

    dataset: FundusDataset
    split: Split
    train: list[Sample]
    val: list[Sample]
    train_scales: list[float]  # each training photograph's resize factor (1: as it is)


def training_parts(datasets: Sequence[FundusDataset], split: Split | None = None,
                   label_scaled: bool = False, progress: bool = False) -> list[Part]:
    """Each dataset's training and validation samples: ``split``'s names where it gives
    them (one dataset only), else the dataset's own split; brought to the training vessel
    scale with ``label_scaled``. A missing image fails here, naming its file."""
    parts = []
    for dataset in datasets:
        default = dataset.default_split
        chosen = Split(split.train or default.train, split.val or default.val) if split \
            else default
        if not label_scaled:
            train, val = dataset.split(chosen)
            parts.append(Part(dataset, chosen, train, val, [1.0] * len(train)))
            continue
        dataset.check_split(chosen)
        scaled, scales = [], []
        # one photograph at a time, uncached: only the resized copies stay in memory
        # (HRF-AV's 45 at full size would hold 5.4 GB for the rest of the run)
        for name in tqdm([*chosen.train, *chosen.val], unit="image", leave=False,
                         desc=f"{dataset.title} to the training scale", disable=not progress):
            sample = dataset.sample(name, cached=False)
            scales.append(label_scale(sample))
            scaled.append(at_label_scale(sample, scales[-1]))
        train, val = scaled[:len(chosen.train)], scaled[len(chosen.train):]
        parts.append(Part(dataset, chosen, train, val, scales[:len(train)]))
    return parts


def describe_parts(parts: Sequence[Part], shares: Sequence[float], label_scaled: bool) -> dict:
    """What a card records about a run's data: the dataset (one) or the datasets and their
    shares of an epoch (a mixture), and the scale they were seen at."""
    described = [part.dataset.describe(part.split) for part in parts]
    data = described[0] if len(parts) == 1 else {
        "datasets": described, "shares": [round(s / sum(shares), 4) for s in shares]}
    if label_scaled:
        data["scale"] = (f"each photograph resized so that its labelled vessels are "
                         f"{REFERENCE_LABEL_CALIBRE} px wide (CHASE_DB1's calibre)")
    return data


def run_parts(cfg: TrainConfig, progress: bool = False) -> list[Part]:
    """The datasets of a run with their training and validation samples, as it sees them
    (:func:`training_parts`): what training, calibration and the int8 ranges read."""
    datasets = [open_dataset(folder, name)
                for name, folder in zip(cfg.datasets, cfg.folders, strict=True)]
    return training_parts(datasets, cfg.split, cfg.label_scale, progress)
