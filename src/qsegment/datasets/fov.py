"""Field-of-view (FOV) masks derived from the fundus image itself.

CHASE_DB1 ships no FOV masks, so (as the literature does) we threshold the
image: the retina is the bright disc, the border around it is near-black.

Method: red channel > ``threshold`` (20 of 255: the JPEG border noise stays
below ~15 and the retina's dimmest rim is above ~40 on every CHASE_DB1 image, so
the mask moves by <0.1 % of pixels for thresholds 15..40); keep the largest
connected component (drops stray bright specks and text in the border); fill
holes (dark lesions or the pupil reflex inside the disc stay in the FOV).
"""

from __future__ import annotations

import numpy as np

from ..images import ImageError

# The FOV diameter (px) of the images the shipped models learned from, CHASE_DB1's, which
# `--scale auto` brings other photographs to: fov_diameter over its 20 training images
# gives 916.8 px on average (892-920)
TRAINING_FOV_DIAMETER = 917.0


def _bright(red: np.ndarray, threshold: int) -> np.ndarray:
    """Where the red channel (uint8, or float in [0, 1] read as 0..255) is above
    ``threshold``."""
    if red.dtype != np.uint8:
        red = np.round(np.clip(red, 0.0, 1.0) * 255.0)
    return red > threshold


def fov_mask(image: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Boolean (H, W) FOV mask of an RGB uint8 (H, W, 3) or float [0, 1] fundus image."""
    from scipy import ndimage  # 0.3 s to import: only when a mask is made

    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    bright = _bright(image[..., 0], threshold)
    labels, count = ndimage.label(bright)
    if count == 0:
        return np.zeros(bright.shape, dtype=bool)
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


def fov_mask_diameter(fov: np.ndarray, coverage: float = 0.0, inside_frame: bool = False
                      ) -> int | None:
    """The diameter in pixels of the field of view ``fov`` (boolean (H, W)): the larger
    extent of the rows and of the columns more than ``coverage`` of which lies in it.
    With the default 0, the longer side of its bounding box, right even when the sensor
    cuts the FOV disc at the top and bottom (an area-equivalent diameter is not). With
    ``inside_frame``, an extent that reaches a border of the frame does not count (the
    rim is cut off there, so it is no diameter). None where no extent counts (an empty
    FOV)."""
    extents = []
    for axis in (0, 1):  # rows, then columns
        filled = np.flatnonzero(fov.mean(axis=1 - axis) > coverage)
        if len(filled) and not (inside_frame and (filled[0] == 0
                                                  or filled[-1] == fov.shape[axis] - 1)):
            extents.append(int(filled[-1] - filled[0] + 1))
    return max(extents) if extents else None


def fov_diameter(image: np.ndarray, threshold: int = 20, coverage: float = 0.05
                 ) -> float | None:
    """The diameter in pixels of the FOV of a fundus photograph (RGB, as :func:`fov_mask`
    takes it), estimated fast (no SciPy, on a thumbnail of at most about 256 px a side):
    :func:`fov_mask_diameter` of its bright pixels (red > ``threshold``) counting the
    rows and columns of which more than ``coverage`` is bright, so that text or specks in
    the dark border do not count, and only where the FOV touches neither border. None
    where no FOV rim is visible on either axis (a crop inside the retina) or nothing is
    bright."""
    step = max(1, -(-max(image.shape[:2]) // 256))
    diameter = fov_mask_diameter(_bright(image[::step, ::step, 0], threshold), coverage,
                                 inside_frame=True)
    return None if diameter is None else float(diameter * step)
