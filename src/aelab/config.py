"""Checks on the composed config that must fail before any data is read or a model built."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from aelab.errors import CheckpointError, ConfigError, is_positive_int

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
GPU_ACCELERATORS = ("gpu", "cuda")


def validate(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not supported; use one of {', '.join(PRECISIONS)}"
        )
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none on this "
            "machine; use trainer=cpu"
        )
    if accelerator == "cpu" and precision == "16-mixed":
        raise ConfigError(
            "trainer.precision=16-mixed needs a GPU; on CPU use bf16-mixed or 32-true"
        )
    latent_dim = cfg.model.get("latent_dim")
    if latent_dim is not None and not is_positive_int(latent_dim):
        raise ConfigError(f"model.latent_dim={latent_dim!r} is invalid: it must be a positive integer")
    batch_size = cfg.data.get("batch_size")
    if not is_positive_int(batch_size):
        raise ConfigError(f"data.batch_size={batch_size!r} is invalid: it must be a positive integer")
    max_epochs = trainer.get("max_epochs")
    if max_epochs is not None and not is_positive_int(max_epochs):
        raise ConfigError(f"trainer.max_epochs={max_epochs!r} is invalid: it must be a positive integer")


def resolve_ckpt_path(ckpt_path: str | None, task_log_dir: Path) -> str | None:
    """``None``, an existing file, or ``last``: the newest ``last.ckpt`` under the task's logs."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        candidates = sorted(
            Path(task_log_dir).glob("*/*/**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not candidates:
            raise CheckpointError(
                f"ckpt_path=last found no checkpoints/last.ckpt under {task_log_dir}; "
                "train once first or pass ckpt_path=/path/to/file.ckpt"
            )
        return str(candidates[-1])
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist; pass an existing .ckpt file")
    return str(path)
