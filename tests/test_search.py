"""Hyper-parameter search (``-m hparams_search=...``, aelab.search): trials as sweep jobs, failures
recorded, a stopped search resumed from its SQLite storage."""

import csv

import optuna
import pytest
from omegaconf import OmegaConf

from aelab.errors import ConfigError
from aelab.search import STORAGE, distributions, override_text

from conftest import run_sweep

# a space in which about half the trials fail: data.batch_size=0 is refused by the datamodule
FLAKY_SPACE = """\
# @package _global_
defaults:
  - override /hydra/sweeper: search
hydra:
  sweep:
    subdir: trial-${hydra.job.num}
  sweeper:
    params:
      model.optimizer.lr: {low: 1.0e-3, high: 1.0e-2, log: true}
      data.batch_size: {choices: [16, 0]}
      model.encoder.hidden_dims: {choices: [[32, 16], [64, 32]]}
"""


def search(tmp_path, data, *overrides):
    config_dir = tmp_path / "extra_configs"
    (config_dir / "hparams_search").mkdir(parents=True, exist_ok=True)
    (config_dir / "hparams_search" / "flaky.yaml").write_text(FLAKY_SPACE)
    return run_sweep(tmp_path, data, f"--config-dir={config_dir}", "hparams_search=flaky", *overrides)


def read_trials(sweep_dir):
    with open(sweep_dir / "trials.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_search_survives_failing_trials_and_resumes_from_its_storage(tmp_path, tiny_mnist):
    sweep_dir = tmp_path / "sweep"
    first = search(tmp_path, tiny_mnist, "hydra.sweeper.n_trials=8")
    assert first.returncode == 0, first.stderr[-3000:]
    trials = read_trials(sweep_dir)
    assert [int(t["trial"]) for t in trials] == list(range(8))
    failed = [t for t in trials if t["state"] == "fail"]
    complete = [t for t in trials if t["state"] == "complete"]
    assert failed and complete and len(failed) + len(complete) == 8
    assert {t["data.batch_size"] for t in failed} == {"0"} and {t["data.batch_size"] for t in complete} == {"16"}
    assert all(t["error"].startswith("ConfigError: data.batch_size=0 is invalid") for t in failed)
    assert f"{len(failed)} of 8 trials failed" in first.stderr
    progress = [line for line in first.stdout.splitlines() if line.startswith("search: trial ")]
    assert [line.split(" (")[0] for line in progress] == [f"search: trial {k} of 8" for k in range(1, 9)]
    assert sum(": failed: ConfigError: data.batch_size=0 is invalid" in line for line in progress) == len(failed)
    best = min(complete, key=lambda t: float(t["val/mse_best"]))
    assert progress[-1].endswith(f"; best so far {float(best['val/mse_best']):.4g} ({best['folder']})")
    # each trial is a sweep job in its own folder, with the values the study gave it
    for trial in complete:
        stored = OmegaConf.load(sweep_dir / trial["folder"] / ".hydra" / "config.yaml")
        assert stored.model.optimizer.lr == float(trial["model.optimizer.lr"])
        assert override_text(list(stored.model.decoder.hidden_dims[::-1])) == trial["model.encoder.hidden_dims"]
    best = min(complete, key=lambda t: float(t["val/mse_best"]))
    report = (sweep_dir / "trials.md").read_text()
    assert f"Best: trial {best['trial']}, val/mse_best {float(best['val/mse_best']):.5f}" in report
    assert "trainer.max_epochs=1" in report and (sweep_dir / "trials.png").stat().st_size > 1000
    assert f"{report.rstrip()}\n\nsearch report: {sweep_dir / 'trials.md'}\n" in first.stdout
    # every trial has the same latent size: no curve against it
    assert not (sweep_dir / "mse_vs_latent_size.png").exists()

    # a search killed while a trial ran: the trial is still RUNNING in the storage
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir / STORAGE}")
    study.enqueue_trial({"model.optimizer.lr": 0.005, "data.batch_size": 16, "model.encoder.hidden_dims": "[64,32]"})
    interrupted = study.ask(
        distributions(OmegaConf.load(tmp_path / "extra_configs/hparams_search/flaky.yaml").hydra.sweeper.params)
    )
    assert interrupted.number == 8
    finished_before = {t["folder"]: (sweep_dir / t["folder"] / "run_summary.json").stat().st_mtime_ns for t in complete}

    # how figures are written is not what the study is of: a resume may change it
    resumed = search(tmp_path, tiny_mnist, "hydra.sweeper.n_trials=10", "figure_format=svg")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "<svg" in (sweep_dir / "trials.svg").read_text()
    assert "search: 8 trials in" in resumed.stdout + resumed.stderr
    trials = read_trials(sweep_dir)
    assert [int(t["trial"]) for t in trials] == list(range(10))
    assert trials[8]["state"] == "complete" and float(trials[8]["model.optimizer.lr"]) == 0.005
    assert (sweep_dir / "trial-8" / "checkpoints" / "last.ckpt").is_file()
    # the trials of the first run were not trained again
    assert {f: (sweep_dir / f / "run_summary.json").stat().st_mtime_ns for f in finished_before} == finished_before

    # the study is of one set of fixed overrides: resuming it with others would mix two searches
    other = search(tmp_path, tiny_mnist, "hydra.sweeper.n_trials=12", "model.latent_dim=5")
    assert other.returncode == 2
    assert (
        other.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"aelab: error: {sweep_dir / STORAGE} holds a search run with hparams_search=flaky trainer.max_epochs=1"
        )
    )
    assert len(read_trials(sweep_dir)) == 10


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"a": 3}, "hydra.sweeper.params.a=3 is invalid: give {low: 1e-4, high: 1e-2, log: true}"),
        ({"a": {"low": 2, "high": 1}}, "hydra.sweeper.params.a={low:2,high:1} is invalid: give {low: 1e-4"),
        ({"a": {"low": 0, "high": 1, "log": True}}, "hydra.sweeper.params.a={low:0,high:1,log:true} is invalid: log"),
        ({"a": {"choices": []}}, "hydra.sweeper.params.a={choices:[]} is invalid: give"),
        ({}, "hydra.sweeper.params is empty: name the keys to search"),
    ],
)
def test_a_bad_search_space_is_named_in_one_line(params, message):
    with pytest.raises(ConfigError) as caught:
        distributions(params)
    assert str(caught.value).startswith(message)


