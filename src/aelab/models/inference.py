"""Running a trained model over a whole split in batches: latents and per-image errors."""

from __future__ import annotations

import numpy as np
import torch

from aelab.data import normalize


@torch.no_grad()
def encode_images(model, images: torch.Tensor, device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents (N, latent_size) and per-image reconstruction MSE of uint8 ``images`` (N, 28, 28)."""
    latents, errors = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device))
        z = model.encode(x)
        reconstruction = model.decode(z)
        latents.append(z.flatten(1).float().cpu())
        errors.append((reconstruction.float() - x).pow(2).flatten(1).mean(1).cpu())
    return torch.cat(latents).numpy(), torch.cat(errors).numpy()
