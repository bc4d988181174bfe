"""Lightning callbacks: reconstruction grids and a curated hyperparameter record for the loggers."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

from aelab.data.batches import normalize
from aelab.errors import NonFiniteLossError
from aelab.models.autoencoder import AutoEncoder
from aelab.names import EPOCH_TIMES, EPOCHS, LOSS
from aelab.paths import command_line
from aelab.report.plots import image_grid

# the loggers that show images (CSV does not)
IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)


class ReconstructionGrid(L.Callback):
    """Logs fixed validation images over their reconstructions every ``every_n_epochs`` epochs."""

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1) -> None:
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._images: Tensor | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, IMAGE_LOGGERS)]
        if not loggers:
            return
        if self._images is None:
            datamodule: Any = getattr(trainer, "datamodule", None)
            if not hasattr(datamodule, "split"):
                return  # not an aelab datamodule
            # the first validation images, as the model takes them (the val loader is unshuffled, so they
            # are the first it gives), read from the split itself, whichever loader (or chunks of batches,
            # on the fast path) serves it
            self._images = normalize(datamodule.split("val")[0][: self.num_images])
        images = self._images.to(pl_module.device)
        with torch.no_grad():
            reconstructions = pl_module(images)
        if not torch.isfinite(reconstructions).all():
            return  # StopOnNonFiniteLoss stops the run with a clear message; no garbage image first
        # the inputs as one row over their reconstructions: (3, H, W) in [0, 1]
        grid = image_grid(torch.cat([images, reconstructions]), nrow=len(images)).cpu()
        tag = "val/reconstructions"
        for logger in loggers:
            # in the x each logger plots its metrics against: aelab.loggers.TensorBoardLogger's is epochs
            # done (1 = after the first epoch), the others' Lightning's optimiser steps
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, trainer.current_epoch + 1)
            elif isinstance(logger, MLFlowLogger):
                pixels = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                logger.experiment.log_image(logger.run_id, pixels, key=tag, step=trainer.global_step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(tag, images=[grid], step=trainer.global_step)


def run_hyperparameters(trainer: L.Trainer, pl_module: Any) -> dict[str, Any]:
    """The flat, comparable description of a run that TensorBoard's HPARAMS tab shows
    (``pl_module``: an ``aelab.models.AutoEncoder``)."""
    hp = pl_module.settings
    datamodule: Any = getattr(trainer, "datamodule", None)
    return {
        # the data's name with the folder of a subset (``MNIST (mnist-10k)``) and its training
        # images, so that runs on a subset are told from runs on the official split
        "dataset": datamodule.name if datamodule is not None else "",
        "train_images": len(datamodule.split("train")[0]) if datamodule is not None else -1,
        "backbone": pl_module.backbone,
        "objective": pl_module.objective.label,
        "latent_size": pl_module.latent_size,
        "params": sum(p.numel() for p in pl_module.parameters()),
        "compression": round(pl_module.compression, 4),
        "lr": hp.optimizer.get("lr", float("nan")),
        "weight_decay": hp.optimizer.get("weight_decay", float("nan")),
        "batch_size": datamodule.settings.batch_size if datamodule is not None else -1,
        "max_epochs": trainer.max_epochs,
        "precision": str(trainer.precision),
        "compile": str(hp.compile),
    }


class HyperparameterSummary(L.Callback):
    """Logs ``run_hyperparameters`` once. In TensorBoard, HPARAMS shows them against the newest
    value of each scalar (``val/mse_best`` is the one to sort by), and CUSTOM SCALARS gets one chart
    per loss term with its train and val curves together."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        hyperparameters = run_hyperparameters(trainer, pl_module)
        # for CUSTOM SCALARS: for each loss term the model logs, its train and val curves on one chart
        terms = sorted({name.split("/", 1)[1] for name in pl_module.logged_metrics() if name.startswith("train/")})
        charts = {term: ["Multiline", [f"train/{term}", f"val/{term}"]] for term in terms}
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hyperparameters)
                continue
            # HPARAMS: as TensorBoardLogger.log_hyperparams would write them minus two things: the placeholder
            # value it logs for each metric at step 0 (a NaN at the start of every val/mse_best chart),
            # and the experiment summary. TensorBoard takes the first experiment summary it finds as the
            # whole experiment's, so each run writing its own made every setting read "does not differ"
            # (a sweep's latent size started hidden); without any, TensorBoard compares the runs'
            # settings itself and offers their scalars (val/mse_best …) as metrics
            _, session_start, session_end = hparams(hyperparameters, {})
            logger.experiment.file_writer.add_summary(session_start)
            logger.experiment.file_writer.add_summary(session_end)
            logger.experiment.add_custom_scalars({"train vs val (per epoch)": charts})


class OneModelSummary(ModelSummary):
    """Lightning's model summary, printed by the first fit of a process only: the jobs of a sweep
    run one after another in one process, and a table per job buried what each job printed (its
    parameter count is a column of the sweep's summary)."""

    _printed = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not OneModelSummary._printed:
            super().on_fit_start(trainer, pl_module)
            OneModelSummary._printed = True


