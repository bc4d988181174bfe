"""logger=mlflow, logger=wandb, logger=many: tiny real runs read back through each tool's own API."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aelab.config import validate
from aelab.errors import ConfigError
from aelab.names import TRAIN_MSE, VAL_MSE
from aelab.tasks.train import train

from conftest import CONFIGS, QUIET, REPO, compose_train, events_dir, logger_option, make_tiny_dataset, run_cli
from test_errors import run_in_process


def train_with(tmp_path: Path, data: Path, *overrides: str) -> dict:
    cfg = compose_train(tmp_path, data, ["trainer.max_epochs=2", "data.batch_size=32", *overrides])
    cfg.paths.output_dir = str(tmp_path / "logs" / "train" / "runs" / "first")
    return train(cfg)


@pytest.mark.extra("mlflow")
def test_logger_many_writes_tensorboard_csv_and_mlflow_and_mlflow_holds_the_run(tmp_path, tiny_mnist):
    from mlflow.tracking import MlflowClient

    summary = train_with(tmp_path, tiny_mnist, "logger=many")
    run_dir = Path(summary["output_dir"])
    assert events_dir(run_dir).name == "MNIST"
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[:2] == ["epoch", "step"] and VAL_MSE in rows[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.run_name == "first (train/runs)"  # the distinguishing part first: run tables cut names
    assert run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == summary["output_dir"]
    assert {k: run.data.params[k] for k in ("backbone", "latent_size", "params", "batch_size")} == {
        "backbone": "mlp",
        "latent_size": "3",
        "params": "218643",
        "batch_size": "32",
    }
    history = client.get_metric_history(run.info.run_id, VAL_MSE)
    assert [m.step for m in history] == [2, 5]  # 3 batches an epoch, as TensorBoard's steps
    assert history[-1].value == pytest.approx(summary[VAL_MSE], rel=1e-6)
    assert client.get_metric_history(run.info.run_id, TRAIN_MSE)[-1].value == pytest.approx(summary[TRAIN_MSE])
    images = [f.path for f in client.list_artifacts(run.info.run_id, "images")]
    assert sum(p.endswith(".png") and "val~reconstructions+step+" in p for p in images) == 2  # one per epoch
    # the store and the images stay under the log root
    assert (tmp_path / "logs" / "mlflow" / "artifacts").is_dir()


def wandb_records(run_file: Path):
    """The records of a W&B ``run-*.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB's log format (32 KiB blocks of chunks: crc32c, length, type), each record a protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the tail of a block too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 2:  # first chunk of a record
            pending = chunk
            continue
        if kind == 3:  # middle
            pending += chunk
            continue
        if kind == 4:  # last
            chunk, pending = pending + chunk, b""
        elif kind != 1:  # 1: a whole record in one chunk; 0: zero padding
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        yield record


