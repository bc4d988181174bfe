import pytest
import torch
from hydra.utils import instantiate

from aelab.errors import ConfigError
from aelab.models import AutoEncoder, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

from conftest import compose_config

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
MNIST = [1, 28, 28]


def mlp(latent_dim):
    return AutoEncoder(
        image_shape=MNIST,
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", "latent_dim": latent_dim},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", "latent_dim": latent_dim},
        optimizer=ADAMW,
        latent_dim=latent_dim,
    )


def conv(latent_dim=None):
    return AutoEncoder(
        image_shape=MNIST,
        encoder={"_target_": "aelab.models.backbones.ConvEncoder", "latent_dim": latent_dim},
        decoder={"_target_": "aelab.models.backbones.ConvDecoder", "latent_dim": latent_dim},
        optimizer=ADAMW,
        latent_dim=latent_dim,
    )


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_mlp_has_218643_parameters_at_latent_3():
    assert n_params(mlp(3)) == 218_643


def test_mlp_has_224706_parameters_at_latent_50():
    assert n_params(mlp(50)) == 224_706


def test_conv_has_50161_parameters_with_the_64x2x2_bottleneck():
    assert n_params(conv(None)) == 50_161


def test_conv_projection_adds_two_linear_layers_around_the_256_map():
    d = 5
    assert n_params(conv(d)) == 50_161 + (256 * d + d) + (d * 256 + 256)


def test_conv_latent_is_the_64x2x2_map_and_output_is_28x28():
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    z = ConvEncoder(MNIST)(x)
    assert z.shape == (4, 64, 2, 2)
    assert ConvDecoder(MNIST)(z).shape == (4, 1, 28, 28)


@pytest.mark.parametrize("latent_dim", [2, 3, 5, 10, 50])
def test_mlp_latent_has_latent_dim_numbers_and_output_is_in_tanh_range(latent_dim):
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    z = MLPEncoder(MNIST, latent_dim)(x)
    y = MLPDecoder(MNIST, latent_dim)(z * 100)
    assert z.shape == (8, latent_dim)
    assert y.shape == (8, 1, 28, 28)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("latent_dim", [2, 50])
def test_conv_with_integer_latent_dim_encodes_to_a_vector(latent_dim):
    model = conv(latent_dim)
    x = torch.zeros(3, 1, 28, 28)
    assert model.encode(x).shape == (3, latent_dim)
    assert model(x).shape == (3, 1, 28, 28)
    assert model.latent_size == latent_dim


def test_conv_compression_matches_the_article_67_3_percent():
    assert round(conv(None).compression * 100, 1) == 67.3


@pytest.mark.parametrize("bad", [0, -3, 2.5, "three", True, None])
def test_a_stored_mlp_latent_dim_must_be_a_positive_integer_and_a_conv_one_may_be_null(bad):
    from aelab.registry import build

    with pytest.raises(ConfigError, match=r"model.encoder.latent_dim=.* is invalid: it must be a positive integer$"):
        build(
            {"_target_": "aelab.models.backbones.MLPEncoder", "image_shape": MNIST, "latent_dim": bad}, "model.encoder"
        )
    build({"_target_": "aelab.models.backbones.ConvEncoder", "image_shape": MNIST, "latent_dim": None}, "model.encoder")


def test_module_rebuilds_from_plain_hparams():
    model = mlp(3)
    rebuilt = AutoEncoder(**model.hparams)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.zeros(2, 1, 28, 28)
    assert torch.equal(model(x), rebuilt(x))


def test_optimizer_is_the_configured_partial_adamw():
    optimizer = mlp(3).configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 1e-3


def test_scheduler_config_returns_an_epoch_scheduler():
    model = AutoEncoder(
        image_shape=MNIST,
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", "latent_dim": 2},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", "latent_dim": 2},
        optimizer=ADAMW,
        latent_dim=2,
        scheduler={"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1},
    )
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_instantiate_builds_encoders_from_config():
    encoder = instantiate({"_target_": "aelab.models.backbones.MLPEncoder", "image_shape": MNIST, "latent_dim": 4})
    assert encoder(torch.zeros(1, 1, 28, 28)).shape == (1, 4)


def test_the_backbone_label_is_derived_from_the_encoder_class():
    assert mlp(3).backbone == "mlp"
    assert conv().backbone == "conv"


def test_loss_terms_are_the_named_mse_of_the_reconstruction():
    model = mlp(3)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    terms, reconstructions = model.loss_terms(x)
    assert list(terms) == ["mse"]
    assert torch.equal(terms["mse"], torch.nn.functional.mse_loss(model(x), x))
    assert torch.equal(reconstructions, model(x))


def test_mlp_norm_and_activation_follow_each_hidden_layer_only():
    encoder = MLPEncoder(MNIST, 5, hidden_dims=(40, 20), norm="batch", activation="silu")
    kinds = [type(m).__name__ for m in encoder]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "SiLU", "Linear", "BatchNorm1d", "SiLU", "Linear"]
    decoder = MLPDecoder(MNIST, 5, hidden_dims=(20, 40), norm="layer", activation="gelu")
    assert [type(m).__name__ for m in decoder][:4] == ["Linear", "LayerNorm", "GELU", "Linear"]
    # a batch norm adds a scale and a shift per unit: 2 * (40 + 20) on top of the plain network
    assert n_params(encoder) == n_params(MLPEncoder(MNIST, 5, hidden_dims=(40, 20))) + 2 * (40 + 20)
    # the article's network is what null and relu build: its checkpoints load as they were
    assert [type(m).__name__ for m in MLPEncoder(MNIST, 3)] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_the_mlp_config_gives_the_decoder_the_encoders_norm_and_activation(tmp_path):
    cfg = compose_config("train", tmp_path, ["model.encoder.norm=batch", "model.encoder.activation=silu"])
    model = instantiate(cfg.model, image_shape=MNIST)
    kinds = [type(m).__name__ for m in model.decoder]
    assert kinds[:3] == ["Linear", "BatchNorm1d", "SiLU"] and model.hparams["decoder"]["norm"] == "batch"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"norm": "group"}, "model.encoder.norm='group' is invalid: it must be one of batch, layer or null"),
        ({"activation": None}, "model.encoder.activation=null is invalid: it must be one of relu, silu, gelu"),
        (
            {"hidden_dims": [64, 0]},
            "model.encoder.hidden_dims=[64, 0] is invalid: it must be a list whose items are each a positive integer",
        ),
    ],
)
def test_a_stored_encoder_config_is_checked_by_the_types_its_class_declares(arguments, message):
    """What a checkpoint (or any stored config) holds is built through aelab.registry.build, which
    checks it by the same rules as the command line, before the class runs."""
    from aelab.registry import build

    with pytest.raises(ConfigError) as caught:
        build(
            {"_target_": "aelab.models.backbones.MLPEncoder", "image_shape": MNIST, "latent_dim": 3, **arguments},
            "model.encoder",
        )
    assert str(caught.value) == message


def test_probing_the_latent_shape_leaves_batch_norm_statistics_and_the_mode_alone():
    spec = {"latent_dim": 4, "hidden_dims": [8], "norm": "batch"}
    model = AutoEncoder(
        image_shape=MNIST,
        encoder={"_target_": "aelab.models.backbones.MLPEncoder", **spec},
        decoder={"_target_": "aelab.models.backbones.MLPDecoder", **spec},
        optimizer=ADAMW,
        latent_dim=4,
    ).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.latent_shape == (4,) and model.latent_size == 4
    assert model.logged_metrics()[0] == "val/mse"
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
