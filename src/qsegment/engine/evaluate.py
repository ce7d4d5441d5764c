"""Evaluation the way the vessel literature does it: full-resolution labels, FOV only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn
from tqdm import tqdm

from ..data import Sample
from ..metrics import best_threshold, evaluate
from .infer import predict_proba


def predict_samples(model: nn.Module, samples: Sequence[Sample], size: int | None = None,
                    progress: bool = False) -> list[np.ndarray]:
    """Probability maps at each sample's full resolution (inferred at ``size`` if given)."""
    model.eval()
    items = tqdm(samples, desc="predict", leave=False, disable=not progress)
    return [predict_proba(model, s.image, size) for s in items]


def score(probs: Sequence[np.ndarray], samples: Sequence[Sample], threshold: float = 0.5
          ) -> dict:
    """Metrics of probability maps against the samples' labels inside their FOV."""
    return evaluate(probs, [s.label for s in samples], [s.fov for s in samples], threshold)


def train_threshold(model: nn.Module, train: Sequence[Sample], size: int | None = None,
                    progress: bool = False) -> float:
    """The Dice-maximizing threshold on the training images (never on validation)."""
    probs = predict_samples(model, train, size, progress)
    return best_threshold(probs, [s.label for s in train], [s.fov for s in train])


def second_observer(samples: Sequence[Sample], second: Sequence[Sample]) -> dict:
    """The human reference: second observer's binary map scored against the first's."""
    probs = [s.label.astype(np.float32) for s in second]
    return score(probs, samples, threshold=0.5)
