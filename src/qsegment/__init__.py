"""qsegment: ultra-low-power retinal vessel segmentation (Q-Segment, Bonazzi et al. 2023).

The pipeline, one module per stage: :mod:`qsegment.data` -> :mod:`qsegment.models`
-> :mod:`qsegment.engine.train` -> :mod:`qsegment.engine.evaluate`
-> :mod:`qsegment.inference.predict` (``Segmenter``).

The public names below are imported on first use, so ``import qsegment`` (and the
command line's ``--help``) does not pay for importing PyTorch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Prediction": "qsegment.inference.predict",
    "Segmenter": "qsegment.inference.predict",
    "create_model": "qsegment.models",
    "list_models": "qsegment.models",
    "list_pretrained": "qsegment.pretrained",
    "load_model": "qsegment.checkpoint",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'qsegment' has no attribute {name!r}")
