"""HRF-AV and LES-AV: public fundus sets with artery/vein labels, scored as vessel maps.

Both come in the layout of the artery/vein literature (Zhou et al., MICCAI 2021) and
are scored as qsegment scores CHASE_DB1, except for:

- layout: ``{training,test}/images/NAME.EXT``, ``{training,test}/1st_manual/NAME...png``
  (8-bit class maps: 0 background, 1 artery, 2 vein, 3 uncertain) and
  ``{training,test}/mask/NAME_mask.EXT``; an image is named by its file's stem
  (``01_dr``, ``224``), unique across both folders;
- the reference: every labelled pixel (label > 0, artery, vein or uncertain) is vessel;
- the field of view: the given masks, not derived from the photograph;
- the split: the folders' (training trains, test validates): 24:21 for HRF-AV, 11:11
  for LES-AV.

Loading is strict: a missing label or mask, a second file for one image, a name in
both folders, an unexpected file or folder, or a label value outside 0-3 raises
:class:`DatasetError` naming it. No publisher offers either set in this layout:
`qsegment data download NAME` says where to get the files (:attr:`~ArteryVeinFolder.source`)
and `qsegment data check NAME` checks them against the SHA-256 list shipped with qsegment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, NamedTuple

from .base import (
    VESSEL_CLASSES,
    DatasetError,
    FundusDataset,
    Split,
    dataset_folder,
    is_ancillary,
)

_SPLIT_FOLDERS = ("training", "test")  # train, validate
_ROLE_FOLDERS = ("images", "1st_manual", "mask")


class _Files(NamedTuple):
    image: Path
    label: Path
    mask: Path


class ArteryVeinFolder(FundusDataset):
    """A fundus set in the artery/vein layout; a subclass says how its files are named."""

    folder: ClassVar[str]  # its folder's name under ../shared/data and in the cache
    source: ClassVar[str]  # where to get its files: the publishers and papers
    stem: ClassVar[str]  # regular expression of an image's name
    example: ClassVar[str]  # how error messages show a name
    image_suffixes: ClassVar[tuple[str, ...]]
    label_suffix: ClassVar[str]  # after the image's name, in 1st_manual/
    mask_suffix: ClassVar[str]  # after the image's name, in mask/
    reference = "the artery/vein labels as one vessel map (label > 0)"
    fov = "given masks (mask/)"
    vessel_classes = True

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__(root)
        self._files, train, val = self._scan()
        self.default_split = Split(train=train, val=val)

    @classmethod
    def default_root(cls) -> Path:
        return dataset_folder(cls.name, cls.folder, cls.title)

    @classmethod
    def layout(cls) -> str:
        """The files a folder of this set holds, for messages that say how to arrange it."""
        coding = ", ".join(f"{value} {what}" for value, what in enumerate(VESSEL_CLASSES))
        return (f"{{training,test}}/images/{cls.example}{' or '.join(cls.image_suffixes)}, "
                f"{{training,test}}/1st_manual/{cls.example}{cls.label_suffix} (8-bit: "
                f"{coding}) and {{training,test}}/mask/{cls.example}{cls.mask_suffix}")

    @classmethod
    def holds(cls, root: str | Path) -> bool:
        """Whether ``root`` looks like this set (training images named as its images are);
        a folder that does is this set, and its scan says what is wrong with it."""
        images = Path(root) / _SPLIT_FOLDERS[0] / "images"
        pattern = cls._pattern(cls.image_suffixes)
        return images.is_dir() and any(pattern.match(p.name) for p in images.iterdir())

    def names(self) -> list[str]:
        return sorted(self._files)

    def image_path(self, name: str) -> Path:
        return self._file(name).image

    def label_path(self, name: str, observer: int) -> Path:
        return self._file(name).label

    def fov_path(self, name: str) -> Path | None:
        return self._file(name).mask

    def _file(self, name: str) -> _Files:
        if name not in self._files:
            raise DatasetError(f"{self.root}: no {self.title} image named '{name}'")
        return self._files[name]

    @classmethod
    def _pattern(cls, suffixes: tuple[str, ...]) -> re.Pattern[str]:
        return re.compile(f"^({cls.stem})({'|'.join(map(re.escape, suffixes))})$")

    def _scan(self) -> tuple[dict[str, _Files], tuple[str, ...], tuple[str, ...]]:
        """(name -> files, training names, test names): the layout validated."""
        files: dict[str, _Files] = {}
        split: dict[str, tuple[str, ...]] = {}
        self._expect_folders(self.root, _SPLIT_FOLDERS)
        for part in _SPLIT_FOLDERS:
            folder = self.root / part
            self._expect_folders(folder, _ROLE_FOLDERS)
            images = self._listing(folder / "images", self.image_suffixes)
            labels = self._listing(folder / "1st_manual", (self.label_suffix,))
            masks = self._listing(folder / "mask", (self.mask_suffix,))
            for name, image in images.items():
                if name in files:
                    raise DatasetError(f"{image}: '{name}' is also {files[name].image} (an "
                                       "image is in training/ or in test/, not both)")
                for what, found, path in (
                        ("label", labels, folder / "1st_manual" / f"{name}{self.label_suffix}"),
                        ("FOV mask", masks, folder / "mask" / f"{name}{self.mask_suffix}")):
                    if name not in found:
                        raise DatasetError(f"{path}: missing {what} for {image.name}")
                files[name] = _Files(image, labels[name], masks[name])
            for what, found in (("label", labels), ("FOV mask", masks)):
                for name, path in found.items():
                    if name not in images:
                        raise DatasetError(f"{path}: {what} without image")
            split[part] = tuple(sorted(images))
        if not files:
            raise DatasetError(f"{self.root}: no {self.title} images found")
        return files, split["training"], split["test"]

    def _expect_folders(self, folder: Path, expected: tuple[str, ...]) -> None:
        """``folder`` holds the folders ``expected`` and nothing else but notes."""
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not a directory (expected the {self.title} folder, "
                               "or one of its folders)")
        for path in sorted(folder.iterdir()):
            if not (path.name in expected and path.is_dir()) and not is_ancillary(path.name):
                raise DatasetError(f"{path}: unexpected in {self.title}'s folder (expected "
                                   f"{', '.join(e + '/' for e in expected)} here)")
        for name in expected:
            if not (folder / name).is_dir():
                raise DatasetError(f"{folder / name}: missing folder of {self.title}")

    def _listing(self, folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
        """name -> file of one folder whose every file (notes aside) is named as expected."""
        pattern = self._pattern(suffixes)
        files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if is_ancillary(path.name):
                continue
            if not (m := pattern.match(path.name)) or not path.is_file():
                expected = " or ".join(self.example + s for s in suffixes)
                raise DatasetError(f"{path}: unexpected file in {self.title}'s "
                                   f"{folder.name}/ (expected {expected})")
            if m[1] in files:
                raise DatasetError(f"{path}: a second file for '{m[1]}' (the first is "
                                   f"{files[m[1]].name}); keep one")
            files[m[1]] = path
        return files


class HrfAv(ArteryVeinFolder):
    name = "hrf-av"
    title = "HRF-AV"
    terms = "research use; cite Budai et al. 2013 and Hemelings et al. 2019"
    description = ("HRF-AV: HRF's 45 photographs (Canon CR-1, 45 deg, 3504x2336; healthy, "
                   "diabetic retinopathy, glaucoma) with artery/vein labels, 24:21 split; "
                   "research use, cite Budai et al. 2013 and Hemelings et al. 2019")
    folder = "HRF-AV"
    source = ("the photographs and FOV masks of HRF (Budai A. et al., \"Robust Vessel "
              "Segmentation in Fundus Images\", International Journal of Biomedical Imaging "
              "2013; Friedrich-Alexander University Erlangen-Nuremberg), whose site gives "
              "vessel maps without artery/vein labels, and the artery/vein labels of "
              "Hemelings R. et al., \"Artery-vein segmentation in fundus images using a fully "
              "convolutional network\", Computerized Medical Imaging and Graphics 76, 2019; "
              "training/ holds 01-08, test/ 09-15")
    stem = r"\d{2}_(?:dr|g|h)"
    example = "NN_x"
    image_suffixes = (".jpg", ".JPG")
    label_suffix = "_AVmanual.png"
    mask_suffix = "_mask.tif"


class LesAv(ArteryVeinFolder):
    name = "les-av"
    title = "LES-AV"
    terms = "scientific use only, no commercial use; cite Orlando et al. 2018"
    description = ("LES-AV: 22 photographs (30 and 45 deg, 1620x1444 or 2196x1958) with "
                   "artery/vein labels, 11:11 split; scientific use only, no commercial use, "
                   "cite Orlando et al. 2018")
    folder = "LES-AV"
    source = ("the LES-AV files of Orlando J. I. et al., \"Towards a glaucoma risk index "
              "based on simulated hemodynamics from fundus images\", MICCAI 2018, which its "
              "authors publish on figshare in another layout (rearrange them); the split "
              "into training/ and test/ is the one of Zhou et al., MICCAI 2021")
    stem = r"\d+"
    example = "N"
    image_suffixes = (".png",)
    label_suffix = ".png"
    mask_suffix = "_mask.gif"
