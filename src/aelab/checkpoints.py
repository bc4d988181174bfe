"""Loading checkpoints safely: tensors and plain values only, never pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from aelab.errors import CheckpointError


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler reports a forbidden import as an unsupported or blocked
        # GLOBAL; any other complaint means the bytes are not a pickle it can follow at all.
        culprit = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()), "")
        if culprit:
            raise CheckpointError(
                f"checkpoint {path} is refused: it holds objects other than tensors and plain values "
                f"and could run code when loaded ({culprit})"
            ) from None
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint") from None
    except Exception as err:  # noqa: BLE001 - random bytes fail in many ways (IndexError, ValueError, ...)
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu"):
    """An ``AutoEncoder`` rebuilt from the plain hyperparameters and weights in ``path``."""
    return load_run(path, map_location)[0]


def load_run(path: str | Path, map_location: str | torch.device = "cpu"):
    """The rebuilt ``AutoEncoder`` (in eval mode) and the raw checkpoint dict it came from."""
    from aelab.module import AutoEncoder

    checkpoint = load_checkpoint(path, map_location)
    model = AutoEncoder(**model_hparams(checkpoint, path))
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {err}") from None
    return model.to(map_location).eval(), checkpoint


def model_hparams(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``AutoEncoder`` arguments saved in an aelab checkpoint."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "encoder" not in hparams:
        raise CheckpointError(f"checkpoint {path} was not written by aelab (no model hyperparameters)")
    return hparams


def trained_data_dir(checkpoint: dict[str, Any], path: str | Path, override: str | None) -> str:
    """``override``, or the data directory the checkpoint's run was trained on."""
    data_dir = override or (checkpoint.get("datamodule_hyper_parameters") or {}).get("data_dir")
    if not data_dir:
        raise CheckpointError(f"{path} does not say which data it was trained on; pass data_dir=/path")
    return str(data_dir)


def check_compatible(path: str | Path, wanted_hparams: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint into a different network than the config describes."""
    hparams = model_hparams(load_checkpoint(path), path)
    for key in ("encoder", "decoder"):
        saved, wanted = hparams[key], wanted_hparams[key]
        if saved != wanted:
            raise CheckpointError(
                f"checkpoint {path} holds a different network than the config: its {key} is "
                f"{_describe(saved)}, the config asks for {_describe(wanted)}. Pass the model "
                f"overrides it was trained with (e.g. model={hparams.get('backbone') or '?'} "
                f"model.latent_dim={hparams.get('latent_dim')})"
            )


def _describe(part: dict[str, Any]) -> str:
    name = str(part.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in part.items() if k != "_target_")
    return f"{name}({args})"
