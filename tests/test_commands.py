"""The console scripts and the wheel: ``aelab-train`` is ``python src/train.py`` under another name,
from any directory, installed editable or from a wheel."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from aelab import paths
from aelab.cli import TASKS

from conftest import CONFIGS, QUIET, REPO, run_cli

RUN_LINE = re.compile(
    r"done after (\d+) epochs?: val/mse ([0-9.]+), val/mse_best ([0-9.]+); run in (\S+); best checkpoint (\S+)"
)


@pytest.mark.slow
def test_aelab_train_outside_the_repository_trains_into_the_repositorys_logs_and_says_where(
    tmp_path, tiny_mnist, new_repo_runs
):
    # the README's promise, as typed: no paths.log_dir, so the run lands in the repository's logs/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("aelab-train", "trainer.max_epochs=1", f"data.data_dir={tiny_mnist}", QUIET, cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    (match,) = RUN_LINE.findall(result.stdout + result.stderr)
    epochs, val_mse, _, run_dir, best = match
    run_dir = Path(run_dir)
    assert new_repo_runs() == {run_dir} and run_dir.parent == REPO / "logs" / "train" / "runs"
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert epochs == "1" and float(val_mse) == pytest.approx(summary["val/mse"], abs=5e-6)
    assert best == summary["best_checkpoint"] and Path(best).is_file()
    # the run's log is in train.log, Lightning's messages and the closing line included
    log = (run_dir / "train.log").read_text()
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in log
    assert RUN_LINE.search(log).group(4) == str(run_dir)
    assert not list(elsewhere.iterdir()), "nothing is written where the command was typed"


@pytest.mark.slow
def test_the_command_and_the_script_compose_the_same_config(tmp_path):
    args = ["model=conv", "model.latent_dim=7", "--cfg", "job"]
    command = run_cli("aelab-train", *args, cwd=tmp_path)
    script = run_cli("train.py", *args, cwd=tmp_path)
    assert command.returncode == script.returncode == 0, command.stderr + script.stderr
    assert command.stdout == script.stdout
    assert "latent_dim: 7" in command.stdout


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_has_a_command_that_composes_as_its_script_and_logs_to_its_log_file(tmp_path, task):
    command = run_cli(f"aelab-{task}", "--cfg", "hydra", cwd=tmp_path)
    script = run_cli(f"{task}.py", "--cfg", "hydra", cwd=tmp_path)
    assert command.returncode == script.returncode == 0, command.stderr + script.stderr
    from_command, from_script = (yaml.safe_load(r.stdout)["hydra"] for r in (command, script))
    # <task>.log, whichever way it was started
    assert from_command["job"]["name"] == from_script["job"]["name"] == task
    assert from_command["job_logging"]["handlers"]["file"]["filename"].endswith("/${hydra.job.name}.log")
    # the same configs: the checkout's configs/ for both
    sources = [[source["path"] for source in h["runtime"]["config_sources"]] for h in (from_command, from_script)]
    assert sources[0] == sources[1] and str(CONFIGS) in sources[0]


def test_a_mistake_typed_to_a_command_names_the_command(tmp_path):
    result = run_cli("aelab-train", "model.dropout=0.1", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "aelab: error: model.dropout=0.1 is invalid: model.dropout is not a setting of aelab-train; remove it"
    )


@pytest.mark.parametrize(
    "argv0, entry, command",
    [
        (str(REPO / "src" / "train.py"), "src/train.py", "python src/train.py"),
        (str(REPO / "src" / "eval.py"), "src/eval.py", "python src/eval.py"),
        ("/home/me/.venv/bin/aelab-train", "aelab-train", "aelab-train"),
        ("/home/me/.venv/bin/aelab-analyze", "aelab-analyze", "aelab-analyze"),
        # training started any other way (a notebook, a benchmark) is resumed by the training script
        ("/usr/lib/python3/site-packages/ipykernel_launcher.py", "src/train.py", "python src/train.py"),
        (str(REPO / "scripts" / "benchmark.py"), "src/train.py", "python src/train.py"),
    ],
)
def test_printed_commands_repeat_how_the_user_started(monkeypatch, argv0, entry, command):
    monkeypatch.setattr(sys, "argv", [argv0, "trainer.max_epochs=3"])
    assert (paths.entry_point(), paths.command_line()) == (entry, command)
    from aelab.callbacks import resume_command

    assert resume_command("/x/last.ckpt").startswith(f"{command} ")


@pytest.mark.slow
def test_hydra_tab_completion_works_for_the_command(tmp_path):
    result = run_cli("aelab-train", "-sc", "install=bash", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"complete -o nospace -o default -F hydra_bash_completion aelab-train$", result.stdout, re.M)
    # what the installed completion asks on each TAB
    for typed, offered in (("model=c", "model=conv"), ("data.bat", "data.batch_size=")):
        query = run_cli("aelab-train", "-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": f"aelab-train {typed}"})
        assert query.stdout.split() == [offered], query.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools leaves build/ and *.egg-info/ in the tree it builds
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("aelab-*.whl")
    return built


def test_the_wheel_holds_every_module_every_config_and_the_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        f"aelab/{p.relative_to(REPO / 'src' / 'aelab').as_posix()}" for p in (REPO / "src" / "aelab").rglob("*.py")
    }
    configs = {f"aelab/configs/{p.relative_to(CONFIGS).as_posix()}" for p in CONFIGS.rglob("*.yaml")}
    assert modules <= names, sorted(modules - names)
    assert configs <= names, sorted(configs - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for task in TASKS:
        assert re.search(rf"^aelab-{task} = aelab\.commands:", text, re.M)
    # the licence travels with the wheel: its text, and the SPDX expression in the metadata
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert zipfile.ZipFile(wheel).read(licence) == (REPO / "LICENSE").read_bytes()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: MIT" in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()


@pytest.mark.slow
def test_installed_from_the_wheel_it_trains_from_its_own_configs_into_the_working_directory(
    tmp_path, wheel, tiny_mnist
):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    launcher = tmp_path / "aelab-train"
    launcher.write_text("from aelab.commands import train\ntrain()\n")
    work = tmp_path / "work"
    work.mkdir()
    # -S: no site-packages .pth files, so the editable install of this checkout is out of reach
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    env.pop("HYDRA_FULL_ERROR", None)
    args = [sys.executable, "-S", str(launcher), "trainer.max_epochs=1", f"data.data_dir={tiny_mnist}", QUIET]
    result = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(RUN_LINE.search(result.stdout + result.stderr).group(4))
    assert run_dir.parent == work / "logs" / "train" / "runs"
    composed = (run_dir / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {site / 'aelab' / 'configs'}" in composed
    assert str(REPO) not in composed


@pytest.mark.parametrize("script", list(TASKS))
def test_help_explains_the_project_without_importing_torch_or_lightning(tmp_path, script):
    # Hydra's bash completion runs the script on every TAB: --help and completion must stay light
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{str(REPO / 'src' / f'{script}.py')!r}, '--help']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('imported:', sorted(m for m in ('torch', 'lightning', 'sklearn') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"aelab {script}: autoencoders on MNIST-like data")
    assert "python src/train.py -m model.latent_dim=2,3,5,10,50" in result.stdout
    assert "logger: csv, many, mlflow, tensorboard, wandb" in result.stdout
    assert result.stdout.rstrip().endswith("imported: []")
