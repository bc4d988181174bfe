"""Image datasets as LightningDataModules that keep each split as one uint8 tensor on the device.

At this model size the article's per-image PIL -> ToTensor -> Normalize -> .to(device) path costs
more than the arithmetic, so batches are sliced from resident tensors instead. ``ImageDataModule``
does that for any images, (N, channels, height, width); a dataset is a subclass that reads its
train and test splits: the MNIST family here, a folder of images and an array file in
``aelab.data.own``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from aelab.constraints import NonNegativeInt, PositiveInt
from aelab.data.datasets import SPLIT_FILES, check_files, dataset_spec, download, missing_data_message
from aelab.data.idx import read_split
from aelab.errors import ConfigError, DataError, is_int
from aelab.registry import register


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C, H, W) in [-1, 1], each channel alike.

    The same float32 operations as ``ToTensor()`` then ``Normalize([0.5], [0.5])``, so the
    values are bit-identical to the article's pipeline.
    """
    return images.float().div_(255).sub_(0.5).div_(0.5)


def normalized_rows(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C*H*W) in [-1, 1]: the flat form linear baselines take."""
    return normalize(images).flatten(1).numpy()


@dataclass(eq=False, repr=False)
class DeviceBatchLoader:
    """Batches sliced from uint8 tensors that already live on the training device.

    The shuffle order depends only on ``(seed, epoch)``: Lightning calls ``sampler.set_epoch``
    before every epoch, also after a resume, so a resumed run sees the same batches as an
    uninterrupted one. The last partial batch is kept, like ``DataLoader(drop_last=False)``.

    Under DDP (``world_size`` > 1) each process takes one contiguous shard of the epoch's order
    (``shard_bounds``): every image once per epoch across the processes, none repeated (unlike
    ``DistributedSampler``, which pads with repeats), and the same number of batches in every
    process, which DDP's collectives need.
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    _: KW_ONLY
    shuffle: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    epoch: int = field(default=0, init=False)
    # batches (not chunks) to leave out of the next pass only: the part of an epoch done
    # before a resume
    skip_once: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        images, world_size = self.images, self.world_size
        if len(images) < world_size:
            raise ConfigError(
                f"{len(images)} images cannot be shared by {world_size} processes: every process needs at "
                f"least one; use fewer trainer.devices"
            )
        if self.batch_size == 1 and len(images) % world_size:
            # shards one image apart cannot make the same number of one-image batches
            raise ConfigError(
                f"data.batch_size=1 cannot split {len(images)} images evenly over {world_size} processes; "
                f"use data.batch_size=2 or more"
            )

    # Lightning inspects ``batch_sampler`` on anything that has a ``sampler``.
    batch_sampler = None

    @property
    def sampler(self) -> DeviceBatchLoader:
        # Lightning looks for ``dataloader.sampler.set_epoch``; this loader is its own sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.images) / self.world_size) / self.batch_size)

    def epoch_plan(self) -> tuple[torch.Tensor, list[int]]:
        """This epoch's positions for this process, in order, and its batches' bounds within them
        (less the batches a resume skips): what ``__iter__`` slices, and what the fast path
        (``aelab.fast``) slices in chunks of batches."""
        n = len(self.images)
        start, bounds = shard_bounds(n, self.batch_size, self.rank, self.world_size)
        bounds = bounds[self.skip_once :]
        self.skip_once = 0
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        return order[start : start + bounds[-1]], bounds

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a generator, so the plan (the shuffle, skip_once) is made at the first batch: Lightning calls
        # iter() before set_epoch (FitLoop.setup_data), and calls it again at a later epoch's start
        yield from sliced_batches(self.images, self.labels, *self.epoch_plan())


