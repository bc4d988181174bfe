"""Data: the MNIST family of datasets, their IDX files, and the datamodule that serves them.

No module outside this package names a dataset: the rest of aelab gets a datamodule from the
config (``instantiate(cfg.data)``) or from a checkpoint (``aelab.runs.open_run``).
"""

from aelab.data.datamodule import DeviceBatchLoader, MNISTLikeDataModule, normalize, normalized_rows
from aelab.data.datasets import DATASETS, DatasetSpec

__all__ = ["DATASETS", "DatasetSpec", "DeviceBatchLoader", "MNISTLikeDataModule", "normalize", "normalized_rows"]
