"""A user's own images: a folder of class folders of image files (``data=folder``), or images and
labels as arrays in one ``.npz`` file (``data=arrays``).

Both are read whole into memory as uint8 (N, C, H, W), like MNIST, and split into the ``train``
and ``test`` splits by a seeded fraction (``test_fraction``, ``split_seed``); from there on they
are served like any dataset (``ImageDataModule``: ``val_size``, ``keep_classes``, the device
loader). Each way a folder or a file can be wrong is one line naming it and the fix.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from aelab.constraints import Fraction, NonNegativeInt, PositiveInt
from aelab.data.datamodule import ImageDataModule
from aelab.errors import ConfigError, DataError
from aelab.faults import fault_of
from aelab.registry import register

# what PIL reads that people keep pictures in
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# PIL modes with one channel: such a folder is grey unless data.channels says otherwise
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "F")
# how PIL opens a 16-bit grey PNG or TIFF: 0-65535
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B")
# a float TIFF: 0-1 (or 0-255) grey
FLOAT_MODE = "F"


class OwnImages(ImageDataModule):
    """What the folder and the array file share: the split into train and test, and the classes."""

    _classes: tuple[str, ...] = ()  # read with the images

    @property
    def classes(self) -> tuple[str, ...]:
        if not self._classes:
            self.setup()
        return self._classes

    def split_off_test(self, images: np.ndarray, labels: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``train`` and ``test``: a seeded ``test_fraction`` of the images, the rest, each in the
        order read. ``split_seed``, not ``seed``: runs with other seeds are tested on one set."""
        hp = self.settings
        n = len(images)
        n_test = round(n * hp.test_fraction)
        if not 0 < n_test < n:
            fits = next((f for f in (0.2, 0.25, 0.34, 0.5) if 0 < round(n * f) < n), None)
            fix = f"use e.g. data.test_fraction={fits}" if fits else "give at least 2 images"
            raise ConfigError(
                f"data.test_fraction={hp.test_fraction} of the {n} images of {self.source} leaves "
                f"{n_test} to test and {n - n_test} to train: both need one; {fix}"
            )
        is_test = np.zeros(n, dtype=bool)
        is_test[np.random.default_rng(hp.split_seed).permutation(n)[:n_test]] = True
        return {"train": (images[~is_test], labels[~is_test]), "test": (images[is_test], labels[is_test])}


@register
class ImageFolderDataModule(OwnImages):
    """``data=folder data.root=<dir>``: torchvision's ``ImageFolder`` layout, one folder per class
    (``<root>/<class>/<any name>.png``, classes in name order), or images right in ``root``, one
    class. ``size`` [height, width] resizes and centre-crops every image to it (without it, all
    must share one size); ``channels`` 1 (grey) or 3 (colour), by default grey only if every image is."""

    dataset = "folder"

    def __init__(
        self,
        root: str,
        size: Sequence[PositiveInt] | None = None,
        channels: Literal[1, 3] | None = None,
        test_fraction: Fraction = 0.2,
        split_seed: NonNegativeInt = 0,
        batch_size: PositiveInt = 256,
        loader: Literal["device", "dataloader"] = "device",
        num_workers: NonNegativeInt = 0,
        keep_classes: Sequence[int] | None = None,
        val_size: PositiveInt | None = None,
        seed: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        if size is not None and len(size) != 2:
            raise ConfigError(f"data.size={list(size)} is invalid: give [height, width], e.g. data.size=[32,32]")
        size = None if size is None else list(size)  # a plain list in the checkpoint, as build takes it back
        # Absolute, so a checkpoint says where its data was whatever directory reads it later.
        root = str(Path(root).resolve())
        self.save_hyperparameters(logger=False)
        self.source = Path(root)
        self.title = self.source.name

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from PIL import Image, ImageOps

        files, self._classes = self._files()
        headers: list[tuple[str, tuple[int, int]]] = []  # modes and sizes, before any pixel is decoded
        for path, _ in files:
            with _reading(path), Image.open(path) as image:
                headers.append((image.mode, image.size))
        hp = self.settings
        channels = hp.channels or (1 if all(mode in GREY_MODES for mode, _ in headers) else 3)
        if hp.size is not None:
            height, width = hp.size
        else:  # PIL's sizes are (width, height); data.size, and so these messages, put the height first
            (first, _), (_, (width, height)) = files[0], headers[0]
            for (path, _), (_, (w, h)) in zip(files, headers, strict=True):
                if (w, h) != (width, height):
                    raise DataError(
                        f"{path} is {h}x{w} (height x width) but {first} is {height}x{width} (height x width): images "
                        f"of one size are needed; resize them as they are read, e.g. data.size=[{height},{width}]"
                    )
        images = np.empty((len(files), channels, height, width), dtype=np.uint8)
        for i, (path, _) in enumerate(files):
            with _reading(path), Image.open(path) as image:
                if image.mode in (*SIXTEEN_BIT_MODES, FLOAT_MODE):  # convert("L") would clip, not scale
                    image = Image.fromarray(_eight_bits(np.asarray(image, dtype=np.float64), image.mode))
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (width, height):
                    image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image)
            images[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        labels = np.array([label for _, label in files], dtype=np.int64)
        return self.split_off_test(images, labels)

    def _files(self) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
        """Every image file with its class index, and the class names."""
        root, fix = self.source, "point at a folder of class folders of images: data.root=/path/to/images"
        if not root.is_dir():
            found = "is not a folder" if root.exists() else "does not exist"
            raise DataError(f"data.root={root} {found}; {fix}")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = _images_in(root, recursive=False)
        if folders and loose:
            raise DataError(
                f"data.root={root} holds class folders and also images beside them ({loose[0].name}, ...), which "
                "belong to no class; move them into a class folder, or away"
            )
        if not folders:  # unlabelled: one class, named after the folder
            folders = [root]
        files: list[tuple[Path, int]] = []
        classes: list[str] = []
        for folder in folders:
            images = _images_in(folder, recursive=True)
            if not images and folder != root:
                raise DataError(
                    f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), so its class would have none; put its "
                    "images there, or remove the folder"
                )
            files += [(path, len(classes)) for path in images]
            classes.append(folder.name)
        if not files:
            raise DataError(
                f"data.root={root} holds no images ({', '.join(IMAGE_SUFFIXES)}); put them in class folders "
                f"({root}/<class>/<name>.png) or right in it, or {fix}"
            )
        return files, tuple(classes)


