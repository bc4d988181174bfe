"""Multirun sweeps on tiny data: run naming, the report, failures, re-runs and resume."""

import csv
import json
import shutil

import numpy as np
import pytest

from aelab.report.metrics import pca_reconstruction_mse

from conftest import QUIET, make_tiny_dataset, run_cli, run_sweep


def read_rows(sweep_dir):
    with open(sweep_dir / "summary.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory):
    """One sweep of a failing and a finished job, read by the tests that take it (a test that
    writes into it works on its own copy)."""
    root = tmp_path_factory.mktemp("failed_sweep")
    result = run_sweep(root, make_tiny_dataset(root / "data"), "model.latent_dim=0,3")
    return root / "sweep", result


@pytest.mark.slow
def test_jobs_are_named_by_their_overrides_not_numbers(failed_sweep):
    sweep_dir, _ = failed_sweep
    names = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert names == ["model.latent_dim=0,trainer.max_epochs=1", "model.latent_dim=3,trainer.max_epochs=1"]
    # TensorBoard's run name, the events' path: <sweep>/model.latent_dim=3,trainer.max_epochs=1/MNIST
    assert (sweep_dir / names[1] / "MNIST").is_dir()


@pytest.mark.slow
def test_a_failed_job_is_reported_the_rest_finish_and_the_sweep_exits_1(failed_sweep):
    sweep_dir, result = failed_sweep
    assert result.returncode == 1
    assert "1 of 2 jobs failed" in result.stderr
    bad, good = read_rows(sweep_dir)
    assert bad["status"] == "failed"
    assert bad["error"].startswith("ConfigError: model.latent_dim=0 is invalid: it must be a positive integer")
    assert good["status"] == "ok" and good["epochs"] == "1"
    # one line as each job ends: k of n, its result, the best so far
    progress = [line for line in result.stdout.splitlines() if line.startswith("sweep: job ")]
    value = f"{float(good['val/mse_best']):.4g}"
    assert progress == [
        f"sweep: job 1 of 2 ({bad['job']}): failed: {bad['error']}",
        f"sweep: job 2 of 2 ({good['job']}): val/mse_best {value}; best so far {value} ({good['job']})",
    ]


@pytest.mark.slow
def test_summary_has_every_column_and_both_figures(failed_sweep):
    sweep_dir, _ = failed_sweep
    good = read_rows(sweep_dir)[1]
    assert good["backbone"] == "mlp" and good["latent_dim"] == "3" and good["params"] == "218643"
    assert good["data"] == "MNIST" and good["latent_size"] == "3"
    assert float(good["compression"]) == pytest.approx(1 - 3 / 784, abs=1e-4)
    assert 0 < float(good["val/pca_mse"]) < 2 and 0 < float(good["val/mse_best"]) < 2
    assert float(good["wall_time_s"]) > 0
    summary = (sweep_dir / "summary.md").read_text()
    assert "| mlp | plain | 3 | 3 | 218643 |" in summary
    # the console ends with the same table and where it is
    _, result = failed_sweep
    assert f"{summary.rstrip()}\n\nsweep report: {sweep_dir / 'summary.md'}\n" in result.stdout
    assert (sweep_dir / "reconstructions_by_latent_size.png").read_bytes()[:4] == b"\x89PNG"
    # one latent size finished: a curve against latent size would be one point
    assert not (sweep_dir / "mse_vs_latent_size.png").exists()
    assert list((sweep_dir / "sweep").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_rerunning_a_sweep_trains_nothing_new_and_rewrites_the_same_summary(tmp_path, tiny_mnist):
    first = run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2,3")
    assert first.returncode == 0, first.stderr[-2000:]
    # one model summary for the process, not one per job
    assert (first.stdout + first.stderr).count("Total params") == 1
    sweep_dir = tmp_path / "sweep"
    assert (sweep_dir / "mse_vs_latent_size.png").read_bytes()[:4] == b"\x89PNG"  # two latent sizes: a curve
    before = (sweep_dir / "summary.csv").read_text()
    job = sweep_dir / "model.latent_dim=2,trainer.max_epochs=1"
    checkpoint_mtime = (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    # figure_format neither names the jobs nor makes them other runs
    second = run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2,3", "figure_format=svg")
    assert second.returncode == 0
    assert "<svg" in (sweep_dir / "mse_vs_latent_size.svg").read_text()
    assert "already finished; not training it again" in second.stdout + second.stderr
    assert (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns == checkpoint_mtime
    assert (sweep_dir / "summary.csv").read_text() == before


@pytest.mark.slow
def test_a_job_that_trained_every_epoch_but_lost_its_summary_gets_it_back_whole(tmp_path, tiny_mnist):
    assert run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2").returncode == 0
    job = tmp_path / "sweep" / "model.latent_dim=2,trainer.max_epochs=1"
    written = json.loads((job / "run_summary.json").read_text())
    (job / "run_summary.json").unlink()  # as if killed (or the disk full) after its last checkpoint
    checkpoint_mtime = (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    result = run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2")
    assert result.returncode == 0
    assert "has trained all it was asked to; measuring" in result.stdout + result.stderr
    rebuilt = json.loads((job / "run_summary.json").read_text())
    # the validation metrics measured again with the same weights, train's from the checkpoint's sums
    for key in ("val/mse", "val/mse_best", "train/mse"):
        assert rebuilt[key] == pytest.approx(written[key], rel=1e-6), key
    assert rebuilt["epochs"] == 1 and rebuilt["best_checkpoint"] == written["best_checkpoint"]
    assert (job / "checkpoints" / "last.ckpt").stat().st_mtime_ns == checkpoint_mtime  # nothing trained
    (row,) = read_rows(tmp_path / "sweep")
    assert float(row["val/mse"]) == pytest.approx(written["val/mse"], rel=1e-6)


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_resumes_with_the_printed_command(tmp_path, tiny_mnist, short_dir):
    from test_errors import TESTS, run_printed

    env = {"AELAB_DATA_DIR": str(tiny_mnist), "PYTHONPATH": str(TESTS)}
    stopped = run_cli(
        "train.py",
        "-m",
        "model.latent_dim=2,3",
        "trainer.max_epochs=2",
        "data.batch_size=32",
        "fast.steps_per_call=1",  # SignalAt stops at a batch index: one batch per training_step call
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        QUIET,
        "+callbacks.stop._target_=fault_callbacks.SignalAt",
        "+callbacks.stop.epoch=1",
        "+callbacks.stop.batch=1",
        # a short path: the job's folder name holds every override, and the name's length is capped
        f"+callbacks.stop.once={short_dir / 'f'}",
        env=env,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    (line,) = [line for line in stopped.stderr.splitlines() if "Resume the sweep" in line]
    command = line.split(" with: ", 1)[1]
    assert command.startswith("python src/train.py -m ") and f"hydra.sweep.dir='{tmp_path / 'sweep'}'" in command
    resumed = run_printed(command, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted job from" in resumed.stdout + resumed.stderr
    assert "interrupted.ckpt" in resumed.stdout + resumed.stderr
    rows = read_rows(tmp_path / "sweep")
    assert [(row["latent_dim"], row["status"], row["epochs"]) for row in rows] == [("2", "ok", "2"), ("3", "ok", "2")]


@pytest.mark.slow
def test_report_script_recreates_the_summary(failed_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(failed_sweep[0], sweep_dir)
    before = (sweep_dir / "summary.csv").read_text()
    (sweep_dir / "summary.csv").unlink()
    result = run_cli("scripts/sweep_report.py", str(sweep_dir), "--figure-format", "pdf")
    assert result.returncode == 1  # one job failed
    assert (sweep_dir / "reconstructions_by_latent_size.pdf").read_bytes()[:5] == b"%PDF-"
    assert (sweep_dir / "summary.csv").read_text() == before


def test_pca_mse_is_zero_when_d_spans_the_data_and_falls_with_d():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 20))
    train = rng.normal(size=(200, 3)) @ basis
    test = rng.normal(size=(50, 3)) @ basis
    mse = pca_reconstruction_mse(train, test, [1, 2, 3])
    assert mse[1] > mse[2] > mse[3]
    assert mse[3] == pytest.approx(0, abs=1e-20)


@pytest.mark.slow
def test_pca_column_is_the_pca_baseline_on_the_jobs_own_splits(tmp_path, tiny_mnist):
    from aelab.data import MNISTLikeDataModule, normalized_rows

    assert run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2,5").returncode == 0
    dm = MNISTLikeDataModule(str(tiny_mnist))
    dm.setup()
    expected = pca_reconstruction_mse(
        normalized_rows(dm.splits["train"][0]), normalized_rows(dm.splits["val"][0]), [2, 5]
    )
    rows = read_rows(tmp_path / "sweep")
    assert [float(r["val/pca_mse"]) for r in rows] == [round(expected[2], 5), round(expected[5], 5)]


@pytest.mark.slow
def test_a_finished_job_is_not_taken_for_a_different_one(tmp_path, tiny_mnist):
    """Re-running a sweep directory on other data stops the sweep at that job, naming what differs,
    and touches nothing of the finished run it found there, byte for byte, nor the sweep's report."""
    from test_errors import folder_bytes

    assert run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2").returncode == 0
    job = tmp_path / "sweep" / "model.latent_dim=2,trainer.max_epochs=1"
    before, report = folder_bytes(job), (tmp_path / "sweep" / "summary.csv").read_text()

    other = run_sweep(tmp_path, make_tiny_dataset(tmp_path / "other-data", seed=1), "model.latent_dim=2")
    assert other.returncode == 2, other.stderr[-3000:]
    assert (
        other.stderr.strip()
        .splitlines()[-1]
        .startswith(f"aelab: error: {job} holds a finished run with other settings (data.content: ")
    )
    assert "its results and checkpoints were left as they were" in other.stderr
    assert folder_bytes(job) == before
    assert (tmp_path / "sweep" / "summary.csv").read_text() == report

    # back on the data it was trained on, the job is found finished again
    again = run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2")
    assert again.returncode == 0
    assert read_rows(tmp_path / "sweep")[0]["status"] == "ok"


@pytest.mark.slow
def test_an_unfinished_job_is_not_resumed_into_a_different_one(tmp_path, tiny_mnist):
    from test_errors import folder_bytes

    assert run_sweep(tmp_path, tiny_mnist, "model.latent_dim=2").returncode == 0
    job = tmp_path / "sweep" / "model.latent_dim=2,trainer.max_epochs=1"
    (job / "run_summary.json").unlink()  # as if killed after its last checkpoint
    before = folder_bytes(job)
    other = run_sweep(tmp_path, make_tiny_dataset(tmp_path / "other-data", seed=1), "model.latent_dim=2")
    assert other.returncode == 2, other.stderr[-3000:]
    assert f"aelab: error: {job} holds an unfinished run (last.ckpt) with other settings (data.content: " in (
        other.stderr
    )
    assert folder_bytes(job) == before


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused(tmp_path, tiny_mnist):
    import fcntl

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_cli(
            "train.py",
            f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=1",
            QUIET,
            env={"AELAB_DATA_DIR": str(tiny_mnist)},
        )
    assert result.returncode == 2
    assert f"aelab: error: {run_dir} is in use by another training process" in result.stderr
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_a_submitit_local_sweep_reports_failures_and_resumes_like_any_sweep(tmp_path, tiny_mnist):
    """hydra/launcher=submitit_local: each job a separate process started by submitit, as on SLURM."""
    sweep_dir = tmp_path / "sweep"
    first = run_sweep(tmp_path, tiny_mnist, "hydra/launcher=submitit_local", "model.latent_dim=0,3")
    assert first.returncode == 1 and "1 of 2 jobs failed" in first.stderr
    bad, good = read_rows(sweep_dir)
    assert bad["status"] == "failed" and bad["error"].startswith("ConfigError: model.latent_dim=0 is invalid")
    assert good["status"] == "ok" and good["job"] == "model.latent_dim=3,trainer.max_epochs=1"
    assert (sweep_dir / ".submitit").is_dir() and (sweep_dir / good["job"] / "checkpoints" / "last.ckpt").is_file()
    # the console says where each job's progress line goes, and there it is
    logs = sweep_dir / ".submitit" / "<job id>" / "<job id>_0_log.out"
    assert f"sweep: 2 jobs handed to submitit; each one's line as it ends goes to {logs}" in first.stdout
    written = "".join(log.read_text() for log in (sweep_dir / ".submitit").glob("*/*_0_log.out"))
    assert f"sweep: job 2 of 2 ({good['job']}): val/mse_best" in written, written[-2000:]

    again = run_sweep(tmp_path, tiny_mnist, "hydra/launcher=submitit_local", "model.latent_dim=0,3")
    assert again.returncode == 1
    assert "already finished; not training it again" in (sweep_dir / good["job"] / "train.log").read_text()
    assert read_rows(sweep_dir)[1] == good


@pytest.mark.slow
def test_a_sweep_over_the_kept_class_is_the_one_class_benchmark(tmp_path, tiny_mnist):
    import torch

    from aelab import runs
    from aelab.models.inference import encode_images

    result = run_sweep(tmp_path, tiny_mnist, "data.keep_classes=[1],[2,3]")
    assert result.returncode == 0, result.stderr[-2000:]
    sweep_dir = tmp_path / "sweep"
    rows = read_rows(sweep_dir)
    assert [r["normal_classes"] for r in rows] == ["1", "2, 3"]
    header = list(rows[0])
    assert header.index("normal_classes") == header.index("latent_size") + 1
    for row, keep in zip(rows, ([1], [2, 3]), strict=True):
        # the score of the weights the fit ended with, over the whole test split
        loaded = runs.open_run(sweep_dir / row["job"] / "checkpoints" / "last.ckpt")
        images, labels = loaded.datamodule.split("test")
        assert len(images) == 40
        _, errors = encode_images(loaded.model.eval(), images, torch.device("cpu"), 256)
        is_anomaly = ~np.isin(labels.numpy(), keep)
        # AUROC by its definition: the chance that an anomaly scores above a normal image
        wins = (errors[is_anomaly][:, None] > errors[~is_anomaly][None, :]).mean()
        ties = (errors[is_anomaly][:, None] == errors[~is_anomaly][None, :]).mean()
        assert float(row["test/anomaly_auroc"]) == pytest.approx(wins + ties / 2, abs=1e-12)
    scores = [float(r["test/anomaly_auroc"]) for r in rows]
    worst = min(rows, key=lambda r: float(r["test/anomaly_auroc"]))
    assert (
        f"mean {sum(scores) / 2:.4f} over 2 jobs, lowest {min(scores):.4f} (normal class {worst['normal_classes']})"
        in (sweep_dir / "summary.md").read_text()
    )
    summary = json.loads((sweep_dir / rows[0]["job"] / "run_summary.json").read_text())
    assert summary["normal_classes"] == ["1"]


@pytest.mark.slow
def test_a_sweep_without_one_class_jobs_has_no_one_class_columns(failed_sweep):
    sweep_dir, _ = failed_sweep
    assert "test/anomaly_auroc" not in read_rows(sweep_dir)[0]
    assert "One-class" not in (sweep_dir / "summary.md").read_text()
