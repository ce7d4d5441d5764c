"""Your own labelled images: a folder of photographs with vessel labels, any split size.

Files are matched by their stem once the usual suffixes are taken off, in one folder
or in the sub-folders public datasets use:

- CHASE_DB1: ``Image_01L.jpg``, ``Image_01L_1stHO.png``, ``Image_01L_2ndHO.png``;
- DRIVE: ``images/21_training.tif``, ``1st_manual/21_manual1.gif``,
  ``2nd_manual/21_manual2.gif``, ``mask/21_training_mask.gif``;
- STARE: ``im0001.ppm``, ``im0001.ah.ppm`` (first observer), ``im0001.vk.ppm``;
- HRF: ``images/01_dr.JPG``, ``manual1/01_dr.tif``, ``mask/01_dr_mask.tif``;
- plain: ``NAME.png`` with ``NAME_label.png`` / ``_vessels`` / ``_gt`` / ``_manual1``,
  and optionally ``NAME_fov.png`` or ``NAME_mask.png``.

Every image needs a first-observer label; a second observer is scored as the human
reference where every image has one; FOV masks are used where given and derived from
the image otherwise (:mod:`qsegment.datasets.fov`). Every image is a validation
image (the threshold comes from the model's card, chosen on its own training data).
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetError, FundusDataset, Split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".gif")
# (role, pattern on the file's stem, what the pattern leaves as the shared key)
_ROLES = (
    ("label1", re.compile(r"^(?P<key>.+?)(_1stHO|_manual1|\.ah|_label|_vessels|_gt)$")),
    ("label2", re.compile(r"^(?P<key>.+?)(_2ndHO|_manual2|\.vk)$")),
    ("fov", re.compile(r"^(?P<key>.+?)(_mask|_fov)$")),
)
_FOLDER_ROLES = {"1st_manual": "label1", "manual1": "label1", "labels": "label1",
                 "2nd_manual": "label2", "manual2": "label2", "mask": "fov", "masks": "fov",
                 "fov": "fov", "images": "image"}
_IMAGE_KEY = re.compile(r"^(?P<key>.+?)(_training|_test)?$")  # DRIVE's images


def _role(path: Path) -> tuple[str, str]:
    """(role, key) of one file: by its folder's name where that is telling, else by its
    stem's suffix; DRIVE's ``21_training`` and ``21_manual1`` share the key ``21``."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    by_folder = _FOLDER_ROLES.get(path.parent.name.lower())
    for role, pattern in _ROLES:
        if (m := pattern.match(stem)) and by_folder in (None, role, "image"):
            return role, _image_key(m["key"])
    return by_folder if by_folder not in (None, "image") else "image", _image_key(stem)


def _image_key(stem: str) -> str:
    """The stem without DRIVE's ``_training`` / ``_test`` (the pattern matches any stem)."""
    return _IMAGE_KEY.fullmatch(stem)["key"]  # type: ignore[index]


class LabelledFolder(FundusDataset):
    name = "folder"
    title = "labelled folder"
    description = "your own images with vessel labels (CHASE_DB1-, DRIVE-, STARE-, HRF-style)"
    reference = "the first observer's labels"
    fov = "given masks, else derived (qsegment.datasets.fov)"
    observers = 1

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            raise DatasetError("a labelled folder needs --data DIR")
        super().__init__(root)
        self._files = self._scan()
        self.observers = 2 if all("label2" in f for f in self._files.values()) else 1
        self.default_split = Split(train=(), val=tuple(sorted(self._files)))

    def _scan(self) -> dict[str, dict[str, Path]]:
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a directory (expected a folder of images "
                               "and labels)")
        files: dict[str, dict[str, Path]] = {}
        candidates = [p for p in sorted(self.root.rglob("*"))
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and len(p.relative_to(self.root).parts) <= 2]
        for path in candidates:
            role, key = _role(path)
            if role in files.setdefault(key, {}):
                raise DatasetError(f"{path}: a second {role} for '{key}' (the first is "
                                   f"{files[key][role]}); keep one")
            files[key][role] = path
        for key, found in sorted(files.items()):
            if "image" not in found:
                path = next(iter(found.values()))
                raise DatasetError(f"{path}: no image matches this file (its name gives the "
                                   f"key '{key}')")
            if "label1" not in found:
                raise DatasetError(f"{found['image']}: no vessel label matches this image "
                                   f"(expected e.g. {key}_manual1.png or {key}_1stHO.png)")
        if not files:
            raise DatasetError(f"{self.root}: no images found")
        return files

    def names(self) -> list[str]:
        return sorted(self._files)

    def image_path(self, name: str) -> Path:
        return self._path(name, "image")

    def label_path(self, name: str, observer: int) -> Path:
        return self._path(name, f"label{observer}")

    def fov_path(self, name: str) -> Path | None:
        return self._files.get(name, {}).get("fov")

    def _path(self, name: str, role: str) -> Path:
        if name not in self._files:
            raise DatasetError(f"{self.root}: no image named '{name}'")
        return self._files[name][role]
