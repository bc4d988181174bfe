"""Extending aelab the documented way (docs/extending.md, read from the page): a backbone or an
objective is a registered class plus a config, trained and reloaded with nothing else edited."""

import importlib
import itertools
import shlex
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import aelab.models
from aelab.errors import ConfigError
from aelab.registry import REGISTRY
from aelab.runs import open_run
from aelab.tasks.train import train

from conftest import REPO, compose_train, events_dir, run_cli
from pages import code

PAGE = REPO / "docs" / "extending.md"


def page_blocks(language: str) -> list[str]:
    return code(PAGE, language)


def page_files() -> dict[str, str]:
    """The files the page tells a user to create: each block naming its path in a comment of its
    first two lines (a yaml's ``# @package`` line must come first)."""
    files = {}
    for block in page_blocks("python") + page_blocks("yaml"):
        for line in block.splitlines()[:2]:
            path = line.removeprefix("# ").split()[0]
            if path.startswith(("src/aelab/models/tiny.py", "configs/")):
                files[path] = block
    return files


def page_commands() -> list[list[str]]:
    """Each training command of the page as the runs it starts: ``-m a=1,2 b=x`` is two runs."""
    runs = []
    for block in page_blocks("text"):
        for line in block.splitlines():
            words = shlex.split(line)
            assert words[:2] == ["python", "src/train.py"], line
            overrides = [w for w in words[2:] if w != "-m"]
            choices = [[f"{k}={v}" for v in value.split(",")] for k, _, value in (o.partition("=") for o in overrides)]
            runs.extend(list(combination) for combination in itertools.product(*choices))
    return runs


@pytest.fixture
def documented_extension(tmp_path, monkeypatch):
    """The page's module, as src/aelab/models/tiny.py would be (imported as aelab.models.tiny, as
    the package imports every module of its folder), and its yaml files in a config folder of their
    own, on Hydra's search path. Removed from the registry afterwards."""
    files = page_files()
    assert set(files) == {"src/aelab/models/tiny.py", "configs/model/tiny.yaml", "configs/objective/robust.yaml"}
    models = tmp_path / "user" / "aelab" / "models"
    models.mkdir(parents=True)
    (models / "tiny.py").write_text(files.pop("src/aelab/models/tiny.py"))
    for path, text in files.items():
        (tmp_path / "user" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "user" / path).write_text(text)
    monkeypatch.setattr(aelab.models, "__path__", [*aelab.models.__path__, str(models)])
    importlib.import_module("aelab.models.tiny")
    yield f"hydra.searchpath=[file://{tmp_path / 'user' / 'configs'}]"
    sys.modules.pop("aelab.models.tiny", None)
    for key in [k for k in REGISTRY if k.startswith("aelab.models.tiny.")]:
        del REGISTRY[key]


def test_the_documented_backbone_and_objective_train_with_the_pages_commands(
    tmp_path, tiny_mnist, documented_extension
):
    runs = page_commands()
    assert len(runs) == 6
    for number, overrides in enumerate(runs):
        cfg = compose_train(
            tmp_path / str(number), tiny_mnist, [documented_extension, "trainer.max_epochs=1", *overrides]
        )
        summary = train(cfg)
        assert summary["status"] == "ok", overrides
        tiny = "model=tiny" in overrides
        assert summary["backbone"] == ("tiny" if tiny else "mlp")
        if tiny:
            latent_dim = next((int(o.split("=")[1]) for o in overrides if o.startswith("model.latent_dim=")), 4)
            assert summary["params"] == (784 * latent_dim + latent_dim) + (latent_dim * 784 + 784)
        events = EventAccumulator(str(events_dir(tmp_path / str(number) / "run")))
        events.Reload()
        if "objective=robust" in overrides:
            # every term is logged, and the loss is their sum
            assert {"train/mse", "train/l1", "train/loss", "val/mse", "val/l1", "val/loss"} <= set(
                events.Tags()["scalars"]
            )
            (loss,), (mse,), (l1,) = (events.Scalars(f"val/{name}") for name in ("loss", "mse", "l1"))
            assert loss.value == pytest.approx(mse.value + l1.value, rel=1e-6)
            weight = 0.5 if "model.objective.weight=0.5" in overrides else 1.0
            assert cfg.model.objective.weight == weight
        else:
            assert "val/l1" not in events.Tags()["scalars"]
    # a checkpoint of the new classes loads back as them
    loaded = open_run(summary["last_checkpoint"])
    assert type(loaded.model.encoder).__name__ == "TinyEncoder"
    assert type(loaded.model.objective).__name__ == "RobustObjective"
    assert set(loaded.model.loss_terms(torch.zeros(2, 1, 28, 28)).terms) == {"mse", "l1"}


def test_a_wrong_type_for_the_new_objectives_setting_is_one_line_before_any_run(
    tmp_path, tiny_mnist, documented_extension
):
    cfg = compose_train(tmp_path, tiny_mnist, [documented_extension, "objective=robust", "model.objective.weight=abc"])
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == "model.objective.weight='abc' is invalid: it must be a number"
    assert not (tmp_path / "run").exists()


def test_an_unregistered_class_in_the_users_config_is_refused_with_the_fix(tmp_path, tiny_mnist):
    cfg = compose_train(tmp_path, tiny_mnist, ["model.encoder._target_=torch.nn.Identity"])
    from aelab.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"model.encoder._target_=torch.nn.Identity is not a registered aelab "
        r"class; decorate the class with @aelab.registry.register",
    ):
        train(cfg)


def test_a_checkpoint_of_a_user_class_is_refused_where_that_class_is_not_registered(
    tmp_path, tiny_mnist, documented_extension
):
    cfg = compose_train(tmp_path, tiny_mnist, [documented_extension, "debug=fdr", "model=tiny"])
    checkpoint = train(cfg)["last_checkpoint"]
    # a fresh process has never imported the page's module: the checkpoint names its class, and is refused
    result = run_cli("eval.py", f"ckpt_path={checkpoint}", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2
    assert "names aelab.models.tiny.TinyEncoder, which is not one of aelab's registered classes" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_documented_metric_is_two_lines_and_logged_every_epoch(tmp_path, tiny_mnist, monkeypatch):
    """The page's edit of aelab/models/metrics.py (one import, one line), applied to the module as
    it is: validation then logs val/ssim beside val/psnr, and nothing else changes."""
    import aelab.models.autoencoder
    import aelab.models.metrics

    (excerpt,) = [block for block in page_blocks("python") if block.startswith("# src/aelab/models/metrics.py")]
    current = (REPO / "src" / "aelab" / "models" / "metrics.py").read_text()
    added = [line for line in excerpt.splitlines()[1:] if line.strip() and line not in current.splitlines()]
    # the import line (PSNR's, with SSIM added) and the metric's line
    assert len(added) == 2, added
    namespace = dict(vars(aelab.models.metrics))
    exec(excerpt, namespace)
    monkeypatch.setattr(aelab.models.autoencoder, "watched_metrics", namespace["watched_metrics"])
    train(compose_train(tmp_path, tiny_mnist, ["trainer.max_epochs=2"]))
    events = EventAccumulator(str(events_dir(tmp_path / "run")))
    events.Reload()
    ssim = [event.value for event in events.Scalars("val/ssim")]
    assert len(ssim) == 2 and all(-1.0 <= value <= 1.0 for value in ssim)
    assert len(events.Scalars("val/psnr")) == 2