def test_the_run_name_and_hyperparameters_tell_a_subset_from_the_official_split(tmp_path):
    """TensorBoard's run name (its events' folder) ends with the subset; a CSV logger (as any but
    TensorBoard) gets the run's hyperparameters as they are."""
    import yaml

    subset = make_tiny_dataset(tmp_path / "mnist-10k")
    summary = train_with(tmp_path, subset, "logger=[tensorboard,csv]")
    run_dir = Path(summary["output_dir"])
    assert events_dir(run_dir) == run_dir / "MNIST_mnist-10k"
    # eval reading the same data from another folder adds to the run's folder, not one of its own
    shutil.copytree(subset, tmp_path / "elsewhere")
    last = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    evaluated = run_cli(
        "eval.py", last, f"data.data_dir={tmp_path / 'elsewhere'}", f"paths.log_dir={tmp_path / 'logs'}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert events_dir(run_dir) == run_dir / "MNIST_mnist-10k"
    logged = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert logged["dataset"] == "MNIST (mnist-10k)" == summary["data"]
    assert logged["train_images"] == 96 and logged["batch_size"] == 32


def train_with_wandb(tmp_path: Path, data: Path, mode: str | None, *args: str) -> subprocess.CompletedProcess:
    """``python src/train.py logger=wandb`` as a user without a W&B account: no key, a fresh home,
    no terminal to ask on; ``mode``: WANDB_MODE, or ``None`` for online."""
    env = {**os.environ, "AELAB_DATA_DIR": str(data), "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path)}
    for name in ("WANDB_MODE", "WANDB_API_KEY", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    if mode is not None:
        env["WANDB_MODE"] = mode
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "src" / "train.py"),
            "logger=wandb",
            f"paths.log_dir={tmp_path / 'logs'}",
            QUIET,
            *args,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.extra("wandb")
def test_wandb_offline_run_holds_the_runs_config_metrics_and_images(tmp_path, tiny_mnist):
    result = train_with_wandb(tmp_path, tiny_mnist, "offline", "trainer.max_epochs=2", "data.batch_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    summary = json.loads((run_dir / "run_summary.json").read_text())
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("aelab", f"{run_dir.name} (train/runs)")
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
    }
    assert (config["backbone"], config["latent_size"], config["params"]) == ("mlp", 3, 218_643)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    val_mse = [row[VAL_MSE] for row in history if VAL_MSE in row]
    assert len(val_mse) == 2
    assert val_mse[-1] == pytest.approx(summary[VAL_MSE], rel=1e-6)
    grids = [row for row in history if "val/reconstructions/_type" in row]
    # logged when validation ends, after the epoch's 3 steps; 16 images of 30 px + 2, two rows
    assert [row["trainer/global_step"] for row in grids] == [3, 6]
    assert {(row["val/reconstructions/width"], row["val/reconstructions/height"]) for row in grids} == {(482, 62)}
    assert len(list(run_file.parent.glob("files/media/images/val/reconstructions_*.png"))) == 2


@pytest.mark.extra("wandb")
def test_wandb_without_an_account_says_how_to_log_in_or_go_offline(tmp_path, tiny_mnist):
    result = train_with_wandb(tmp_path, tiny_mnist, None, "trainer.max_epochs=1")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("aelab: error:")]
    assert line == (
        "aelab: error: W&B has no API key here: log in once with `wandb login`, or train offline with "
        "WANDB_MODE=offline (upload later with: wandb sync <run dir>/wandb)"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("logger", [logger_option(p.stem) for p in sorted((CONFIGS / "logger").glob("*.yaml"))])
def test_every_key_of_every_logger_option_passes_the_schema(tmp_path, tiny_mnist, logger):
    cfg = compose_train(tmp_path, tiny_mnist, [f"logger={logger}"])
    validate(cfg)
    assert set(cfg.logger) == ({"tensorboard", "csv", "mlflow"} if logger == "many" else {logger})


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow"), ("wandb", "wandb"), ("many", "mlflow")])
def test_a_logger_without_its_extra_names_the_extra_to_install(tmp_path, tiny_mnist, monkeypatch, logger, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    owner = "logger.wandb" if logger == "wandb" else "logger.mlflow"
    expected = (
        f"{owner} needs {module}, an optional extra of aelab: make install LOCK=requirements/all.lock; "
        f"or leave it out with ~{owner}, e.g. logger=tensorboard"
    )
    with pytest.raises(ConfigError) as refused:
        validate(compose_train(tmp_path, tiny_mnist, [f"logger={logger}"]))
    assert str(refused.value) == expected


def test_the_entry_point_refuses_a_logger_without_its_extra_in_one_line(tmp_path, tiny_mnist, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    args = ["logger=mlflow", f"data.data_dir={tiny_mnist}", f"paths.log_dir={tmp_path / 'logs'}", QUIET]
    code, stderr, _ = run_in_process("train", args, capfd, {})
    assert code == 2
    assert stderr.strip().splitlines() == [
        "aelab: error: logger.mlflow needs mlflow, an optional extra of aelab: make install "
        "LOCK=requirements/all.lock; or leave it out with ~logger.mlflow, e.g. logger=tensorboard"
    ]


@pytest.mark.extra("wandb")
def test_a_wandb_misuse_keeps_its_own_message_and_traceback():
    from wandb.errors import UsageError

    from aelab.cli import user_error

    # only the missing key is translated; the same class reports mistakes in aelab's own use of W&B
    assert user_error(UsageError("Invalid project name 'a/b'")) is None
    assert "wandb login" in str(user_error(UsageError("No API key configured. Use `wandb login` to log in.")))


@pytest.mark.extra("mlflow")
def test_parallel_sweep_jobs_share_one_mlflow_store(tmp_path, tiny_mnist):
    from mlflow.tracking import MlflowClient

    result = run_cli(
        "train.py",
        "-m",
        "model.latent_dim=2,3",
        "logger=mlflow",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={tmp_path / 'logs' / 'train' / 'multiruns' / 'sweep'}",
        QUIET,
        env={"AELAB_DATA_DIR": str(tiny_mnist)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert sorted(run.info.run_name for run in runs) == [
        "logger=mlflow,model.latent_dim=2,trainer.max_epochs=1 (train/multiruns/sweep)",
        "logger=mlflow,model.latent_dim=3,trainer.max_epochs=1 (train/multiruns/sweep)",
    ]
    for run in runs:
        summary = json.loads((Path(run.data.tags["run_dir"]) / "run_summary.json").read_text())
        assert client.get_metric_history(run.info.run_id, VAL_MSE)[-1].value == pytest.approx(summary[VAL_MSE])


def test_the_events_folder_is_one_plain_folder_apart_from_the_runs_others():
    from types import SimpleNamespace

    from aelab.loggers import events_folder

    named = {
        "MNIST": "MNIST",
        "MNIST (mnist-10k)": "MNIST_mnist-10k",
        "Fashion-MNIST": "Fashion-MNIST",
        "../../etc": "etc",  # a folder of images called so stays inside the run
        "analysis": "analysis_data",  # not analyze's folder
        "...": "data",
    }
    assert {name: events_folder(SimpleNamespace(name=name)) for name in named} == named
