"""Arteries and veins from an artery/vein model's four outputs (the vessel logit, then
the artery, vein and uncertain logits given a vessel:
:class:`~qsegment.models.qsegment.QSegmentAV`): class probabilities and the class map, from
outputs at the scale the vessel rules choose. The vessel map is the one a vessel model's
would be (the same rules, the same cut on the same probability)."""

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


def class_probabilities(vessel: np.ndarray, class_logits: np.ndarray) -> np.ndarray:
    """(3, H, W) probabilities of artery, vein and uncertain: the vessel probability
    (H, W) times the softmax of the three class logits (3, H, W)."""
    exp = np.exp(class_logits - class_logits.max(0, keepdims=True))
    return vessel * exp / exp.sum(0, keepdims=True)


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
    """The vessel map of ``image`` and its class scores (C - 1, H, W) at its full
    resolution, the network run at the scale the vessel rules choose on channel 0
    (:func:`~qsegment.inference.calibrate.calibrated_map`, whose result comes first).

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
    scores = last["outputs"][1:]  # of the last pass: the scale chosen
    h, w = image.shape[:2]
    if scores.shape[1:] != (h, w):  # resized as predict_outputs does with a size
        scores = resize_bilinear(np.ascontiguousarray(scores[None]), (h, w), False)[0]
    return found, scores
