"""Datasets: named images with labels, FOV masks and a default split, in one registry.

Adding a dataset is one module (a :class:`FundusDataset` subclass) and one row of
:data:`DATASETS` below. Everything here is numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import Entry, Registry
from .base import DatasetError, FundusDataset, Sample, Split, load_label
from .chasedb1 import ChaseDB1, default_data_dir
from .folder import LabelledFolder
from .fov import fov_diameter, fov_mask

# Each row's target is a FundusDataset subclass, built with the dataset's folder.
DATASETS: Registry[Entry] = Registry("dataset", [
    Entry("chasedb1", "qsegment.datasets.chasedb1:ChaseDB1",
          "CHASE_DB1: 28 photographs of children's eyes (30 deg, 999x960), two observers, "
          "the paper's 20:8 split; CC BY 4.0"),
    Entry("folder", "qsegment.datasets.folder:LabelledFolder",
          "your own labelled images: NAME_manual1 / _1stHO / .ah / _label, DRIVE-, STARE- and "
          "HRF-style folders, FOV masks where given; all of them scored"),
])
DEFAULT_DATASET = "chasedb1"


def open_dataset(data: str | Path | FundusDataset | None = None,
                 dataset: str = DEFAULT_DATASET) -> FundusDataset:
    """The dataset ``dataset`` in the folder ``data`` (default: the dataset's own default
    folder); a dataset object is returned as it is."""
    if isinstance(data, FundusDataset):
        return data
    return DATASETS.load(dataset)(data)


def detect_dataset(data: str | Path | None) -> FundusDataset:
    """The dataset a folder holds: CHASE_DB1 where it is a complete CHASE_DB1 folder (its
    default split is there), else your own labelled images (:class:`LabelledFolder`)."""
    try:
        chase = ChaseDB1(data)
        split = chase.default_split
        if set(split.train) | set(split.val) <= set(chase.names()):
            return chase
    except DatasetError:
        if data is None:
            raise
    return LabelledFolder(data)


def load_split(data: str | Path | FundusDataset | None = None, split: Split | None = None,
               observer: int = 1) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of ``split`` (default: the dataset's) from ``data``."""
    return open_dataset(data).split(split, observer)


def load_sample(data: str | Path | FundusDataset | None, name: str, observer: int = 1
                ) -> Sample:
    """One image of ``data`` with the label of ``observer`` (1: the reference)."""
    return open_dataset(data).sample(name, observer)


__all__ = [
    "DATASETS",
    "DEFAULT_DATASET",
    "ChaseDB1",
    "DatasetError",
    "FundusDataset",
    "LabelledFolder",
    "Sample",
    "Split",
    "default_data_dir",
    "detect_dataset",
    "fov_diameter",
    "fov_mask",
    "load_label",
    "load_sample",
    "load_split",
    "open_dataset",
]
