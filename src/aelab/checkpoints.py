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
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} is refused: it holds objects other than tensors and plain values "
            f"and could run code when loaded ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint ({err})") from None


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu"):
    """An ``AutoEncoder`` rebuilt from the plain hyperparameters and weights in ``path``."""
    from aelab.module import AutoEncoder

    checkpoint = load_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict) or "encoder" not in hparams:
        raise CheckpointError(f"checkpoint {path} was not written by aelab (no model hyperparameters)")
    model = AutoEncoder(**hparams)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not match its own model config: {err}") from None
    return model.to(map_location).eval()
