"""Running a trained model over many images in batches: latents, reconstructions, per-image errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from aelab.data import normalize


def as_model_input(images: Tensor | np.ndarray, image_shape: Sequence[int]) -> Tensor:
    """uint8 pixels (N, C, H, W) -> float32 in [-1, 1] (N, C, H, W), for the model's
    ``image_shape`` (C, H, W); one channel may also come as (N, H, W). Float images (any float
    dtype) are taken as already on the model's scale."""
    x = torch.as_tensor(images)
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise TypeError(f"images must be uint8 pixels or floats in [-1, 1], not {x.dtype}")
    channels, height, width = image_shape
    shapes = [(channels, height, width)] + ([(height, width)] if channels == 1 else [])
    if tuple(x.shape[1:]) not in shapes:
        allowed = " or ".join(str(("N", *shape)).replace("'", "") for shape in shapes)
        raise ValueError(f"images must be {allowed}, not {tuple(x.shape)}")
    x = x.reshape(-1, *image_shape)
    return normalize(x) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def in_batches(function: Callable[[Tensor], Tensor], inputs: Tensor, device: torch.device, batch_size: int) -> Tensor:
    """``function`` over ``inputs`` a batch at a time on ``device``; the results joined on the CPU."""
    # an empty input still goes through once, so the result has the right trailing shape
    starts = range(0, len(inputs), batch_size) if len(inputs) else [0]
    return torch.cat([function(inputs[start : start + batch_size].to(device)).cpu() for start in starts])


@torch.no_grad()
def encode_images(model, images: torch.Tensor, device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents (N, latent_size) and per-image reconstruction MSE of uint8 ``images`` (N, C, H, W)."""
    if images.ndim != 4:  # (N, H, W) would broadcast against the (N, 1, H, W) reconstructions
        raise ValueError(f"images must be (N, C, H, W), not {tuple(images.shape)}")
    latents, errors = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device))
        z = model.encode(x)
        latents.append(z.flatten(1).float().cpu())
        errors.append((model.decode(z).float() - x).pow(2).flatten(1).mean(1).cpu())
    return torch.cat(latents).numpy(), torch.cat(errors).numpy()


@torch.no_grad()
def decode_random_codes(model, count: int, seed: int, device: torch.device) -> np.ndarray:
    """``count`` codes drawn from N(0, I), the VAE's prior, decoded: (count, C, H, W). For the
    other objectives the same draw shows what an autoencoder makes of codes it was never given;
    one seed, one draw, whatever the model, so figures of several models compare."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(count, *model.latent_shape, generator=generator)
    return model.decode(codes.to(device)).float().cpu().numpy()