@runtime_checkable
class CountsBatches(Protocol):
    """A datamodule whose training_step calls take several batches each (on aelab's fast path)."""

    def train_batches_per_epoch(self) -> int: ...

    def epoch_batches_done(self) -> int: ...


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, counting training batches (a ``training_step`` call of the fast path takes
    a chunk of them: ``fast.steps_per_call``) and showing the epoch's running training loss (and val/mse once
    an epoch has been validated) instead of the version number; the loss is read only when the bar
    redraws, every ``refresh_rate`` batches.

    Off a terminal (a log file, a pipe, a cluster job's output) a redrawn bar leaves its carriage
    returns in the file: there it prints one line per epoch instead.
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self.on_terminal = sys.stdout.isatty()
        self._drawn = 0  # batches done at the last redraw

    @property
    def is_enabled(self) -> bool:
        return super().is_enabled and self.on_terminal

    def get_metrics(self, trainer: L.Trainer, pl_module: Any) -> dict[str, Any]:
        shown = {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}
        if not isinstance(pl_module, AutoEncoder):
            return shown
        # the mean optimised loss over the epoch's training batches so far: this process's own
        means = pl_module.epoch_means("train")
        mean = means[LOSS] if LOSS in means else means["mse"]
        return ({"loss": f"{float(mean.total / mean.count):.4f}"} if mean.count else {}) | shown

    @property
    def total_train_batches(self) -> int | float:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, CountsBatches):
            return datamodule.train_batches_per_epoch()
        return super().total_train_batches

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._drawn = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, CountsBatches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        done, bar = datamodule.epoch_batches_done(), self.train_progress_bar
        if not self.is_enabled or bar is None:
            return
        # a chunk of several batches passes a multiple of refresh_rate without landing on one
        if done // self.refresh_rate > self._drawn // self.refresh_rate or done == bar.total:
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            self._drawn = done

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.on_terminal and super().is_enabled and trainer.is_global_zero:
            shown = self.get_metrics(trainer, pl_module).items()
            metrics = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown)
            print(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {metrics}", flush=True)


class StopOnNonFiniteLoss(L.Callback):
    """Stops a run whose epoch means became NaN or infinite with one line: the values, the last
    good checkpoint and the fix. Lightning's ``EarlyStopping(check_finite=True)`` would stop it
    quietly. It runs before the model's ``on_validation_epoch_end`` and before the checkpoints of
    the epoch are saved, so no checkpoint holds the diverged weights."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, AutoEncoder):
            return
        means = {
            (split, term): mean.compute()
            for split in ("train", "val")
            for term, mean in pl_module.epoch_means(split).items()
            if mean.count
        }
        if not means or torch.isfinite(torch.stack(list(means.values()))).all():
            return
        saved = trainer.checkpoint_callback
        last = getattr(saved, "last_model_path", "") or getattr(saved, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        shown = ", ".join(f"{split} {term} {float(value)}" for (split, term), value in means.items())
        raise NonFiniteLossError(
            f"the loss became non-finite in epoch {trainer.current_epoch} ({shown}); training stopped "
            f"and {kept}. Lower model.optimizer.lr (now {pl_module.settings.optimizer.get('lr')})"
        )


class EpochTimer(L.Callback):
    """Wall seconds per epoch, training plus validation, into ``epoch_times_s``.

    Synchronises the device only at epoch boundaries, so it costs nothing per step.
    """

    def __init__(self) -> None:
        self.epoch_times_s: list[float] = []
        self._start = 0.0

    def _now(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a restore into the middle of an epoch skips on_train_epoch_start
        self._start = self._now(pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._now(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_times_s.append(self._now(pl_module) - self._start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # through callback_metrics, which a spawned DDP fit sends back to the process that started it
        trainer.callback_metrics[EPOCH_TIMES] = torch.tensor(self.epoch_times_s, dtype=torch.float64)
        trainer.callback_metrics[EPOCHS] = torch.tensor(trainer.current_epoch)


class FirstStepTimer(L.Callback):
    """Prints the seconds from ``AELAB_T0`` (set by whoever launched the process) to the first step."""

    _done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._done and "AELAB_T0" in os.environ:
            self._done = True
            seconds = time.time() - float(os.environ["AELAB_T0"])
            print(f"aelab: first training step {seconds:.2f} s after launch", flush=True)


class InterruptCheckpoint(L.Callback):
    """On Ctrl-C or SIGTERM, save ``interrupted.ckpt`` and say how to resume from it.

    Other exceptions (a non-finite loss, a bug) save nothing: their weights are not worth keeping,
    and ``last.ckpt`` from the end of the previous epoch stays the one to resume from. (Not
    Lightning's ``OnExceptionCheckpoint``: its presence makes ``fit(ckpt_path=None)`` resume
    from "last" implicitly.)
    """

    def __init__(self, dirpath: str) -> None:
        self.ckpt_path = os.path.join(dirpath, "interrupted.ckpt")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        if trainer.world_size > 1 and "LOCAL_RANK" not in os.environ:
            # the process that spawned the DDP processes holds the weights from before the fit:
            # the run goes on from the last epoch its processes finished
            last = os.path.join(os.path.dirname(self.ckpt_path), "last.ckpt")
            print(f"\naelab: interrupted. Resume with: {resume_command(last)}", file=sys.stderr, flush=True)
            return
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        sweep = resume_sweep_command()
        advice = (
            f"Resume the sweep (finished jobs are skipped, this one goes on from here) with: {sweep}"
            if sweep
            else f"Resume with: {resume_command(self.ckpt_path)}"
        )
        print(f"\naelab: interrupted; saved {self.ckpt_path}. {advice}", file=sys.stderr, flush=True)


def resume_sweep_command() -> str | None:
    """In a sweep (``-m``): the sweep's own command into its own directory; ``None`` otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from aelab.search import resume_command as sweep_command

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return sweep_command(Path(HydraConfig.get().sweep.dir))


def resume_command(ckpt_path: str) -> str:
    """The command that resumes this run: its own overrides, then the checkpoint, quoted so that
    neither the shell nor Hydra's grammar misreads a path holding ``=`` or ``,`` (sweep jobs)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    return " ".join([command_line(), *map(shlex.quote, overrides), f"\"ckpt_path='{ckpt_path}'\""])
