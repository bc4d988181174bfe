"""The MNIST family as a LightningDataModule that keeps each split as one uint8 tensor on the device.

At this model size the article's per-image PIL -> ToTensor -> Normalize -> .to(device) path costs
more than the arithmetic, so batches are sliced from resident tensors instead.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from aelab.data.datasets import dataset_spec, download, missing_data_message, missing_files
from aelab.data.idx import read_split
from aelab.errors import ConfigError, DataError, check_positive_int, is_int
from aelab.registry import register

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


# A chunk of consecutive training batches (DeviceBatchLoader with steps_per_call > 1), as a plain
# dict so Lightning's batch transfer passes it through: the resident split, the chunk's positions in
# the epoch's order, and each batch's bounds within them. Batches are gathered as they are optimised
# (``batches_in``), and a CUDA graph reads the same gather from a static copy of the positions
# (aelab.models.step_graph).
IMAGES, LABELS, INDEX, BOUNDS = "images", "labels", "index", "bounds"
# data.steps_per_call=auto: one call per epoch on a GPU (where the epoch is one CUDA graph), chunks
# of 16 on the CPU, where longer ones measure no faster (docs/benchmarks.md)
CPU_STEPS_PER_CALL = 16
STEPS_PER_CALL_WORDS = ("auto", "epoch")


def is_chunk(batch: Any) -> bool:
    return isinstance(batch, dict)


def batches_in(batch: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches one ``training_step`` call optimises on: a chunk's, or the one given."""
    if not is_chunk(batch):
        yield batch
        return
    images, labels, index = batch[IMAGES], batch[LABELS], batch[INDEX]
    for first, end in itertools.pairwise(batch[BOUNDS]):
        positions = index[first:end]
        yield normalize(images[positions]), labels[positions]


def steps_in(batch: Any) -> int:
    return len(batch[BOUNDS]) - 1 if is_chunk(batch) else 1


class DeviceBatchLoader:
    """Batches sliced from uint8 tensors that already live on the training device.

    The shuffle order depends only on ``(seed, epoch)``: Lightning calls ``sampler.set_epoch``
    before every epoch, also after a resume, so a resumed run sees the same batches as an
    uninterrupted one. The last partial batch is kept, like ``DataLoader(drop_last=False)``.

    With ``steps_per_call`` > 1 each item is a chunk (``IMAGES``, ``LABELS``, ``INDEX``, ``BOUNDS``)
    of that many consecutive batches, which the model's ``training_step`` optimises on one after
    the other, so Lightning's per-step machinery runs once per chunk instead of once per batch.

    Under DDP (``world_size`` > 1) each process takes one contiguous shard of the epoch's order
    (``shard_bounds``): every image once per epoch across the processes, none repeated (unlike
    ``DistributedSampler``, which pads with repeats), and the same number of batches in every
    process, which DDP's collectives need.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        steps_per_call: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) < world_size:
            raise ConfigError(
                f"{len(images)} images cannot be shared by {world_size} processes: every process needs at "
                f"least one; use fewer trainer.devices"
            )
        if batch_size == 1 and len(images) % world_size:
            # shards one image apart cannot make the same number of one-image batches
            raise ConfigError(
                f"data.batch_size=1 cannot split {len(images)} images evenly over {world_size} processes; "
                f"use data.batch_size=2 or more"
            )
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.steps_per_call = steps_per_call
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # batches (not chunks) to leave out of the next pass only: the part of an epoch done
        # before a resume
        self.skip_once = 0

    # Lightning inspects ``batch_sampler`` on anything that has a ``sampler``.
    batch_sampler = None

    @property
    def sampler(self) -> DeviceBatchLoader:
        # Lightning looks for ``dataloader.sampler.set_epoch``; this loader is its own sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.images) / self.world_size) / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.batches_per_epoch / self.steps_per_call)

    def __iter__(self) -> Iterator[Any]:
        n = len(self.images)
        start, bounds = shard_bounds(n, self.batch_size, self.rank, self.world_size)
        bounds = bounds[self.skip_once :]
        self.skip_once = 0
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        shard = order[start : start + bounds[-1]]
        if self.steps_per_call == 1:
            for first, end in itertools.pairwise(bounds):
                positions = shard[first:end]
                yield normalize(self.images[positions]), self.labels[positions]
            return
        for i in range(0, len(bounds) - 1, self.steps_per_call):
            chunk = bounds[i : i + self.steps_per_call + 1]
            yield {
                IMAGES: self.images,
                LABELS: self.labels,
                INDEX: shard[chunk[0] : chunk[-1]],
                BOUNDS: tuple(b - chunk[0] for b in chunk),
            }


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


class NormalizedImages(Dataset):
    """Per-sample access for the standard ``DataLoader`` path (data that does not fit on device)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return normalize(self.images[index : index + 1])[0], self.labels[index]


