"""DDP: each epoch sharded across processes, metrics added across them, one writer per run.

``trainer=ddp_sim`` is the multi-GPU path on two CPU processes talking over gloo.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aelab
from aelab.data.batches import DeviceBatchLoader, shard_bounds
from aelab.data.datasets import dataset_spec
from aelab.data.idx import read_split
from aelab.errors import ConfigError

from conftest import QUIET, REPO, events_dir, run_cli, run_sweep


def epoch_labels(n, batch_size, *, world_size, shuffle, epoch=0, seed=7):
    """Per process, the labels (here: image indices) of each batch of one epoch."""
    per_process = []
    for rank in range(world_size):
        loader = DeviceBatchLoader(
            torch.zeros(n, 28, 28, dtype=torch.uint8),
            torch.arange(n),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        loader.set_epoch(epoch)
        batches = [labels for _, labels in loader]
        assert len(batches) == len(loader)
        per_process.append(batches)
    return per_process


@pytest.mark.parametrize(
    ("n", "batch_size", "world_size"),
    [(96, 16, 2), (60_000, 256, 2), (513, 256, 2), (1025, 256, 4), (10, 3, 3), (9, 2, 4)],
)
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_image_is_seen_once_per_epoch_across_processes_in_equal_batch_counts(n, batch_size, world_size, shuffle):
    per_process = epoch_labels(n, batch_size, world_size=world_size, shuffle=shuffle, epoch=3)
    counts = {len(batches) for batches in per_process}
    assert counts == {math.ceil(math.ceil(n / world_size) / batch_size)}, "DDP needs as many steps in every process"
    assert all(0 < len(b) <= batch_size for batches in per_process for b in batches)
    # contiguous shards of the single-process order: disjoint, complete, a function of (seed, epoch)
    (single,) = epoch_labels(n, batch_size, world_size=1, shuffle=shuffle, epoch=3)
    together = torch.cat([torch.cat(batches) for batches in per_process])
    assert torch.equal(together, torch.cat(single))
    assert sorted(together.tolist()) == list(range(n))


def test_the_shuffle_is_the_seeds_and_the_epochs():
    first = torch.cat(epoch_labels(96, 16, world_size=2, shuffle=True, epoch=1)[0])
    again = torch.cat(epoch_labels(96, 16, world_size=2, shuffle=True, epoch=1)[0])
    other_epoch = torch.cat(epoch_labels(96, 16, world_size=2, shuffle=True, epoch=2)[0])
    other_seed = torch.cat(epoch_labels(96, 16, world_size=2, shuffle=True, epoch=1, seed=8)[0])
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)


def test_a_shard_one_image_short_keeps_every_batch_non_empty():
    # 513 images over 2 processes: 256 and 257, each in two batches; the shorter shard's
    # second batch would be empty, so it takes the last image of the first
    assert shard_bounds(513, 256, 0, 2) == (0, [0, 255, 256])
    assert shard_bounds(513, 256, 1, 2) == (256, [0, 256, 257])
    # one process: DataLoader(drop_last=False)'s batches
    assert shard_bounds(513, 256, 0, 1) == (0, [0, 256, 512, 513])


def test_a_resumed_epoch_skips_the_same_batches_in_every_shard():
    full = epoch_labels(96, 16, world_size=2, shuffle=True)
    for rank in range(2):
        loader = DeviceBatchLoader(
            torch.zeros(96, 28, 28, dtype=torch.uint8),
            torch.arange(96),
            16,
            shuffle=True,
            seed=7,
            rank=rank,
            world_size=2,
        )
        loader.skip_once = 2
        resumed = [labels for _, labels in loader]
        assert [b.tolist() for b in resumed] == [b.tolist() for b in full[rank][2:]]


@pytest.mark.parametrize(
    ("n", "batch_size", "world_size", "message"),
    [
        (
            3,
            16,
            4,
            "3 images cannot be shared by 4 processes: every process needs at least one; use fewer trainer.devices",
        ),
        (9, 1, 2, "data.batch_size=1 cannot split 9 images evenly over 2 processes; use data.batch_size=2 or more"),
    ],
)
def test_shards_that_cannot_be_made_are_refused_in_one_line(n, batch_size, world_size, message):
    with pytest.raises(ConfigError) as caught:
        DeviceBatchLoader(
            torch.zeros(n, 28, 28, dtype=torch.uint8), torch.arange(n), batch_size, shuffle=True, world_size=world_size
        )
    assert str(caught.value) == message


def mse_of(run_dir, images):
    """The run's final weights, in this single process, over ``images`` (uint8): the exact mean in float64."""
    images = torch.from_numpy(np.array(images))
    loaded = aelab.load(run_dir / "checkpoints" / "last.ckpt")
    reconstructions = loaded.reconstruct(images).double()
    targets = images.double().div(255).sub(0.5).div(0.5).unsqueeze(1)
    return float(((reconstructions - targets) ** 2).mean())


