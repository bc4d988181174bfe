"""Image datasets as LightningDataModules that hold each split as one uint8 tensor.

``ImageDataModule`` splits any images, (N, channels, height, width), and hands Lightning their
batches (``aelab.data.batches``: sliced on the device, or a standard ``DataLoader``); a dataset
is a subclass that reads its train and test splits: the MNIST family here, a folder of images and
an array file in ``aelab.data.own``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from aelab.constraints import NonNegativeInt, PositiveInt
from aelab.data.batches import DeviceBatchLoader, normalized_batch
from aelab.data.datasets import SPLIT_FILES, check_files, dataset_spec, download, missing_data_message
from aelab.data.idx import read_split
from aelab.errors import ConfigError, DataError, is_int
from aelab.registry import register


class ImageDataModule(L.LightningDataModule):
    """Images (uint8, (N, C, H, W)) and integer labels, split into ``train``, ``val`` and ``test``,
    held as tensors; a subclass reads the dataset's own ``train`` and ``test`` splits (``read``)
    and names its classes.

    ``val`` is the test split (as in the article, so val MSE is comparable with it) unless
    ``val_size`` carves a seeded validation set out of the training split; ``test`` never enters
    training. ``keep_classes`` keeps those classes of the training split only.

    A subclass lists these settings in its own signature (and its own after them), then calls
    ``save_hyperparameters``: they are its ``hparams``, what a checkpoint rebuilds it from.
    """

    # what the summary and the run's tables call the dataset: its configs/data option
    dataset = ""
    # the dataset's name in prose (``Fashion-MNIST``), and the folder or file it is read from: a
    # subclass's constructor sets both (``name``, the summary and the data checks read them)
    title: str
    source: Path

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._official: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # training batches of the current epoch already done when the checkpoint resumed from was saved
        self._resume_batches = 0

    @property
    def settings(self) -> Any:
        return self.hparams  # as AutoEncoder.settings

    @property
    def resident(self) -> bool:
        """Whether training batches are sliced from tensors on the training device (``data.loader=device``)."""
        return self.settings.loader == "device"

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def name(self) -> str:  # type: ignore[override]  # Lightning's optional attribute, here always known
        """What the data is, for titles and tables: e.g. ``Fashion-MNIST`` or ``MNIST (mnist-10k)``."""
        return self.title

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image, what the model is built for."""
        images, _ = self.official_split("train")
        return tuple(images.shape[1:])  # type: ignore[return-value]  # four dimensions, by read()

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The dataset's own ``train`` and ``test`` splits: images uint8 (N, C, H, W), labels (N,)
        in 0 .. len(classes) - 1."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self._official = {name: _as_tensors(*split) for name, split in self.read().items()}
        train_images, train_labels = self._official["train"]
        hp = self.settings
        if hp.val_size is not None:
            if hp.val_size >= len(train_images):
                raise ConfigError(
                    f"data.val_size={hp.val_size} leaves no training images: the training split holds "
                    f"{len(train_images)}; use a smaller data.val_size"
                )
            # Seeded and independent of keep_classes, so runs with one seed validate on one set.
            order = np.random.default_rng(hp.seed).permutation(len(train_images))
            val_index, train_index = np.sort(order[: hp.val_size]), np.sort(order[hp.val_size :])
            val = train_images[val_index], train_labels[val_index]
            train_images, train_labels = train_images[train_index], train_labels[train_index]
        else:
            val = self._official["test"]
        if hp.keep_classes is not None:
            train_images, train_labels = self._kept(train_images, train_labels)
        self.splits = {"train": (train_images, train_labels), "val": val, "test": self._official["test"]}

    def check_keep_classes(self) -> None:
        """``keep_classes`` names classes of this dataset (known once ``classes`` is)."""
        keep_classes, n = self.settings.keep_classes, len(self.classes)
        if keep_classes is not None and not (keep_classes and all(is_int(c) and 0 <= c < n for c in keep_classes)):
            raise ConfigError(
                f"data.keep_classes={list(keep_classes)} is invalid: list class indices 0-{n - 1} "
                f"of {self.title}, e.g. data.keep_classes=[{min(3, n - 1)}]"
            )

    def _kept(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_keep_classes()
        keep_classes = self.settings.keep_classes
        keep = torch.isin(labels, torch.tensor([int(c) for c in keep_classes]))
        if not keep.any():
            held = sorted(set(labels.tolist()))
            raise ConfigError(
                f"data.keep_classes={list(keep_classes)} keeps none of the {len(labels)} training images: "
                f"they hold classes {held}; keep one of those, e.g. data.keep_classes=[{held[0]}]"
            )
        return images[keep], labels[keep]

    def split(self, name: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8) and labels of ``train``, ``val`` or ``test``, cached on ``device``."""
        self.setup()
        key = (name, torch.device(device))
        if key not in self._on_device:
            images, labels = self.splits[name]
            self._on_device[key] = (images.to(key[1]), labels.to(key[1]))
        return self._on_device[key]

    def official_split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (uint8) and labels of the dataset's own ``train`` or ``test`` split, in its order,
        whatever ``val_size`` and ``keep_classes`` take from them: what an audit's indices count."""
        self.setup()
        return self._official[name]

    def _loader(self, split: str, shuffle: bool):
        hp = self.settings
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.resident:
            images, labels = self.split(split, device)
            rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            loader = DeviceBatchLoader(
                images, labels, hp.batch_size, shuffle=shuffle, seed=hp.seed, rank=rank, world_size=world_size
            )
            if split == "train":
                loader.skip_once, self._resume_batches = self._resume_batches, 0
            return loader
        return DataLoader(
            TensorDataset(*self.splits[split]),
            batch_size=hp.batch_size,
            collate_fn=normalized_batch,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(hp.seed) if shuffle else None,
        )

    # A checkpoint saved mid-epoch (Ctrl-C, SIGTERM) records how many of the epoch's batches were
    # done; the shuffle is a function of (seed, epoch), so skipping them resumes exactly.
    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        # a save at the end of an epoch resumes at the start of the next one, with nothing to skip
        return {"epoch_batches_done": done if done < trainer.num_training_batches else 0}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_batches = int(state_dict.get("epoch_batches_done", 0))

    def train_dataloader(self):
        # debug=overfit (trainer.overfit_batches) must see the same batches every epoch: Lightning
        # turns off a DataLoader's shuffle itself, but cannot see into the device loader
        overfitting = self.trainer is not None and bool(self.trainer.overfit_batches)
        return self._loader("train", shuffle=not overfitting)

    def val_dataloader(self):
        return self._loader("val", shuffle=False)

    def test_dataloader(self):
        return self._loader("test", shuffle=False)


@register
class MNISTLikeDataModule(ImageDataModule):
    """Any dataset of the MNIST family (``dataset=mnist|fashion_mnist|kmnist``): 1x28x28 grey
    images in four IDX files, downloaded through torchvision where missing."""

    def __init__(
        self,
        data_dir: str,
        dataset: str = "mnist",
        batch_size: PositiveInt = 256,
        loader: Literal["device", "dataloader"] = "device",
        num_workers: NonNegativeInt = 0,
        keep_classes: Sequence[int] | None = None,
        val_size: PositiveInt | None = None,
        seed: NonNegativeInt = 0,
        download: bool = True,
        mirrors: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.spec = dataset_spec(dataset)
        self.dataset = self.spec.name
        self.title = self.spec.title
        # Absolute, so a checkpoint says where its data was whatever directory reads it later.
        data_dir = str(Path(data_dir).resolve())
        self.save_hyperparameters(logger=False)
        self.source = Path(data_dir)
        self.check_keep_classes()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def name(self) -> str:  # type: ignore[override]  # Lightning's optional attribute, here always known
        folder = self.source.name
        plain = {self.spec.name, self.spec.torchvision_class.lower(), self.spec.name.replace("_", "-"), "data"}
        return self.title if folder.lower() in plain else f"{self.title} ({folder})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.shape  # known without reading the files

    @property
    def raw_dir(self) -> Path:
        return self.spec.raw_dir(self.source)

    def prepare_data(self) -> None:
        missing = check_files(self.spec, self.source)
        if not missing:
            return
        if not self.settings.download:
            raise DataError(
                missing_data_message(self.spec, self.source, f"{missing[0]} is missing and data.download=false")
            )
        download(self.spec, self.source, self.settings.mirrors)

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        self.prepare_data()
        official = {}
        for name in ("train", "test"):
            images, labels = read_split(self.raw_dir, name, self.spec)
            if not len(images):
                raise DataError(
                    f"{self.raw_dir / SPLIT_FILES[name][0]} (plain or .gz) holds 0 images: the {name} split is empty; "
                    "put the dataset's own file back, or point at a complete copy: data.data_dir=/path"
                )
            official[name] = images.reshape(-1, *self.spec.shape), labels
        return official


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # np.frombuffer arrays are read-only; torch needs its own writable copy.
    return torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64))
