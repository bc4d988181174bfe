"""The fast path: the same ``AutoEncoder`` trained on chunks of batches per Lightning call, and on
a GPU each chunk replayed as one CUDA graph. Everything that knows about chunks, manual
optimisation, capturable optimisers, CUDA graphs, Lightning's private counters and Ctrl-C deferral
is in this package (its uses of Lightning's private counters through ``aelab.upstream``); the
model, the datamodule and the callbacks import none of it.

Why it exists: at this model size Lightning's work around each step costs more than the step. On
the CPU an MLP step's arithmetic is about 1 ms and Lightning's automatic-optimisation closure,
``self.log`` and hooks add most of that again (scripts/benchmark.py: the plain loop's (c)/(b));
paid once per chunk of 32 batches, the loop is within 10 % of bare PyTorch. On a GPU an eager
step is mostly kernel launches, and a replayed graph is the only way to the hardware's floor.

How: ``speed_up`` decides before the fit. Where the run needs something the fast path skips (a
per-step hook, clipping, accumulation, loss scaling, DDP, a Trainer that counts batches) it leaves
the run on Lightning's plain loop; otherwise it mixes ``FastSteps`` into the model's class and
``ChunkedData`` into the datamodule's. Either way one log line says which loop trains and why.
The mixed classes keep the names of the classes they extend, so checkpoints are the plain
loop's: a run resumes on either loop, but from the middle of an epoch only on the one that saved it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from aelab import upstream
from aelab.data.batches import DeviceBatchLoader
from aelab.errors import ConfigError
from aelab.fast import graphs
from aelab.fast.chunks import DONE, INDEX, LAST, Chunks, batches_in, steps_in
from aelab.names import EPOCH_SUMS_KEY
from aelab.registry import REGISTRY

log = logging.getLogger(__name__)

# the hooks Lightning calls once per optimiser step, which a chunk's steps do not call
PER_STEP_HOOKS = (
    "on_before_backward",
    "backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "optimizer_step",
    "on_before_zero_grad",
    "configure_gradient_clipping",
)
# the hooks Lightning calls once per validation batch, which see a chunk of them on the fast path;
# a progress bar's only count the calls
PER_VALIDATION_BATCH_HOOKS = ("on_validation_batch_start", "on_validation_batch_end")
# the precisions whose plugin adds nothing to a backward or an optimiser step (no loss scaling)
PLAIN_BACKWARD_PRECISIONS = ("32-true", "bf16-mixed")
# fast.steps_per_call=auto: the whole epoch on a GPU (one CUDA graph), chunks of 32 on the CPU.
# Each call costs about 1 ms of Lightning's work on the CPU: an MLP epoch of 235 batches makes 15
# calls at 16 a call, 8 at 32 (docs/benchmarks.md). Longer chunks would save a little more, but a
# Ctrl-C waits for the chunk and the bar moves once per chunk: 32 conv batches take 0.6 s here
CPU_STEPS_PER_CALL = 32
STEPS_PER_CALL_WORDS = ("auto", "epoch")


def speed_up(
    settings: Any, model: Any, datamodule: Any, trainer: L.Trainer, resumed: dict[str, Any] | None = None
) -> None:
    """Put the run on the fast path if it allows it (``settings``: the ``fast`` config node;
    ``resumed``: the checkpoint the fit resumes from, if any)."""
    why_not = refusal(settings, model, datamodule, trainer)
    # Lightning counts an epoch's training_step calls, which are chunks on one loop and batches on
    # the other: a checkpoint from the middle of an epoch resumes exactly only on the loop that saved it
    saved_by = _mid_epoch_loop(resumed, datamodule) if resumed is not None else None
    if saved_by == "fast" and why_not is not None:
        raise ConfigError(
            f"the checkpoint was saved in the middle of an epoch on the fast path, the one loop that resumes it "
            f"exactly, and this run cannot take the fast path ({why_not}); resume it with the settings it was "
            "started with, or from the end of its last epoch: ckpt_path=<its run>/checkpoints/last.ckpt"
        )
    if saved_by == "plain" and why_not is None:
        why_not = "the checkpoint was saved in the middle of an epoch on this loop, the one that resumes it exactly"
    if why_not is not None:
        if settings.enabled is True:
            raise ConfigError(
                f"fast.enabled=true cannot train this run: {why_not}; use fast.enabled=auto to train it on "
                f"Lightning's plain loop"
            )
        device = trainer.strategy.root_device
        log.info("training loop: Lightning's plain loop on %s (not the fast path: %s)", device, why_not)
        return
    # The classes are extended in place rather than the objects rebuilt: the model keeps its
    # initial weights and the random stream stays where it was.
    model.__class__ = _extended(FastSteps, model.__class__)
    model.automatic_optimization = False
    model.cuda_graph = bool(settings.cuda_graph)
    datamodule.__class__ = _extended(ChunkedData, datamodule.__class__)
    datamodule.steps_per_call = settings.steps_per_call


def _mid_epoch_loop(checkpoint: dict[str, Any], datamodule: Any) -> str | None:
    """Which loop saved ``checkpoint`` in the middle of an epoch (``fast`` or ``plain``); ``None`` for
    one saved at an epoch's end."""
    state = checkpoint.get(type(datamodule).__qualname__) or {}
    if not isinstance(state, dict) or not state.get("epoch_batches_done"):
        return None
    sums = checkpoint.get(EPOCH_SUMS_KEY) or {}
    return "fast" if isinstance(sums, dict) and "batches" in sums else "plain"