def sliced_batches(
    images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, bounds: Sequence[int]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches at ``order[first:end]`` for each pair of consecutive ``bounds``."""
    for first, end in itertools.pairwise(bounds):
        positions = order[first:end]
        yield normalize(images[positions]), labels[positions]


def shard_bounds(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, list[int]]:
    """Where process ``rank`` of ``world_size`` reads an epoch's order of ``n`` images: its shard's
    first position, and its batches' bounds within the shard.

    Shards are contiguous and differ in size by at most one. Every process gets
    ``ceil(ceil(n / world_size) / batch_size)`` batches of ``batch_size`` images, the last one
    shorter; a shard one image short of that takes the image from its second-to-last batch, so no
    batch is empty. With one process: the batches ``DataLoader(drop_last=False)`` would make.
    """
    start, end = rank * n // world_size, (rank + 1) * n // world_size
    size = end - start
    count = math.ceil(math.ceil(n / world_size) / batch_size)
    bounds = [min(i * batch_size, size - (count - i)) for i in range(count)] + [size]
    return start, bounds


def normalized_batch(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``collate_fn`` of the standard ``DataLoader`` path (data that does not fit on device)."""
    images, labels = default_collate(samples)
    return normalize(images), labels


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
    def title(self) -> str:
        """The dataset's name in prose: ``Fashion-MNIST``."""
        raise NotImplementedError

    @property
    def source(self) -> Path:
        """The folder or file the data is read from."""
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

    def with_all_classes(self) -> ImageDataModule:
        """The same data without ``keep_classes``: a one-class run's latent space is measured
        against every class."""
        if self.settings.keep_classes is None:
            return self
        return type(self)(**{**self.hparams, "keep_classes": None})

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
            train_images, train_labels = self._kept(train_images, train_labels, hp.keep_classes)
        self.splits = {"train": (train_images, train_labels), "val": val, "test": self._official["test"]}

    def check_keep_classes(self) -> None:
        """``keep_classes`` names classes of this dataset (known once ``classes`` is)."""
        keep_classes, n = self.settings.keep_classes, len(self.classes)
        if keep_classes is not None and not (keep_classes and all(is_int(c) and 0 <= c < n for c in keep_classes)):
            raise ConfigError(
                f"data.keep_classes={list(keep_classes)} is invalid: list class indices 0-{n - 1} "
                f"of {self.title}, e.g. data.keep_classes=[{min(3, n - 1)}]"
            )

    def _kept(
        self, images: torch.Tensor, labels: torch.Tensor, keep_classes: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_keep_classes()
        keep = torch.isin(labels, torch.tensor([int(c) for c in keep_classes]))
        if not keep.any():
            held = sorted(set(labels.tolist()))
            raise ConfigError(
                f"data.keep_classes={list(keep_classes)} keeps none of the {len(labels)} training images: "
                f"they hold classes {held}; keep one of those, e.g. data.keep_classes=[{held[0]}]"
            )
        return images[keep], labels[keep]

    def content_hash(self) -> str:
        """A digest of the images and labels of every split: the data's identity, whatever folder
        or file format (plain or .gz) it was read from."""
        self.setup()
        digest = hashlib.blake2b(digest_size=16)
        for name in ("train", "val", "test"):
            for tensor in self.splits[name]:
                digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

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

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, shuffle: bool):
        hp = self.settings
        if self.resident:
            images, labels = self.split(split, self._device())
            trainer = self.trainer
            rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            loader = DeviceBatchLoader(
                images, labels, hp.batch_size, shuffle=shuffle, seed=hp.seed, rank=rank, world_size=world_size
            )
            if split == "train":
                loader.skip_once, self._resume_batches = self._resume_batches, 0
            return loader
        images, labels = self.splits[split]
        return DataLoader(
            TensorDataset(images, labels),
            batch_size=hp.batch_size,
            collate_fn=normalized_batch,
            shuffle=shuffle,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
            pin_memory=self._device().type == "cuda",
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
        # Absolute, so a checkpoint says where its data was whatever directory reads it later.
        data_dir = str(Path(data_dir).resolve())
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(data_dir)
        self.check_keep_classes()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def source(self) -> Path:
        return self.data_dir

    @property
    def name(self) -> str:  # type: ignore[override]  # Lightning's optional attribute, here always known
        folder = self.data_dir.name
        plain = {self.spec.name, self.spec.torchvision_class.lower(), self.spec.name.replace("_", "-"), "data"}
        return self.spec.title if folder.lower() in plain else f"{self.spec.title} ({folder})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.spec.shape  # known without reading the files

    @property
    def raw_dir(self) -> Path:
        return self.spec.raw_dir(self.data_dir)

    def prepare_data(self) -> None:
        missing = check_files(self.spec, self.data_dir)
        if not missing:
            return
        if not self.settings.download:
            raise DataError(
                missing_data_message(self.spec, self.data_dir, f"{missing[0]} is missing and data.download=false")
            )
        download(self.spec, self.data_dir, self.settings.mirrors)

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
