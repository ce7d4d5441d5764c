"""qsegment: ultra-low-power retinal vessel segmentation (Q-Segment, Bonazzi et al. 2023).

The pipeline, one module per stage: :mod:`qsegment.data` -> :mod:`qsegment.models`
-> :mod:`qsegment.engine.train` -> :mod:`qsegment.engine.evaluate`
-> :mod:`qsegment.engine.predict` (``Segmenter``).
"""

from .engine.predict import Prediction, Segmenter
from .models import create_model, list_models
from .pretrained import list_pretrained, load_model

__version__ = "0.1.0"

__all__ = [
    "Prediction",
    "Segmenter",
    "__version__",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_model",
]
