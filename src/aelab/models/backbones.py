"""Encoders and decoders as plain ``nn.Module``s: no Lightning, no training concerns.

Adding a backbone is a registered encoder class, a decoder class and a ``configs/model/*.yaml``;
a module placed in this package is imported with it (see ``aelab.models``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from torch import Tensor, nn

from aelab.constraints import PositiveInt
from aelab.registry import register

IMAGE_SHAPE = (1, 28, 28)
IMAGE_SIZE = 28 * 28


def backbone_label(encoder_class_name: str) -> str:
    """The short name of a backbone, derived from its encoder class: ``ConvEncoder`` -> ``conv``
    (also the name of its ``configs/model`` option)."""
    return encoder_class_name.removesuffix("Encoder").lower()


# What follows each hidden linear layer. Batch norm with SiLU is what lets a deep MLP beat the 2006
# deep autoencoder in tens of epochs (README, strong recipes); null and relu are the article's.
NORMS: dict[str | None, type[nn.Module]] = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": partial(nn.ReLU, inplace=True),
    "silu": partial(nn.SiLU, inplace=True),
    "gelu": nn.GELU,
}


# the names the configs choose from (model.encoder.norm, model.encoder.activation)
Norm = Literal["batch", "layer"]
Activation = Literal["relu", "silu", "gelu"]


def _mlp(sizes: Sequence[int], norm: Norm | None, activation: Activation) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if norm is not None:
                layers.append(NORMS[norm](fan_out))
            layers.append(ACTIVATIONS[activation]())
    return layers


@register
class MLPEncoder(nn.Sequential):
    """784 -> 128 -> 64 -> d (``hidden_dims``) with an activation (and optionally a norm) between,
    none on the latent (it may take any real value)."""

    def __init__(
        self,
        latent_dim: PositiveInt,
        hidden_dims: Sequence[PositiveInt] = (128, 64),
        norm: Norm | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(nn.Flatten(), *_mlp([IMAGE_SIZE, *hidden_dims, latent_dim], norm, activation))


@register
class MLPDecoder(nn.Sequential):
    """d -> 64 -> 128 -> 784 (``hidden_dims``), Tanh so outputs share the data's [-1, 1] range."""

    def __init__(
        self,
        latent_dim: PositiveInt,
        hidden_dims: Sequence[PositiveInt] = (64, 128),
        norm: Norm | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(
            *_mlp([latent_dim, *hidden_dims, IMAGE_SIZE], norm, activation),
            nn.Tanh(),
            nn.Unflatten(1, IMAGE_SHAPE),
        )


# The article's conv bottleneck: 64 channels x 2 x 2 = 256 values.
CONV_LATENT_SHAPE = (64, 2, 2)
CONV_LATENT_SIZE = 64 * 2 * 2


@register
class ConvEncoder(nn.Module):
    """28x28 -> 10x10x32 -> 5x5x32 -> 3x3x64 -> 2x2x64, then optionally linear to ``latent_dim``."""

    def __init__(self, latent_dim: PositiveInt | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=1),
        )
        self.project = (
            nn.Identity()
            if latent_dim is None
            else nn.Sequential(nn.Flatten(), nn.Linear(CONV_LATENT_SIZE, latent_dim))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x))


@register
class ConvDecoder(nn.Module):
    """2x2x64 -> 5x5x32 -> 15x15x16 -> 28x28x1 with transposed convolutions, Tanh output."""

    def __init__(self, latent_dim: PositiveInt | None = None) -> None:
        super().__init__()
        self.unproject = (
            nn.Identity()
            if latent_dim is None
            # No ReLU after the linear layer: with one, a whole run can die at d=10 (val MSE 0.49,
            # the mean image, seen on mnist-10k); signed inputs train reliably.
            else nn.Sequential(nn.Linear(latent_dim, CONV_LATENT_SIZE), nn.Unflatten(1, CONV_LATENT_SHAPE))
        )
        self.features = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 16, 5, stride=3, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, 1, 2, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.features(self.unproject(z))
