"""Bad input and faults: each gives one clear message, a non-zero exit, and loses nothing."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aelab.data.idx import parse_idx, write_idx
from aelab.errors import CheckpointError, ConfigError, DataError
from aelab.runs import load_checkpoint, load_run
from conftest import QUIET, REPO, compose_train, make_tiny_dataset, run_cli

TESTS = Path(__file__).parent


def corrupt(root: Path, kind: str) -> Path:
    """tiny MNIST under ``root`` broken in one way."""
    make_tiny_dataset(root)
    raw = root / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    labels = raw / "train-labels-idx1-ubyte"
    if kind == "truncated":
        images.write_bytes(images.read_bytes()[:-100])
    elif kind == "magic":
        data = bytearray(images.read_bytes())
        data[2] = 0x0D
        images.write_bytes(bytes(data))
    elif kind == "dims":
        write_idx(images, np.zeros((96, 28, 27), np.uint8))
    elif kind == "count":
        write_idx(labels, np.zeros(95, np.uint8))
    elif kind == "labels":
        write_idx(labels, np.full(96, 10, np.uint8))
    elif kind == "gzip":
        images.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    elif kind == "missing":
        labels.unlink()
    return root


class Evil:
    """Pickles into a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny MLP run (latent_dim=3) whose checkpoints the table reuses."""
    root = tmp_path_factory.mktemp("trained")
    data = make_tiny_dataset(root / "data")
    result = run_cli("train.py", "trainer.max_epochs=1", f"paths.log_dir={root / 'logs'}", QUIET,
                     env={"AELAB_DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    return run / "checkpoints" / "last.ckpt"


def run_printed(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A command aelab printed, run by a shell from the repository root with the project's Python."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(["bash", "-c", command], cwd=REPO, env={**os.environ, **env, "PATH": path},
                          capture_output=True, text=True, timeout=600)


def newest_summary(log_dir: Path) -> dict:
    """The summary of the newest training run under ``log_dir``."""
    newest = sorted((log_dir / "train" / "runs").iterdir())[-1]
    return json.loads((newest / "run_summary.json").read_text())


def bad_checkpoint(tmp: Path, kind: str, trained: Path) -> Path:
    path = tmp / f"{kind}.ckpt"
    if kind == "malicious":
        torch.save({"state_dict": {}, "hyper_parameters": Evil(tmp / "pwned")}, path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(256)) * 2)
    elif kind == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif kind == "trained":
        return trained
    return path


# (command-line arguments, data: "tiny" or a corruption kind, checkpoint kind or None,
#  expected exit code, words the message must hold)
CASES = {
    "latent_dim zero": (["model.latent_dim=0"], 2, ["model.latent_dim=0 is invalid", "positive integer"]),
    "latent_dim negative": (["model.latent_dim=-4"], 2, ["model.latent_dim=-4 is invalid"]),
    "latent_dim float": (["model.latent_dim=2.5"], 2, ["model.latent_dim=2.5 is invalid"]),
    "latent_dim text": (["model.latent_dim=abc"], 2, ["model.latent_dim='abc' is invalid"]),
    "latent_dim null for mlp": (["model.latent_dim=null"], 2, ["model.latent_dim=null is invalid for model=mlp"]),
    "max_epochs null (Lightning's 1000)": (["trainer.max_epochs=null"], 2,
                                           ["trainer.max_epochs=null is invalid: it must be a positive integer"]),
    "accelerator tpu": (["trainer.accelerator=tpu"], 2, ["trainer.accelerator=tpu is not one of cpu, gpu, cuda, auto"]),
    "unknown model": (["model=transformer"], 1, ["Could not find 'model/transformer'", "conv", "mlp"]),
    "unknown trainer": (["trainer=tpu"], 1, ["Could not find 'trainer/tpu'", "cpu", "gpu"]),
    "unknown top-level key": (["learning_rate=1"], 1, ["learning_rate", "not in struct"]),
    "unknown model key": (["model.dropout=0.1"], 1, ["dropout", "not in struct"]),
    "legacy precision 16": (["trainer.precision=16"], 2, ["trainer.precision=16 is not supported", "bf16-mixed"]),
    "made-up precision": (["trainer.precision=bf17"], 2, ["trainer.precision=bf17 is not supported"]),
    "fp16 on cpu": (["trainer.precision=16-mixed"], 2, ["16-mixed needs a GPU"]),
    "batch size zero": (["data.batch_size=0"], 2, ["data.batch_size=0 is invalid"]),
    "batch size negative": (["data.batch_size=-5"], 2, ["data.batch_size=-5 is invalid"]),
    "batch size text": (["data.batch_size=big"], 2, ["data.batch_size='big' is invalid"]),
    "max_epochs zero": (["trainer.max_epochs=0"], 2, ["trainer.max_epochs=0 is invalid"]),
    "unknown loader": (["data.loader=fast"], 2, ["data.loader='fast' is not one of device, dataloader"]),
    "keep_classes out of range": (["data.keep_classes=[12]"], 2, ["data.keep_classes=[12] is invalid",
                                                                   "class indices 0-9 of MNIST"]),
    "unknown dataset name": (["data.dataset=cifar"], 2, ["data.dataset='cifar' is not one of mnist, fashion_mnist"]),
    "unknown data option": (["data=cifar"], 1, ["Could not find 'data/cifar'", "fashion_mnist", "kmnist"]),
    "val_size as large as training": (["data.val_size=96"], 2, ["data.val_size=96 leaves no training images"]),
    "val_size negative": (["data.val_size=-1"], 2, ["data.val_size=-1 is invalid"]),
    "unknown compile mode": (["model.compile=sometimes"], 2, ["model.compile='sometimes' is not one of"]),
    "data dir missing, download off": (["data.data_dir=/nonexistent/mnist", "data.download=false"], 2,
                                       ["MNIST not found in /nonexistent/mnist/MNIST/raw", "data.data_dir="]),
    "missing label file, offline": (["@missing"], 2, ["MNIST not found", "could not be downloaded",
                                                     "train-labels-idx1-ubyte"]),
    "truncated image file": (["@truncated"], 2, ["train-images-idx3-ubyte", "truncated"]),
    "wrong IDX magic": (["@magic"], 2, ["train-images-idx3-ubyte", "wrong IDX magic"]),
    "wrong image size": (["@dims"], 2, ["images are 28x27, expected 28x28"]),
    "image/label count mismatch": (["@count"], 2, ["holds 96 images but", "holds 95 labels"]),
    "label out of range": (["@labels"], 2, ["label 10 is out of range 0-9"]),
    "corrupt gzip": (["@gzip"], 2, ["train-images-idx3-ubyte.gz", "not a valid gzip file"]),
    "checkpoint missing": (["ckpt_path=/no/such.ckpt"], 2, ["ckpt_path=/no/such.ckpt does not exist"]),
    "ckpt_path=last with no runs": (["ckpt_path=last"], 2, ["ckpt_path=last found no checkpoints/last.ckpt"]),
    "malicious checkpoint": (["#malicious"], 2, ["is refused", "could run code"]),
    "garbage checkpoint": (["#garbage"], 2, ["is not a readable PyTorch checkpoint"]),
    "text file as checkpoint": (["#text"], 2, ["is not a readable PyTorch checkpoint"]),
    "foreign checkpoint": (["#foreign"], 2, ["was not written by aelab"]),
    "checkpoint of another latent size": (["#trained", "model.latent_dim=5"], 2,
                                          ["holds a different network", "latent_dim=3", "latent_dim=5"]),
    "checkpoint of another backbone": (["#trained", "model=conv"], 2,
                                       ["holds a different network", "MLPEncoder", "ConvEncoder"]),
    "loss diverges": (["model.optimizer.lr=1e30"], 2, ["loss became non-finite in epoch 0",
                                                      "Lower model.optimizer.lr"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_non_zero_with_one_clear_message(case, tmp_path, trained):
    args, code, words = CASES[case]
    data = make_tiny_dataset(tmp_path / "data")
    cli_args = []
    for arg in args:
        if arg.startswith("@"):
            data = corrupt(tmp_path / "broken", arg[1:])
        elif arg.startswith("#"):
            cli_args.append(f"ckpt_path={bad_checkpoint(tmp_path, arg[1:], trained)}")
        else:
            cli_args.append(arg)
    result = run_cli("train.py", "trainer.max_epochs=1", f"paths.log_dir={tmp_path / 'logs'}", QUIET,
                     *cli_args, env={"AELAB_DATA_DIR": str(data)})
    assert result.returncode == code, result.stderr[-3000:]
    for word in words:
        assert word in result.stderr, f"{word!r} not in:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists()


def test_the_table_holds_at_least_30_distinct_bad_inputs():
    assert len(CASES) >= 30


@pytest.mark.parametrize("script", ["eval.py", "analyze.py"])
def test_a_diverged_checkpoint_fails_with_one_line_instead_of_reporting_nan(tmp_path, trained, script):
    checkpoint = torch.load(trained, weights_only=True)
    for tensor in checkpoint["state_dict"].values():
        tensor.fill_(float("nan"))
    path = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, path)
    result = run_cli(script, f"ckpt_path={path}", f"paths.log_dir={tmp_path}",
                     env={"AELAB_DATA_DIR": str(trained.parents[5] / "data")})
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"aelab: error: checkpoint {path} reconstructs to non-finite values (test/mse nan)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "analysis" / "analysis.json").exists()


def test_json_files_are_strict_json_even_when_a_number_is_not_finite(tmp_path):
    from aelab.files import write_json

    write_json(tmp_path / "s.json", {"val/mse_best": float("inf"), "nested": [float("nan"), 1.5]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"val/mse_best": None, "nested": [None, 1.5]}
    assert "Infinity" not in (tmp_path / "s.json").read_text()


def test_hydra_full_error_shows_the_traceback(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    result = subprocess.run(
        [sys.executable, str(REPO / "src/train.py"), "model.latent_dim=0", f"paths.log_dir={tmp_path}"],
        cwd=REPO, env={**os.environ, **env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


# A checkpoint that passes torch.load(weights_only=True) is plain data, but the configs inside it
# name classes: each of these would run a shell command if aelab built what the file says.
def payloads(marker: Path) -> dict[str, tuple[str, object]]:
    command = {"_target_": "os.system", "command": f"touch {marker}"}
    pickled = pickle.dumps(Evil(marker))
    return {
        "torch.load of embedded pickle bytes": ("hyper_parameters.encoder", {
            "_target_": "torch.load", "weights_only": False,
            "f": {"_target_": "io.BytesIO", "_args_": [pickled]}}),
        "builtins.open truncating a file": ("hyper_parameters.decoder", {
            "_target_": "builtins.open", "_args_": [str(marker.parent / "victim.ckpt"), "w"]}),
        "model class": ("aelab_model_class", "os.system"),
        "data class": ("aelab_data_class", "subprocess.getoutput"),
        "encoder": ("hyper_parameters.encoder", command),
        "optimizer": ("hyper_parameters.optimizer", {**command, "_partial_": True}),
        "nested in an encoder argument": ("hyper_parameters.encoder.hidden_dims", [command]),
        "datamodule argument": ("datamodule_hyper_parameters.mirrors", command),
    }


def poisoned(trained: Path, tmp: Path, where: str, payload: object) -> Path:
    checkpoint = torch.load(trained, weights_only=True)
    *parents, key = where.split(".")
    node = checkpoint
    for part in parents:
        node = node[part]
    node[key] = payload
    path = tmp / "poisoned.ckpt"
    torch.save(checkpoint, path)
    torch.load(path, weights_only=True)  # still plain data: the unpickler has nothing to refuse
    return path


@pytest.mark.parametrize("case", list(payloads(Path("x"))))
def test_a_checkpoint_naming_a_non_project_target_is_refused_and_never_runs_it(tmp_path, trained, case):
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim.ckpt"
    victim.write_bytes(b"another run's checkpoint")
    where, payload = payloads(marker)[case]
    path = poisoned(trained, tmp_path, where, payload)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is refused: its .* names .*, which is not "
                                              "one of aelab's registered classes"):
        load_run(path)
    assert not marker.exists()
    assert victim.read_bytes() == b"another run's checkpoint"


def test_the_sweep_report_reads_a_poisoned_job_without_running_it(tmp_path, tiny_mnist):
    sweep_dir = tmp_path / "sweep"
    result = run_cli("train.py", "-m", "model.latent_dim=2,3", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}",
                     QUIET, env={"AELAB_DATA_DIR": str(tiny_mnist)})
    assert result.returncode == 0, result.stderr[-2000:]
    marker = tmp_path / "pwned"
    job = sweep_dir / "model.latent_dim=2,trainer.max_epochs=1" / "checkpoints"
    for checkpoint in job.glob("*.ckpt"):
        poisoned_copy = poisoned(checkpoint, tmp_path, "hyper_parameters.encoder", payloads(marker)["encoder"][1])
        poisoned_copy.replace(checkpoint)
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "sweep_report.py"), str(sweep_dir)],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "is refused: its hyper_parameters.encoder._target_ names os.system" in report.stderr
    assert not marker.exists()
    rows = (sweep_dir / "summary.csv").read_text().splitlines()
    assert len(rows) == 3  # both jobs listed; the poisoned one without its PCA and reconstructions


@pytest.mark.parametrize("script", ["eval.py", "analyze.py", "train.py"])
def test_every_entry_point_refuses_a_poisoned_checkpoint_with_one_line(tmp_path, trained, script):
    marker = tmp_path / "pwned"
    path = poisoned(trained, tmp_path, "hyper_parameters.encoder", payloads(marker)["encoder"][1])
    result = run_cli(script, f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'logs'}",
                     *([QUIET] if script == "train.py" else []),
                     env={"AELAB_DATA_DIR": str(trained.parents[5] / "data")})
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("aelab: error:")]
    assert f"checkpoint {path} is refused: its hyper_parameters.encoder._target_ names os.system" in line
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="is refused: it holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_diverging_run_keeps_the_last_good_checkpoint(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    result = run_cli("train.py", "trainer.max_epochs=3", f"paths.log_dir={tmp_path}", QUIET,
                     "+callbacks.poison._target_=fault_callbacks.PoisonAt", "+callbacks.poison.epoch=1", env=env)
    assert result.returncode == 2
    (run,) = (tmp_path / "train" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    assert f"loss became non-finite in epoch 1" in result.stderr
    assert f"the last good checkpoint is {last}" in result.stderr
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_a_resumable_checkpoint(tmp_path, mnist, signum):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "src/train.py"), "model=conv", "trainer.max_epochs=50",
         f"paths.log_dir={tmp_path}", QUIET],
        cwd=REPO, env={**os.environ, "AELAB_DATA_DIR": str(mnist)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and the child
        # would inherit that: give it the disposition a terminal gives, so Ctrl-C is Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("train/runs/*/checkpoints/last.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (143 if signum == signal.SIGTERM else 1)
    (interrupted,) = tmp_path.glob("train/runs/*/checkpoints/interrupted.ckpt")
    assert f"saved {interrupted}. Resume with: " in stderr
    assert torch.load(interrupted, weights_only=True)["hyper_parameters"]["encoder"]["_target_"].endswith("ConvEncoder")
    # the follow-up the message promises, run as printed (the conv run's own overrides included),
    # with a smaller max_epochs appended so that it finishes quickly
    (printed,) = re.findall(r"Resume with: (.+)", stderr)
    assert printed.startswith("python src/train.py model=conv trainer.max_epochs=50 ")
    resumed = run_printed(f"{printed} trainer.max_epochs=2", {"AELAB_DATA_DIR": str(mnist)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert newest_summary(tmp_path)["epochs"] == 2


def test_kill_9_in_epoch_3_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    common = ["trainer.max_epochs=5", "data.batch_size=32", "seed=7", QUIET]

    straight = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'straight'}", env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'killed'}",
                     "+callbacks.kill._target_=fault_callbacks.KillAt", "+callbacks.kill.epoch=2",
                     "+callbacks.kill.batch=1", env=env)
    assert killed.returncode == -signal.SIGKILL
    (run,) = (tmp_path / "killed" / "train" / "runs").iterdir()
    assert not (run / "run_summary.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # epochs 0, 1 done

    resumed = run_cli("train.py", *common, "ckpt_path=last", f"paths.log_dir={tmp_path / 'killed'}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = newest_summary(tmp_path / "straight"), newest_summary(tmp_path / "killed")
    assert b["epochs"] == 5
    assert b["val/mse"] == pytest.approx(a["val/mse"], rel=1e-6, abs=1e-7)
    assert b["val/mse_best"] == pytest.approx(a["val/mse_best"], rel=1e-6, abs=1e-7)


# --- fuzzing: only the project's own clear errors may come out --------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=3))
def test_idx_reader_on_random_bytes_raises_only_data_error(raw, ndim):
    try:
        array = parse_idx(raw, name="fuzz", ndim=ndim)
    except DataError as err:
        assert str(err).startswith("fuzz: ")
    else:
        assert array.ndim == ndim


VALID_IDX = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 3, 3)) + bytes(range(18))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID_IDX) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(VALID_IDX)))
def test_idx_reader_on_mutated_files_raises_only_data_error(mutations, cut):
    raw = bytearray(VALID_IDX)
    for index, value in mutations:
        raw[index] = value
    try:
        parse_idx(bytes(raw[:cut]), name="mutant", ndim=3)
    except DataError as err:
        assert str(err).startswith("mutant: ")


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=8))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(latent_dim=VALUES, batch_size=VALUES, precision=VALUES, max_epochs=VALUES)
def test_config_validation_on_random_values_raises_only_config_error(tmp_path, latent_dim, batch_size,
                                                                    precision, max_epochs):
    from omegaconf import open_dict

    from aelab.config import validate

    cfg = compose_train(tmp_path, tmp_path)
    with open_dict(cfg):
        cfg.model.latent_dim = latent_dim
        cfg.data.batch_size = batch_size
        cfg.trainer.precision = precision
        cfg.trainer.max_epochs = max_epochs
    try:
        validate(cfg)
    except ConfigError as err:
        assert "=" in str(err)


def test_a_checkpoint_naming_a_registered_class_in_the_wrong_role_is_refused(tmp_path, trained):
    path = poisoned(trained, tmp_path, "aelab_model_class", "torch.optim.SGD")
    with pytest.raises(CheckpointError, match="its aelab_model_class names torch.optim.SGD, which is not a LightningModule"):
        load_run(path)


def test_a_checkpoint_cannot_make_aelab_download_or_write_anywhere(tmp_path, trained):
    target = tmp_path / "chosen-by-the-file"
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["datamodule_hyper_parameters"].update(
        data_dir=str(target), download=True, mirrors=["http://127.0.0.1:9/"], num_workers=64)
    path = tmp_path / "beacon.ckpt"
    torch.save(checkpoint, path)
    loaded = load_run(path)
    assert (loaded.datamodule.hparams.download, loaded.datamodule.hparams.mirrors) == (False, None)
    assert loaded.datamodule.hparams.num_workers == 0
    with pytest.raises(DataError, match="data.download=false"):
        loaded.datamodule.setup()
    assert not target.exists()
    # the user's own override turns downloading back on
    assert load_run(path, data_overrides={"download": True}).datamodule.hparams.download is True


def test_sigterm_mid_epoch_then_the_printed_command_ends_where_an_uninterrupted_run_does(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    common = ["trainer.max_epochs=4", "data.batch_size=16", "seed=3", QUIET]  # 6 batches per epoch
    straight = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'straight'}", env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]

    stopped = run_cli("train.py", *common, f"paths.log_dir={tmp_path / 'stopped'}",
                      "+callbacks.stop._target_=fault_callbacks.SignalAt", "+callbacks.stop.epoch=2",
                      "+callbacks.stop.batch=3", env=env)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    (printed,) = re.findall(r"Resume with: (.+)", stopped.stderr)
    interrupted = next((tmp_path / "stopped").glob("train/runs/*/checkpoints/interrupted.ckpt"))
    assert printed.endswith(f"\"ckpt_path='{interrupted}'\"")
    assert torch.load(interrupted, weights_only=True)["aelab_epoch_sums"]["count"] > 0

    resumed = run_printed(printed, env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = newest_summary(tmp_path / "straight"), newest_summary(tmp_path / "stopped")
    assert b["epochs"] == 4
    for key in ("val/mse", "val/mse_best", "train/mse"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
