"""What an autoencoder is trained to do, as a part the ``AutoEncoder`` holds (``model.objective``).

An objective names the loss terms of a batch (their sum is optimised; each is logged as
``train/<term>``, ``val/<term>``) and returns them with the reconstructions they measured
(``LossTerms``), says which code ``encode`` returns (analysis, export and the latent figures read
that one), and may widen the encoder's output (the VAE's mean and log-variance). ``mse`` is
always a term: the reconstruction error every run reports, measured on clean inputs outside
training, so val/mse compares across objectives.

A new objective is a registered subclass of ``Objective`` plus a ``configs/objective/*.yaml``
(``python src/train.py objective=<name>``); it reaches the training loop through
``AutoEncoder.loss_terms`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from aelab.constraints import Fraction, NonNegativeFloat
from aelab.errors import ConfigError
from aelab.registry import qualified_name, register


class AutoEncoder(Protocol):
    """What an objective uses of ``aelab.models.AutoEncoder`` (which imports this module)."""

    training: bool

    def __call__(self, x: Tensor) -> Tensor: ...

    def encoded(self, x: Tensor) -> Tensor: ...

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


class LossTerms(NamedTuple):
    """What an objective measures on a batch ``x`` of (N, C, H, W) images."""

    # named batch means: their sum is optimised, each is logged as <split>/<name>
    terms: dict[str, Tensor]
    # (N, C, H, W), the decoded images the terms measured: validation's watched metrics
    # (aelab.models.metrics) compare them with x, so that an evaluated batch is decoded once
    reconstructions: Tensor


@register
class Objective:
    """The plain autoencoder: the mean squared error of the reconstruction, nothing else."""

    # the objective's name in tables and run names: its configs/objective option
    label = "plain"

    def encoder_spec(self, spec: Mapping[str, Any]) -> Mapping[str, Any]:
        """The encoder to build, given the configured one (an objective may widen its output)."""
        return spec

    def code(self, encoded: Tensor) -> Tensor:
        """The deterministic code, from what the encoder outputs."""
        return encoded

    def loss_terms(self, model: AutoEncoder, x: Tensor) -> LossTerms:
        reconstructions = model(x)
        return LossTerms({"mse": F.mse_loss(reconstructions.float(), x)}, reconstructions)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({settings})"


@register
class Denoising(Objective):
    """Reconstruct the clean image from a corrupted one (Vincent et al., 2008). Corruption is
    applied in training only, like dropout: train/mse is the error on corrupted inputs, val/mse
    the plain reconstruction error.

    ``corruption``: ``gaussian`` adds noise of standard deviation ``level`` (the data spans
    [-1, 1]) and clips; ``masking`` sets a ``level`` fraction of the pixels to the background, -1.
    """

    label = "denoising"

    def __init__(self, corruption: Literal["gaussian", "masking"] = "gaussian", level: Fraction = 0.5) -> None:
        self.corruption = corruption
        self.level = float(level)

    def corrupt(self, x: Tensor) -> Tensor:
        if self.corruption == "gaussian":
            return (x + self.level * torch.randn_like(x)).clamp_(-1.0, 1.0)
        return x.masked_fill(torch.rand_like(x) < self.level, -1.0)

    def loss_terms(self, model: AutoEncoder, x: Tensor) -> LossTerms:
        reconstructions = model(self.corrupt(x) if model.training else x)
        return LossTerms({"mse": F.mse_loss(reconstructions.float(), x)}, reconstructions)


@register
class Sparse(Objective):
    """The reconstruction error plus ``weight`` times the mean absolute value of the code (an L1
    penalty, logged as the term ``l1``): most code entries near zero for any one image."""

    label = "sparse"

    def __init__(self, weight: NonNegativeFloat = 0.001) -> None:
        self.weight = float(weight)

    def loss_terms(self, model: AutoEncoder, x: Tensor) -> LossTerms:
        z = model.encode(x)
        reconstructions = model.decode(z)
        terms = {"mse": F.mse_loss(reconstructions.float(), x), "l1": self.weight * z.float().abs().mean()}
        return LossTerms(terms, reconstructions)


@register
class Variational(Objective):
    """A variational autoencoder (Kingma & Welling, 2014): the encoder outputs the mean and the
    log-variance of a Gaussian code, training decodes a reparameterised sample of it, and the
    term ``kl`` is ``beta`` times its KL divergence from N(0, I) in nats per image, divided by the
    image's numbers (784 for MNIST's 1x28x28) so that it shares the per-pixel scale of ``mse``. At
    ``beta`` 1 the loss is the negative ELBO, per pixel, of a Gaussian decoder of variance 1/2.
    ``encode`` returns the mean, and outside training ``mse`` is the reconstruction of the mean.
    """

    label = "vae"

    def __init__(self, beta: NonNegativeFloat = 1.0) -> None:
        self.beta = float(beta)

    def encoder_spec(self, spec: Mapping[str, Any]) -> Mapping[str, Any]:
        latent_dim = spec.get("latent_dim")
        if latent_dim is None:
            raise ConfigError(
                "model.latent_dim=null is invalid for objective=vae: its Gaussian code is a vector of "
                "model.latent_dim numbers (model=conv's default is its 64x2x2 map); set one, e.g. model.latent_dim=16"
            )
        # one linear output layer of twice the width: the mean's and the log-variance's heads
        return {**spec, "latent_dim": 2 * int(latent_dim)}

    def code(self, encoded: Tensor) -> Tensor:
        return encoded.chunk(2, dim=1)[0]

    def loss_terms(self, model: AutoEncoder, x: Tensor) -> LossTerms:
        mean, log_var = model.encoded(x).float().chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if model.training else mean
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum(dim=1).mean()
        reconstructions = model.decode(z)
        terms = {"mse": F.mse_loss(reconstructions.float(), x), "kl": self.beta * kl / x[0].numel()}
        return LossTerms(terms, reconstructions)


def objective_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The objective a model config holds; none (``AutoEncoder``'s default) is the plain autoencoder."""
    return dict(spec) if spec else {"_target_": qualified_name(Objective)}
