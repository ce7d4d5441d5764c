"""Model registry: Q-Segment and the paper's baselines, built by name."""

# Import order is registration order, i.e. list_models() order: keep it unsorted.
# isort: off
from . import qsegment as _qsegment  # noqa: F401  (registers the models)
from . import tnet as _tnet  # noqa: F401
from . import m2unet as _m2unet  # noqa: F401
from . import erfnet as _erfnet  # noqa: F401
from . import mobilenetv3 as _mobilenetv3  # noqa: F401
# isort: on
from ._registry import create_model, describe_model, list_models, register_model
from .base import SegmentationModel, pad_to_multiple
from .erfnet import ERFNet
from .m2unet import M2UNet
from .mobilenetv3 import MobileNetV3SmallLRASPP
from .qsegment import QSegment
from .tnet import TNet

__all__ = [
    "ERFNet",
    "M2UNet",
    "MobileNetV3SmallLRASPP",
    "QSegment",
    "SegmentationModel",
    "TNet",
    "create_model",
    "describe_model",
    "list_models",
    "pad_to_multiple",
    "register_model",
]
