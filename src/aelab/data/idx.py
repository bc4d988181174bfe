"""Reading IDX files, MNIST's format, plain or gzip, with a precise error for every way they break."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np

from aelab.data.datasets import DATASETS, SPLIT_FILES, DatasetSpec
from aelab.errors import DataError
from aelab.faults import fault_of

# IDX magic: two zero bytes, a dtype code, and the number of dimensions.
_UBYTE = 0x08


def parse_idx(raw: bytes, *, name: str, ndim: int) -> np.ndarray:
    """Parse IDX bytes into a uint8 array of ``ndim`` dimensions; ``name`` labels errors."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(raw)} bytes, no header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DataError(f"{name}: wrong IDX magic {raw[:4].hex()} (expected 0000 08 0{ndim}: unsigned bytes)")
    if raw[3] != ndim:
        raise DataError(f"{name}: has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{name}: {kind}: header says shape {shape} = {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file (plain or gzip), read-only."""
    path = Path(path)
    stat = path.stat()
    return _decoded(path, ndim, path.resolve(), stat.st_size, stat.st_mtime_ns)


# The jobs of a sweep run in one process and read the same files: each is decoded once (gunzip of
# MNIST's 60,000 training images is ~0.2 s a job). Keyed also by the file's size and modification
# time (``file_key``), so a rewritten file is read again; the arrays are read-only, so sharing them is safe.
@functools.lru_cache(maxsize=8)  # two datasets' four files
def _decoded(path: Path, ndim: int, *file_key: object) -> np.ndarray:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    return parse_idx(data, name=str(path), ndim=ndim)


def read_split(raw_dir: Path, split: str, spec: DatasetSpec = DATASETS["mnist"]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, height, width) and labels (N,) of the ``train`` or ``test`` split of ``spec`` in
    ``raw_dir`` (IDX holds one channel)."""
    images_path, labels_path = (find_idx(raw_dir, stem) for stem in SPLIT_FILES[split])
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    num_classes = len(spec.classes)
    _, height, width = spec.shape
    if images.shape[1:] != (height, width):
        raise DataError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected {height}x{width} ({spec.title})"
        )
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} is out of range 0-{num_classes - 1}")
    return images, labels


def find_idx(raw_dir: Path, stem: str) -> Path:
    """The copy of ``stem`` to read, plain or ``.gz``: the first one that can be read as a file
    (``aelab.data.datasets.check_files`` has refused a dataset without one)."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if fault_of(candidate) is None:
            return candidate
    raise FileNotFoundError(raw_dir / stem)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as IDX (used to build tiny datasets for tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
