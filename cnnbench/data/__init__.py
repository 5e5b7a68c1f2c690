"""Data: datasets in memory (or streamed from folders), batched transforms, statistics."""

from .datasets import (
    DataSplits,
    ImageFiles,
    ImageTensors,
    MappedImages,
    dataset_names,
    load_dataset,
)
from .loader import TensorLoader
from .stats import channel_stats
from .transforms import BatchTransform, build_transforms

__all__ = [
    "BatchTransform",
    "DataSplits",
    "ImageFiles",
    "ImageTensors",
    "MappedImages",
    "TensorLoader",
    "build_transforms",
    "channel_stats",
    "dataset_names",
    "load_dataset",
]
