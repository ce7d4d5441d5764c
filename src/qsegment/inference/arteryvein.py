"""Arteries and veins from an artery/vein model's four outputs (the vessel logit, then
the artery, vein and uncertain logits given a vessel:
:class:`~qsegment.models.qsegment.QSegmentAV`): class probabilities and the class map, from
outputs at the scale the vessel rules choose. The vessel map is the one a vessel model's
would be (the same rules, the same cut on the same probability)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec

import numpy as np

from ..datasets.base import AV_CLASSES
from ..datasets.fov import TRAINING_FOV_DIAMETER
from ..errors import UsageError
from ..images import bilinear_at, resize_bilinear
from ..runtimes.base import logit, sigmoid
from .calibrate import CalibratedMap, Calibration, calibrated_map
from .maps import Scale


def class_probabilities(vessel: np.ndarray, class_logits: np.ndarray) -> np.ndarray:
    """(3, H, W) probabilities of artery, vein and uncertain: the vessel probability
    (H, W) times the softmax of the three class logits (3, H, W)."""
    exp = np.exp(class_logits - class_logits.max(0, keepdims=True))
    return vessel * exp / exp.sum(0, keepdims=True)


VOTE_FACTOR = 2  # the vote's skeleton is drawn at half resolution: a quarter of the pixels
# to thin and search (12 ms for a CHASE_DB1 map); F1 on the HRF-AV and LES-AV training
# photographs within 0.003 of the full-resolution vote's (docs/RESULTS.md)


def vote_segments(vessel: np.ndarray, class_logits: np.ndarray) -> np.ndarray:
    """``class_logits`` (3, H, W: artery, vein, uncertain) with one artery/vein decision per
    vessel segment: the skeleton of the ``vessel`` mask (at half resolution,
    :data:`VOTE_FACTOR`) is cut at its branch points and crossings (skeleton pixels with
    three or more neighbours, and their neighbours) into segments, and every pixel's
    artery-minus-vein logit becomes the mean of that difference over the vessel pixels
    nearest the same segment; pixels off the mask within its bounding box take their
    nearest segment's too (the scores of evaluation read every pixel). The sum of the two
    logits, hence the uncertain class's odds, stays. :func:`vessel_classes` gives the
    class map of the same vote from the mask's pixels alone.

    Why: a tiny network decides each pixel from a small neighbourhood, so a vessel's
    class flips along it (BF-Net's intra-segment misclassification); a vote along the
    segment undoes the flips. Merging segments across branch points as well was measured
    and dropped: one wrong merge recolours a whole tree. Needs scikit-image
    (``pip install 'qsegment[biomarkers]'``).
    """
    logits = class_logits.astype(np.float32, order="C")  # a copy whose rows ravel as views
    flat = np.flatnonzero(vessel)  # flat indices: 2-D np.nonzero takes 10x longer
    segments = _segments(vessel.shape, *np.divmod(flat, vessel.shape[1]))
    if segments is None:
        return logits
    owner = segments.owner()
    artery, vein = logits[0].ravel(), logits[1].ravel()  # views of the copy
    mean = segments.means(artery.take(flat), vein.take(flat))
    f, (r0, c0) = VOTE_FACTOR, segments.origin
    box = (slice(r0, r0 + owner.shape[0] * f), slice(c0, c0 + owner.shape[1] * f))
    voted = mean[np.repeat(np.repeat(owner, f, 0), f, 1)][:logits.shape[1] - r0,
                                                         :logits.shape[2] - c0]
    logits[0][box], logits[1][box] = _with_difference(logits[0][box], logits[1][box], voted)
    return logits


def check_vote_installed() -> None:
    """Raise now, not after the first network pass, where the vote per segment
    (:func:`vessel_classes`) cannot run: scikit-image is not installed (the command line
    names the extra that brings it).

    Raises:
        ModuleNotFoundError: scikit-image (``pip install 'qsegment[biomarkers]'``).
    """
    if find_spec("skimage") is None:
        raise ModuleNotFoundError("the vote per vessel segment needs scikit-image",
                                  name="skimage")


def vessel_classes(vessel: np.ndarray, class_scores: np.ndarray, vote: bool = True,
                   sigmoids: bool = False) -> np.ndarray:
    """The class map of the ``vessel`` mask (:func:`~qsegment.images.class_map`), with one
    artery/vein decision per segment where ``vote`` (:func:`vote_segments`' vote, the same
    classes), from ``class_scores`` (3, h, w: logits, or with ``sigmoids`` a runtime's
    sigmoids of them, any layout; at the mask's size, or at the scale the network ran,
    read bilinearly as :func:`full_size_scores` would resize them) read on the mask's
    pixels alone: a tenth of the image, where :func:`vote_segments` copies and writes the
    whole maps (14 against 26 ms on a CHASE_DB1 image's outputs, the same classes)."""
    flat = np.flatnonzero(vessel)  # flat indices: 2-D np.nonzero takes 10x longer
    rows, cols = np.divmod(flat, vessel.shape[1])
    scores = bilinear_at(class_scores, rows, cols, vessel.shape)  # (3, pixels), a copy
    if vote:
        if sigmoids:
            scores = logit(scores)
        if (segments := _segments(vessel.shape, rows, cols)) is not None:
            voted = segments.means(scores[0], scores[1]).take(segments.owned)
            scores[0], scores[1] = _with_difference(scores[0], scores[1], voted)
    classes = np.zeros(vessel.shape, np.uint8)
    classes.ravel()[flat] = scores.argmax(0) + 1
    return classes


@dataclass
class _Segments:
    """The vote's segments in the bounding box of a mask, in blocks of
    :data:`VOTE_FACTOR` pixels square: their labels (1 to ``count``) on the skeleton, the
    skeleton pixel nearest each block (``near``: rows, columns), the segment nearest each
    of the mask's pixels (``owned``, read at its block alone: a tenth of the box) and the
    box's first row and column in the image."""

    labels: np.ndarray
    near: tuple[np.ndarray, np.ndarray]
    owned: np.ndarray
    count: int
    origin: tuple[int, int]

    def owner(self) -> np.ndarray:
        """The segment nearest each block of the box."""
        return self.labels[self.near]

    def means(self, artery: np.ndarray, vein: np.ndarray) -> np.ndarray:
        """Per segment, the mean artery-minus-vein logit of the mask's pixels it owns
        (``artery`` and ``vein``: those pixels' logits)."""
        pixels = np.bincount(self.owned, minlength=self.count + 1)
        return (np.bincount(self.owned, artery - vein, self.count + 1)
                / np.maximum(pixels, 1)).astype(np.float32)


def _segments(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray) -> _Segments | None:
    """The vote's segments of a mask of ``shape`` whose pixels are at ``rows``, ``cols``
    (row-major order); None where its skeleton has none."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    if not rows.size:
        return None
    f = VOTE_FACTOR
    r0, c0 = rows[0], cols.min()
    box = np.zeros(((rows[-1] - r0) // f + 1, (cols.max() - c0) // f + 1), bool)
    blocks = (rows - r0) // f * box.shape[1] + (cols - c0) // f  # each vessel pixel's block
    box.ravel()[blocks] = True  # any vessel pixel in the f x f block
    skeleton = skeletonize(box)
    neighbours = _around(skeleton.astype(np.uint8), np.add) - 1
    junctions = _around(skeleton & (neighbours >= 3), np.logical_or)
    segments, count = ndimage.label(skeleton & ~junctions, np.ones((3, 3), bool))
    if not count:
        return None
    _, (near_r, near_c) = ndimage.distance_transform_cdt(segments == 0, "chessboard",
                                                         return_indices=True)
    owned = segments[near_r.ravel().take(blocks), near_c.ravel().take(blocks)]
    return _Segments(segments, (near_r, near_c), owned, count, (r0, c0))


def _with_difference(artery: np.ndarray, vein: np.ndarray, difference: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Artery and vein logits with the ``difference`` given and their sum kept."""
    both = artery + vein
    return (both + difference) * 0.5, (both - difference) * 0.5


def _around(image: np.ndarray, combine: np.ufunc) -> np.ndarray:
    """Each pixel of a 2-D array combined (``np.add``, ``np.logical_or``) with its 8
    neighbours, zero beyond the frame: a 3x3 sum or dilation in shifted slices, a tenth of
    the time of SciPy's ``convolve`` or ``binary_dilation`` on the vote's skeleton."""
    padded = np.zeros((image.shape[0] + 2, image.shape[1] + 2), image.dtype)
    padded[1:-1, 1:-1] = image
    rows = combine(combine(padded[:-2], padded[1:-1]), padded[2:])
    return combine(combine(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def with_vessel_probability(outputs: np.ndarray) -> np.ndarray:
    """A model's (C, H, W) logits with channel 0's turned into the vessel probability
    (in place): what :func:`calibrated_outputs` takes."""
    outputs[0] = sigmoid(outputs[0])
    return outputs


def check_artery_vein(outputs: tuple[str, ...] | int, name: str) -> None:
    """Refuse a model without artery/vein outputs, naming it: ``outputs`` are a network's
    output names, or the number of channels a model file gave (a runtime knows no names)."""
    count = outputs if isinstance(outputs, int) else len(outputs)
    if count != 1 + len(AV_CLASSES) or (not isinstance(outputs, int)
                                        and tuple(outputs[1:]) != AV_CLASSES):
        given = f"{count} output channel(s)" if isinstance(outputs, int) else \
            f"outputs: {', '.join(outputs)}"
        raise UsageError(f"{name} is a vessel-only model ({given}); artery/vein maps need an "
                         "artery/vein model such as one trained with --model qsegment-av")


def calibrated_outputs(outputs: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                       scale: Scale, calibration: Calibration | None,
                       fov_diameter: float = TRAINING_FOV_DIAMETER, name: str = "image"
                       ) -> tuple[CalibratedMap, np.ndarray]:
    """The vessel map of ``image`` at its full resolution and its class scores (C - 1, h,
    w) as the network gave them, at the scale the vessel rules choose on channel 0
    (:func:`~qsegment.inference.calibrate.calibrated_map`, whose result comes first):
    :func:`vessel_classes` reads them at the mask's pixels, :func:`full_size_scores`
    resizes them whole.

    Args:
        outputs: an image's (C, h, w) outputs at its own scale: channel 0 the vessel
            probability, the class scores after it (:func:`with_vessel_probability`, or
            a runtime's :meth:`~qsegment.runtimes.base.Runtime.outputs_uint8`).
        image: (H, W, 3) RGB, as ``outputs`` takes it.
        scale, calibration, fov_diameter, name: as ``calibrated_map`` takes them.
    """
    last: dict[str, np.ndarray] = {}

    def vessel_probability(resized: np.ndarray) -> np.ndarray:
        last["outputs"] = outputs(resized)
        return last["outputs"][0]

    found = calibrated_map(image, vessel_probability, scale, calibration, fov_diameter, name)
    return found, last["outputs"][1:]  # of the last pass: the scale chosen


def full_size_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class scores (C, h, w) at ``size`` (H, W), resized as predict_outputs resizes a
    network's outputs (bilinear, no antialiasing; PyTorch): the whole maps evaluation
    scores, where a prediction reads the mask's pixels alone (:func:`vessel_classes`)."""
    if scores.shape[1:] == tuple(size):
        return scores
    return resize_bilinear(np.ascontiguousarray(scores[None]), size, False)[0]
