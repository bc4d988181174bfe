"""The owner of run directories and checkpoints: where things are, how they are read and written.

A run directory (``logs/train/runs/<time>/`` or one job of a sweep) holds::

    .hydra/config.yaml       the composed config
    checkpoints/             best-epochNNN.ckpt, last.ckpt, interrupted.ckpt
    run_summary.json         what the run measured (keys from aelab.names) and its status
    MNIST/                   TensorBoard's event files, in a folder named after the data
                             (MNIST_mnist-10k for a subset: aelab.loggers.events_folder)
    analysis/, eval/         what the analyze and eval tasks wrote about it

Checkpoints are data: they are loaded with ``weights_only=True`` and the models and datamodules
described inside them are rebuilt through ``aelab.registry`` only.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

import aelab.data  # noqa: F401 - registers the datamodules that checkpoints name
import aelab.models  # noqa: F401 - registers the models and backbones that checkpoints name
from aelab.data.datasets import dataset_spec, file_faults
from aelab.errors import CheckpointError, ConfigError, hydra_value
from aelab.faults import MISSING, fault_of
from aelab.files import atomic_path, remove_temporaries, write_atomic, write_json
from aelab.loggers import events_folder
from aelab.models.backbones import backbone_label
from aelab.models.inference import as_model_input, in_batches
from aelab.models.objectives import objective_spec
from aelab.names import DATA_CLASS_KEY, IDENTITY_KEY, MODEL_CLASS_KEY, OVERRIDES_KEY
from aelab.registry import REGISTRY, SPECIAL_KEYS, build, check_registered, check_registered_name, qualified_name
from aelab.report.audit import CodeIndex

log = logging.getLogger(__name__)

SUMMARY_FILE = "run_summary.json"
# the latest attempt's error, when it failed in a directory that holds a finished run it must not erase
FAILURE_FILE = "run_failure.json"
RECORD_DIR = ".hydra"
CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
INTERRUPTED = "interrupted.ckpt"  # written by aelab.callbacks.InterruptCheckpoint
# Where a checkpoint keeps each part's class and its constructor arguments, and what the class is.
_STORED = {
    "model": (MODEL_CLASS_KEY, "hyper_parameters", L.LightningModule),
    "data": (DATA_CLASS_KEY, "datamodule_hyper_parameters", L.LightningDataModule),
}
# Stored data settings that would make aelab fetch, write or spawn on the file's say-so: a
# checkpoint never decides those; only the user's own overrides can turn them back on.
_NOT_FROM_CHECKPOINTS = {"download": False, "mirrors": None, "num_workers": 0}


# --- run directories -----------------------------------------------------------------------------


def read_summary(run_dir: Path, name: str = SUMMARY_FILE) -> dict[str, Any]:
    """The run's summary (or ``name``); ``{}`` when there is none or it is unreadable (a run that never finished)."""
    try:
        summary = json.loads((Path(run_dir) / name).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    (Path(run_dir) / FAILURE_FILE).unlink(missing_ok=True)


def record_failure(run_dir: Path, error: str) -> None:
    """Note that the latest attempt in ``run_dir`` failed, without erasing a finished run there."""
    failure = {"status": "failed", "error": error}
    if read_summary(run_dir).get("status") == "ok":
        write_json(Path(run_dir) / FAILURE_FILE, failure)
    else:
        write_summary(run_dir, failure)


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's summary, with the latest attempt's failure (if any) as its status and error."""
    summary, failure = read_summary(run_dir), read_summary(run_dir, FAILURE_FILE)
    return {**summary, "status": "failed", "error": failure.get("error", "")} if failure else summary


def run_identity(cfg: Any, datamodule: Any) -> dict[str, Any]:
    """What a training run is: its resolved model and data settings, seed, precision, and the
    digest of the data itself, as flat ``key: value`` pairs that can be compared key by key."""
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        else:
            flat[prefix] = value

    add("model", OmegaConf.to_container(cfg.model, resolve=True))
    add("data", OmegaConf.to_container(cfg.data, resolve=True))
    flat["seed"] = cfg.get("seed")
    flat["trainer.precision"] = str(cfg.trainer.get("precision"))
    # what the Trainer does to the gradients, where it does anything
    if clip := cfg.trainer.get("gradient_clip_val"):
        flat["trainer.gradient_clip_val"] = clip
        flat["trainer.gradient_clip_algorithm"] = cfg.trainer.get("gradient_clip_algorithm") or "norm"
    if (accumulate := cfg.trainer.get("accumulate_grad_batches") or 1) != 1:
        flat["trainer.accumulate_grad_batches"] = accumulate
    flat["data.content"] = data_digest(datamodule)
    # where the data is read from and how (_PLACE_KEYS) does not change what a run computes, nor does
    # how long it trains (a finished run may be extended with a larger trainer.max_epochs)
    return {key: value for key, value in sorted(flat.items()) if not is_place_override(key)}


def data_digest(datamodule: Any) -> str:
    """A digest of the images and labels of every split: the data's identity, whatever folder or
    file format (plain or .gz) it was read from."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("train", "val", "test"):
        for tensor in datamodule.split(name):
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def run_record(model: Any, datamodule: Any, identity: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """What every checkpoint of a training run adds to Lightning's keys: the registered classes of
    its LightningModule and datamodule (their arguments are Lightning's ``hyper_parameters`` and
    ``datamodule_hyper_parameters``: ``open_run``), its ``run_identity`` (a re-run sweep checks a
    folder's run against it) and the overrides it was started with (``resume_overrides``; none
    outside a Hydra command)."""
    record = {
        MODEL_CLASS_KEY: qualified_name(type(model)),
        DATA_CLASS_KEY: qualified_name(type(datamodule)),
        IDENTITY_KEY: identity,
    }
    if overrides is not None:
        record[OVERRIDES_KEY] = list(overrides)
    return record


class NotOurFolder(ConfigError):
    """The run folder belongs to another run or another process: nothing may be written there, not
    even this failure (a sweep stops at it instead of noting a failed job in that folder)."""


def require_same_run(run_dir: Path, what: str, stored: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
    """Refuse to reuse a run directory (skip it as finished, or resume it) for a different run:
    ``key: stored -> wanted`` for every key that differs; everything if nothing was stored."""
    if not isinstance(stored, dict):
        differences = ["(no identity recorded)"]
    else:
        keys = sorted(set(stored) | set(wanted))
        differences = [f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in keys if stored.get(k) != wanted.get(k)]
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise NotOurFolder(
            f"{run_dir} holds {what} with other settings ({shown}); its results and checkpoints were left "
            "as they were. Train into "
            "a new directory (leave hydra.run.dir / hydra.sweep.dir unset) or remove that one"
        )


def write_record(run_dir: Path, cfg: Any, overrides: list[str] | None = None) -> None:
    """``.hydra/`` as Hydra writes it (the composed config, Hydra's settings, the overrides; by
    default the command's own), inside a Hydra command. Hydra's own writing is off
    (``hydra.output_subdir: null``): it writes before the task has checked that the folder holds no
    other run, and a refused command would overwrite the record of the run it protects."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    record = Path(run_dir) / RECORD_DIR
    write_atomic(record / "config.yaml", OmegaConf.to_yaml(cfg))
    write_atomic(record / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra}))
    # as typed: an override holding "${...}" is text, resolved only in the config it makes
    typed = overrides if overrides is not None else OmegaConf.to_container(hydra.overrides.task, resolve=False)
    write_atomic(record / "overrides.yaml", OmegaConf.to_yaml(typed))


def finish_command(run_dir: Path) -> str:
    """The command that goes on with the run in ``run_dir``, in that folder: the overrides its
    ``.hydra/overrides.yaml`` records (those a resume restored included), without ``ckpt_path=``, so
    that it resumes from the folder's own checkpoints, or, every epoch trained, writes the summary
    the run lacks (``aelab.tasks.train``)."""
    from aelab.paths import command_line

    recorded = OmegaConf.load(Path(run_dir) / RECORD_DIR / "overrides.yaml")
    kept = [str(o) for o in recorded if not str(o).startswith(("ckpt_path=", "hydra.run.dir="))]
    return " ".join([command_line(), *map(shlex.quote, kept), f"\"hydra.run.dir='{run_dir}'\""])


class RunDirectoryBusy(NotOurFolder):
    """Another process holds the run directory."""


@contextlib.contextmanager
def exclusive(run_dir: Path):
    """Hold ``run_dir`` for one training process: a second one stops instead of overwriting it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryBusy(
                f"{run_dir} is in use by another training process; wait for it or train into another directory"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def discard_unstarted(run_dir: Path, log_root: Path) -> bool:
    """Remove ``run_dir`` when its command failed before producing anything there (a folder holding
    only Hydra's copy of the config, the lock, the log and empty folders would clutter logs/ and
    TensorBoard's run list). Only a folder inside the log root with nothing else in it; returns
    whether it was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not run_dir.resolve().is_relative_to(Path(log_root).resolve()):
        return False
    for entry in run_dir.iterdir():
        kept = entry.name in {RECORD_DIR, ".lock"} or (entry.is_file() and entry.suffix == ".log")
        if not kept and not (entry.is_dir() and not any(entry.rglob("*"))):
            return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def remove_leftovers(run_dir: Path, *, held: bool = False) -> None:
    """Remove the temporaries a process killed mid-write left in ``run_dir``'s checkpoints, if no
    process is training there now (its temporaries would be files it is still writing); ``held``:
    this process holds ``run_dir`` already."""
    try:
        with contextlib.nullcontext() if held else exclusive(Path(run_dir)):
            leftovers = remove_temporaries(checkpoint_dir(run_dir))
    except RunDirectoryBusy:
        return
    for leftover in leftovers:
        log.warning("removed %s, left by a process killed while writing it", leftover)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: Path) -> Path | None:
    path = checkpoint_dir(run_dir) / LAST
    return path if path.is_file() else None


def resume_point(run_dir: Path) -> Path | None:
    """Where an unfinished run goes on from: ``interrupted.ckpt`` (Ctrl-C or SIGTERM, mid-epoch)
    when it is newer than ``last.ckpt`` (the end of the last finished epoch)."""
    saved = []
    for path in (checkpoint_dir(run_dir) / INTERRUPTED, checkpoint_dir(run_dir) / LAST):
        fault = fault_of(path)
        if fault is None:
            saved.append(path)
        elif fault.kind != MISSING:  # not to be taken for "nothing saved": the run would start over
            raise CheckpointError(
                fault.line(f"checkpoint {path}", "train the run again from its start, or leave hydra.run.dir unset")
            )
    return max(saved, key=lambda p: p.stat().st_mtime_ns) if saved else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best checkpoint of a run, else its last one. Found inside the directory, so a moved or
    copied run still finds its own files."""
    best = sorted(checkpoint_dir(run_dir).glob("best-*.ckpt"))
    return best[-1] if best else last_checkpoint(run_dir)


def run_dir_of(ckpt_path: Path) -> Path:
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent.parent if ckpt_path.parent.name == CHECKPOINT_DIR else ckpt_path.parent


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in Path(sweep_dir).glob(f"*/{RECORD_DIR}/config.yaml"))


def is_debug_run(run_dir: Path) -> bool:
    """Started with ``debug=...`` (a wiring check, never the run to resume or measure)."""
    try:
        lines = (Path(run_dir) / RECORD_DIR / "overrides.yaml").read_text().splitlines()
    except OSError:
        return False
    return any(line.lstrip("- '\"").startswith(("debug=", "+debug=")) for line in lines)


def resolve_ckpt_path(ckpt_path: str, train_log_dir: Path) -> Path:
    """An existing file, or ``last``: the newest ``last.ckpt`` under the training logs."""
    if str(ckpt_path) == "last":
        candidates = sorted(
            (p for p in Path(train_log_dir).glob(f"*/*/**/{CHECKPOINT_DIR}/{LAST}") if not is_debug_run(run_dir_of(p))),
            key=lambda p: p.stat().st_mtime,
        )
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last found no {CHECKPOINT_DIR}/{LAST} under {train_log_dir} (debug= runs do not count); "
                "train once first or pass ckpt_path=/path/to/file.ckpt"
            )
        return candidates[-1]
    path = Path(ckpt_path)
    fault = fault_of(path)
    if fault is not None:
        inside = path / CHECKPOINT_DIR / LAST
        example = inside if inside.is_file() else f"logs/train/runs/<run>/{CHECKPOINT_DIR}/{LAST}"
        raise CheckpointError(
            fault.line(f"ckpt_path={ckpt_path}", f"pass a .ckpt file, e.g. ckpt_path={example}", typed=True)
        )
    return path


# --- checkpoints ---------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through ``aelab.files.atomic_path``: a kill or a full disk
    mid-write leaves the previous file whole (Lightning's own writer renames without fsync, so
    after a crash a file can exist under its final name with nothing in it).

    It adds the run's ``record`` (``run_record``) to each checkpoint: every one passes through here,
    weights-only ones too, for which Lightning calls no callback's ``on_save_checkpoint``."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__()
        self.record = dict(record)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("aelab's checkpoint writer takes no storage_options")
        checkpoint = {**checkpoint, **self.record}
        # serialised first, so that a full disk surfaces as the OSError it is (torch.save
        # straight to a file reports it as a RuntimeError from its C++ writer)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    fault = fault_of(path)
    if fault is not None:
        raise CheckpointError(fault.line(f"checkpoint {path}", "use another checkpoint of the run", typed=True))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler reports a forbidden import as an unsupported or blocked
        # GLOBAL; any other complaint means the bytes are not a pickle it can follow at all.
        culprit = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), "")
        if culprit:
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain values "
                f"and could run code when loaded ({culprit})"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint; use another checkpoint of the run"
        ) from None
    except Exception as err:  # noqa: BLE001 - random bytes fail in many ways (IndexError, ValueError, ...)
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err}); "
            "use another checkpoint of the run"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint (not a dict)")
    return checkpoint


