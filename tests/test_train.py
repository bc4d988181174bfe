"""Training end to end: the real Trainer, real TensorBoard files, real checkpoints."""

import csv
import json
import math
import os
import re
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aelab.names import TRAIN_MSE, VAL_MSE, VAL_MSE_BEST
from aelab.quiet import NVML_CHECK
from aelab.runs import open_run
from aelab.tasks.train import train

from conftest import QUIET, compose_train, events_dir, run_cli


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_fast_dev_run_of_each_backbone_on_tiny_data(tmp_path, tiny_mnist, model):
    cfg = compose_train(tmp_path, tiny_mnist, [f"model={model}", "debug=fdr"])
    summary = train(cfg)
    assert summary["status"] == "ok"
    assert summary["backbone"] == model
    assert summary["params"] == {"mlp": 218_643, "conv": 50_161}[model]
    assert 0 < summary[VAL_MSE] < 2


def train_tiny(tmp_path, data, *overrides, name="run"):
    cfg = compose_train(tmp_path, data, ["trainer.max_epochs=2", "data.batch_size=32", *overrides])
    cfg.paths.output_dir = str(tmp_path / name)
    return train(cfg)


def test_run_writes_tensorboard_scalars_images_and_hparams(tmp_path, tiny_mnist):
    train_tiny(tmp_path, tiny_mnist)
    events = EventAccumulator(str(events_dir(tmp_path / "run")))
    events.Reload()
    tags = events.Tags()
    # val/psnr: watched, not optimised (aelab.models.metrics)
    assert set(tags["scalars"]) == {TRAIN_MSE, VAL_MSE, VAL_MSE_BEST, "val/psnr"}
    assert tags["images"] == ["val/reconstructions"]
    # PSNR of the epoch's MSE over its pixels, for data spanning 2
    for mse, psnr in zip(events.Scalars(VAL_MSE), events.Scalars("val/psnr"), strict=True):
        assert psnr.value == pytest.approx(10 * math.log10(4 / mse.value), rel=1e-5)
    # the x-axis is epochs (1 = after the first), whatever the number of batches
    for tag in (TRAIN_MSE, VAL_MSE, VAL_MSE_BEST, "val/psnr"):
        assert [s.step for s in events.Scalars(tag)] == [1, 2], tag
    assert [image.step for image in events.Images("val/reconstructions")] == [1, 2]
    grid = events.Images("val/reconstructions")[0]
    # 16 images of 28 px plus 2 px padding: 16 * 30 + 2 wide, two rows high
    assert (grid.width, grid.height) == (482, 62)
    values = [s.value for s in events.Scalars(VAL_MSE)]
    # no placeholder at step 0: the first point of the HPARAMS metric is the first epoch's
    assert [s.value for s in events.Scalars(VAL_MSE_BEST)] == pytest.approx([values[0], min(values)])
    # HPARAMS lists the run against val/mse_best; CUSTOM SCALARS puts train and val on one chart
    # each run its settings, and no experiment summary: TensorBoard then compares the runs itself
    assert set(events.PluginTagToContent("hparams")) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    from tensorboard.plugins.custom_scalar.layout_pb2 import Layout

    layout = Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = layout.category
    (chart,) = category.chart
    assert (chart.title, list(chart.multiline.tag)) == ("mse", [TRAIN_MSE, VAL_MSE])


def test_checkpoints_hold_plain_values_and_load_with_weights_only(tmp_path, tiny_mnist):
    summary = train_tiny(tmp_path, tiny_mnist, "model=conv", "model.latent_dim=4")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert summary["best_checkpoint"].startswith(str(checkpoints / "best-epoch"))
    raw = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["latent_dim"] == 4
    assert raw["aelab_model_class"] == "aelab.models.autoencoder.AutoEncoder"
    assert raw["aelab_data_class"] == "aelab.data.datamodule.MNISTLikeDataModule"
    loaded = open_run(checkpoints / "last.ckpt")
    assert loaded.model.encode(torch.zeros(1, 1, 28, 28)).shape == (1, 4)
    assert loaded.datamodule.hparams.data_dir == str(tiny_mnist.resolve())
    assert loaded.datamodule.hparams.batch_size == 32