def refusal(settings: Any, model: LightningModule, datamodule: Any, trainer: Any) -> str | None:
    """Why the run trains on Lightning's plain loop, or ``None`` when the fast path serves it."""
    if settings.enabled is False:
        return "fast.enabled=false"
    if settings.steps_per_call == 1:
        return "fast.steps_per_call=1"
    if not getattr(datamodule, "resident", False):  # the datamodule's data.loader=device
        return "its training batches do not come from tensors on the device (data.loader=dataloader)"
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return f"{type(trainer.strategy).__name__} prepares each backward"
    if str(trainer.precision) not in PLAIN_BACKWARD_PRECISIONS:
        return f"trainer.precision={trainer.precision} scales the loss"
    if trainer.gradient_clip_val:
        return f"trainer.gradient_clip_val={trainer.gradient_clip_val} clips in Lightning's optimiser step"
    if trainer.accumulate_grad_batches != 1:
        return f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} accumulates in Lightning's loop"
    counting = {
        "trainer.fast_dev_run": bool(trainer.fast_dev_run),
        "trainer.overfit_batches": bool(trainer.overfit_batches),
        "trainer.limit_train_batches": _counts(trainer.limit_train_batches),
        # 0: no validation, nothing to count
        "trainer.limit_val_batches": _counts(trainer.limit_val_batches) and trainer.limit_val_batches != 0,
        "trainer.val_check_interval": _counts(trainer.val_check_interval),
        "trainer.max_steps": trainer.max_steps not in (-1, None),
    }
    for key, set_ in counting.items():
        if set_:
            return f"{key} counts batches"
    scheduler = REGISTRY.get(str((model.hparams.get("scheduler") or {}).get("_target_")))
    if isinstance(scheduler, type) and issubclass(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "model.scheduler is ReduceLROnPlateau, which Lightning's loop steps on val/mse after validation"
    for owner, parent in [(model, LightningModule), *((c, Callback) for c in trainer.callbacks)]:
        for hook in PER_STEP_HOOKS:
            if is_overridden(hook, owner, parent):
                return f"{type(owner).__name__}.{hook} runs once per step"
        for hook in PER_VALIDATION_BATCH_HOOKS:
            if not isinstance(owner, ProgressBar) and is_overridden(hook, owner, parent):
                return f"{type(owner).__name__}.{hook} runs once per validation batch"
    return None


def _counts(limit: int | float | None) -> bool:
    """Whether a Trainer's batch limit or interval is set: an int counts batches (1 is one batch),
    a float is a fraction (1.0 is all of them)."""
    return limit is not None and not (isinstance(limit, float) and limit == 1.0)


@functools.cache
def _extended(mixin: type, cls: type) -> type:
    # named as the class it extends: checkpoints name that class (aelab_model_class, Lightning's
    # datamodule state key), so they rebuild and resume without the fast path
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (mixin, cls), namespace)


