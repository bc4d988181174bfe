"""``train(cfg)``: the whole training task, called by ``src/train.py``, sweeps and tests alike."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from aelab import fast, runs
from aelab.callbacks import EpochTimer, StopOnNonFiniteLoss
from aelab.config import check_monitor, validate
from aelab.errors import ConfigError
from aelab.launch import cluster_plugins, launched_rank
from aelab.loggers import build_loggers
from aelab.names import (
    ANOMALY_AUROC,
    EPOCH_TIMES,
    EPOCHS,
    IDENTITY_KEY,
    NORMAL_CLASSES,
    TRAIN_MSE,
    VAL_MSE,
    VAL_MSE_BEST,
    metric,
)
from aelab.quiet import quiet_known_warnings

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one autoencoder as ``cfg`` says; returns (and writes) the run summary."""
    cfg, overrides = with_the_resumed_runs_overrides(cfg)
    validate(cfg)
    check_search_is_a_multirun()
    quiet_known_warnings()
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)

    output_dir = Path(cfg.paths.output_dir)
    limit_threads_for_parallel_jobs()
    datamodule = instantiate(cfg.data)
    # the data's image shape, handed to the model (Lightning's Model(width=datamodule.width))
    model = instantiate(cfg.model, image_shape=list(datamodule.image_shape))
    check_monitor(cfg, model.logged_metrics())
    check_optimizer_settings(model)
    # of the processes torchrun or srun start for one DDP run, the first one writes
    writer = launched_rank() == 0
    with runs.exclusive(output_dir) if writer else contextlib.nullcontext():
        return _train(cfg, model, datamodule, overrides, output_dir, started, writer=writer)


def check_optimizer_settings(model: Any) -> None:
    """``configure_optimizers`` runs inside the fit; run once here, a setting torch refuses
    (``+model.optimizer.eps=-1``) is one line before the run starts, not a traceback after."""
    try:
        model.configure_optimizers()
    except (TypeError, ValueError, IndexError, KeyError) as err:
        raise ConfigError(
            f"model.optimizer / model.scheduler: torch refuses the settings ({type(err).__name__}: {err}); "
            "fix the value it names"
        ) from None


def check_search_is_a_multirun() -> None:
    """``hparams_search=`` sets Hydra's sweeper, which only a multirun (``-m``) calls: without it
    Hydra would quietly train the one run the base config describes."""
    search = HydraConfig.get().runtime.choices.get("hparams_search") if HydraConfig.initialized() else None
    if search and HydraConfig.get().mode == RunMode.RUN:
        raise ConfigError(
            f"hparams_search={search} is a search over many runs, which Hydra starts only as a multirun: "
            f"add -m, e.g. python src/train.py -m hparams_search={search}"
        )


def _train(
    cfg: DictConfig, model, datamodule, overrides: list[str] | None, output_dir: Path, started: float, *, writer: bool
) -> dict[str, Any]:
    """The rest of ``train``, while this process holds ``output_dir`` (the ``writer``), or in a
    process of the same DDP run that leaves every file to that one."""
    if writer:
        runs.remove_leftovers(output_dir, held=True)
    identity = runs.run_identity(cfg, datamodule)
    previous = runs.read_summary(output_dir)
    if previous.get("status") == "ok":
        # A sweep re-run into the same directory: this job already finished, if it is this job.
        runs.require_same_run(output_dir, "a finished run", previous.get(IDENTITY_KEY), identity)
        if writer:
            runs.write_record(output_dir, cfg, overrides)  # the command that found it, as for any job
            log.info("%s already finished; not training it again", output_dir)
            runs.write_summary(output_dir, previous)  # and clears a failed attempt's note, if any
            log.info(closing_line(previous))
        return previous
    ckpt_path = cfg.get("ckpt_path")
    unfinished = runs.resume_point(output_dir)
    trained = False
    if ckpt_path is None and unfinished is not None:
        # the same directory holds a run that stopped before its summary: a re-run sweep, or the
        # command a full disk printed
        checkpoint = runs.load_checkpoint(unfinished)
        runs.require_same_run(
            output_dir, f"an unfinished run ({unfinished.name})", checkpoint.get(IDENTITY_KEY), identity
        )
        ckpt_path = str(unfinished)
        done, wanted = runs.epochs_done(checkpoint), cfg.trainer.get("max_epochs")
        steps, step_limit = checkpoint.get("global_step"), cfg.trainer.get("max_steps")
        # every epoch (or step) trained (the disk filled up as the summary was written): only the summary is missing
        trained = (done is not None and wanted is not None and 0 <= wanted <= done) or (
            isinstance(steps, int) and isinstance(step_limit, int) and 0 <= step_limit <= steps
        )
        if not trained:
            log.info("resuming the interrupted job from %s", unfinished)
    if writer:
        # checked: the folder holds no other run, so its record says what trains in it now
        runs.write_record(output_dir, cfg, overrides)
    if trained:
        ended = _measure_again(cfg, model, datamodule, checkpoint, Path(ckpt_path), output_dir)
    else:
        record = runs.run_record(model, datamodule, identity, overrides)
        ended = _fit(cfg, model, datamodule, record, ckpt_path, output_dir, writer=writer)
    summary = run_summary(model, datamodule, ended, output_dir, started, identity)
    if writer:
        if datamodule.settings.keep_classes is not None:
            summary.update(one_class_scores(model, datamodule, ended.device))
        runs.write_summary(output_dir, summary)
        log.info(closing_line(summary))
    return summary