def test_a_weights_only_checkpoint_still_says_what_rebuilds_it(tmp_path, tiny_mnist):
    """Lightning calls no callback's on_save_checkpoint for a weights-only checkpoint: the run's
    record is added by the checkpoint writer, which every checkpoint passes through."""
    summary = train_tiny(tmp_path, tiny_mnist, "+callbacks.model_checkpoint.save_weights_only=true")
    raw = torch.load(summary["best_checkpoint"], weights_only=True)
    assert "optimizer_states" not in raw
    assert raw["aelab_model_class"] == "aelab.models.autoencoder.AutoEncoder"
    assert raw["identity"] == summary["identity"]
    assert open_run(summary["best_checkpoint"]).model.latent_size == summary["latent_size"]


def test_seeded_cpu_runs_are_reproducible(tmp_path, tiny_mnist):
    a = train_tiny(tmp_path, tiny_mnist, name="a")
    b = train_tiny(tmp_path, tiny_mnist, name="b")
    assert a[VAL_MSE] == b[VAL_MSE]


def test_a_run_without_a_gpu_stops_its_optimiser_steps_probing_for_one(tmp_path, tiny_mnist, monkeypatch):
    """``import lightning`` sets PYTORCH_NVML_BASED_CUDA_CHECK=1, and with it every optimiser step
    asks NVML for a GPU until CUDA is initialised: on a machine without one, every step of the run
    (aelab.quiet.no_gpu_probe_per_step; its cost is in docs/benchmarks.md). Where there is a GPU
    the setting stays, for the fork it protects."""
    monkeypatch.setenv(NVML_CHECK, "1")  # as import lightning leaves it
    gpu = torch.cuda.is_available()
    train_tiny(tmp_path, tiny_mnist)
    assert os.environ.get(NVML_CHECK) == ("1" if gpu else None)


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(tmp_path, tiny_mnist):
    straight = train_tiny(tmp_path, tiny_mnist, "trainer.max_epochs=3", name="straight")
    first = train_tiny(tmp_path, tiny_mnist, "trainer.max_epochs=2", name="first")
    resumed = train_tiny(
        tmp_path, tiny_mnist, "trainer.max_epochs=3", f"ckpt_path={first['last_checkpoint']}", name="resumed"
    )
    assert resumed["epochs"] == 3
    assert resumed[VAL_MSE] == pytest.approx(straight[VAL_MSE], rel=1e-6)
    assert resumed[VAL_MSE_BEST] == pytest.approx(straight[VAL_MSE_BEST], rel=1e-6)


