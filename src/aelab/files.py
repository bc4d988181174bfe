"""Writing files so that a reader never sees half of one: summaries, tables, reports."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".aelab-tmp"


# mkstemp creates files readable by their owner only; a finished file gets the usual permissions
# (os.umask sets the mask and returns the old one: the only way to read it)
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to (e.g. ``figure.savefig(tmp)``); on success it is
    flushed to disk and renamed over ``path``, on any failure (a full disk) it is removed.

    A process killed mid-write leaves only ``.<name>.<random>.aelab-tmp``, which
    ``remove_temporaries`` clears; the file under the real name is never half-written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
        os.close(handle)
        with contextlib.suppress(OSError):  # some filesystems have no modes to set
            os.chmod(tmp, FILE_MODE)
        yield Path(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, tmp):
            err.filename = str(path)  # "No space left on device" names the file, not its temporary
        raise
    # the rename itself reaches the disk only when the directory entry does
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete what writers killed mid-write left in ``directory`` (not recursive); return them."""
    leftovers = sorted(Path(directory).glob(f".*{TEMPORARY_SUFFIX}")) if Path(directory).is_dir() else []
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Strict JSON: a number that is not finite (a run that never validated) is written as null."""
    write_atomic(path, json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