class FastSteps:
    """Mixed into the model's class: ``training_step`` takes a chunk of batches and optimises on
    each in turn (manual optimisation), or replays the chunk's CUDA graph; everything else is the
    model's own."""

    cuda_graph: bool
    # the current epoch's training batches optimised so far, those a resume skipped included
    epoch_batches_done = 0
    _graphs: graphs.StepGraphs | None = None
    _ctrl_c_pressed = False

    def on_train_start(self: Any) -> None:
        super().on_train_start()  # type: ignore[misc]
        why_not = graphs.refusal(self) if self.cuda_graph else "fast.cuda_graph=false"
        self._graphs = graphs.StepGraphs(self, self.optimizers().optimizer) if why_not is None else None
        steps = self.trainer.train_dataloader.steps
        batches = f"{steps} batch{'es' if steps > 1 else ''}"
        how = "replayed as CUDA graphs" if why_not is None else f"eager (no CUDA graph: {why_not})"
        device = self.trainer.strategy.root_device
        log.info("training loop: the fast path on %s, %s per training_step call, %s", device, batches, how)

    def on_train_epoch_start(self: Any) -> None:
        super().on_train_epoch_start()  # type: ignore[misc]
        self.epoch_batches_done = 0

    def on_train_batch_start(self: Any, batch: Any, batch_idx: int) -> None:
        # A Ctrl-C pressed during the previous call takes effect here, once Lightning has counted
        # that call as done (and, after an epoch's last one, validated and saved the epoch): the
        # interrupt checkpoint's weights, epoch sums and batch counts then agree, and its resume
        # ends where an uninterrupted run does. A chunk is a whole epoch on a GPU.
        if self._ctrl_c_pressed:
            self._ctrl_c_pressed = False
            raise KeyboardInterrupt

    def training_step(self: Any, chunk: dict[str, Any], batch_idx: int) -> None:
        with _ctrl_c_deferred() as pressed:
            optimizer = self.optimizers()
            if self._graphs is not None:
                sums = self._graphs.run(chunk)
            else:
                batches = (x for x, _ in batches_in(chunk))
                sums = graphs.chunk_sum(self, optimizer.optimizer, batches, as_floats=self.device.type == "cpu")
            steps = steps_in(chunk)
            upstream.count_optimizer_steps(optimizer, steps)
            # Lightning counts this call as one batch for loggers; the chunk's others count too
            upstream.count_logged_batches(self.trainer, steps - 1)
            self.epoch_batches_done = chunk[DONE]
            # the chunk's terms are sums over its images, loss among them: added as they are
            for term, mean in self.epoch_means("train").items():
                mean.update(sums[term], len(chunk[INDEX]))
            self.log_metric_objects("train")
            if chunk[LAST]:
                # where Lightning's own loop steps epoch schedulers: after the epoch's last batch
                for config in self.trainer.lr_scheduler_configs:
                    if config.interval == "epoch":
                        config.scheduler.step()
        self._ctrl_c_pressed = bool(pressed)

    def on_train_batch_end(self: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass  # training_step added the chunk's terms to the epoch means, inside the Ctrl-C deferral

    def validation_step(self: Any, batch: Any, batch_idx: int) -> None:
        # the model's own step on each batch of a chunk, in order: the epoch's means and watched
        # metrics are the plain loop's, bit for bit; Lightning's evaluation loop is paid once per
        # chunk (docs/benchmarks.md). A loader ChunkedData does not chunk gives batches.
        for each in batches_in(batch) if isinstance(batch, dict) else [batch]:
            super().validation_step(each, batch_idx)  # type: ignore[misc]

    def on_train_end(self: Any) -> None:
        # the graphs' memory pools are not needed by what follows (test, analysis, the next job)
        self._graphs = None
        super().on_train_end()  # type: ignore[misc]

    def on_save_checkpoint(self: Any, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        # the mark of the fast path on a checkpoint (speed_up reads it on a mid-epoch resume)
        checkpoint[EPOCH_SUMS_KEY]["batches"] = self.epoch_batches_done
        # as the plain loop would have saved them, so any run resumes on either loop (Lightning
        # writes both or, in a weights-only checkpoint, neither)
        if self._graphs is not None and "optimizer_states" in checkpoint:
            (state,) = checkpoint["optimizer_states"]
            checkpoint["optimizer_states"] = [graphs.plain_optimizer_state(state, self._graphs.was_capturable)]
            checkpoint["lr_schedulers"] = [graphs.plain_scheduler_state(s) for s in checkpoint["lr_schedulers"]]


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[list[int]]:
    """Within the block a Ctrl-C is recorded in the list yielded instead of raised."""
    pressed: list[int] = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield pressed
        return
    signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class ChunkedData:
    """Mixed into the datamodule's class: the training and validation loaders give chunks of batches."""

    steps_per_call: int | str
    _batches_per_epoch = 0

    def train_dataloader(self: Any) -> Chunks:
        loader = super().train_dataloader()  # type: ignore[misc]
        self._batches_per_epoch = len(loader)
        return self._chunked(loader)

    def val_dataloader(self: Any) -> Any:
        loader = super().val_dataloader()  # type: ignore[misc]
        return self._chunked(loader) if isinstance(loader, DeviceBatchLoader) else loader

    def _chunked(self: Any, loader: Any) -> Chunks:
        wanted = self.steps_per_call
        if wanted == "auto":
            wanted = "epoch" if loader.images.device.type == "cuda" else CPU_STEPS_PER_CALL
        if wanted == "epoch":
            wanted = len(loader)
        return Chunks(loader, min(int(wanted), len(loader)))

    def train_batches_per_epoch(self: Any) -> int:
        return self._batches_per_epoch

    def epoch_batches_done(self: Any) -> int:
        return self.trainer.lightning_module.epoch_batches_done

    # Counted in batches, not chunks, so the run may resume with another fast.steps_per_call, or
    # on the plain loop. The model's count includes a chunk Lightning had not marked completed
    # when a Ctrl-C stopped the run right after it.
    def state_dict(self: Any) -> dict[str, int]:
        if self.trainer is None or self.trainer.state.fn != "fit":
            return {}
        done = self.epoch_batches_done()
        return {"epoch_batches_done": done if done < self._batches_per_epoch else 0}
