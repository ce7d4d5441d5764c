"""Arteries and veins from an artery/vein model's four outputs (the vessel logit, then
the artery, vein and uncertain logits given a vessel:
:class:`~qsegment.models.qsegment.QSegmentAV`): class probabilities and the class map, from
logits at the scale the vessel rules choose."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..datasets.base import AV_CLASSES
from ..datasets.fov import TRAINING_FOV_DIAMETER
from ..errors import UsageError
from ..images import resize_bilinear
from ..runtimes.base import sigmoid
from .calibrate import CalibratedMap, Calibration, calibrated_map
from .maps import Scale


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """(3, H, W) probabilities of artery, vein and uncertain: the vessel probability times
    the softmax of the three class logits."""
    logits = outputs[1:].astype(np.float32)
    exp = np.exp(logits - logits.max(0, keepdims=True))
    return sigmoid(outputs[0]) * exp / exp.sum(0, keepdims=True)


def class_map(outputs: np.ndarray, cut: float) -> np.ndarray:
    """(H, W) uint8 map of 0 background, 1 artery, 2 vein, 3 uncertain: vessel where the
    vessel probability reaches ``cut`` (the vessel map's own), there the likeliest class
    (ranked on the vessel pixels alone: a tenth of the image)."""
    vessel = sigmoid(outputs[0]) >= cut
    classes = np.zeros(vessel.shape, np.uint8)
    classes[vessel] = outputs[1:, vessel].argmax(0) + 1
    return classes


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
    """Every channel's logits (C, H, W) of ``image`` at its full resolution, the network
    run at the scale the vessel rules choose on channel 0
    (:func:`~qsegment.inference.calibrate.calibrated_map`, whose result comes first).

    Args:
        outputs: an image's (C, h, w) logits at its own scale.
        image: (H, W, 3) float RGB in [0, 1].
        scale, calibration, fov_diameter, name: as ``calibrated_map`` takes them.
    """
    last: dict[str, np.ndarray] = {}

    def vessel_probability(resized: np.ndarray) -> np.ndarray:
        last["outputs"] = outputs(resized)
        return sigmoid(last["outputs"][0])

    found = calibrated_map(image, vessel_probability, scale, calibration, fov_diameter, name)
    logits = last["outputs"]  # of the last pass: the scale chosen
    h, w = image.shape[:2]
    if logits.shape[1:] != (h, w):  # logits resized, as predict_outputs does with a size
        logits = resize_bilinear(np.ascontiguousarray(logits[None]), (h, w), False)[0]
    return found, logits
