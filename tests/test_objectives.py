"""Objectives (model.objective): each one's loss terms on a known input, and the VAE's code."""

import math

import pytest
import torch
import torch.nn.functional as F

from aelab.models import AutoEncoder
from aelab.models.objectives import Objective
from aelab.registry import register

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def known_model(objective, latent_dim=2, code_bias=(0.5, -1.0), output_bias=0.25):
    """An MLP autoencoder with every weight zero: the code is the encoder's last bias and the
    reconstruction is tanh(output_bias) everywhere, so each term has a value known by hand."""
    model = AutoEncoder(
        image_shape=[1, 28, 28],
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", "latent_dim": latent_dim},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", "latent_dim": latent_dim},
        optimizer=ADAMW,
        latent_dim=latent_dim,
        objective=objective,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.encoder[-1].bias.copy_(torch.tensor(code_bias))
        model.decoder[-3].bias.fill_(output_bias)
    return model


X = torch.linspace(-1, 1, 2 * 784).reshape(2, 1, 28, 28)
PLAIN_MSE = float(((X.double() - math.tanh(0.25)) ** 2).mean())


def test_plain_is_the_mse_of_the_reconstruction():
    terms = known_model({"_target_": "aelab.models.objectives.Objective"}).eval().loss_terms(X).terms
    assert list(terms) == ["mse"]
    assert float(terms["mse"]) == pytest.approx(PLAIN_MSE, rel=1e-6)


def test_sparse_adds_weight_times_the_mean_absolute_code():
    model = known_model({"_target_": "aelab.models.objectives.Sparse", "weight": 0.1}).eval()
    terms = model.loss_terms(X).terms
    assert float(terms["mse"]) == pytest.approx(PLAIN_MSE, rel=1e-6)
    assert float(terms["l1"]) == pytest.approx(0.1 * (0.5 + 1.0) / 2, rel=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_vae_kl_is_beta_times_the_gaussians_kl_per_pixel(training):
    mean, log_var = [0.5, -1.0], [0.2, -0.4]
    model = known_model({"_target_": "aelab.models.objectives.Variational", "beta": 4.0}, code_bias=(*mean, *log_var))
    model.train(training)
    terms = model.loss_terms(X).terms
    kl = -0.5 * sum(1 + v - m * m - math.exp(v) for m, v in zip(mean, log_var, strict=True))
    assert set(terms) == {"mse", "kl"}
    assert float(terms["kl"]) == pytest.approx(4.0 * kl / 784, rel=1e-6)
    # the decoder is constant: a sampled code and the mean reconstruct alike
    assert float(terms["mse"]) == pytest.approx(PLAIN_MSE, rel=1e-6)
    # the code analysis reads is the mean; the encoder outputs mean and log-variance
    assert model.encode(X).tolist() == [mean, mean]
    assert model.encoded(X).shape == (2, 4)


def test_denoising_corrupts_in_training_only():
    torch.manual_seed(0)
    model = AutoEncoder(  # randomly initialised: the reconstruction depends on the input
        image_shape=[1, 28, 28],
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", "latent_dim": 2},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", "latent_dim": 2},
        optimizer=ADAMW,
        objective={"_target_": "aelab.models.objectives.Denoising", "corruption": "gaussian", "level": 0.3},
    )
    model.eval()
    assert float(model.loss_terms(X).terms["mse"]) == float(F.mse_loss(model(X), X))
    model.train()
    torch.manual_seed(3)
    trained = float(model.loss_terms(X).terms["mse"])
    torch.manual_seed(3)
    noisy = (X + 0.3 * torch.randn_like(X)).clamp(-1, 1)
    assert trained == float(F.mse_loss(model(noisy), X))
    assert trained != float(F.mse_loss(model(X), X))


def test_masking_sets_the_level_fraction_of_pixels_to_the_background():
    from aelab.models.objectives import Denoising

    assert torch.equal(Denoising("masking", 1.0).corrupt(X), torch.full_like(X, -1.0))
    assert torch.equal(Denoising("masking", 0.0).corrupt(X), X)
    masked = Denoising("masking", 0.5).corrupt(torch.ones(1, 1, 280, 280))
    assert 0.45 < float((masked == -1).float().mean()) < 0.55


@pytest.mark.parametrize("objective", ["Objective", "Denoising", "Sparse", "Variational"])
def test_outside_training_the_reconstructions_measured_are_the_models_output(objective):
    """Validation's watched metrics (PSNR) read the reconstructions the loss terms measured
    instead of decoding the batch a second time: outside training they are ``model(x)``."""
    torch.manual_seed(0)
    model = AutoEncoder(
        image_shape=[1, 28, 28],
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", "latent_dim": 3},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", "latent_dim": 3},
        optimizer=ADAMW,
        latent_dim=3,
        objective={"_target_": f"aelab.models.objectives.{objective}"},
    ).eval()
    terms, reconstructions = model.loss_terms(X)
    assert reconstructions.shape == X.shape
    assert torch.equal(reconstructions, model(X))
    assert float(terms["mse"]) == float(F.mse_loss(model(X), X))


@register
class ReturnsADict(Objective):
    """An objective as written before LossTerms: its terms alone."""

    def loss_terms(self, model, x):
        return {"mse": F.mse_loss(model(x), x)}


def test_an_objective_returning_its_terms_alone_is_told_what_to_return():
    from aelab.errors import ObjectiveError

    with pytest.raises(
        ObjectiveError, match=r"test_objectives\.ReturnsADict\.loss_terms returned a dict; return LossTerms"
    ):
        known_model({"_target_": "test_objectives.ReturnsADict"})