def _images_in(folder: Path, *, recursive: bool) -> list[Path]:
    """The image files in ``folder`` by name, in order; hidden ones (``.x.png``, macOS's ``._x.png``)
    and those in hidden folders left out. A link to nothing is kept: reading it names it."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in found
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not path.is_dir()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _eight_bits(pixels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (0-65535) or float (0-1, or 0-255) grey pixels as uint8."""
    scale = 1 / 257 if mode in SIXTEEN_BIT_MODES else 255 if pixels.max(initial=0) <= 1 else 1
    return (pixels * scale).round().clip(0, 255).astype(np.uint8)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """What PIL raises on a file it cannot read, as one line naming the file."""
    from PIL import Image

    if fault := fault_of(path):
        raise DataError(fault.line(path, "put a readable image there, or remove it from the data folder"))
    try:
        yield
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(
            f"{path} cannot be read as an image ({err}); replace it with a readable one, or remove it"
        ) from None


@register
class ArrayDataModule(OwnImages):
    """``data=arrays data.path=<file>.npz``: uint8 images under ``images``, (N, H, W), (N, H, W, C)
    or (N, C, H, W) with C 1 or 3, and integer class indices under ``labels`` (N,), 0 to K-1
    (without them, one class). ``classes`` names them (by default their numbers)."""

    dataset = "arrays"

    def __init__(
        self,
        path: str,
        classes: Sequence[str] | None = None,
        test_fraction: Fraction = 0.2,
        split_seed: NonNegativeInt = 0,
        batch_size: PositiveInt = 256,
        loader: Literal["device", "dataloader"] = "device",
        num_workers: NonNegativeInt = 0,
        keep_classes: Sequence[int] | None = None,
        val_size: PositiveInt | None = None,
        seed: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        path = str(Path(path).resolve())
        self.save_hyperparameters(logger=False)
        self.source = Path(path)
        self.title = self.source.stem

    def read(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        path = self.source
        how = "numpy.savez(path, images=images, labels=labels) with uint8 images (N, H, W) or (N, H, W, C)"
        if fault := fault_of(path):
            raise DataError(fault.line(path, "point at an .npz file of images and labels: data.path=/path/to/data.npz"))
        if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, which it refuses
            raise DataError(f"{path} is not an .npz file (not a zip archive of arrays); write it with {how}")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                stored = {name: arrays[name] for name in arrays.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DataError(f"{path} cannot be read as an .npz file ({err}); write it with {how}") from None
        # np.load hands a member that is not a .npy file back as its bytes
        stored = {name: value for name, value in stored.items() if isinstance(value, np.ndarray)}
        if "images" not in stored:
            held = ", ".join(stored) or "nothing"
            raise DataError(f"{path} holds no array named images (it holds {held}); write it with {how}")
        images = _channels_first(path, stored["images"], how)
        labels = stored.get("labels", np.zeros(len(images), dtype=np.int64))
        integers = np.issubdtype(labels.dtype, np.integer)
        if labels.shape != (len(images),) or not integers or labels.min() < 0 or labels.max() >= len(images):
            found = f"{labels.dtype} {labels.shape}"
            if integers and labels.size:
                found += f" from {labels.min()} to {labels.max()}"
            raise DataError(
                f"{path}: labels are {found}; give one class index 0, 1, ..., K-1 per image (K classes, fewer than "
                f"the {len(images)} images), an integer array of shape ({len(images)},)"
            )
        count = int(labels.max()) + 1
        names = self.settings.classes
        if names is not None and len(names) < count:
            raise ConfigError(
                f"data.classes names {len(names)} classes but the labels of {path} go up to {count - 1}; "
                f"name all {count}, or leave it out (data.classes=null) to number them"
            )
        self._classes = tuple(names) if names is not None else tuple(str(c) for c in range(count))
        return self.split_off_test(images, labels.astype(np.int64))


def _channels_first(path: Path, images: np.ndarray, how: str) -> np.ndarray:
    """``images`` as (N, C, H, W): (N, H, W) is one channel; a 4-D array has its channels (1 or 3)
    last, as numpy and PIL keep pictures, or else first."""
    if images.dtype != np.uint8:
        raise DataError(
            f"{path}: images are {images.dtype}; store pixels as uint8 0-255, e.g. images=(x * 255).round().astype("
            "numpy.uint8) for floats in [0, 1]"
        )
    if not len(images):
        raise DataError(f"{path} holds 0 images; write it with {how}")
    if 0 in images.shape[1:]:
        raise DataError(f"{path}: images have shape {images.shape}, with a side of 0 pixels; give them their pixels")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise DataError(
        f"{path}: images have shape {images.shape}; give (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"
    )
