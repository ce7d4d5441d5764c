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


def fov_mask(image: np.ndarray, threshold: int = 20) -> np.ndarray:
    """Boolean (H, W) FOV mask of an RGB uint8 (H, W, 3) or float [0, 1] fundus image."""
    from scipy import ndimage  # 0.3 s to import: only when a mask is made

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    red = image[..., 0]
    if red.dtype != np.uint8:
        red = np.round(np.clip(red, 0.0, 1.0) * 255.0)
    bright = red > threshold
    labels, count = ndimage.label(bright)
    if count == 0:
        return np.zeros(bright.shape, dtype=bool)
    sizes = ndimage.sum_labels(bright, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest)


def fov_diameter(image: np.ndarray, threshold: int = 20, coverage: float = 0.05
                 ) -> float | None:
    """The FOV's diameter in pixels, estimated fast (no SciPy, on a thumbnail of at most
    about 256 px a side): the extent of the rows and columns of which more than
    ``coverage`` is bright (red > ``threshold``, as :func:`fov_mask`), so that text or
    specks in the dark border do not count. The larger extent of an axis on which the
    FOV touches neither border; None where no FOV rim is visible on either axis (a crop
    inside the retina) or nothing is bright."""
    step = max(1, -(-max(image.shape[:2]) // 256))
    red = image[::step, ::step, 0]
    if red.dtype != np.uint8:
        red = np.round(np.clip(red, 0.0, 1.0) * 255.0)
    bright = red > threshold
    extents = []
    for axis in (0, 1):  # rows, then columns
        filled = np.flatnonzero(bright.mean(axis=1 - axis) > coverage)
        if len(filled) and filled[0] > 0 and filled[-1] < bright.shape[axis] - 1:
            extents.append((filled[-1] - filled[0] + 1) * step)
    return float(max(extents)) if extents else None
