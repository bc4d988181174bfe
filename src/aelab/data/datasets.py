"""The MNIST family: datasets of 1x28x28 grey images with 10 classes, stored as four IDX files.

Each lives in ``<data_dir>/<torchvision class name>/raw`` (the layout torchvision's own classes
use), so one data directory can hold several of them side by side. Acquiring a missing dataset goes
through the matching torchvision class: its mirror list and its published md5 sums.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aelab.errors import ConfigError, DataError
from aelab.faults import MISSING, Fault, fault_of

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES = tuple(name for pair in SPLIT_FILES.values() for name in pair)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: str  # also the folder name under data_dir
    classes: tuple[str, ...]
    title: str
    shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width) of every image

    def raw_dir(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / self.torchvision_class / "raw"


DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", "MNIST", tuple(str(d) for d in range(10)), "MNIST"),
        DatasetSpec(
            "fashion_mnist",
            "FashionMNIST",
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            "Fashion-MNIST",
        ),
        # Kuzushiji-MNIST: one cursive Japanese character per class, named by its romanisation
        DatasetSpec("kmnist", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), "KMNIST"),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"data.dataset={name!r} is not one of {', '.join(DATASETS)}; e.g. data=fashion_mnist")
    return DATASETS[name]


def file_faults(raw_dir: Path) -> dict[str, tuple[Path, Fault]]:
    """Each IDX file that ``raw_dir`` holds no readable copy of (plain or ``.gz``): the copy that is
    there and what is wrong with it (``aelab.faults``), else the plain name, ``MISSING``."""
    faults = {}
    for name in IDX_FILES:
        found = [(path, fault) for path in (raw_dir / name, raw_dir / f"{name}.gz") if (fault := fault_of(path))]
        if len(found) == 2:
            faults[name] = next(((p, f) for p, f in found if f.kind != MISSING), found[0])
    return faults


def check_files(spec: DatasetSpec, data_dir: Path) -> list[str]:
    """The IDX files ``spec`` lacks in ``data_dir``, to download; a ``DataError`` for one that is
    there but cannot be read as it stands (a directory, unreadable, empty): the network cannot fix those."""
    faults = file_faults(spec.raw_dir(data_dir))
    for name, (path, fault) in faults.items():
        if fault.kind != MISSING:
            raise DataError(
                fault.line(
                    path,
                    f"put {spec.title}'s own {name} (plain or .gz) there, or point at a complete copy: "
                    "data.data_dir=/path (or AELAB_DATA_DIR=/path)",
                )
            )
    return list(faults)


def missing_data_message(spec: DatasetSpec, data_dir: Path, reason: str) -> str:
    raw = spec.raw_dir(data_dir)
    return (
        f"{spec.title} not found in {raw} and it could not be downloaded ({reason}). "
        f"Put the four files ({', '.join(IDX_FILES)}, plain or .gz) in {raw}, "
        "or point at a folder that has them: data.data_dir=/path (or AELAB_DATA_DIR=/path)"
    )


def download(spec: DatasetSpec, data_dir: Path, mirrors: list[str] | None = None) -> None:
    """Fetch the four files through torchvision, which refuses any whose md5 is not the published one.

    Files are fetched into a temporary folder beside the destination and moved into
    ``<data_dir>/<class>/raw`` only when all four passed, so a failed or refused download leaves
    nothing behind that could later be taken for data.
    """
    import torchvision.datasets

    base = getattr(torchvision.datasets, spec.torchvision_class)
    if mirrors:
        # e.g. a local copy: file:///srv/mnist/ (torchvision appends each file name)
        base = type(base.__name__, (base,), {"mirrors": [m if m.endswith("/") else m + "/" for m in mirrors]})
    raw = spec.raw_dir(data_dir)
    try:
        raw.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=raw.parent))
    except OSError as err:
        raise DataError(missing_data_message(spec, data_dir, f"cannot write to {raw.parent}: {err.strerror}")) from None
    try:
        try:
            base(str(staging), train=True, download=True)
        except Exception as err:  # noqa: BLE001 - every download failure reads the same to a user
            raise DataError(missing_data_message(spec, data_dir, _download_reason(err))) from None
        raw.mkdir(exist_ok=True)
        for path in (staging / base.__name__ / "raw").iterdir():
            path.replace(raw / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_reason(err: Exception) -> str:
    """torchvision's multi-line report in one line: the file, the mirror, what went wrong."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Error downloading") and len(lines) >= 3:
        filename = lines[0].removeprefix("Error downloading").strip(" :")
        attempts = "; ".join(
            f"{lines[i].removeprefix('Tried').strip(' ,:').removesuffix(', got')} -> {lines[i + 1]}"
            for i in range(1, len(lines) - 1, 2)
        )
        if "corrupted" in attempts:
            return f"{filename} failed its md5 check against the published sum: {attempts}"
        return f"{filename}: {attempts}"
    return lines[0]