@register
class MNISTLikeDataModule(L.LightningDataModule):
    """Any dataset of the MNIST family (``dataset=mnist|fashion_mnist|kmnist``) as resident tensors.

    Splits: ``train``; ``val``, which is the official test split (as in the article, so val MSE is
    comparable with it) unless ``val_size`` carves a seeded validation set out of the training split;
    and ``test``, the official test split, which never enters training.
    """

    def __init__(
        self,
        data_dir: str,
        dataset: str = "mnist",
        batch_size: int = 256,
        loader: str = "device",
        num_workers: int = 0,
        keep_classes: Sequence[int] | None = None,
        val_size: int | None = None,
        seed: int = 0,
        download: bool = True,
        mirrors: Sequence[str] | None = None,
        steps_per_call: int | str = "auto",
    ) -> None:
        super().__init__()
        self.spec = dataset_spec(dataset)
        if loader not in LOADERS:
            raise ConfigError(f"data.loader={loader!r} is not one of {', '.join(LOADERS)}")
        check_positive_int("data.batch_size", batch_size)
        check_positive_int("data.val_size", val_size, optional=True)
        if steps_per_call not in STEPS_PER_CALL_WORDS:
            check_positive_int("data.steps_per_call", steps_per_call)
        if keep_classes is not None:
            n = len(self.spec.classes)
            if not keep_classes or not all(is_int(c) and 0 <= c < n for c in keep_classes):
                raise ConfigError(
                    f"data.keep_classes={list(keep_classes)} is invalid: list class indices 0-{n - 1} "
                    f"of {self.spec.title}, e.g. data.keep_classes=[3]"
                )
            keep_classes = [int(c) for c in keep_classes]
        # Absolute, so a checkpoint says where its data was whatever directory reads it later.
        data_dir = str(Path(data_dir).resolve())
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(data_dir)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._official: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # training batches of the current epoch already done when the checkpoint resumed from was saved
        self._resume_batches = 0
        # batches per training_step call of the training loader in use, and why 1 where that
        # is not what data.steps_per_call asks (read by the model's one line on its training path)
        self.train_steps_per_call = 1
        self._batches_per_epoch = 0
        self.steps_per_call_note = ""

    @property
    def settings(self) -> Any:
        """``hparams``, read as attributes (Lightning types ``hparams`` as a plain mapping)."""
        return self.hparams

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def name(self) -> str:  # type: ignore[override]  # Lightning's optional attribute, here always known
        """What the data is, for titles and tables: e.g. ``Fashion-MNIST`` or ``MNIST (mnist-10k)``."""
        folder = self.data_dir.name
        plain = {self.spec.name, self.spec.torchvision_class.lower(), self.spec.name.replace("_", "-"), "data"}
        return self.spec.title if folder.lower() in plain else f"{self.spec.title} ({folder})"

    @property
    def raw_dir(self) -> Path:
        return self.spec.raw_dir(self.data_dir)

    def with_all_classes(self) -> MNISTLikeDataModule:
        """The same data without ``keep_classes``: a one-class run's latent space is measured
        against every class."""
        if self.settings.keep_classes is None:
            return self
        return type(self)(**{**self.hparams, "keep_classes": None})

    def prepare_data(self) -> None:
        missing = missing_files(self.raw_dir)
        if not missing:
            return
        if not self.settings.download:
            raise DataError(
                missing_data_message(self.spec, self.data_dir, f"{missing[0]} is missing and data.download=false")
            )
        download(self.spec, self.data_dir, self.settings.mirrors)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.prepare_data()
        n_classes = len(self.spec.classes)
        self._official = {name: _as_tensors(*read_split(self.raw_dir, name, n_classes)) for name in ("train", "test")}
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
            keep = torch.isin(train_labels, torch.tensor(hp.keep_classes))
            train_images, train_labels = train_images[keep], train_labels[keep]
        self.splits = {"train": (train_images, train_labels), "val": val, "test": self._official["test"]}

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
        """Images (uint8) and labels of the dataset's own ``train`` or ``test`` file, in file order,
        whatever ``val_size`` and ``keep_classes`` take from them: what an audit's indices count."""
        self.setup()
        return self._official[name]

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _loader(self, split: str, shuffle: bool):
        hp = self.settings
        if hp.loader == "device":
            images, labels = self.split(split, self._device())
            trainer = self.trainer
            loader = DeviceBatchLoader(
                images,
                labels,
                hp.batch_size,
                shuffle=shuffle,
                seed=hp.seed,
                rank=trainer.global_rank if trainer is not None else 0,
                world_size=trainer.world_size if trainer is not None else 1,
            )
            if split == "train":
                loader.steps_per_call = self._chunk_steps(loader.batches_per_epoch)
                loader.skip_once, self._resume_batches = self._resume_batches, 0
                self.train_steps_per_call = loader.steps_per_call
                self._batches_per_epoch = loader.batches_per_epoch
            return loader
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

    def _chunk_steps(self, batches_per_epoch: int) -> int:
        """``steps_per_call`` as a number, where it keeps the run what it would be one batch per
        call: not when the Trainer counts batches itself (debug=fdr|overfit|limit, max_steps)."""
        wanted = self.settings.steps_per_call
        if wanted == "auto":
            wanted = "epoch" if self._device().type == "cuda" else CPU_STEPS_PER_CALL
        if wanted == "epoch":
            wanted = batches_per_epoch
        trainer = self.trainer
        self.steps_per_call_note = ""
        if wanted == 1 or trainer is None:
            return 1
        counting = {
            "trainer.fast_dev_run": bool(getattr(trainer, "fast_dev_run", False)),
            "trainer.overfit_batches": bool(getattr(trainer, "overfit_batches", 0)),
            "trainer.limit_train_batches": trainer.limit_train_batches not in (1.0, None),
            "trainer.val_check_interval": trainer.val_check_interval not in (1.0, None),
            "trainer.max_steps": trainer.max_steps not in (-1, None),
            # DDP prepares its gradient reduction once per training_step call, for one backward
            "trainer.strategy (DDP)": trainer.world_size > 1,
        }
        reasons = [key for key, set_ in counting.items() if set_]
        if reasons:
            self.steps_per_call_note = f"{reasons[0]} counts batches"
            return 1
        return min(wanted, batches_per_epoch)

    # A checkpoint saved mid-epoch (Ctrl-C, SIGTERM) records how many of the epoch's batches were
    # done; the shuffle is a function of (seed, epoch), so skipping them resumes exactly. Counted in
    # batches, not chunks, so the run may resume with another data.steps_per_call. The model's own
    # count (AutoEncoder.epoch_batches_done) includes a chunk Lightning had not marked completed
    # when a Ctrl-C stopped the run right after it.
    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = getattr(trainer.lightning_module, "epoch_batches_done", None)
        if done is None:
            done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed) * self.train_steps_per_call
        # a save at the end of an epoch resumes at the start of the next one, with nothing to skip
        return {"epoch_batches_done": done if done < self.train_batches_per_epoch() else 0}

    def train_batches_per_epoch(self) -> int:
        """Training batches (optimiser steps) per epoch of the running fit, however many of them one
        training_step call takes: the Trainer counts calls, which it may limit, and the last chunk
        of an epoch is shorter."""
        trainer = self.trainer
        assert trainer is not None, "asked outside a fit"
        # the loaders here have a length, so the Trainer's count is finite
        per_epoch = int(trainer.num_training_batches) * self.train_steps_per_call
        return min(per_epoch, self._batches_per_epoch) if self._batches_per_epoch else per_epoch

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


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # np.frombuffer arrays are read-only; torch needs its own writable copy.
    return torch.from_numpy(np.array(images)), torch.from_numpy(labels.astype(np.int64))