def stored_config(checkpoint: dict[str, Any], part: str, path: str | Path) -> dict[str, Any]:
    """The ``model`` or ``data`` config a checkpoint carries, refused if it names any class that is
    not registered."""
    class_key, values_key, base = _STORED[part]
    target, values = checkpoint.get(class_key), checkpoint.get(values_key)
    if not isinstance(target, str) or not isinstance(values, dict):
        raise CheckpointError(f"checkpoint {path} was not written by aelab (no {part} config)")
    check_registered_name(target, f"checkpoint {path}", class_key)
    if not issubclass(REGISTRY[target], base):
        raise CheckpointError(
            f"checkpoint {path} is refused: its {class_key} names {target}, which is not a {base.__name__}"
        )
    check_registered(values, f"checkpoint {path}", values_key)
    return {key: value for key, value in values.items() if key not in SPECIAL_KEYS} | {"_target_": target}


def load_weights(model: torch.nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """The checkpoint's weights into ``model``, for every task (train checks a resume with it before
    Lightning loads them again): tensors that do not fit are one line naming them."""
    state, own = checkpoint.get("state_dict"), model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no weights (no state_dict); use a checkpoint aelab wrote")
    mismatches = {
        "missing": sorted(own.keys() - state.keys()),
        "unexpected": sorted(state.keys() - own.keys()),
        "of another shape": sorted(
            k for k in own.keys() & state.keys() if getattr(state[k], "shape", None) != own[k].shape
        ),
        "of another dtype": sorted(
            k for k in own.keys() & state.keys() if getattr(state[k], "dtype", None) not in (own[k].dtype, None)
        ),
    }
    found = [f"{what} {_named(names)}" for what, names in mismatches.items() if names]
    if found:
        raise CheckpointError(
            f"checkpoint {path} holds weights that do not fit the model it describes ({'; '.join(found)}): it was "
            "edited, or saved by other code than this; use another checkpoint of the run"
        )
    diverged = sorted(name for name, _ in model.named_parameters() if not torch.isfinite(state[name]).all())
    if diverged:
        raise CheckpointError(
            f"checkpoint {path} holds NaN or infinite weights ({_named(diverged)}): they come from "
            "a diverged run; use an earlier checkpoint of it"
        )
    model.load_state_dict(state)


def _named(names: list[str]) -> str:
    """``names`` shortened for a line: the first, and how many more."""
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


@dataclass
class LoadedRun:
    """A checkpoint rebuilt: its LightningModule (eval mode), its datamodule, where it came from.

    ``encode``, ``decode`` and ``reconstruct`` take any number of images as the datasets hold them
    (uint8 pixels) or as the model does (floats in [-1, 1]), run in batches of ``batch_size`` without
    gradients on the model's device, and return CPU tensors.
    """

    model: Any
    datamodule: Any
    checkpoint: dict[str, Any]
    path: Path
    batch_size: int = 1024
    results_dir: Path | None = None  # where tasks write what they find: by default ``run_dir``

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.path)

    @property
    def results(self) -> Path:
        return self.results_dir or self.run_dir

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def events(self) -> Path:
        """The run's TensorBoard folder, where tasks add their figures and embeddings to the run
        TensorBoard lists: the one its training wrote (named after its data, or by
        ``logger.tensorboard.name``), else one named after the data (``aelab.loggers.events_folder``)."""
        written = {path.parent for path in self.results.glob("*/events.out.tfevents.*")}
        return written.pop() if len(written) == 1 else self.results / events_folder(self.datamodule)

    def folder(self, name: str) -> Path:
        """``<results>/<name>/``, made if missing: where a task writes what it found."""
        out = self.results / name
        out.mkdir(parents=True, exist_ok=True)
        return out

    @functools.cached_property
    def latent_shape(self) -> tuple[int, ...]:
        """One image's code as the decoder takes it: ``(3,)`` for the MLP at d=3, ``(64, 2, 2)`` for the conv AE."""
        return self.model.latent_shape

    def encode(self, images: Any) -> torch.Tensor:
        """Latents, (N, *latent_shape)."""
        x = as_model_input(images, self.model.image_shape)
        return in_batches(self.model.encode, x, self.device, self.batch_size)

    def decode(self, latents: Any) -> torch.Tensor:
        """Images in [-1, 1], (N, C, H, W), from latents (N, *latent_shape) or flat (N, latent_size)."""
        z = torch.as_tensor(latents, dtype=torch.float32).reshape(-1, *self.latent_shape)
        return in_batches(self.model.decode, z, self.device, self.batch_size)

    def reconstruct(self, images: Any) -> torch.Tensor:
        """decode(encode(images)) in one pass, (N, C, H, W) in [-1, 1]."""
        x = as_model_input(images, self.model.image_shape)
        return in_batches(self.model.reconstruct, x, self.device, self.batch_size)

    def neighbours(self, images: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` training images nearest to each of ``images`` by code, nearest first: indices
        into the official training split (``datamodule.official_split("train")``), (N, k), and the
        Euclidean distances between the codes, (N, k)."""
        index = self._training_codes
        if not 1 <= k <= index.size:
            raise ValueError(f"k={k}: the training split holds {index.size} images; ask for 1 to {index.size}")
        return index.query(self.encode(images).flatten(1).numpy(), k)

    @functools.cached_property
    def _training_codes(self) -> CodeIndex:
        # encoded once per loaded run: 60,000 MNIST images take seconds on a CPU
        images, _ = self.datamodule.official_split("train")
        return CodeIndex(self.encode(images).flatten(1).numpy())


def open_run(
    source: str | Path | None = "last",
    map_location: str | torch.device = "cpu",
    *,
    data: Mapping[str, Any] | None = None,
    log_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> LoadedRun:
    """The one way to open a trained run (``aelab.load``, and every task through ``open_for(cfg)``):
    its model and datamodule, rebuilt from registered classes only.

    ``source``: ``"last"`` (the newest training run under ``<log_dir>/train``; by default the
    project's ``logs``), a run directory (its ``last.ckpt``) or a ``.ckpt`` file. ``data``:
    ``data.*`` settings whose non-null values replace what the checkpoint says, e.g.
    ``{"batch_size": 1024}`` or another ``data_dir``. Without a ``data_dir`` among them, the data the
    run was trained on is read; if that folder is gone (a checkpoint from another machine),
    ``data_dir`` (``paths.data_dir``; by default ``AELAB_DATA_DIR`` or the project's ``data/``).
    """
    from aelab.paths import project_root

    if not source:
        raise ConfigError(
            "give ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt (or ckpt_path=last for the newest run)"
        )
    root = project_root()
    if str(source) != "last" and Path(source).is_dir():
        path = checkpoint_dir(Path(source)) / LAST
        found = fault_of(path)
        if found is not None and found.kind == MISSING:  # other faults: load_checkpoint names them
            raise CheckpointError(f"{source} holds no {CHECKPOINT_DIR}/{LAST}; pass a run directory or a .ckpt file")
    else:
        path = resolve_ckpt_path(str(source), Path(log_dir if log_dir is not None else root / "logs") / "train")
    fallback = data_dir if data_dir is not None else os.environ.get("AELAB_DATA_DIR", root / "data")
    checkpoint = load_checkpoint(path, map_location)
    model_config = stored_config(checkpoint, "model", path)
    overrides = {k: v for k, v in (data or {}).items() if v is not None}
    data_config = stored_config(checkpoint, "data", path)
    if overrides.get("_target_", data_config["_target_"]) != data_config["_target_"]:
        data_config = {}  # another kind of data (data=fashion_mnist on a folder run): nothing of the stored one
    # (only the settings the data class has: a folder of images has no downloads)
    data_config |= {key: value for key, value in _NOT_FROM_CHECKPOINTS.items() if key in data_config}
    data_config.update(overrides)
    check_registered(data_config, "the data overrides")
    _check_data_overrides(overrides, REGISTRY[str(data_config["_target_"])], path)
    if "data_dir" in data_config and "data_dir" not in overrides:  # the MNIST family's
        spec = dataset_spec(str(data_config.get("dataset", "mnist")))
        # only where the files are missing: a broken file is named by the datamodule, not swapped for other data
        stored_faults = file_faults(spec.raw_dir(data_config["data_dir"])).values()
        if any(f.kind == MISSING for _, f in stored_faults) and not file_faults(spec.raw_dir(fallback)):
            data_config["data_dir"] = str(fallback)
    try:
        model = build(model_config, f"checkpoint {path}", key="model")
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {err}") from None
    load_weights(model, checkpoint, path)
    try:
        datamodule = build(data_config, f"checkpoint {path}", key="data")
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} holds a data config aelab cannot use: {err}") from None
    # only where data was given: the data a run was trained on has its shape, and a folder of images
    # is read to learn it (opening a run to decode needs no images, nor the folder to be where it was)
    if overrides and tuple(datamodule.image_shape) != tuple(model.image_shape):
        given, trained = ("x".join(map(str, shape)) for shape in (datamodule.image_shape, model.image_shape))
        raise ConfigError(
            f"the data given holds {given} images ({datamodule.name}) but checkpoint {path} was trained on "
            f"{trained} images: give data of that shape, or no data= (the data it was trained on)"
        )
    return LoadedRun(model.to(map_location).eval(), datamodule, checkpoint, path)


def _check_data_overrides(overrides: Mapping[str, Any], data_class: type, path: Path) -> None:
    """A ``data.*`` setting the run's datamodule does not take (``data.data_dir`` for a run on a
    folder of images) is the user's mistake, not the checkpoint's: one line with the ones it takes."""
    taken = [name for name in inspect.signature(data_class).parameters if name != "self"]
    for key, value in overrides.items():
        if key not in taken and key not in SPECIAL_KEYS:
            raise ConfigError(
                f"data.{key}={hydra_value(value)} is not a setting of the data {path} was trained on "
                f"({data_class.__name__}): it takes {', '.join(f'data.{name}' for name in taken)}"
            )


def open_for(
    cfg: Any,
    source: str | Path | None = None,
    device: str | torch.device | None = None,
    results_dir: Path | None = None,
) -> LoadedRun:
    """``open_run`` as a task's config says: the run of ``ckpt_path=`` (or ``source``), with its
    ``data.*`` and ``paths``, on ``device`` (by default the one ``trainer=`` names), batched as
    ``data.batch_size``, its results going to ``results_dir=`` (or ``results_dir``; by default the
    run's own folder), checked writable."""
    from aelab.config import device_of

    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    assert isinstance(data, dict)
    paths = {"log_dir": cfg.paths.log_dir, "data_dir": cfg.paths.data_dir}
    loaded = open_run(
        source or cfg.ckpt_path, device or device_of(cfg), data={str(k): v for k, v in data.items()}, **paths
    )
    loaded.batch_size = loaded.datamodule.settings.batch_size
    if results_dir is not None or cfg.get("results_dir"):
        loaded.results_dir = Path(results_dir or str(cfg.results_dir))
    check_writable(loaded.results, chosen=loaded.results_dir is not None)
    return loaded


def check_writable(folder: Path, *, chosen: bool) -> None:
    """Refuse, before any work, a results folder the task could not write to: by default the run's
    own folder, which may be on a read-only disk or someone else's (``results_dir`` is the way out)."""
    where = f"results_dir={folder}" if chosen else f"{folder} (the checkpoint's run folder)"
    way_out = "write it elsewhere with results_dir=/path, e.g. results_dir=/tmp/aelab-results"
    # probed without making it: a task refused later (a bad setting) leaves no empty folder behind
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{where} cannot be made: {existing} is not a folder; {way_out}")
    try:
        with tempfile.TemporaryDirectory(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(
            f"{where} cannot be written to ({err.strerror}); the task writes what it finds there: {way_out}"
        ) from None


# Overrides that say where things are or how they are shown, not what the run is: a resumed run
# takes them from the command that resumes it.
_PLACE_KEYS = (
    "ckpt_path",
    "paths",
    "hydra",
    "data.data_dir",
    "data.root",
    "data.path",
    "data.mirrors",
    "data.download",
    "data.num_workers",
    "callbacks.progress_bar.refresh_rate",
    "fast",
    "figure_format",
    "figure_dpi",
)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def is_place_override(override: str) -> bool:
    """Whether ``override`` says where things are or how they are shown (``_PLACE_KEYS``), not what is trained."""
    key = override_key(override)
    return any(key == k or key.startswith(f"{k}.") for k in _PLACE_KEYS)


def resume_overrides(path: Path, current: list[str], config_dir: Path) -> list[str]:
    """The overrides that resume the run of checkpoint ``path``: the ones it was started with (kept
    in the checkpoint), then ``current`` ones, which win: ``ckpt_path=`` alone resumes a conv run as
    a conv run, and ``trainer.max_epochs=20`` extends it.

    The stored overrides are data from a file: one is restored only if it chooses an option that
    exists in ``config_dir`` (``model=conv``) or sets a plain value the schema checks
    (``model.latent_dim=5``). Anything that could name code (``_target_``, a callback added with
    ``+``) is left out, with a warning: the user passes it again if it is theirs.
    """
    stored = load_checkpoint(path).get(OVERRIDES_KEY)
    if stored is None:
        return list(current)
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise CheckpointError(f"checkpoint {path} is refused: its {OVERRIDES_KEY} is not a list of overrides")
    given = {override_key(o) for o in current}
    kept: list[str] = []
    refused: list[str] = []
    for override in stored:
        if override_key(override) in given or is_place_override(override):
            continue
        (kept if _is_plain_override(override, config_dir) else refused).append(override)
    if refused:
        log.warning(
            "not restored from %s (they could name code; pass them again if they are yours): %s",
            path,
            " ".join(refused),
        )
    return kept + list(current)


def _is_plain_override(override: str, config_dir: Path) -> bool:
    from aelab.config import SCHEMA, Group, Open
    from aelab.paths import is_safe_name

    key, _, value = override.partition("=")
    group_option = (
        is_safe_name(value) and "." not in key and key.isidentifier() and (config_dir / key / f"{value}.yaml").is_file()
    )
    plain_value = (
        not key.startswith(("+", "~")) and "${" not in value and not isinstance(SCHEMA.get(key, Open()), (Open, Group))
    )
    return group_option or plain_value


def require_finite(path: Path, what: str, *values: Any) -> None:
    """Refuse a checkpoint whose weights produce non-finite numbers in ``values`` (arrays or numbers)."""
    if not all(np.isfinite(value).all() for value in values):
        raise CheckpointError(
            f"checkpoint {path} reconstructs to non-finite values ({what}): its weights come from a "
            "diverged run; use an earlier checkpoint of it"
        )


def check_resumable(path: str | Path, model: L.LightningModule, max_epochs: int | None) -> None:
    """Refuse to resume a checkpoint into a different network than ``model`` (whose weights it
    loads), or, given ``max_epochs``, one that has already trained that many epochs (Lightning would
    stop at once, silently)."""
    checkpoint = load_checkpoint(path)
    saved, wanted = stored_config(checkpoint, "model", path), dict(model.hparams)
    saved_objective, wanted_objective = (objective_spec(config.get("objective")) for config in (saved, wanted))
    if saved_objective != wanted_objective:
        # the objective's configs/objective option, read off its registered class without building it
        label = getattr(REGISTRY.get(str(saved_objective.get("_target_"))), "label", "?")
        raise CheckpointError(
            f"checkpoint {path} was trained with another objective than the config's: it holds "
            f"{_describe(saved_objective)}, the config asks for {_describe(wanted_objective)}. "
            f"Pass the objective it was trained with (e.g. objective={label})"
        )
    for key in ("encoder", "decoder"):
        if saved.get(key) != wanted.get(key):
            backbone = backbone_label(str((saved.get("encoder") or {}).get("_target_", "?")).rsplit(".", 1)[-1])
            raise CheckpointError(
                f"checkpoint {path} holds a different network than the config: its {key} is "
                f"{_describe(saved.get(key) or {})}, the config asks for {_describe(wanted.get(key) or {})}. "
                f"Pass the model overrides it was trained with (e.g. model={backbone} "
                f"model.latent_dim={hydra_value(saved.get('latent_dim'))})"
            )
    load_weights(model, checkpoint, path)
    done = epochs_done(checkpoint)
    if max_epochs is not None and done is not None and done >= max_epochs:
        run = run_dir_of(Path(path))
        finish = ""
        if read_summary(run).get("status") != "ok" and (run / RECORD_DIR / "overrides.yaml").is_file():
            finish = f"; or, to write the summary its run lacks: {finish_command(run)}"
        raise ConfigError(
            f"checkpoint {path} has already trained {done} epoch{'s' * (done != 1)} and "
            f"trainer.max_epochs={max_epochs} asks "
            f"for no more; to train it further, raise it: ckpt_path={path} trainer.max_epochs={done + max_epochs}"
            + finish
        )


def epochs_done(checkpoint: dict[str, Any]) -> int | None:
    """The epochs a checkpoint has trained to their end (one saved mid-epoch does not count that
    epoch); ``None`` where Lightning's loop state is not there to say."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None


def _describe(part: dict[str, Any]) -> str:
    name = str(part.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in part.items() if k != "_target_")
    return f"{name}({args})"