def test_the_space_gives_optuna_the_distributions_it_names():
    space = distributions(
        {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "epochs": {"low": 1, "high": 9, "int": True},
            "widths": {"choices": [[128, 64], [256, 128]]},
        }
    )
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["epochs"] == optuna.distributions.IntDistribution(1, 9)
    assert space["widths"] == optuna.distributions.CategoricalDistribution(["[128,64]", "[256,128]"])


@pytest.mark.slow
def test_a_sweep_of_values_inside_a_search_is_refused_in_one_line(tmp_path, tiny_mnist):
    result = search(tmp_path, tiny_mnist, "model.latent_dim=2,3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "aelab: error: model.latent_dim=2,3 is a sweep, and hparams_search chooses the values itself: give one "
        "value, or add the key to hydra.sweeper.params"
    )


def test_the_trials_plot_ticks_whole_trials():
    from aelab.report.plots import search_trials

    rows = [{"trial": 0, "val/mse_best": 0.2}, {"trial": 1, "val/mse_best": 0.1}, {"trial": 2, "state": "fail"}]
    ax = search_trials(rows, "val/mse_best").axes[0]
    assert [t for t in ax.get_xticks() if 0 <= t <= 2] == [0.0, 1.0, 2.0]


def test_figure_files_honour_the_dpi_and_refuse_an_unknown_format(tmp_path):
    import struct

    from aelab.errors import ConfigError
    from aelab.report.plots import FigureFiles, search_trials

    rows = [{"trial": 0, "val/mse_best": 0.2}]
    for dpi in (50, 100):
        path = FigureFiles.of({"figure_format": "png", "figure_dpi": dpi}).save(
            search_trials(rows, "val/mse_best"), tmp_path / "trials"
        )
        assert path == tmp_path / "trials.png"
        width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the PNG header's IHDR
        assert (width, height) == (7 * dpi, 4 * dpi)
    with pytest.raises(
        ConfigError, match="figure_format=gif, figure_dpi=100 is invalid: the format must be one of png"
    ):
        FigureFiles.of({"figure_format": "gif"})
