"""Data: CHASE_DB1 loading, FOV masks, augmentation and the PyTorch dataset."""

from .chasedb1 import DatasetError, Sample, Split, default_data_dir, load_sample, load_split, scan
from .dataset import SegmentationDataset, resize_sample, to_tensors
from .fov import fov_mask
from .transforms import paper_augmentation

__all__ = [
    "DatasetError",
    "Sample",
    "SegmentationDataset",
    "Split",
    "default_data_dir",
    "fov_mask",
    "load_sample",
    "load_split",
    "paper_augmentation",
    "resize_sample",
    "scan",
    "to_tensors",
]
