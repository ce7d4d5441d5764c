"""CHASE_DB1 (Fraz et al., 2012; Owen et al., 2009), CC BY 4.0.

Protocol used by qsegment (the paper's 20:8 split, the most common one):
- 28 RGB fundus images of 14 children, 999x960 (width x height), the original
  flat layout: ``Image_01L.jpg``, ``Image_01L_1stHO.png`` (first observer,
  the reference), ``Image_01L_2ndHO.png`` (second observer, a human baseline).
- training: Image_01L..Image_10R (20 images); validation: Image_11L..Image_14R
  (8 images). Both lists can be changed (``Split``).
- field of view: derived from the image (:mod:`qsegment.datasets.fov`); metrics are
  computed inside it.
- full resolution; images as float32 RGB in [0, 1], labels and FOV as bool.

Loading is strict: a missing label, an unreadable or truncated image, a label
whose size differs from its image, a non-binary label or an unexpected file in
the folder raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import DatasetError, FundusDataset, Split, dataset_folder, is_ancillary

ENV_VAR = "QSEGMENT_DATA"
_IMAGE = re.compile(r"^Image_(\d{2})([LR])\.jpg$")
_LABEL = re.compile(r"^Image_(\d{2})([LR])_(1st|2nd)HO\.png$")
_OBSERVERS = {1: "1st", 2: "2nd"}


def default_data_dir() -> Path:
    """``$QSEGMENT_DATA_CHASEDB1`` or ``$QSEGMENT_DATA``, else ``../shared/data/CHASEDB1``
    from the working directory or from this source checkout, else where `qsegment data
    download` puts it."""
    return dataset_folder(ChaseDB1.name, ChaseDB1.folder, ChaseDB1.title, [ENV_VAR])


class ChaseDB1(FundusDataset):
    name = "chasedb1"
    title = "CHASE_DB1"
    folder = "CHASEDB1"  # its folder's name under ../shared/data and in the cache
    reference = "first observer (1stHO)"
    description = "CHASE_DB1: 28 images of 14 children, 999x960, two observers (CC BY 4.0)"
    terms = "CC BY 4.0 (Kingston University); cite Fraz et al. 2012 and Owen et al. 2009"
    observers = 2
    default_split = Split()

    @classmethod
    def default_root(cls) -> Path:
        return default_data_dir()

    def image_path(self, name: str) -> Path:
        return self.root / f"{name}.jpg"

    def label_path(self, name: str, observer: int) -> Path:
        return self.root / f"{name}_{_OBSERVERS[observer]}HO.png"

    def names(self) -> list[str]:
        """Validate the folder's layout and return the image names it holds, sorted.

        Every file must be an image or a label of the CHASE_DB1 naming scheme (a README
        or LICENSE may sit beside them) and every image needs its first-observer label.
        """
        root = self.root
        if not root.is_dir():
            raise DatasetError(f"{root}: not a directory (expected the CHASE_DB1 folder)")
        images, labels = set(), set()
        for path in sorted(root.iterdir()):
            name = path.name
            if is_ancillary(name):
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
                raise DatasetError(f"{root / (image + '_1stHO.png')}: missing label for "
                                   f"{image}.jpg")
        for image, observer in sorted(labels):
            if image not in images:
                raise DatasetError(f"{root / f'{image}_{observer}HO.png'}: label without image")
        return sorted(images)
