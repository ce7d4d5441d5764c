"""CHASE_DB1 (Fraz et al., 2012; Owen et al., 2009), CC BY 4.0.

Protocol used by qsegment (the paper's 20:8 split, the most common one):
- 28 RGB fundus images of 14 children, 999x960 (width x height), the original
  flat layout: ``Image_01L.jpg``, ``Image_01L_1stHO.png`` (first observer,
  the reference), ``Image_01L_2ndHO.png`` (second observer, a human baseline).
- training: Image_01L..Image_10R (20 images); validation: Image_11L..Image_14R
  (8 images). Both lists can be changed (``Split``).
- field of view: derived from the image (:mod:`qsegment.data.fov`); metrics are
  computed inside it.
- full resolution; images as float32 RGB in [0, 1], labels and FOV as bool.

Loading is strict: a missing label, an unreadable or truncated image, a label
whose size differs from its image, a non-binary label or an unexpected file in
the folder raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from .fov import fov_mask

ENV_VAR = "QSEGMENT_DATA"
_IMAGE = re.compile(r"^Image_(\d{2})([LR])\.jpg$")
_LABEL = re.compile(r"^Image_(\d{2})([LR])_(1st|2nd)HO\.png$")
_IGNORED = {"README", "README.md", "README.txt", "LICENSE", "LICENSE.txt", ".DS_Store"}


class DatasetError(ValueError):
    """A data folder or file that cannot be used as CHASE_DB1; the message names it."""


def _names(first: int, last: int) -> tuple[str, ...]:
    return tuple(f"Image_{i:02d}{eye}" for i in range(first, last + 1) for eye in "LR")


@dataclass(frozen=True)
class Split:
    """Which images train and which validate (default: the paper's 20:8)."""

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


def default_data_dir() -> Path:
    """``$QSEGMENT_DATA``, else ``../shared/data/CHASEDB1`` from the working directory or
    from this source checkout."""
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    candidates = [Path.cwd() / "../shared/data/CHASEDB1",
                  Path(__file__).resolve().parents[3] / "../shared/data/CHASEDB1"]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    raise DatasetError(
        f"no CHASE_DB1 folder given: pass --data DIR or set {ENV_VAR} "
        f"(looked in {', '.join(str(p) for p in candidates)})"
    )


def scan(data_dir: str | Path) -> list[str]:
    """Validate the folder's layout and return the image names it holds, sorted.

    Every file must be an image or a label of the CHASE_DB1 naming scheme (a README
    or LICENSE may sit beside them) and every image needs its first-observer label.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected the CHASE_DB1 folder)")
    images, labels = set(), set()
    for path in sorted(root.iterdir()):
        name = path.name
        if name in _IGNORED or name.endswith((".sha256", ".md5")):
            continue
        if m := _IMAGE.match(name):
            images.add(f"Image_{m[1]}{m[2]}")
        elif m := _LABEL.match(name):
            labels.add((f"Image_{m[1]}{m[2]}", m[3]))
        else:
            raise DatasetError(
                f"{path}: unexpected file in the CHASE_DB1 folder (expected Image_NNX.jpg "
                "and Image_NNX_1stHO.png / _2ndHO.png)"
            )
    if not images:
        raise DatasetError(f"{root}: no CHASE_DB1 images (Image_NNX.jpg) found")
    for image in sorted(images):
        if (image, "1st") not in labels:
            raise DatasetError(f"{root / (image + '_1stHO.png')}: missing label for {image}.jpg")
    for image, observer in sorted(labels):
        if image not in images:
            raise DatasetError(f"{root / f'{image}_{observer}HO.png'}: label without image")
    return sorted(images)


def _open(path: Path, mode: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: a truncated file fails here, not later
            return np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable or corrupt image ({err})") from err


def load_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary label as bool (H, W); checks its size against the image's."""
    label = _open(path, "L")
    if label.shape != shape:
        raise DatasetError(
            f"{path}: label is {label.shape[1]}x{label.shape[0]} but its image is "
            f"{shape[1]}x{shape[0]} (width x height)"
        )
    values = np.unique(label)
    if len(values) > 2:
        raise DatasetError(f"{path}: label is not binary ({len(values)} distinct values)")
    return label > 127 if values.max() > 1 else label > 0


@cache
def _load_image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image, FOV) of one photograph, decoded once per process whichever label is asked."""
    rgb = _open(path, "RGB")
    image = rgb.astype(np.float32) / 255.0
    fov = fov_mask(rgb)
    for array in (image, fov):
        array.setflags(write=False)
    return image, fov


@cache
def _load_cached(path: Path, observer: int) -> Sample:
    image, fov = _load_image(path)
    suffix = {1: "1st", 2: "2nd"}[observer]
    label = load_label(path.with_name(f"{path.stem}_{suffix}HO.png"), image.shape[:2])
    label.setflags(write=False)
    return Sample(name=path.stem, image=image, label=label, fov=fov, path=path)


def load_sample(data_dir: str | Path, name: str, observer: int = 1) -> Sample:
    """Load one image with the label of ``observer`` (1: reference, 2: second observer).

    Arrays are read-only and cached per process: samples are shared, never copied.
    """
    if observer not in (1, 2):
        raise ValueError(f"observer must be 1 or 2, got {observer}")
    return _load_cached(Path(data_dir).resolve() / f"{name}.jpg", observer)


def load_split(data_dir: str | Path | None = None, split: Split | None = None,
               observer: int = 1) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples of ``split`` from ``data_dir`` after validating the folder."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    split = split or Split()
    available = set(scan(root))
    for name in (*split.train, *split.val):
        if name not in available:
            raise DatasetError(f"{root / (name + '.jpg')}: image of the split not found")
    return ([load_sample(root, n, observer) for n in split.train],
            [load_sample(root, n, observer) for n in split.val])
