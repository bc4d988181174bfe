"""Extending aelab the documented way: a backbone or an objective is a registered class plus a
config, trained and reloaded with nothing else edited."""

import importlib

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aelab.registry import REGISTRY
from aelab.runs import open_run
from aelab.tasks.train import train

from conftest import compose_train, run_cli

EXTRA = '''
import math

import torch
from torch import nn

from aelab.models import AutoEncoder
from aelab.models.objectives import LossTerms
from aelab.registry import register


@register
class TinyEncoder(nn.Module):
    def __init__(self, image_shape: list[int], latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), latent_dim))

    def forward(self, x):
        return self.net(x)


@register
class TinyDecoder(nn.Module):
    def __init__(self, image_shape: list[int], latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, math.prod(image_shape)), nn.Tanh(), nn.Unflatten(1, image_shape))

    def forward(self, z):
        return self.net(z)


@register
class SparseAutoEncoder(AutoEncoder):
    """An objective beyond MSE: an L1 penalty on the code."""

    def __init__(self, *args, l1: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def loss_terms(self, x):
        z = self.encode(x)
        reconstructions = self.decode(z)
        terms = {"mse": torch.nn.functional.mse_loss(reconstructions, x), "l1": self.hparams.l1 * z.abs().mean()}
        return LossTerms(terms, reconstructions)
'''

MODEL_YAML = """
defaults:
  - optimizer: adamw
  - _self_

_target_: {module}.SparseAutoEncoder
_recursive_: false
_convert_: all
latent_dim: 4
l1: 0.1
encoder:
  _target_: {module}.TinyEncoder
  latent_dim: ${{model.latent_dim}}
decoder:
  _target_: {module}.TinyDecoder
  latent_dim: ${{model.latent_dim}}
scheduler: null
compile: false
"""


@pytest.fixture
def extra_module(tmp_path, monkeypatch):
    """A user's module, outside aelab, holding a new backbone and a new objective."""
    name = f"user_extra_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / f"{name}.py").write_text(EXTRA)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    yield name
    for key in [k for k in REGISTRY if k.startswith(name)]:
        del REGISTRY[key]


def test_a_new_backbone_and_objective_train_for_one_batch_and_reload(tmp_path, tiny_mnist, extra_module):
    configs = tmp_path / "configs" / "model"
    configs.mkdir(parents=True)
    (configs / "sparse.yaml").write_text(MODEL_YAML.format(module=extra_module))
    cfg = compose_train(
        tmp_path, tiny_mnist, ["debug=fdr", "model=sparse", f"hydra.searchpath=[file://{tmp_path / 'configs'}]"]
    )
    summary = train(cfg)
    assert summary["status"] == "ok"
    assert summary["backbone"] == "tiny"
    assert summary["params"] == (784 * 4 + 4) + (4 * 784 + 784)

    loaded = open_run(summary["last_checkpoint"])
    assert type(loaded.model).__name__ == "SparseAutoEncoder" and loaded.model.hparams.l1 == 0.1
    assert set(loaded.model.loss_terms(torch.zeros(2, 1, 28, 28)).terms) == {"mse", "l1"}


def test_an_objective_with_several_terms_logs_each_and_their_sum(tmp_path, tiny_mnist, extra_module):
    importlib.import_module(extra_module)
    cfg = compose_train(
        tmp_path,
        tiny_mnist,
        [
            "trainer.max_epochs=1",
            f"model._target_={extra_module}.SparseAutoEncoder",
            "+model.l1=0.5",
        ],
    )
    train(cfg)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/mse", "train/l1", "train/loss", "val/mse", "val/l1", "val/loss", "val/mse_best"} <= scalars
    (loss,) = events.Scalars("val/loss")
    (mse,) = events.Scalars("val/mse")
    (l1,) = events.Scalars("val/l1")
    assert loss.value == pytest.approx(mse.value + l1.value, rel=1e-6)


def test_an_unregistered_class_in_the_users_config_is_refused_with_the_fix(tmp_path, tiny_mnist):
    cfg = compose_train(tmp_path, tiny_mnist, ["model.encoder._target_=torch.nn.Identity"])
    from aelab.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"model.encoder._target_=torch.nn.Identity is not a registered aelab "
        r"class; decorate the class with @aelab.registry.register",
    ):
        train(cfg)


def test_a_checkpoint_of_a_user_class_is_refused_where_that_class_is_not_registered(tmp_path, tiny_mnist, extra_module):
    importlib.import_module(extra_module)
    cfg = compose_train(tmp_path, tiny_mnist, ["debug=fdr", f"model._target_={extra_module}.SparseAutoEncoder"])
    checkpoint = train(cfg)["last_checkpoint"]
    # a fresh process has never imported the user's module: the checkpoint names it, and is refused
    result = run_cli("eval.py", f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert f"names {extra_module}.SparseAutoEncoder, which is not one of aelab's registered classes" in result.stderr
    assert "Traceback" not in result.stderr