class RunEnd(NamedTuple):
    """What a run's summary takes from how it ended: a fit, or its last checkpoint measured again."""

    metrics: dict[str, float]
    epochs: int
    epoch_times: list[float] | None
    best: str | Path | None
    last: str | Path | None
    device: torch.device  # where the model ran: a one-class run's scores are computed there too


def _fit(
    cfg: DictConfig, model, datamodule, record: dict[str, Any], ckpt_path: str | None, output_dir: Path, *, writer: bool
) -> RunEnd:
    """Lightning's fit, resumed from ``ckpt_path`` if given; its checkpoints carry ``record``."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    # what every run needs, whatever the callbacks config holds: a diverged loss stops it before a
    # checkpoint holds the weights, and the summary gets the epochs done and their times
    callbacks += [StopOnNonFiniteLoss(), EpochTimer()]
    loggers = build_loggers(cfg.get("logger") or {}, datamodule)
    plugins = [runs.AtomicCheckpointIO(record), *cluster_plugins(cfg.trainer.get("strategy"))]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)
    path = runs.resolve_ckpt_path(ckpt_path, Path(cfg.paths.log_dir) / "train") if ckpt_path is not None else None
    fast.speed_up(cfg.fast, model, datamodule, trainer, runs.load_checkpoint(path) if path else None)
    if path is not None:
        resumed_run = runs.run_dir_of(path)
        if writer and path.parent.name == runs.CHECKPOINT_DIR and resumed_run.resolve() != output_dir.resolve():
            runs.remove_leftovers(resumed_run)
        asked = cfg.trainer.max_epochs if cfg.get("ckpt_path") is not None else None
        runs.check_resumable(path, model, asked)

    trainer.fit(model, datamodule=datamodule, ckpt_path=path, weights_only=True)

    # read from callback_metrics, which a spawned DDP fit sends back from its rank-zero process;
    # that fit leaves this process's trainer and model as they were before it, weights aside
    reported = trainer.callback_metrics
    metrics = {k: float(v) for k, v in reported.items() if v.numel() == 1}
    epoch_times = reported.get(EPOCH_TIMES)
    saved = trainer.checkpoint_callback
    return RunEnd(
        metrics,
        epochs=int(metrics.get(EPOCHS, trainer.current_epoch)),
        epoch_times=epoch_times.tolist() if epoch_times is not None else None,
        best=getattr(saved, "best_model_path", None),
        last=getattr(saved, "last_model_path", None) or runs.last_checkpoint(output_dir),
        device=trainer.strategy.root_device,
    )


def _measure_again(cfg: DictConfig, model, datamodule, checkpoint: dict, path: Path, output_dir: Path) -> RunEnd:
    """The end of a run whose epochs are all trained but whose summary was never written, from
    its checkpoint ``path`` (checked to be this run's): the validation metrics measured again with the
    weights the fit ended with (a bare Trainer: nothing is logged or saved twice), the training means
    from the last epoch's sums the checkpoint kept (``AutoEncoder.on_save_checkpoint``)."""
    log.info("%s has trained all it was asked to; measuring %s for the summary it lacks", output_dir, path)
    runs.load_weights(model, checkpoint, path)
    model.on_load_checkpoint(checkpoint)
    trainer = L.Trainer(
        accelerator=cfg.trainer.get("accelerator") or "auto",
        devices=1,
        precision=cfg.trainer.get("precision"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (measured,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    train = {metric("train", t): float(mean.compute()) for t, mean in model.epoch_means("train").items() if mean.count}
    return RunEnd(
        {**measured, **train},
        epochs=runs.epochs_done(checkpoint) or 0,
        epoch_times=None,  # not kept in checkpoints
        best=runs.best_checkpoint(output_dir),
        last=runs.last_checkpoint(output_dir),
        device=trainer.strategy.root_device,
    )


def run_summary(
    model, datamodule, ended: RunEnd, output_dir: Path, started: float, identity: dict[str, Any]
) -> dict[str, Any]:
    """What ``run_summary.json`` says of a trained run (``aelab.names`` for the metrics' keys)."""
    return {
        "status": "ok",
        "dataset": datamodule.dataset,
        "data": datamodule.name,
        "data_dir": str(datamodule.source),
        "backbone": model.backbone,
        "objective": model.objective.label,
        "latent_dim": model.settings.latent_dim,
        "image_shape": list(model.image_shape),
        "latent_shape": list(model.latent_shape),
        "latent_size": model.latent_size,
        "params": sum(p.numel() for p in model.parameters()),
        "compression": model.compression,
        "epochs": ended.epochs,
        VAL_MSE_BEST: ended.metrics.get(VAL_MSE_BEST, model.best_val_mse),
        VAL_MSE: ended.metrics.get(VAL_MSE),
        TRAIN_MSE: ended.metrics.get(TRAIN_MSE),
        "wall_time_s": time.perf_counter() - started,
        "epoch_times_s": ended.epoch_times,
        "output_dir": str(output_dir),
        "best_checkpoint": str(ended.best) if ended.best else None,
        "last_checkpoint": str(ended.last) if ended.last else None,
        IDENTITY_KEY: identity,
    }


def one_class_scores(model, datamodule, device: torch.device) -> dict[str, Any]:
    """A one-class run's test/anomaly_auroc: the whole official test split scored by reconstruction
    error (fp32, on the training device: Lightning hands the model back on the CPU) with the weights
    the fit ended with (choosing an epoch by a score on the test split would tune on it), so that a
    sweep over data.keep_classes is the whole one-class benchmark."""
    from aelab.models.inference import encode_images
    from aelab.report.metrics import anomaly_auroc

    keep = datamodule.settings.keep_classes
    images, labels = datamodule.split("test")
    model.to(device).eval()
    _, errors = encode_images(model, images, device, datamodule.settings.batch_size)
    return {
        NORMAL_CLASSES: [datamodule.classes[c] for c in keep],
        ANOMALY_AUROC: anomaly_auroc(errors, labels.numpy(), keep),
    }


def closing_line(summary: dict[str, Any]) -> str:
    """What a user wants to read last: how good, and where everything is."""

    def mse(key: str) -> str:
        value = summary.get(key)
        return "not measured" if value is None else f"{value:.5f}"

    epochs = summary.get("epochs")
    return (
        f"done after {epochs} epoch{'' if epochs == 1 else 's'}: "
        f"{VAL_MSE} {mse(VAL_MSE)}, {VAL_MSE_BEST} {mse(VAL_MSE_BEST)}"
        + (f", {ANOMALY_AUROC} {summary[ANOMALY_AUROC]:.4f}" if ANOMALY_AUROC in summary else "")
        + f"; run in {summary.get('output_dir')}; best checkpoint {summary.get('best_checkpoint')}"
    )


def with_the_resumed_runs_overrides(cfg: DictConfig) -> tuple[DictConfig, list[str] | None]:
    """``ckpt_path=`` resumes the run as it was started: the config is composed again from the
    overrides stored in the checkpoint, with this command's overrides on top. Returns the config
    and the overrides it was composed from (``None`` outside a Hydra command)."""
    if not HydraConfig.initialized():
        return cfg, None
    # as typed: an override holding "${...}" is text here, resolved only in the config it makes
    typed = OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)
    current = [str(o) for o in typed] if isinstance(typed, list) else []
    if not cfg.get("ckpt_path"):
        return cfg, current
    path = runs.resolve_ckpt_path(str(cfg.ckpt_path), Path(cfg.paths.log_dir) / "train")
    # resolved once: the overrides restored and the weights resumed come from the same file, even
    # if a newer run writes a last.ckpt meanwhile (ckpt_path=last)
    cfg.ckpt_path = str(path)
    overrides = runs.resume_overrides(path, current, Path(cfg.paths.root_dir) / "configs")
    if overrides == current:
        return cfg, current
    log.info("resuming %s with the overrides it was started with: %s", path, " ".join(overrides))
    hydra = GlobalHydra.instance().hydra
    assert hydra is not None  # inside a Hydra command (HydraConfig said so)
    composed = hydra.compose_config(
        config_name=HydraConfig.get().job.config_name,
        overrides=overrides,
        run_mode=RunMode.RUN,
        with_log_configuration=False,
    )
    with open_dict(composed):
        del composed["hydra"]
        composed.ckpt_path = str(path)
    return composed, overrides


def limit_threads_for_parallel_jobs() -> None:
    """Under ``hydra/launcher=joblib`` give each job its share of the cores, not all of them."""
    if not HydraConfig.initialized():
        return
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return
    cores = os.cpu_count() or 1
    n_jobs = launcher.get("n_jobs") or -1
    parallel = cores if n_jobs < 0 else min(n_jobs, cores)
    torch.set_num_threads(max(1, cores // parallel))