def check_one_ddp_run(run_dir, data_dir, epochs, kept=("best-epoch{last:03d}.ckpt", "last.ckpt")):
    """One output directory written by one process, whose val/mse is the single-process value."""
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["status"] == "ok" and summary["epochs"] == epochs and len(summary["epoch_times_s"]) == epochs
    assert summary["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [k.format(last=epochs - 1) for k in kept]
    assert len(list(events_dir(run_dir).glob("events.out.tfevents.*"))) == 1
    test_images, _ = read_split(dataset_spec("mnist").raw_dir(data_dir), "test")
    single_process = mse_of(run_dir, test_images)
    assert summary["val/mse"] == pytest.approx(single_process, rel=1e-6)
    # not true of one process's half: the value really is added across processes
    half = mse_of(run_dir, test_images[: len(test_images) // 2])
    assert summary["val/mse"] != pytest.approx(half, rel=1e-6)
    return summary


def ddp_sim_run(tmp_path, data, run_name, *overrides, env=None):
    return run_cli(
        "train.py",
        "trainer=ddp_sim",
        "data.batch_size=16",
        *overrides,
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'logs' / run_name}",
        QUIET,
        env={"AELAB_DATA_DIR": str(data), **(env or {})},
    )


# a one-task SLURM job (sbatch with one task, or a submitit job) with trainer=ddp: Lightning would
# take every spawned process's rank from SLURM_PROCID, all 0, and each would train on the whole epoch alone
ONE_TASK_SLURM_JOB = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
ONE_TASK_SLURM_JOB |= {"SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "5", "SLURM_NODELIST": "localhost"}


@pytest.mark.slow
def test_ddp_sim_trains_into_one_directory_and_resumes_exactly_inside_a_one_task_slurm_job(tmp_path, tiny_mnist):
    run_dir = tmp_path / "logs" / "run"
    # every epoch's checkpoint kept: the first one is where a run stopped after one epoch would resume
    result = ddp_sim_run(
        tmp_path, tiny_mnist, "run", "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["run"]
    check_one_ddp_run(run_dir, tiny_mnist, epochs=2, kept=("best-epoch000.ckpt", "best-epoch001.ckpt", "last.ckpt"))
    # each process took its half of an epoch: 48 images, 3 optimiser steps of 16 (one process: 6)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * 3
    assert "sync_dist" not in result.stderr

    # resumed from the end of the first epoch, inside a one-task SLURM job: the same weights and
    # steps as the uninterrupted run (each process's shard is a function of seed, epoch and rank,
    # and the spawned processes get ranks 0 and 1, not SLURM's 0 twice)
    half = run_dir / "checkpoints" / "best-epoch000.ckpt"
    assert torch.load(half, weights_only=True)["global_step"] == 3
    resumed = ddp_sim_run(
        tmp_path, tiny_mnist, "resumed", f"ckpt_path={half}", "trainer.max_epochs=2", env=ONE_TASK_SLURM_JOB
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_checkpoint = torch.load(tmp_path / "logs" / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed_checkpoint["global_step"] == 2 * 3
    weights = resumed_checkpoint["state_dict"]
    assert weights.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(weights[k], checkpoint["state_dict"][k]) for k in weights)


@pytest.mark.slow
def test_a_ddp_sim_sweep_gives_one_directory_per_job_and_a_summary(tmp_path, tiny_mnist):
    """The first job diverges: the error raised in its spawned processes is the job's one line,
    and the next job's processes train as if nothing had happened."""
    sweep_dir = tmp_path / "sweep"
    result = run_sweep(tmp_path, tiny_mnist, "trainer=ddp_sim", "model.optimizer.lr=1e6,1e-3", "data.batch_size=16")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert jobs == [
        "data.batch_size=16,model.optimizer.lr=0.001,trainer.max_epochs=1,trainer=ddp_sim",
        "data.batch_size=16,model.optimizer.lr=1000000.0,trainer.max_epochs=1,trainer=ddp_sim",
    ]
    with open(sweep_dir / "summary.csv") as handle:
        failed, ok = csv.DictReader(handle)
    progress = [line for line in result.stdout.splitlines() if line.startswith("sweep: job ")]
    assert progress[0] == f"sweep: job 1 of 2 ({failed['job']}): failed: {failed['error']}"
    assert failed["job"] == "data.batch_size=16,model.optimizer.lr=1000000.0,trainer.max_epochs=1,trainer=ddp_sim"
    assert failed["status"] == "failed"
    assert failed["error"].startswith("NonFiniteLossError: the loss became non-finite in epoch 0")
    assert failed["error"].endswith("Lower model.optimizer.lr (now 1000000.0)")
    assert ok["job"] == "data.batch_size=16,model.optimizer.lr=0.001,trainer.max_epochs=1,trainer=ddp_sim"
    assert ok["status"] == "ok"
    check_one_ddp_run(sweep_dir / ok["job"], tiny_mnist, epochs=1)


@pytest.mark.slow
def test_ddp_sim_on_the_official_split_matches_one_process(tmp_path, mnist):
    run_dir = tmp_path / "run"
    result = run_cli(
        "train.py",
        "trainer=ddp_sim",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        QUIET,
        env={"AELAB_DATA_DIR": str(mnist)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = check_one_ddp_run(run_dir, mnist, epochs=1)
    assert summary["data"] == "MNIST" and 0.1 < summary["val/mse"] < 0.3


@pytest.mark.slow
def test_under_torchrun_the_processes_share_one_directory_and_one_writer(tmp_path, tiny_mnist):
    """torchrun (as srun) starts the processes and each composes its config: they must agree on
    the run's folder (no hydra.run.dir given) and only the first may write."""
    log_dir = tmp_path / "logs"
    env = {**os.environ, "AELAB_DATA_DIR": str(tiny_mnist)}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node=2", str(REPO / "src" / "train.py")]
        + ["trainer=ddp_sim", "data.batch_size=16", "trainer.max_epochs=2", f"paths.log_dir={log_dir}", QUIET],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    assert run_dir.name.endswith("_data.batch_size-16_trainer.max_epochs-2_trainer-ddp_sim")
    check_one_ddp_run(run_dir, tiny_mnist, epochs=2)
    assert (result.stdout + result.stderr).count("done after 2 epochs") == 1


LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_STEP_ID")
LAUNCH_VARIABLES += ("SLURM_PROCID", "SLURM_JOB_ID", "RANK", "LOCAL_RANK", "JSM_NAMESPACE_RANK")


@pytest.mark.parametrize(
    ("environment", "strategy", "stamp", "rank"),
    [
        ({}, "ddp_spawn", None, 0),
        # a one-task SLURM job (sbatch, or a submitit job): the process spawns its own
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}, "ddp_spawn", None, 0),
        (
            {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"},
            "ddp",
            "slurm-77.0",
            5,
        ),
        (
            {"TORCHELASTIC_RUN_ID": "job/1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "RANK": "6"},
            "ddp",
            "torchrun-job_1",
            6,
        ),
    ],
)
def test_how_the_process_was_launched_decides_strategy_folder_and_writer(
    monkeypatch, environment, strategy, stamp, rank
):
    from aelab.launch import ddp_strategy, launched_rank, run_stamp

    for variable in LAUNCH_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    assert ddp_strategy() == strategy
    assert launched_rank() == rank
    if stamp is None:
        assert len(run_stamp("%Y-%m-%d_%H-%M-%S")) == len("2026-12-01_07-00-58")
    else:
        assert run_stamp("%Y-%m-%d_%H-%M-%S") == stamp