@pytest.mark.slow
def test_one_real_epoch_on_mnist_from_the_command_line(tmp_path, mnist):
    result = run_cli(
        "train.py",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        QUIET,
        env={"AELAB_DATA_DIR": str(mnist)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["epochs"] == 1 and summary["params"] == 218_643
    # one epoch of 235 steps takes the MLP from ~1.0 (predicting zeros) to about the article's 0.18
    assert 0.14 < summary[VAL_MSE] < 0.22
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "Total params" in result.stdout + result.stderr


@pytest.mark.slow
def test_resume_from_the_command_line_with_ckpt_path_last(tmp_path, mnist):
    env = {"AELAB_DATA_DIR": str(mnist)}
    first = run_cli("train.py", "trainer.max_epochs=1", f"paths.log_dir={tmp_path}", QUIET, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train.py", "trainer.max_epochs=2", "ckpt_path=last", f"paths.log_dir={tmp_path}", QUIET, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in second.stdout + second.stderr
    newest = sorted((tmp_path / "train" / "runs").iterdir())[-1]
    assert json.loads((newest / "run_summary.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_ckpt_path_alone_resumes_a_run_with_the_overrides_it_was_started_with(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    first = run_cli(
        "train.py",
        "model=conv",
        "model.latent_dim=4",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        QUIET,
        env=env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    # no model=conv, no latent_dim, no batch size: the checkpoint knows them; max_epochs is raised
    second = run_cli(
        "train.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_epochs=2",
        f"paths.log_dir={tmp_path}",
        QUIET,
        env=env,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    newest = sorted((tmp_path / "train" / "runs").iterdir())[-1]
    summary = json.loads((newest / "run_summary.json").read_text())
    assert (summary["backbone"], summary["latent_dim"], summary["epochs"]) == ("conv", 4, 2)
    assert summary["identity"]["data.batch_size"] == 32
    overrides = (newest / ".hydra" / "overrides.yaml").read_text().splitlines()
    assert overrides[:3] == ["- model=conv", "- model.latent_dim=4", "- data.batch_size=32"]
    assert "- trainer.max_epochs=2" in overrides


@pytest.mark.slow
def test_ckpt_path_last_never_means_a_debug_run(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    debug = run_cli("train.py", "debug=limit", f"paths.log_dir={tmp_path}", QUIET, env=env)
    assert debug.returncode == 0, debug.stderr[-3000:]
    # in a folder of their own, apart from the training runs that TensorBoard and ckpt_path=last read
    assert not (tmp_path / "train").exists()
    assert list((tmp_path / "debug" / "runs").glob("*/checkpoints/last.ckpt"))
    result = run_cli("eval.py", "ckpt_path=last", f"paths.log_dir={tmp_path}", env=env)
    assert result.returncode == 2
    assert "ckpt_path=last found no checkpoints/last.ckpt under" in result.stderr
    assert "(debug= runs do not count)" in result.stderr


@pytest.mark.slow
def test_resuming_a_finished_run_says_how_to_extend_it_and_that_command_works(tmp_path, tiny_mnist):
    env = {"AELAB_DATA_DIR": str(tiny_mnist)}
    common = ["data.batch_size=32", f"paths.log_dir={tmp_path}", QUIET]
    assert run_cli("train.py", "trainer.max_epochs=1", *common, env=env).returncode == 0
    again = run_cli("train.py", "trainer.max_epochs=1", "ckpt_path=last", *common, env=env)
    assert again.returncode == 2
    (line,) = [line for line in again.stderr.splitlines() if line.startswith("aelab: error:")]
    assert "has already trained 1 epoch and trainer.max_epochs=1 asks for no more" in line
    suggestion = line.split("raise it: ", 1)[1].split()
    assert suggestion[1] == "trainer.max_epochs=2"
    extended = run_cli("train.py", *suggestion, *common, env=env)
    assert extended.returncode == 0, extended.stderr[-2000:]
    newest = sorted((tmp_path / "train" / "runs").iterdir())[-1]
    assert json.loads((newest / "run_summary.json").read_text())["epochs"] == 2


def test_the_progress_bar_shows_the_epochs_running_loss_and_val_mse(tmp_path, tiny_mnist, capfd, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)  # a bar is drawn on a terminal
    train_tiny(tmp_path, tiny_mnist, "callbacks.progress_bar.refresh_rate=1")
    bar = capfd.readouterr().out  # Lightning draws its bar on stdout
    events = EventAccumulator(str(events_dir(tmp_path / "run")))
    events.Reload()
    # redrawn after the last batch, the running loss is the epoch's train/mse
    for epoch, point in enumerate(events.Scalars(TRAIN_MSE)):
        assert f"Epoch {epoch}: 100%" in bar and f"loss={point.value:.4f}" in bar, point
    first_val = events.Scalars(VAL_MSE)[0].value
    assert f"val/mse={first_val:.3f}" in bar
    assert "v_num" not in bar


def test_chunks_of_steps_per_call_train_exactly_as_one_batch_per_call(tmp_path, tiny_mnist):
    """fast.steps_per_call only changes how often Lightning's loop runs, never the arithmetic:
    every weight, every logged number and the optimiser's state come out bit for bit the same.
    The VAE: each of its terms (mse, kl and their sum, loss) is summed over a chunk on its own,
    and its sampled codes draw from the same random stream on both loops."""
    runs = {}
    for steps in (1, 4):  # 96 images in batches of 16: 6 batches an epoch, chunks of 4 and 2
        overrides = ["data.batch_size=16", f"fast.steps_per_call={steps}", "objective=vae", "logger=csv"]
        summary = train_tiny(tmp_path, tiny_mnist, *overrides, name=f"k{steps}")
        runs[steps] = (summary, torch.load(summary["last_checkpoint"], weights_only=True))
    (one, one_ckpt), (chunked, chunked_ckpt) = runs[1], runs[4]
    for key in (TRAIN_MSE, VAL_MSE, VAL_MSE_BEST):
        assert chunked[key] == one[key], key
    assert chunked_ckpt["global_step"] == one_ckpt["global_step"] == 12  # optimiser steps, not calls
    for name, weight in one_ckpt["state_dict"].items():
        assert torch.equal(chunked_ckpt["state_dict"][name], weight), name
    moments = [s["exp_avg_sq"] for s in chunked_ckpt["optimizer_states"][0]["state"].values()]
    expected = [s["exp_avg_sq"] for s in one_ckpt["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(moments, expected, strict=True))
    # the step the CSV, MLflow and W&B loggers get counts batches, not calls: 6 an epoch
    steps = {k: (tmp_path / f"k{k}" / "csv" / "metrics.csv").read_text() for k in (1, 4)}
    assert steps[4] == steps[1]
    assert {"train/mse", "train/kl", "train/loss"} <= set(next(csv.DictReader(steps[4].splitlines())))
    # (Lightning's step is the index of the epoch's last batch; each epoch writes two rows)
    assert [row["step"] for row in csv.DictReader(steps[4].splitlines())] == ["5", "5", "11", "11"]


class ReplayByCalling:
    """A CUDA graph's contract on the CPU: capturing runs nothing, each replay runs what was captured."""

    made: list["ReplayByCalling"] = []

    def __init__(self):
        self.replays = 0
        ReplayByCalling.made.append(self)

    def capture(self, body):
        self.body = body

    def replay(self):
        self.body()
        self.replays += 1


def test_the_graph_path_trains_exactly_as_the_eager_loop_and_its_checkpoints_resume_either_way(
    tmp_path, tiny_mnist, monkeypatch, caplog
):
    """The CUDA-graph path's bookkeeping (static positions, the warm-up put back, epoch sums,
    Lightning's step count, tensor learning rates a scheduler fills, checkpoints written as the
    eager loop writes them) checked bit for bit against the eager loop, with the graph stood in
    for on the CPU. On a GPU the same code captures real graphs (docs/benchmarks.md)."""
    from aelab.fast import graphs as step_graph

    monkeypatch.setattr(step_graph, "GRAPH_DEVICES", ["cuda", "cpu"])
    monkeypatch.setattr(step_graph, "new_graph", ReplayByCalling)
    monkeypatch.setattr(ReplayByCalling, "made", [])
    cosine = "model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,T_max:4}"
    # 6 batches an epoch: chunks of 4 and 2; the sparse objective: two terms and their sum, each summed on its own
    common = ["data.batch_size=16", "fast.steps_per_call=4", cosine, "objective=sparse", "logger=csv"]
    caplog.set_level("INFO", logger="aelab")
    eager = train_tiny(tmp_path, tiny_mnist, *common, "fast.cuda_graph=false", name="eager")
    eager_line = (
        "training loop: the fast path on cpu, 4 batches per training_step call, eager (no CUDA graph: "
        "fast.cuda_graph=false)"
    )
    assert eager_line in caplog.text
    # a callback with a per-step hook: Lightning's plain loop trains, with the same arithmetic
    wrapped = train_tiny(
        tmp_path, tiny_mnist, *common, "+callbacks.count._target_=fault_callbacks.CountBackwards", name="wrapped"
    )
    assert (
        "training loop: Lightning's plain loop on cpu (not the fast path: CountBackwards.on_after_backward runs "
        "once per step)" in caplog.text
    )
    graph = train_tiny(tmp_path, tiny_mnist, *common, name="graph")
    assert "training loop: the fast path on cpu, 4 batches per training_step call, replayed as CUDA graphs" in (
        caplog.text
    )
    assert [g.replays for g in ReplayByCalling.made] == [2, 2]  # one graph per chunk shape, two epochs
    for key in (TRAIN_MSE, VAL_MSE, VAL_MSE_BEST):
        assert graph[key] == eager[key], key
    logged = {name: (tmp_path / name / "csv" / "metrics.csv").read_text() for name in ("eager", "graph")}
    assert logged["graph"] == logged["eager"]
    assert {"train/l1", "train/loss"} <= set(next(csv.DictReader(logged["graph"].splitlines())))
    eager_ckpt = torch.load(eager["last_checkpoint"], weights_only=True)
    graph_ckpt = torch.load(graph["last_checkpoint"], weights_only=True)
    wrapped_ckpt = torch.load(wrapped["last_checkpoint"], weights_only=True)
    assert graph_ckpt["global_step"] == eager_ckpt["global_step"] == wrapped_ckpt["global_step"] == 12
    for name, weight in eager_ckpt["state_dict"].items():
        assert torch.equal(graph_ckpt["state_dict"][name], weight), name
        assert torch.equal(wrapped_ckpt["state_dict"][name], weight), name
    # float learning rates, the group's own capturable: the checkpoint is the eager loop's
    assert graph_ckpt["optimizer_states"][0]["param_groups"] == eager_ckpt["optimizer_states"][0]["param_groups"]
    assert graph_ckpt["lr_schedulers"] == eager_ckpt["lr_schedulers"]
    for index, state in eager_ckpt["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            assert torch.equal(graph_ckpt["optimizer_states"][0]["state"][index][key], value), (index, key)
    # each resumes through its own path to the same third epoch (the graph's with new captures)
    resumed = {}
    for name, run in (("eager", eager), ("graph", graph)):
        resumed[name] = train_tiny(
            tmp_path,
            tiny_mnist,
            *common,
            f"fast.cuda_graph={name == 'graph'}",
            "trainer.max_epochs=3",
            f"ckpt_path={run['last_checkpoint']}",
            name=f"{name}-resumed",
        )
    assert [g.replays for g in ReplayByCalling.made] == [2, 2, 1, 1]
    assert resumed["graph"][VAL_MSE] == resumed["eager"][VAL_MSE]
    ends = [torch.load(r["last_checkpoint"], weights_only=True)["state_dict"] for r in resumed.values()]
    assert all(torch.equal(ends[0][name], ends[1][name]) for name in ends[0])


def test_the_graph_path_recaptures_when_a_scheduler_changes_what_a_graph_holds_fixed(tmp_path, tiny_mnist, monkeypatch):
    """OneCycleLR cycles Adam's betas with the lr: a graph would replay the betas it was captured
    with, so each epoch's new betas get new graphs, and the weights stay the eager loop's."""
    from aelab.fast import graphs as step_graph

    monkeypatch.setattr(step_graph, "GRAPH_DEVICES", ["cuda", "cpu"])
    monkeypatch.setattr(step_graph, "new_graph", ReplayByCalling)
    monkeypatch.setattr(ReplayByCalling, "made", [])
    one_cycle = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:0.01,total_steps:4}"
    )
    common = ["data.batch_size=16", "fast.steps_per_call=4", one_cycle]
    eager = train_tiny(tmp_path, tiny_mnist, *common, "fast.cuda_graph=false", name="eager")
    graph = train_tiny(tmp_path, tiny_mnist, *common, name="graph")
    assert [g.replays for g in ReplayByCalling.made] == [1, 1, 1, 1]
    ends = [torch.load(run["last_checkpoint"], weights_only=True)["state_dict"] for run in (eager, graph)]
    assert all(torch.equal(ends[0][name], ends[1][name]) for name in ends[0])


def test_a_failed_capture_stops_the_run_with_the_eager_fix(tmp_path, tiny_mnist, monkeypatch):
    from aelab.errors import AelabError
    from aelab.fast import graphs as step_graph

    class Uncapturable(ReplayByCalling):
        def capture(self, body):
            try:
                raise RuntimeError("operation not permitted when stream is capturing")
            finally:
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(step_graph, "GRAPH_DEVICES", ["cuda", "cpu"])
    monkeypatch.setattr(step_graph, "new_graph", Uncapturable)
    with pytest.raises(AelabError) as error:
        train_tiny(tmp_path, tiny_mnist, "data.batch_size=16", "fast.steps_per_call=4")
    assert str(error.value) == (
        "capturing the training steps as a CUDA graph failed (operation not permitted when stream is capturing); "
        "train eagerly with fast.cuda_graph=false"
    )


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["+callbacks.count._target_=fault_callbacks.CountBackwards"],
            "Lightning's plain loop on cpu (not the fast path: CountBackwards.on_after_backward runs once per step)",
        ),
        (
            ["+callbacks.count._target_=fault_callbacks.CountValidationBatches"],
            "Lightning's plain loop on cpu (not the fast path: CountValidationBatches.on_validation_batch_end "
            "runs once per validation batch)",
        ),
        (
            ["+trainer.max_steps=12"],
            "Lightning's plain loop on cpu (not the fast path: trainer.max_steps counts batches)",
        ),
        (
            ["+trainer.limit_val_batches=1"],  # an int: one batch, not all of them as 1.0 would be
            "Lightning's plain loop on cpu (not the fast path: trainer.limit_val_batches counts batches)",
        ),
        (
            ["model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true}"],
            "Lightning's plain loop on cpu (not the fast path: model.scheduler is ReduceLROnPlateau, which "
            "Lightning's loop steps on val/mse after validation)",
        ),
        (
            ["+trainer.gradient_clip_val=0.5"],
            "Lightning's plain loop on cpu (not the fast path: trainer.gradient_clip_val=0.5 clips in Lightning's "
            "optimiser step)",
        ),
    ],
)
def test_the_graph_path_steps_aside_where_it_cannot_serve_and_the_log_says_why(
    tmp_path, tiny_mnist, monkeypatch, caplog, overrides, line
):
    from aelab.fast import graphs as step_graph

    import fault_callbacks

    monkeypatch.setattr(step_graph, "GRAPH_DEVICES", ["cuda", "cpu"])
    monkeypatch.setattr(step_graph, "new_graph", ReplayByCalling)
    monkeypatch.setattr(ReplayByCalling, "made", [])
    monkeypatch.setattr(fault_callbacks.CountBackwards, "calls", 0)
    monkeypatch.setattr(fault_callbacks.CountValidationBatches, "calls", 0)
    caplog.set_level("INFO", logger="aelab")
    summary = train_tiny(tmp_path, tiny_mnist, "data.batch_size=16", "fast.steps_per_call=4", *overrides)
    assert f"training loop: {line}" in caplog.text
    assert ReplayByCalling.made == []
    assert summary["epochs"] == 2
    # each hook once per batch: 6 training batches an epoch, 3 validation batches (40 images)
    assert fault_callbacks.CountBackwards.calls == (12 if "CountBackwards" in overrides[0] else 0)
    assert fault_callbacks.CountValidationBatches.calls == (6 if "CountValidationBatches" in overrides[0] else 0)


def test_gradient_clipping_and_accumulation_are_lightnings_own_on_a_real_run(tmp_path, tiny_mnist, monkeypatch):
    """Trainer features of automatic optimisation, on the plain loop the fast path leaves them to
    (96 images in batches of 8: 12 batches an epoch)."""
    import fault_callbacks

    norms = ["+callbacks.norms._target_=fault_callbacks.GradientNorms", "data.batch_size=8"]

    def gradients(*overrides, name):
        monkeypatch.setattr(fault_callbacks.GradientNorms, "norms", [])
        monkeypatch.setattr(fault_callbacks.GradientNorms, "largest", [])
        summary = train_tiny(tmp_path, tiny_mnist, *norms, *overrides, name=name)
        return summary, fault_callbacks.GradientNorms.norms, fault_callbacks.GradientNorms.largest

    _, free, free_largest = gradients("fast.enabled=false", name="free")
    assert len(free) == 24 and max(free) > 0.2 and max(free_largest) > 0.01  # the limits below bite
    _, clipped, _ = gradients("+trainer.gradient_clip_val=0.2", name="norm")
    assert len(clipped) == 24 and max(clipped) <= 0.2 * (1 + 1e-5)
    _, _, by_value = gradients(
        "+trainer.gradient_clip_val=0.01", "+trainer.gradient_clip_algorithm=value", name="value"
    )
    assert max(by_value) <= 0.01 * (1 + 1e-6)
    accumulated, _, _ = gradients("+trainer.accumulate_grad_batches=4", name="accumulated")
    checkpoint = torch.load(accumulated["last_checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == 24 // 4  # optimiser steps: batches / 4
    assert accumulated["identity"]["trainer.accumulate_grad_batches"] == 4


def test_off_a_terminal_each_epoch_is_one_line_without_carriage_returns(tmp_path, tiny_mnist):
    result = run_cli(
        "train.py", "trainer.max_epochs=2", f"paths.log_dir={tmp_path}", env={"AELAB_DATA_DIR": str(tiny_mnist)}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(re.fullmatch(r"Epoch \d/2: loss \d\.\d{4}, val/mse \d\.\d+", line) for line in epochs), epochs
    assert "\r" not in result.stdout + result.stderr


def test_on_a_terminal_the_bar_counts_batches_not_training_step_calls(tmp_path, tiny_mnist, capsys, monkeypatch):
    # 96 training images, batches of 16: 6 optimiser steps an epoch, 2 training_step calls of 4 and 2
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    cfg = compose_train(
        tmp_path,
        tiny_mnist,
        [
            "trainer.max_epochs=1",
            "data.batch_size=16",
            "fast.steps_per_call=4",
            "callbacks.progress_bar.refresh_rate=1",
        ],
    )
    train(cfg)
    shown = capsys.readouterr()
    bars = (shown.out + shown.err).replace("\r", "\n")
    assert re.search(r"Epoch 0: 100%.*\| 6/6 ", bars), bars[-2000:]
    assert "/2 [" not in bars and "2/2" not in bars


@pytest.mark.parametrize("fast", ["auto", "false"])
def test_a_callback_finds_the_epochs_own_metrics_when_the_epoch_ends(tmp_path, tiny_mnist, fast):
    """The metric objects are logged once an epoch: a callback's epoch-end hook, which Lightning
    runs before the model's, still reads this epoch's values, on either loop."""
    import fault_callbacks

    fault_callbacks.MetricsSeen.seen = []
    overrides = ["trainer.max_epochs=2", f"fast.enabled={fast}", "+callbacks.seen._target_=fault_callbacks.MetricsSeen"]
    summary = train(compose_train(tmp_path, tiny_mnist, overrides))
    seen = {(name, epoch): value for name, epoch, value in fault_callbacks.MetricsSeen.seen}
    assert set(seen) == {(name, epoch) for name in ("val/mse", "val/psnr", "train/mse") for epoch in (0, 1)}
    assert seen["val/mse", 1] == summary["val/mse"] and seen["train/mse", 1] == summary["train/mse"]
    assert seen["val/mse", 0] != seen["val/mse", 1] and seen["train/mse", 0] != seen["train/mse", 1]
    assert all(value is not None for value in seen.values()), seen
