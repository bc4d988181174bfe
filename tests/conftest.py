"""Fixtures: tiny generated datasets in IDX format, the real datasets, composed configs."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from aelab.data import DATASETS
from aelab.data.datasets import SPLIT_FILES
from aelab.data.idx import write_idx

from zygote import Child, Zygote

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# A progress bar in captured output is noise: every test that trains turns it off.
QUIET = "callbacks.progress_bar.refresh_rate=0"


def make_tiny_dataset(root: Path, dataset: str = "mnist", n_train: int = 96, n_test: int = 40, seed: int = 0) -> Path:
    """Write ``root/<Class>/raw`` with random-but-structured images: each label draws a bar."""
    rng = np.random.default_rng(seed)
    raw = DATASETS[dataset].raw_dir(root)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 4:24, 2 + 2 * label : 4 + 2 * label] = 255
        images_file, labels_file = SPLIT_FILES[split]
        write_idx(raw / images_file, images)
        write_idx(raw / labels_file, labels)
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "data")


def events_dir(run: Path) -> Path:
    """The run's one folder of TensorBoard event files (named after the data: ``MNIST`` for the
    tiny datasets, whose folders are not subsets' names)."""
    folders = {path.parent for path in run.glob("*/events.out.tfevents.*")}
    assert len(folders) == 1, f"{run}: event folders {sorted(map(str, folders))}"
    return folders.pop()


def real_data(variable: str, what: str) -> Path:
    """A real dataset folder named by an environment variable. In CI its absence is a failure,
    never a skip."""
    value = os.environ.get(variable)
    if value and Path(value).is_dir():
        return Path(value)
    missing(f"{variable} must point at {what}")


def missing(message: str) -> NoReturn:
    """What a test needs is not on this machine: in CI, which provides everything, a failure;
    elsewhere a skip that says what to provide."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# aelab's optional extras (pyproject.toml) -> the modules each installs. A test that needs one is
# marked @pytest.mark.extra("<name>") (or a parametrized case, with marks=): without the extra it
# skips with the install line, in CI (which installs every extra) it fails.
EXTRAS = {"mlflow": ("mlflow",), "wandb": ("wandb",), "export": ("onnx", "onnxscript", "onnxruntime")}


def logger_extras(option: str) -> list[str]:
    """The extras the loggers of ``configs/logger/<option>.yaml`` need (``aelab.loggers.EXTRAS``,
    by their ``_target_``)."""
    from omegaconf import OmegaConf

    from aelab.loggers import EXTRAS as LOGGER_EXTRAS

    config = OmegaConf.to_yaml(compose_logger(option))
    return sorted({extra for target, (_, extra) in LOGGER_EXTRAS.items() if f"_target_: {target}" in config})


def logger_option(option: str, prefix: str = "") -> object:
    """``prefix + option`` as a parametrized case of a test, marked with the extras its loggers need."""
    return pytest.param(prefix + option, marks=[pytest.mark.extra(extra) for extra in logger_extras(option)])


def compose_logger(option: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose(config_name="train", overrides=[f"logger={option}"]).logger


def module_missing(extra: str) -> str | None:
    """The first module of ``extra`` this environment lacks, if any."""
    from aelab.config import is_installed

    return next((module for module in EXTRAS[extra] if not is_installed(module)), None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    from aelab.config import install_command

    for marker in item.iter_markers("extra"):
        (extra,) = marker.args
        module = module_missing(extra)
        if module:
            missing(f"needs the {extra} extra ({module} is not installed): {install_command(extra)}")


@pytest.fixture(scope="session")
def mnist() -> Path:
    """The official MNIST (60k/10k): AELAB_DATA_DIR, as .ci/run sets it."""
    return real_data("AELAB_DATA_DIR", "the official MNIST (a folder holding MNIST/raw), e.g. ../shared/data/mnist")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    return real_data("AELAB_FASHION_MNIST_DIR", "the official Fashion-MNIST, e.g. ../shared/data/fashion-mnist")


@pytest.fixture
def new_repo_runs(tmp_path_factory):
    """For tests of what a user types without paths.log_dir (runs land in the repository's
    logs/train/runs): a function listing the runs made since the test began, all removed after it.

    Such tests run one at a time, whichever pytest-xdist worker runs them, by holding one lock in
    the session's temporary folder: otherwise one would count the other's run as its own, or load
    it as the newest. A lock, not an ``xdist_group``: under pytest 9.2 the groups were silently
    ignored (pytest-xdist#1386), and two such tests ran side by side."""
    lock = tmp_path_factory.getbasetemp().parent / "repository-logs.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, after the clean-up
        runs = REPO / "logs" / "train" / "runs"
        before = set(runs.iterdir()) if runs.is_dir() else set()

        def made() -> set[Path]:
            return set(runs.iterdir()) - before if runs.is_dir() else set()

        yield made
        for run in made():
            shutil.rmtree(run, ignore_errors=True)


def compose_config(name: str, tmp_path: Path, overrides: list[str] = ()) -> DictConfig:
    """A task's config as its entry point would compose it, logging under ``tmp_path``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name=name, overrides=[f"paths.log_dir={tmp_path / 'logs'}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at ``tmp_path/disk``: ``mount(size, *options)`` (re)mounts it, e.g. when
    a test frees space by growing it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = []

    def mount(size: str, *options: str) -> Path:
        how = ["-o", ",".join([*(["remount"] if mounted else []), f"size={size}", *options])]
        result = subprocess.run(["mount", "-t", "tmpfs", *how, "tmpfs", str(disk)], capture_output=True, text=True)
        if result.returncode != 0:
            missing(f"these tests mount a small tmpfs and need root: {result.stderr.strip()}")
        mounted.append(size)
        return disk

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temporary folder with a short path (pytest's are long), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ae"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def compose_train(tmp_path: Path, data_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The train config as ``src/train.py`` would compose it, writing under ``tmp_path``."""
    return compose_config("train", tmp_path, [f"data.data_dir={data_dir}", QUIET, *overrides])


def command_environment(env: dict[str, str] | None) -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "HYDRA_FULL_ERROR"} | (env or {})


