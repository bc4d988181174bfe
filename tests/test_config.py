"""Every option of every config group composes, and the composed objects instantiate."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aelab.config import validate
from aelab.errors import ConfigError
from conftest import CONFIGS, compose_train

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "paths", "hydra", "debug", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_code_group_has_its_config_folder():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group in GROUPS if group != "hydra" for option in options(group)]
)
def test_every_group_option_composes(tmp_path, tiny_mnist, override):
    cfg = compose_train(tmp_path, tiny_mnist, [override])
    assert cfg.task_name == "train"
    if not override.startswith("trainer=gpu"):
        validate(cfg)


def test_hydra_group_sets_run_and_sweep_dirs_named_by_overrides():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", return_hydra_config=True)
    hydra_cfg = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert hydra_cfg["run"]["dir"] == "${paths.log_dir}/${task_name}/runs/${now:%Y-%m-%d_%H-%M-%S}"
    assert hydra_cfg["sweep"]["dir"] == "${paths.log_dir}/${task_name}/multiruns/${now:%Y-%m-%d_%H-%M-%S}"
    assert hydra_cfg["sweep"]["subdir"] == "${hydra.job.override_dirname}"


@pytest.mark.parametrize("model", options("model"))
def test_model_configs_instantiate_with_plain_hyperparameters(tmp_path, tiny_mnist, model):
    cfg = compose_train(tmp_path, tiny_mnist, [f"model={model}"])
    module = instantiate(cfg.model, _recursive_=False, _convert_="all")
    assert type(module.hparams.encoder) is dict
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_default_trainer_data_logger_and_callbacks_instantiate(tmp_path, tiny_mnist):
    cfg = compose_train(tmp_path, tiny_mnist, ["logger=csv"])
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    assert trainer.max_epochs == 5
    assert instantiate(cfg.data).hparams.batch_size == 256


def test_seed_experiments_pin_the_article_recipes(tmp_path, tiny_mnist):
    mlp = compose_train(tmp_path, tiny_mnist, ["experiment=seed_mlp"])
    conv = compose_train(tmp_path, tiny_mnist, ["experiment=seed_conv"])
    for cfg in (mlp, conv):
        assert cfg.model.optimizer.lr == 1e-3 and cfg.model.optimizer.weight_decay == 1e-5
        assert cfg.data.batch_size == 256 and cfg.trainer.max_epochs == 5
    assert mlp.model.latent_dim == 3 and mlp.model.encoder._target_.endswith("MLPEncoder")
    assert conv.model.latent_dim is None and conv.model.encoder._target_.endswith("ConvEncoder")


def test_data_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_DATA_DIR", "/somewhere/mnist")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", overrides=["paths.root_dir=/repo"])
    assert cfg.data.data_dir == "/somewhere/mnist"
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert cfg.data.data_dir == "/repo/data"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.latent_dim=0", "model.latent_dim=0 is invalid"),
        ("data.batch_size=-1", "data.batch_size=-1 is invalid"),
        ("trainer.precision=16", "trainer.precision=16 is not supported"),
        ("trainer.precision=16-mixed", "16-mixed needs a GPU"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 is invalid"),
    ],
)
def test_validate_rejects_bad_values_with_the_key_and_value(tmp_path, tiny_mnist, override, message):
    cfg = compose_train(tmp_path, tiny_mnist, [override])
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the message on a machine with no GPU")
def test_gpu_trainer_without_gpu_fails_with_one_sentence(tmp_path, tiny_mnist):
    cfg = compose_train(tmp_path, tiny_mnist, ["trainer=gpu"])
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*use trainer=cpu"):
        validate(cfg)
