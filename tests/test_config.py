"""Every option of every config group composes, and the composed objects instantiate."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aelab.cli import TASKS
from aelab.config import validate
from aelab.data import DATASETS
from aelab.errors import ConfigError

from conftest import CONFIGS, REPO, compose_config, compose_train, logger_option, run_cli

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "paths", "hydra", "debug", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_every_code_group_has_its_config_folder():
    for group in GROUPS:
        assert options(group), f"configs/{group}/ is empty"


@pytest.mark.parametrize(
    "override",
    [
        logger_option(option, "logger=") if group == "logger" else f"{group}={option}"
        for group in GROUPS
        if group != "hydra"
        for option in options(group)
    ],
)
def test_every_group_option_composes(tmp_path, tiny_mnist, override):
    # a user's own images are named by their folder or file, the MNIST family by its data folder
    own = {"data=folder": f"data.root={tmp_path}", "data=arrays": f"data.path={tmp_path / 'images.npz'}"}
    if override in own:
        cfg = compose_config("train", tmp_path, [override, own[override]])
    else:
        cfg = compose_train(tmp_path, tiny_mnist, [override])
    # a debug= check is no training run: its folder is logs/debug/ (ckpt_path=last and make tensorboard leave it out)
    assert cfg.task_name == ("debug" if override.startswith("debug=") else "train")
    if override not in ("trainer=gpu", "trainer=ddp"):  # both need a CUDA GPU
        validate(cfg)


def test_hydra_group_sets_run_and_sweep_dirs_named_by_overrides():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", return_hydra_config=True)
    hydra_cfg = OmegaConf.to_container(cfg.hydra, resolve=False)
    task = "${checked_name:task_name,${task_name}}"
    assert hydra_cfg["run"]["dir"] == (
        "${paths.log_dir}/" + task + "/runs/${run_stamp:%Y-%m-%d_%H-%M-%S}${run_suffix:}"
    )
    assert hydra_cfg["sweep"]["dir"] == "${paths.log_dir}/" + task + "/multiruns/${now:%Y-%m-%d_%H-%M-%S}"
    assert hydra_cfg["sweep"]["subdir"] == "${path_component:${hydra.job.override_dirname}}"


def test_names_made_from_user_strings_stay_one_directory():
    from aelab.paths import checked_name, path_component, run_suffix

    assert path_component("+tag=a/../../..,model.latent_dim=3") == "+tag=a_.._.._..,model.latent_dim=3"
    assert checked_name("task_name", "my_run-2") == "my_run-2"

    # a single run's folder: readable, one directory, and pasteable into ckpt_path= unquoted
    def suffix(override_dirname: str) -> str:
        return run_suffix(OmegaConf.create({"hydra": {"job": {"override_dirname": override_dirname}}}))

    assert suffix("") == ""
    assert suffix("model=conv,model.latent_dim=5") == "_model-conv_model.latent_dim-5"
    assert suffix("+tag=a/../..,data.keep_classes=[1,2]") == "__tag-a_.._.._data.keep_classes-_1_2_"
    assert suffix("model.latent_dim=${nope}") == "_model.latent_dim-_nope_"  # read, never resolved
    assert len(suffix("model.optimizer.lr=0.001," * 20)) == 121
    for bad in ("../x", "a/b", "..", "", ".hidden", None):
        with pytest.raises(ConfigError, match="task_name=.* is invalid: it must be a plain name"):
            checked_name("task_name", bad)


@pytest.mark.parametrize("task", list(TASKS))
def test_the_schema_has_a_rule_for_every_key_each_task_composes(tmp_path, task):
    from aelab.config import _leaves, rule_of

    cfg = compose_config(task, tmp_path, ["model=conv", "logger=csv"] if task == "train" else [])
    keys = [key for key, _ in _leaves(cfg)]
    assert "trainer.max_epochs" in keys and "paths.log_dir" in keys
    assert [key for key in keys if rule_of(cfg, key) is None] == []


@pytest.mark.parametrize("model", options("model"))
def test_a_plain_instantiate_of_each_model_config_returns_the_module(tmp_path, tiny_mnist, model):
    from aelab.models import AutoEncoder

    cfg = compose_train(tmp_path, tiny_mnist, [f"model={model}"])
    module = instantiate(cfg.model, image_shape=[1, 28, 28])
    assert isinstance(module, AutoEncoder)
    assert type(module.hparams.encoder) is dict and type(module.hparams.optimizer) is dict
    assert module.backbone == model
    assert module(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("data", [o for o in options("data") if o in DATASETS])
def test_each_mnist_family_config_instantiates_its_dataset(tmp_path, data):
    cfg = compose_train(tmp_path, tmp_path, [f"data={data}"])
    datamodule = instantiate(cfg.data)
    assert datamodule.spec.name == data
    assert len(datamodule.classes) == 10
    assert datamodule.raw_dir == tmp_path.resolve() / datamodule.spec.torchvision_class / "raw"


@pytest.mark.parametrize("task", [task for task in TASKS if task != "train"])
def test_eval_and_analyze_compose_the_same_groups_as_train(tmp_path, task):
    train = compose_config("train", tmp_path)
    cfg = compose_config(task, tmp_path, ["trainer=cpu", "data.batch_size=512", "data.data_dir=/x"])
    assert cfg.trainer == compose_config("train", tmp_path, ["trainer=cpu"]).trainer
    assert cfg.paths == train.paths
    assert cfg.data.batch_size == 512 and cfg.data.data_dir == "/x"
    # keys left alone mean "as the checkpoint says"
    assert compose_config(task, tmp_path).data.data_dir is None
    validate(cfg)


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


def test_paths_are_anchored_at_the_repository_wherever_the_command_runs(tmp_path):
    result = run_cli("train.py", "--cfg", "job", "--resolve", "--package", "paths", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"log_dir: {REPO}/logs" in result.stdout
    assert f"root_dir: {REPO}" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_data_dir_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_DATA_DIR", "/somewhere/mnist")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", overrides=["paths.root_dir=/repo"])
    assert cfg.data.data_dir == "/somewhere/mnist"
    monkeypatch.delenv("AELAB_DATA_DIR")
    assert cfg.data.data_dir == "/repo/data"


def test_a_bad_latent_dim_is_refused_when_the_model_is_built(tmp_path):
    from aelab.cli import user_error

    cfg = compose_train(tmp_path, tmp_path, ["model.latent_dim=0"])
    with pytest.raises(Exception) as raised:
        instantiate(cfg.model, image_shape=[1, 28, 28])
    # Hydra wraps what constructors raise; the entry points print the ConfigError inside
    assert str(user_error(raised.value)) == "model.encoder.latent_dim=0 is invalid: it must be a positive integer"


@pytest.mark.parametrize(("task", "has_report"), [(task, task == "train") for task in TASKS])
def test_only_training_sweeps_get_the_sweep_report(task, has_report):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name=task, return_hydra_config=True)
    callbacks = OmegaConf.to_container(cfg.hydra.callbacks)
    assert ("sweep_report" in callbacks) == has_report


def test_the_default_trainer_takes_the_gpu_when_torch_finds_one_and_cpu_or_gpu_pin_it(tmp_path, tiny_mnist):
    from aelab.config import device_of

    default = compose_train(tmp_path, tiny_mnist)
    assert default.trainer.accelerator == "auto"
    assert device_of(default).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_of(compose_train(tmp_path, tiny_mnist, ["trainer=cpu"])).type == "cpu"
    assert compose_train(tmp_path, tiny_mnist, ["trainer=gpu"]).trainer.accelerator == "gpu"