def command_program(script: str) -> str:
    """What ``run_cli`` runs for ``script`` (see there)."""
    if script == "-c":
        return script
    if script.startswith("aelab-"):
        return str(Path(sys.executable).parent / script)
    return str(REPO / script if "/" in script else REPO / "src" / script)


def start_cli(script: str, *args: str, env: dict[str, str] | None = None) -> Child:
    """``run_cli`` as ``subprocess.Popen``: the command is running in a child of the zygote when
    this returns, for a test to signal it from outside (``os.kill(child.pid, ...)``) as a user or a
    scheduler would; ``child.wait(timeout)`` gives what ``run_cli`` returns."""
    return zygote().start([command_program(script), *args], env=command_environment(env), cwd=REPO)


def run_cli(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 600,
    cold: bool = False,
) -> subprocess.CompletedProcess:
    """Run an entry point as a user does, from the repository root: ``train.py`` (the script of
    ``src/``), ``aelab-train`` (the installed command), ``scripts/sweep_report.py`` (a path in the
    repository) or ``-c`` (``python -c <code>``). It runs in a child of the session's zygote (see
    ``zygote.py``), a real process started without re-importing torch and Lightning; ``cold=True``
    starts a fresh interpreter instead, for tests of the process itself. ``HYDRA_FULL_ERROR`` is
    set only where ``env`` sets it."""
    full_env, program = command_environment(env), command_program(script)
    if not cold:
        return zygote().run([program, *args], env=full_env, cwd=cwd, timeout=timeout)
    command = [program] if script.startswith("aelab-") else [sys.executable, program]
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=terminal_ctrl_c,
    )


def terminal_ctrl_c() -> None:
    """Ctrl-C as a terminal gives it to a command: tests started as a background job (a shell
    without job control) would pass their ignored SIGINT on to the processes they start."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # pytest-xdist: a worker's share of the cores, for its torch and every command it starts
        # (set before the zygote starts: OpenMP reads it once, when torch loads it)
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_zygote: list[Zygote] = []


def zygote() -> Zygote:
    """The session's zygote, started when a test first runs a command line (about as long as one
    cold start), stopped when the session ends."""
    if not _zygote:
        _zygote.append(Zygote())
    return _zygote[0]


def pytest_sessionfinish(session, exitstatus):
    while _zygote:
        _zygote.pop().stop()


def run_sweep(tmp_path: Path, data: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python src/train.py -m <overrides> trainer.max_epochs=1`` on ``data``, into ``tmp_path/sweep``."""
    return run_cli(
        "train.py",
        "-m",
        *overrides,
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        QUIET,
        env={"AELAB_DATA_DIR": str(data)},
    )


# --- the suite's budget: time per test file, printed at the end of every run ------------------

_seconds_per_file: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    _seconds_per_file[path] = _seconds_per_file.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Seconds per test file (setup, call and teardown of its tests, across workers), slowest
    first: where the budget of make test goes (docs/tests.md)."""
    if not _seconds_per_file or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    terminalreporter.write_sep("=", "seconds per test file (summed over workers)")
    for path, seconds in sorted(_seconds_per_file.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_seconds_per_file.values()):8.1f}  in all")
