"""Encoders and decoders as plain ``nn.Module``s: no Lightning, no training concerns.

Adding a backbone is a registered encoder class, a decoder class and a ``configs/model/*.yaml``;
a module placed in this package is imported with it (see ``aelab.models``). Every encoder and
decoder takes ``image_shape``, (channels, height, width): the ``AutoEncoder`` hands it over from
the data (the datamodule's ``image_shape``), so no config names it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

from torch import Tensor, nn

from aelab.constraints import PositiveInt
from aelab.registry import register

# (channels, height, width) of one image, e.g. (1, 28, 28) for MNIST, (3, 32, 32) for CIFAR-10
ImageShape = tuple[int, int, int]


def backbone_label(encoder_class_name: str) -> str:
    """The short name of a backbone, derived from its encoder class: ``ConvEncoder`` -> ``conv``
    (also the name of its ``configs/model`` option)."""
    return encoder_class_name.removesuffix("Encoder").lower()


# What follows each hidden linear layer. Batch norm with SiLU is what lets a deep MLP beat the 2006
# deep autoencoder in tens of epochs (docs/results.md, strong recipes); null and relu are the article's.
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
    none on the latent (it may take any real value). 784 is MNIST's 1x28x28: any image flattened."""

    def __init__(
        self,
        image_shape: Sequence[PositiveInt],
        latent_dim: PositiveInt,
        hidden_dims: Sequence[PositiveInt] = (128, 64),
        norm: Norm | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(nn.Flatten(), *_mlp([math.prod(image_shape), *hidden_dims, latent_dim], norm, activation))


@register
class MLPDecoder(nn.Sequential):
    """d -> 64 -> 128 -> 784 (``hidden_dims``), Tanh so outputs share the data's [-1, 1] range."""

    def __init__(
        self,
        image_shape: Sequence[PositiveInt],
        latent_dim: PositiveInt,
        hidden_dims: Sequence[PositiveInt] = (64, 128),
        norm: Norm | None = None,
        activation: Activation = "relu",
    ) -> None:
        super().__init__(
            *_mlp([latent_dim, *hidden_dims, math.prod(image_shape)], norm, activation),
            nn.Tanh(),
            nn.Unflatten(1, tuple(image_shape)),
        )


# The side a generic conv encoder halves an image down to, the article's: 32x32 -> 16 -> 8 -> 4 -> 2.
SMALLEST_MAP_SIDE = 2


def conv_layout(image_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """The (channels, height, width) after each of the conv encoder's stages, the image first and
    the bottleneck map last; the decoder climbs the same steps back.

    28x28 is the article's: 1x28x28 -> 32x5x5 -> 64x2x2 (a 64x2x2 = 256-number map). Any other
    size halves with stride-2 convolutions (32, then 64 channels) until a side is at most
    ``SMALLEST_MAP_SIDE``: 3x32x32 -> 32x16x16 -> 64x8x8 -> 64x4x4 -> 64x2x2.
    """
    channels, height, width = image_shape
    if _is_the_articles(image_shape):
        return [(channels, 28, 28), (32, 5, 5), (64, 2, 2)]
    layout = [(channels, height, width)]
    while len(layout) == 1 or min(height, width) > SMALLEST_MAP_SIDE:  # at least one stage
        height, width = (height + 1) // 2, (width + 1) // 2  # Conv2d(k=3, stride=2, padding=1)
        layout.append((32 if len(layout) == 1 else 64, height, width))
    return layout


def _is_the_articles(image_shape: Sequence[int]) -> bool:
    """28x28 images (any channels) get the article's conv AE, layer for layer."""
    return tuple(image_shape[1:]) == (28, 28)


def _conv_stages(layout: list[tuple[int, int, int]]) -> list[nn.Module]:
    if _is_the_articles(layout[0]):
        # the article's: 28x28 -> 10x10x32 -> 5x5x32 -> 3x3x64 -> 2x2x64
        return [
            nn.Conv2d(layout[0][0], 32, 3, stride=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=2),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, stride=1),
        ]
    stages: list[nn.Module] = []
    for (fan_in, _, _), (fan_out, _, _) in itertools.pairwise(layout):
        stages += [nn.Conv2d(fan_in, fan_out, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
    return stages


def _transposed_stages(layout: list[tuple[int, int, int]]) -> list[nn.Module]:
    if _is_the_articles(layout[0]):
        # the article's: 2x2x64 -> 5x5x32 -> 15x15x16 -> 28x28
        return [
            nn.ConvTranspose2d(64, 32, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, 16, 5, stride=3, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(16, layout[0][0], 2, stride=2, padding=1),
        ]
    stages: list[nn.Module] = []
    for (fan_out, height, width), (fan_in, _, _) in reversed(list(itertools.pairwise(layout))):
        # a stride-2 transposed conv makes 2n - 1 (+1 with output_padding): back to an odd or even side
        padding = (1 - height % 2, 1 - width % 2)
        stages += [nn.ConvTranspose2d(fan_in, fan_out, 3, stride=2, padding=1, output_padding=padding)]
        stages.append(nn.ReLU(inplace=True))
    return stages[:-1]


@register
class ConvEncoder(nn.Module):
    """Strided convolutions down to a small map (``conv_layout``; the article's 64x2x2 for 28x28),
    then optionally linear to ``latent_dim``."""

    def __init__(self, image_shape: Sequence[PositiveInt], latent_dim: PositiveInt | None = None) -> None:
        super().__init__()
        layout = conv_layout(image_shape)
        self.features = nn.Sequential(*_conv_stages(layout))
        self.project = (
            nn.Identity()
            if latent_dim is None
            else nn.Sequential(nn.Flatten(), nn.Linear(math.prod(layout[-1]), latent_dim))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x))


@register
class ConvDecoder(nn.Module):
    """The encoder's map back to the image with transposed convolutions (for 28x28 the article's
    2x2x64 -> 5x5x32 -> 15x15x16 -> 28x28x1), Tanh output."""

    def __init__(self, image_shape: Sequence[PositiveInt], latent_dim: PositiveInt | None = None) -> None:
        super().__init__()
        layout = conv_layout(image_shape)
        self.unproject = (
            nn.Identity()
            if latent_dim is None
            # No ReLU after the linear layer: with one, a whole run can die at d=10 (val MSE 0.49,
            # the mean image, seen on mnist-10k); signed inputs train reliably.
            else nn.Sequential(nn.Linear(latent_dim, math.prod(layout[-1])), nn.Unflatten(1, layout[-1]))
        )
        self.features = nn.Sequential(*_transposed_stages(layout), nn.Tanh())

    def forward(self, z: Tensor) -> Tensor:
        return self.features(self.unproject(z))
