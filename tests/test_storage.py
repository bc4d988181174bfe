"""Storage faults: a kill mid-write, a full disk, a read-only disk. Nothing saved before is lost,
every message is one line, and the command it prints works once the disk is fixed."""

import json
import os
import re
import signal
from pathlib import Path

import pytest

from aelab.files import TEMPORARY_SUFFIX, atomic_path, remove_temporaries, write_atomic
from aelab.runs import load_checkpoint

from conftest import QUIET, run_cli
from test_errors import TESTS, newest_summary, run_printed

# One tiny-MLP checkpoint (weights + AdamW state) is about 2.6 MB.
CHECKPOINT_MB = 2.6


def all_checkpoints_load(run: Path) -> list[str]:
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    for name in names:
        load_checkpoint(run / "checkpoints" / name)
    return names


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_keeps_every_saved_checkpoint_and_the_printed_command_resumes(
    small_disk, tmp_path, tiny_mnist
):
    # Room for the first epoch's best and last checkpoints, not for the second epoch's new best.
    disk = small_disk(f"{int(CHECKPOINT_MB * 2.5 * 1024)}k")
    common = [
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.save_top_k=-1",
        f"paths.log_dir={disk / 'logs'}",
        QUIET,
    ]
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    full = run_cli("train.py", *common, env=env)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    (line,) = [line for line in full.stderr.splitlines() if line.startswith("aelab: error: ")]
    (run,) = (disk / "logs" / "train" / "runs").iterdir()
    assert re.search(
        rf"{run}/checkpoints/best-epoch001.ckpt: No space left on device; free some space, "
        r"then finish the run with: python src/train.py .*hydra.run.dir=",
        line,
    ), line
    # what had been saved is whole; the torn temporary is gone
    assert all_checkpoints_load(run) == ["best-epoch000.ckpt", "last.ckpt"]
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not list(run.rglob(f"*{TEMPORARY_SUFFIX}"))

    small_disk("64m")  # space freed
    command = line.split("finish the run with: ", 1)[1]
    resumed = run_printed(command, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = newest_summary(disk / "logs")
    assert summary["status"] == "ok" and summary["epochs"] == 3
    assert summary["output_dir"] == str(run)  # the same run, in its own folder
    evaluated = run_cli("eval.py", f"ckpt_path={summary['best_checkpoint']}", f"paths.log_dir={disk / 'logs'}", env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


@pytest.mark.slow
def test_a_disk_full_as_the_summary_is_written_names_it_and_the_printed_command_finishes_the_run(
    small_disk, tmp_path, tiny_mnist
):
    disk = small_disk("16m")
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    measured = tmp_path / "measured.json"
    full = run_cli(
        "train.py",
        "trainer.max_epochs=2",
        f"paths.log_dir={disk / 'logs'}",
        "~logger",
        QUIET,
        "+callbacks.fill._target_=fault_callbacks.FillDiskAfterFit",
        f"+callbacks.fill.filler={disk / 'filler'}",
        f"+callbacks.fill.record={measured}",
        env=env,
    )
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    (line,) = [line for line in full.stderr.splitlines() if line.startswith("aelab: error: ")]
    (run,) = (disk / "logs" / "train" / "runs").iterdir()
    assert line.startswith(
        f"aelab: error: {run / 'run_summary.json'}: No space left on device; free some space, "
        "then finish the run with: python src/train.py "
    ), line
    last_mtime = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns

    (disk / "filler").unlink()  # space freed
    command = line.split("finish the run with: ", 1)[1]
    # resuming its checkpoint instead is refused (it has trained every epoch), pointing at the same command
    resumed = run_cli(
        "train.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=2",
        f"paths.log_dir={tmp_path / 'logs'}",
        env=env,
    )
    assert resumed.returncode == 2
    assert f"; or, to write the summary its run lacks: {command}" in resumed.stderr
    finished = run_printed(command, env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "has trained all it was asked to; measuring" in finished.stdout + finished.stderr
    summary, fit = json.loads((run / "run_summary.json").read_text()), json.loads(measured.read_text())
    assert summary["status"] == "ok" and summary["epochs"] == 2
    for key in ("val/mse", "val/mse_best", "train/mse"):
        assert summary[key] == pytest.approx(fit[key], rel=1e-6), key
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == last_mtime  # nothing trained again
    assert [p.name for p in (disk / "logs" / "train" / "runs").iterdir()] == [run.name]  # no second folder


def test_a_read_only_log_disk_is_one_line_naming_the_path_and_the_fix(small_disk, tiny_mnist):
    disk = small_disk("1m", "ro")
    result = run_cli("train.py", f"paths.log_dir={disk / 'logs'}", env={"AELAB_DATA_DIR": str(tiny_mnist)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"aelab: error: {disk / 'logs'}: Read-only file system; point paths.log_dir at a writable disk, "
        "e.g. paths.log_dir=/tmp/aelab-logs"
    )


@pytest.mark.slow
def test_kill_9_while_a_checkpoint_is_written_loses_nothing_and_the_run_resumes(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    common = ["trainer.max_epochs=4", "data.batch_size=32", "seed=3", f"paths.log_dir={tmp_path / 'logs'}", QUIET]
    killed = run_cli(
        "train.py",
        *common,
        "+callbacks.kill._target_=fault_callbacks.KillWhileSaving",
        "+callbacks.kill.epoch=2",
        env=env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    (torn,) = list((run / "checkpoints").glob(f"*{TEMPORARY_SUFFIX}"))
    last = run / "checkpoints" / "last.ckpt"
    assert 0 < torn.stat().st_size < last.stat().st_size
    assert "last.ckpt" in all_checkpoints_load(run) and load_checkpoint(last)["epoch"] == 1

    resumed = run_cli("train.py", *common, f"ckpt_path={last}", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {torn}" in resumed.stderr + resumed.stdout
    assert not torn.exists()
    assert newest_summary(tmp_path / "logs")["epochs"] == 4
    evaluated = run_cli("eval.py", "ckpt_path=last", f"paths.log_dir={tmp_path / 'logs'}", env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_atomic(target, "old\n")
    with pytest.raises(OSError) as raised:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    assert raised.value.filename == str(target)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_atomic_files_get_the_usual_permissions_and_leftovers_are_found(tmp_path):
    write_atomic(tmp_path / "a.json", "{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    leftover = tmp_path / f".last.ckpt.x1y2{TEMPORARY_SUFFIX}"
    leftover.write_bytes(b"torn")
    assert remove_temporaries(tmp_path) == [leftover]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_checkpoints_are_written_through_the_atomic_writer(tmp_path, tiny_mnist, monkeypatch):
    """The trainer the train task builds saves through ``atomic_path`` (not Lightning's fsspec
    rename): every checkpoint file went through a temporary first."""
    import aelab.runs
    from aelab.tasks.train import train

    from conftest import compose_train

    seen = []
    original = aelab.runs.atomic_path

    def spy(path):
        seen.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(aelab.runs, "atomic_path", spy)
    cfg = compose_train(tmp_path, tiny_mnist, ["trainer.max_epochs=1", "~logger"])
    train(cfg)
    assert sorted(seen) == ["best-epoch000.ckpt", "last.ckpt"]
