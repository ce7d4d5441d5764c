"""Training data on the PyTorch side: network inputs, augmentation and the torch Dataset.

What lies on disk (datasets, splits, labels, FOV masks) is :mod:`qsegment.datasets`.
"""

from .dataset import SegmentationDataset, resize_sample, to_tensors
from .inputs import calibration_images, to_input, training_inputs
from .transforms import paper_augmentation

__all__ = [
    "SegmentationDataset",
    "calibration_images",
    "paper_augmentation",
    "resize_sample",
    "to_input",
    "to_tensors",
    "training_inputs",
]
