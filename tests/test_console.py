"""What a user sees on a terminal: a sweep, a search and an analysis recorded through a real
pseudo-terminal (the bar draws only on one), with the progress while they run, the numbers at the
end, and the same runs' log files free of the bar's carriage returns."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import REPO, make_tiny_dataset

pytestmark = pytest.mark.slow
# the tests that read the one recorded sweep run in one process (the search runs wherever)
SHARES_THE_SWEEP = pytest.mark.xdist_group("console")

# a terminal of 120 columns: on one of 0 (a pty nobody sized) tqdm draws nothing
COLUMNS, ROWS = 120, 40


def record(script: str, *args: str, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run ``python src/<script> <args>`` on a new pseudo-terminal; its exit status and everything
    it wrote there, as a terminal receives it (carriage returns and escape codes included)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(
        [sys.executable, str(REPO / "src" / script), *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO,
        env={**os.environ, **env},
        close_fds=True,
    )
    os.close(terminal)
    received, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the process and its children closed the terminal
            break
        if not data:
            break
        received.append(data)
    os.close(controller)
    try:
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"{script} {' '.join(args)} ran past {timeout} s; it wrote:\n{b''.join(received)[-3000:]!r}")
    return status, b"".join(received).decode(errors="replace")


def lines(recording: str) -> list[str]:
    """The recording's lines as the terminal shows them once it is done (a redrawn bar: its last state)."""
    return [line.split("\r")[-1] for line in recording.split("\r\n")]


@pytest.fixture(scope="module")
def recorded_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    data = make_tiny_dataset(root / "data")
    sweep_dir = root / "sweep"
    status, recording = record(
        "train.py",
        *("-m", "model.latent_dim=2,3", "trainer.max_epochs=2", "data.batch_size=16"),
        *("callbacks.progress_bar.refresh_rate=1", f"hydra.sweep.dir={sweep_dir}"),
        env={"AELAB_DATA_DIR": str(data)},
    )
    return root, sweep_dir, status, recording


@SHARES_THE_SWEEP
def test_a_sweep_on_a_terminal_draws_the_bar_prints_each_job_and_ends_with_its_table(recorded_sweep):
    _, sweep_dir, status, recording = recorded_sweep
    assert status == 0, recording[-3000:]
    # the training bar, redrawn in place, counts batches (96 images, batches of 16: 6 an epoch)
    assert re.search(r"\rEpoch 1: 100%\|[^\r\n]*\| 6/6 ", recording), recording[-3000:]
    shown = lines(recording)
    progress = [line for line in shown if line.startswith("sweep: job ")]
    assert [line.split(" (")[0] for line in progress] == ["sweep: job 1 of 2", "sweep: job 2 of 2"]
    assert all(
        re.search(r": val/mse_best \d\.\d+; best so far \d\.\d+ \(data\.batch_size=16,model\.latent_dim=", p)
        for p in progress
    )
    # one model summary in the process, and the sweep's table and where it is, last
    assert recording.count("Total params") == 1
    table = [line for line in (sweep_dir / "summary.md").read_text().splitlines() if line]
    report = f"sweep report: {sweep_dir / 'summary.md'}"
    assert [line for line in shown if line][-len(table) - 1 :] == [*table, report]


@SHARES_THE_SWEEP
def test_the_sweeps_log_files_hold_lines_not_the_bars_redraws(recorded_sweep):
    _, sweep_dir, _, _ = recorded_sweep
    logs = sorted(sweep_dir.glob("*/train.log"))
    assert len(logs) == 2
    for log in logs:
        text = log.read_text()
        assert "done after 2 epochs" in text and "\r" not in text and "%|" not in text


@SHARES_THE_SWEEP
def test_analyze_on_a_terminal_reports_each_stage_and_ends_with_its_numbers(recorded_sweep):
    root, sweep_dir, _, _ = recorded_sweep
    job = next(sweep_dir.glob("*model.latent_dim=3,*"))
    status, recording = record(
        "analyze.py",
        f"ckpt_path='{job / 'checkpoints' / 'last.ckpt'}'",  # quoted: the folder's name holds = and ,
        *("map=pca", "umap_gmm=false", f"paths.log_dir={root / 'logs'}"),
        env={},
    )
    assert status == 0, recording[-3000:]
    shown = lines(recording)
    stages = [line.split(" - ", 1)[1] for line in shown if "[aelab.tasks.analyze]" in line]
    assert any(re.fullmatch(r"encoding 96 train and 40 test images on cpu done in \d+\.\d s", s) for s in stages)
    assert any(re.fullmatch(r"kNN \(k=\d+\) and linear probe done in \d+\.\d s", s) for s in stages), stages
    # within the kNN stage, a bar over chunks of test latents (40 test images: one chunk), cleared when done
    assert re.search(r"\rkNN: chunks of 1000 test latents: +0%\|[^\r\n]*\| 0/1 ", recording), recording[-3000:]
    # the headline numbers, then where the files are
    start = next(i for i, line in enumerate(shown) if line.startswith("analysis of "))
    numbers = dict(line.split(None, 1) for line in shown[start + 1 :] if line.startswith("  "))
    assert {"test/mse", "latent/knn_accuracy", "latent/linear_probe_accuracy"} <= set(numbers), shown[start:]
    assert all(float(value) >= 0 for value in numbers.values())
    assert [line for line in shown if line][-1].startswith("written to ")


def test_a_search_on_a_terminal_prints_each_trial_and_ends_with_its_table(tmp_path):
    data = make_tiny_dataset(tmp_path / "data")
    sweep_dir = tmp_path / "search"
    status, recording = record(
        "train.py",
        *("-m", "hparams_search=mlp", "hydra.sweeper.n_trials=2", "model.latent_dim=3", "trainer.max_epochs=1"),
        f"hydra.sweep.dir={sweep_dir}",
        env={"AELAB_DATA_DIR": str(data)},
    )
    assert status == 0, recording[-3000:]
    shown = lines(recording)
    progress = [line for line in shown if line.startswith("search: trial ")]
    assert [line.split(" (")[0] for line in progress] == ["search: trial 1 of 2", "search: trial 2 of 2"]
    assert all(re.search(r"\(trial-\d\): val/mse_best \d\.\d+; best so far \d\.\d+ \(trial-\d\)$", p) for p in progress)
    table = [line for line in (sweep_dir / "trials.md").read_text().splitlines() if line]
    assert [line for line in shown if line][-len(table) - 1 :] == [*table, f"search report: {sweep_dir / 'trials.md'}"]
    assert all("\r" not in log.read_text() for log in sweep_dir.glob("trial-*/train.log"))
