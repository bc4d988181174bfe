"""MNIST as a LightningDataModule that keeps each split as one uint8 tensor on the training device.

At this model size the article's per-image PIL -> ToTensor -> Normalize -> .to(device) path costs
more than the arithmetic, so batches are sliced from resident tensors instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aelab.errors import ConfigError, DataError, is_positive_int
from aelab.idx import find_idx, read_mnist_split

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
LOADERS = ("device", "dataloader")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [-1, 1].

    The same float32 operations as ``ToTensor()`` then ``Normalize([0.5], [0.5])``, so the
    values are bit-identical to the article's pipeline.
    """
    return images.unsqueeze(1).float().div_(255).sub_(0.5).div_(0.5)


def normalized_rows(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [-1, 1]: the flat form linear baselines take."""
    return normalize(images).flatten(1).numpy()


class DeviceBatchLoader:
    """Batches sliced from uint8 tensors that already live on the training device.

    The shuffle order depends only on ``(seed, epoch)``: Lightning calls ``sampler.set_epoch``
    before every epoch, also after a resume, so a resumed run sees the same batches as an
    uninterrupted one. The last partial batch is kept, like ``DataLoader(drop_last=False)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
    ) -> None:
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    # Lightning inspects ``batch_sampler`` on anything that has a ``sampler``.
    batch_sampler = None

    @property
    def sampler(self) -> DeviceBatchLoader:
        # Lightning looks for ``dataloader.sampler.set_epoch``; this loader is its own sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.images.device)
            for start in range(0, n, self.batch_size):
                index = order[start : start + self.batch_size]
                yield normalize(self.images[index]), self.labels[index]
        else:
            for start in range(0, n, self.batch_size):
                end = start + self.batch_size
                yield normalize(self.images[start:end]), self.labels[start:end]


class NormalizedImages(Dataset):
    """Per-sample access for the standard ``DataLoader`` path (data that does not fit on device)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(self.images[index : index + 1])[0], self.labels[index]


def missing_data_message(data_dir: Path, reason: str) -> str:
    raw = Path(data_dir) / "MNIST" / "raw"
    files = ", ".join(MNIST_FILES)
    return (
        f"MNIST not found in {raw} and it could not be downloaded ({reason}). "
        f"Put the four files ({files}, plain or .gz) in {raw}, "
        f"or point at a folder that has them: data.data_dir=/path (or AELAB_DATA_DIR=/path)"
    )


class MNISTDataModule(L.LightningDataModule):
    """MNIST train split for training; the official test split for validation and test.

    The test split is never mixed into training: validation *is* the official test split, as in
    the article, so the reported val MSE is comparable with it.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 256,
        loader: str = "device",
        num_workers: int = 0,
        keep_digits: Sequence[int] | None = None,
        seed: int = 0,
        download: bool = True,
    ) -> None:
        super().__init__()
        if loader not in LOADERS:
            raise ConfigError(f"data.loader={loader!r} is not one of {', '.join(LOADERS)}")
        if not is_positive_int(batch_size):
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        if keep_digits is not None:
            keep_digits = [int(d) for d in keep_digits]
            if not keep_digits or any(d < 0 or d > 9 for d in keep_digits):
                raise ConfigError(f"data.keep_digits must list digits 0-9, got {keep_digits}")
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(data_dir)
        self.raw_dir = self.data_dir / "MNIST" / "raw"
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def has_raw_files(self) -> bool:
        try:
            for name in MNIST_FILES:
                find_idx(self.raw_dir, name)
        except FileNotFoundError:
            return False
        return True

    def prepare_data(self) -> None:
        if self.has_raw_files():
            return
        if not self.hparams.download:
            raise DataError(missing_data_message(self.data_dir, "data.download=false"))
        # torchvision fetches the official archives and refuses any whose md5 differs.
        from torchvision.datasets import MNIST

        try:
            for train in (True, False):
                MNIST(str(self.data_dir), train=train, download=True)
        except Exception as err:  # noqa: BLE001 - any download failure means the same to the user
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise DataError(missing_data_message(self.data_dir, reason)) from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.has_raw_files():
            self.prepare_data()
        train_images, train_labels = read_mnist_split(self.raw_dir, "train")
        test_images, test_labels = read_mnist_split(self.raw_dir, "t10k")
        if self.hparams.keep_digits is not None:
            keep = np.isin(train_labels, self.hparams.keep_digits)
            train_images, train_labels = train_images[keep], train_labels[keep]
        self.splits = {
            "train": _as_tensors(train_images, train_labels),
            "test": _as_tensors(test_images, test_labels),
        }

    def split(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8) and labels of ``train`` or ``test``, cached on ``device``."""
        key = (name, torch.device(device))
        if key not in self._on_device:
            images, labels = self.splits[name]
            self._on_device[key] = (images.to(key[1]), labels.to(key[1]))
        return self._on_device[key]

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, shuffle: bool):
        hp = self.hparams
        if hp.loader == "device":
            images, labels = self.split(split, self._device())
            return DeviceBatchLoader(images, labels, hp.batch_size, shuffle=shuffle, seed=hp.seed)
        images, labels = self.splits[split]
        return DataLoader(
            NormalizedImages(images, labels),
            batch_size=hp.batch_size,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=self._device().type == "cuda",
            generator=torch.Generator().manual_seed(hp.seed) if shuffle else None,
        )

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("test", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # np.frombuffer arrays are read-only; torch needs its own writable copy.
    return torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64))
