"""What every dataset is: named images with reference labels, FOV masks and a split.

A dataset module subclasses :class:`FundusDataset` with the two things that differ
between datasets (which images a folder holds, and where an image's label and FOV
are) and has a row in :data:`qsegment.datasets.DATASETS`; training,
evaluation, calibration and threshold selection take the dataset object.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from ..errors import QsegmentError
from ..files import user_cache_dir
from .fov import fov_mask


class DatasetError(QsegmentError, ValueError):
    """A data folder or file that cannot be used; the message names it."""


def _names(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"Image_{i:02d}{eye}" for i in range(first, last + 1) for eye in "LR")


@dataclass(frozen=True)
class Split:
    """Which images train and which validate (default: CHASE_DB1's 20:8 of the paper)."""

    train: tuple[str, ...] = _names(1, 10)
    val: tuple[str, ...] = _names(11, 14)


@dataclass(frozen=True)
class Sample:
    """One image with its reference label and FOV mask, all (H, W[, 3])."""

    name: str
    image: np.ndarray  # float32 RGB in [0, 1]
    label: np.ndarray  # bool vessel map (float in [0, 1] when softened by a teacher)
    fov: np.ndarray  # bool field of view
    path: Path = field(compare=False)
    # uint8 map of VESSEL_CLASSES where the dataset labels arteries and veins, else None
    classes: np.ndarray | None = field(default=None, compare=False)


def open_image(path: Path, mode: str) -> np.ndarray:
    """A fully decoded image file as an array in PIL ``mode``, or a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: a truncated file fails here, not later
            return np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable or corrupt image ({err})") from err


def data_env_var(name: str) -> str:
    """The environment variable that gives the folder of the registered dataset ``name``:
    ``QSEGMENT_DATA_HRF_AV`` for ``hrf-av``."""
    return "QSEGMENT_DATA_" + name.upper().replace("-", "_")


def data_cache_folder(folder: str) -> Path:
    """Where `qsegment data` puts a dataset's folder ``folder``, and the commands look for
    it last: ``data/FOLDER`` in the user cache (:func:`~qsegment.files.user_cache_dir`)."""
    return user_cache_dir("data", folder)


def dataset_folder(name: str, folder: str, title: str, env_vars: Sequence[str] = ()) -> Path:
    """The folder of dataset ``name``: ``$QSEGMENT_DATA_<NAME>`` (then ``env_vars``) where
    set, else ``../shared/data/FOLDER`` from the working directory or from this source
    checkout, else :func:`data_cache_folder`; else a DatasetError naming every place it
    looked and how to give the folder."""
    variables = (data_env_var(name), *env_vars)
    for variable in variables:
        if value := os.environ.get(variable):
            return Path(value)
    candidates = [Path.cwd() / "../shared/data" / folder,
                  Path(__file__).resolve().parents[3] / "../shared/data" / folder,
                  data_cache_folder(folder)]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    looked = [f"${v} (not set)" for v in variables] + [str(p) for p in candidates]
    raise DatasetError(
        f"no {title} folder found in {', '.join(looked)}: pass --data DIR, set "
        f"{' or '.join(variables)}=DIR, or put the folder at {candidates[-1]} (`qsegment "
        f"data download {name}` does that, or says where to get it)")


def is_ancillary(name: str) -> bool:
    """Whether a file is one that may sit beside a dataset's images: notes, licence,
    checksums."""
    return (name in {"README", "README.md", "README.txt", "LICENSE", "LICENSE.txt", ".DS_Store"}
            or name.endswith((".sha256", ".md5")))


VESSEL_CLASSES = ("background", "artery", "vein", "uncertain")  # values 0, 1, 2, 3
AV_CLASSES = VESSEL_CLASSES[1:]  # the vessel classes (1, 2, 3), which artery/vein models give


def _shown(values: np.ndarray) -> str:
    """The first few of a label's distinct values, for an error message."""
    more = f", ... ({values.size} in all)" if values.size > 6 else ""
    return ", ".join(str(v) for v in values[:6]) + more


def _read_label(path: Path, shape: tuple[int, int], what: str) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit label file as (H, W) uint8 and its distinct values; checks its size
    against the image's."""
    label = open_image(path, "L")
    if label.shape != shape:
        raise DatasetError(
            f"{path}: {what} is {label.shape[1]}x{label.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]} (width x height)"
        )
    return label, np.flatnonzero(np.bincount(label.ravel(), minlength=256))  # fast on 8 MP


def load_classes(path: Path, shape: tuple[int, int], what: str = "label") -> np.ndarray:
    """A map of :data:`VESSEL_CLASSES` (0 background, 1 artery, 2 vein, 3 uncertain) as
    uint8 (H, W); another value is refused with the values found (a colour map read as
    gray, a label of another coding)."""
    label, values = _read_label(path, shape, what)
    if values.max() >= len(VESSEL_CLASSES):
        raise DatasetError(f"{path}: {what} has values {_shown(values)}; expected 0-3 "
                           f"({', '.join(VESSEL_CLASSES)})")
    return label


def load_label(path: Path, shape: tuple[int, int], vessel_classes: bool = False,
               what: str = "label") -> np.ndarray:
    """A binary label (or FOV mask: ``what``) as bool (H, W); checks its size against the
    image's.

    ``vessel_classes``: the file is a map of :data:`VESSEL_CLASSES` (:func:`load_classes`)
    and every nonzero value is vessel. Otherwise the file has 0 and one other value (0/1,
    0/255); a label of more values, or without 0, is refused, since no one cut of it is
    safe to guess. Either error names the values found.
    """
    if vessel_classes:
        return load_classes(path, shape, what) > 0
    label, values = _read_label(path, shape, what)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise DatasetError(f"{path}: {what} is not binary: values {_shown(values)}; expected "
                           "0 and one other value (0/1 or 0/255)")
    return label > 0


def read_image(path: Path) -> np.ndarray:
    """One photograph as read-only float32 RGB in [0, 1]."""
    image = open_image(path, "RGB").astype(np.float32) / 255.0
    image.setflags(write=False)
    return image


@cache
def load_image(path: Path) -> np.ndarray:
    """:func:`read_image`, decoded once per process whichever label is asked."""
    return read_image(path)


@cache
def derived_fov(path: Path) -> np.ndarray:
    """The read-only FOV derived from a photograph (:mod:`qsegment.datasets.fov`), once
    per process; only where the dataset gives no mask (0.3 s on an 8 MP photograph)."""
    fov = fov_mask(load_image(path))
    fov.setflags(write=False)
    return fov


class FundusDataset:
    """A folder of fundus photographs with vessel labels.

    Subclasses set ``name``, ``title``, ``description``, ``observers`` (how many human
    label sets) and ``default_split``, and implement :meth:`names` (validate the folder, list its
    images) and :meth:`label_path` (where an image's label of an observer is).
    """

    name: ClassVar[str]  # the registry's key
    title: ClassVar[str]  # how cards and tables name it
    description: ClassVar[str]
    reference: ClassVar[str] = "the first observer"  # which labels are the reference
    terms: ClassVar[str] = "yours"  # the data's licence or terms of use, which cards carry
    fov: ClassVar[str] = "derived (qsegment.datasets.fov)"  # where FOV masks come from
    vessel_classes: ClassVar[bool] = False  # labels are class maps: vessel = nonzero
    observers: int = 1  # a class's own, or found per folder (LabelledFolder)
    default_split: Split

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).resolve() if root is not None else self.default_root()

    @classmethod
    def default_root(cls) -> Path:
        raise DatasetError(f"no {cls.name} folder given: pass --data DIR")

    def names(self) -> list[str]:
        raise NotImplementedError

    def image_path(self, name: str) -> Path:
        raise NotImplementedError

    def label_path(self, name: str, observer: int) -> Path:
        raise NotImplementedError

    def fov_path(self, name: str) -> Path | None:
        """A given FOV mask of the image, or None: derived from the image then."""
        return None

    def sample(self, name: str, observer: int = 1, cached: bool = True) -> Sample:
        """One image with the label of ``observer`` (1: the reference). Arrays are
        read-only and, unless not ``cached``, cached per process: samples are shared,
        never copied. Uncached, a sample is read afresh and freed with its last use:
        what a caller that only keeps a resized copy wants (an 8 MP HRF photograph
        holds 120 MB)."""
        if not 1 <= observer <= self.observers:
            raise DatasetError(f"{self.name} has {self.observers} observer(s), not {observer}")
        return _sample(self, name, observer) if cached else read_sample(self, name, observer)

    def check_split(self, split: Split) -> None:
        """Refuse a split naming an image the folder lacks, naming its file."""
        available = set(self.names())
        for name in (*split.train, *split.val):
            if name not in available:
                raise DatasetError(f"{self.image_path(name)}: image of the split not found")

    def split(self, split: Split | None = None, observer: int = 1
              ) -> tuple[list[Sample], list[Sample]]:
        """(train, val) samples of ``split`` (default: the dataset's) after validating the
        folder."""
        split = split or self.default_split
        self.check_split(split)
        return ([self.sample(n, observer) for n in split.train],
                [self.sample(n, observer) for n in split.val])

    def describe(self, split: Split) -> dict:
        """What a card records about the data a model was trained and validated on."""
        return {"dataset": self.title, "train": list(split.train), "val": list(split.val),
                "reference": self.reference, "fov": self.fov, "terms": self.terms}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.root == self.root

    def __hash__(self) -> int:
        return hash((type(self), self.root))


def read_sample(dataset: FundusDataset, name: str, observer: int = 1, cached: bool = False
                ) -> Sample:
    """One sample of ``dataset`` read from its files (its image and derived FOV from the
    process's cache where ``cached``); :meth:`FundusDataset.sample` checks ``observer``."""
    path = dataset.image_path(name)
    image = load_image(path) if cached else read_image(path)
    given = dataset.fov_path(name)
    if given is not None:
        fov = load_label(given, image.shape[:2], what="FOV mask")
    else:
        fov = derived_fov(path) if cached else fov_mask(image)
    classes = None
    if dataset.vessel_classes:
        classes = load_classes(dataset.label_path(name, observer), image.shape[:2])
        label = classes > 0
    else:
        label = load_label(dataset.label_path(name, observer), image.shape[:2])
    for array in (label, fov, classes):
        if array is not None:
            array.setflags(write=False)
    return Sample(name=name, image=image, label=label, fov=fov, path=path, classes=classes)


@cache
def _sample(dataset: FundusDataset, name: str, observer: int) -> Sample:
    return read_sample(dataset, name, observer, cached=True)
