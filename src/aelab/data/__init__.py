"""Data: image datasets as datamodules: the MNIST family (IDX files), a folder of images and an
array file (``own``).

No module outside this package names a dataset: the rest of aelab gets a datamodule from the
config (``instantiate(cfg.data)``) or from a checkpoint (``aelab.runs.open_run``).
"""

from aelab.data.batches import DeviceBatchLoader, normalize, normalized_rows
from aelab.data.datamodule import ImageDataModule, MNISTLikeDataModule
from aelab.data.datasets import DATASETS, DatasetSpec
from aelab.data.own import ArrayDataModule, ImageFolderDataModule

__all__ = [
    "DATASETS",
    "ArrayDataModule",
    "DatasetSpec",
    "DeviceBatchLoader",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTLikeDataModule",
    "normalize",
    "normalized_rows",
]
