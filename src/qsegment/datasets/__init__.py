"""Datasets: named images with labels, FOV masks and a default split, in one registry.

Adding a dataset is one module (a :class:`FundusDataset` subclass) and one row of
:data:`DATASETS` below. Everything here is numpy and Pillow only.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import Entry, Registry
from .arteryvein import ArteryVeinFolder, HrfAv, LesAv
from .base import (
    AV_CLASSES,
    VESSEL_CLASSES,
    DatasetError,
    FundusDataset,
    Sample,
    Split,
    load_classes,
    load_label,
)
from .chasedb1 import ChaseDB1, default_data_dir
from .folder import LabelledFolder
from .fov import fov_diameter, fov_mask

# Each row's target is a FundusDataset subclass, built with the dataset's folder.
DATASETS: Registry[Entry] = Registry("dataset", [
    Entry("chasedb1", "qsegment.datasets.chasedb1:ChaseDB1",
          "CHASE_DB1: 28 photographs of children's eyes (30 deg, 999x960), two observers, "
          "the paper's 20:8 split; CC BY 4.0"),
    Entry("hrf-av", "qsegment.datasets.arteryvein:HrfAv",
          "HRF-AV: HRF's 45 photographs (45 deg, 3504x2336) with artery/vein labels scored "
          "as vessels, given FOV masks, the 24:21 training/test split; research use, cite "
          "Budai et al. 2013 and Hemelings et al. 2019"),
    Entry("les-av", "qsegment.datasets.arteryvein:LesAv",
          "LES-AV: 22 photographs (30 and 45 deg, 1620x1444 or 2196x1958) with artery/vein "
          "labels scored as vessels, given FOV masks, the 11:11 training/test split; "
          "scientific use only, no commercial use, cite Orlando et al. 2018"),
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
    default split is there), HRF-AV or LES-AV where its training images are named as
    theirs (then their checks name what is wrong), else your own labelled images
    (:class:`LabelledFolder`)."""
    try:
        chase = ChaseDB1(data)
        split = chase.default_split
        if set(split.train) | set(split.val) <= set(chase.names()):
            return chase
    except DatasetError:
        if data is None:
            raise
    for artery_vein in (HrfAv, LesAv):
        if data is not None and artery_vein.holds(data):
            return artery_vein(data)
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
    "AV_CLASSES",
    "DATASETS",
    "DEFAULT_DATASET",
    "VESSEL_CLASSES",
    "ArteryVeinFolder",
    "ChaseDB1",
    "DatasetError",
    "FundusDataset",
    "HrfAv",
    "LabelledFolder",
    "LesAv",
    "Sample",
    "Split",
    "default_data_dir",
    "detect_dataset",
    "fov_diameter",
    "fov_mask",
    "load_classes",
    "load_label",
    "load_sample",
    "load_split",
    "open_dataset",
]
