"""Checks on the composed config that must fail before any data is read or a model built.

Every task (train, eval, analyze) runs ``validate``: the keys mean the same in each.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from aelab.errors import ConfigError, check_positive_int

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
GPU_ACCELERATORS = ("gpu", "cuda")
ACCELERATORS = ("cpu", *GPU_ACCELERATORS, "auto")
# key -> may it be null? (model.latent_dim is the backbone's to check: null suits conv, not mlp)
POSITIVE_INTS = {
    "data.batch_size": False,
    "data.val_size": True,
    # null would mean Lightning's default of 1000 epochs, never what a user meant
    "trainer.max_epochs": False,
}


def validate(cfg: DictConfig) -> None:
    trainer = cfg.trainer
    precision = str(trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={precision} is not supported; use one of {', '.join(PRECISIONS)}"
        )
    accelerator = str(trainer.get("accelerator", "cpu"))
    if accelerator not in ACCELERATORS:
        raise ConfigError(
            f"trainer.accelerator={accelerator} is not one of {', '.join(ACCELERATORS)}; e.g. trainer=gpu"
        )
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none on this "
            "machine; use trainer=cpu"
        )
    if accelerator == "cpu" and precision == "16-mixed":
        raise ConfigError(
            "trainer.precision=16-mixed needs a GPU; on CPU use bf16-mixed or 32-true"
        )
    for key, optional in POSITIVE_INTS.items():
        group, _, name = key.partition(".")
        if group in cfg and cfg[group] is not None:
            # eval and analyze start from data=from_checkpoint, where null means "as the checkpoint says"
            from_checkpoint = group == "data" and "_target_" not in cfg[group]
            check_positive_int(key, cfg[group].get(name), optional=optional or from_checkpoint)


def device_of(cfg: DictConfig) -> torch.device:
    """The one device the eval and analyze tasks work on, from ``trainer.accelerator``."""
    accelerator = str(cfg.trainer.get("accelerator", "cpu"))
    if accelerator in GPU_ACCELERATORS or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
