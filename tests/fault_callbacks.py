"""Callbacks that inject real faults at a chosen step, for the tests of what survives them."""

import contextlib
import os
import signal

import lightning as L
import torch

from aelab.models.objectives import Objective
from aelab.registry import register


class KillAt(L.Callback):
    """SIGKILLs its own process: a real ``kill -9`` at a known point."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAt(L.Callback):
    """Writes NaN into the first weight at the start of ``epoch``, as a diverging run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class SignalAt(L.Callback):
    """Sends its own process a signal at a known training batch: a real SIGTERM mid-epoch. With
    ``once`` (a file path) it fires only if that file does not exist yet, and creates it, so that
    the command it interrupted can be run again verbatim."""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGTERM, once: str | None = None) -> None:
        self.epoch = epoch
        self.batch = batch
        self.signum = signum
        self.once = once

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            if self.once is not None:
                if os.path.exists(self.once):
                    return
                open(self.once, "w").close()
            os.kill(os.getpid(), self.signum)


class KillWhileSaving(L.Callback):
    """SIGKILLs its own process in the middle of the first checkpoint write of ``epoch``: the bytes
    are in the temporary file, half of them on disk, nothing renamed yet."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        from aelab.files import TEMPORARY_SUFFIX

        real_fsync = os.fsync

        def dying_fsync(fd: int) -> None:
            name = os.readlink(f"/proc/self/fd/{fd}")
            if ".ckpt." in name and name.endswith(TEMPORARY_SUFFIX):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)

        os.fsync = dying_fsync


class CountBackwards(L.Callback):
    """Needs a hook once per backward: a CUDA graph, which replays many, would skip it."""

    calls = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        CountBackwards.calls += 1


class CountValidationBatches(L.Callback):
    """Needs a hook once per validation batch: the fast path, which validates a chunk of them per
    call, would call it once per chunk."""

    calls = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        CountValidationBatches.calls += 1


@register
class CtrlCInLoss(Objective):
    """The plain objective, pressing Ctrl-C (SIGINT to its own process) in the loss of training
    batch ``batch`` (counted from 1 over the run): inside a training_step call, where no callback
    hook runs on the fast path. With ``once`` as SignalAt."""

    def __init__(self, batch: int, once: str) -> None:
        self.batch = batch
        self.once = once
        self.seen = 0

    def loss_terms(self, model, x):
        if model.training:
            self.seen += 1
            if self.seen == self.batch and not os.path.exists(self.once):
                open(self.once, "w").close()
                os.kill(os.getpid(), signal.SIGINT)
        return super().loss_terms(model, x)


class GradientNorms(L.Callback):
    """Records, after each training batch, the gradients the optimiser stepped with (after any
    clipping): their total 2-norm and their largest absolute entry."""

    norms: list[float] = []
    largest: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        GradientNorms.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        GradientNorms.largest.append(max(float(g.abs().max()) for g in grads))


class FillDiskAfterFit(L.Callback):
    """Once the fit has ended (every checkpoint saved), writes what it measured to ``record``, then
    fills the disk that holds ``filler`` to its last byte: a disk that fills up just as the run
    writes its summary."""

    def __init__(self, filler: str, record: str) -> None:
        self.filler = filler
        self.record = record

    def teardown(self, trainer, pl_module, stage: str) -> None:
        import json

        measured = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        with open(self.record, "w") as out:
            json.dump(measured, out)
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            for size in (1 << 20, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)


class MetricsSeen(L.Callback):
    """Records what a callback finds in ``trainer.callback_metrics`` when each epoch ends."""

    seen: list[tuple[str, int, float | None]] = []

    def _record(self, trainer, name: str) -> None:
        value = trainer.callback_metrics.get(name)
        MetricsSeen.seen.append((name, trainer.current_epoch, None if value is None else float(value)))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer, "val/mse")
        self._record(trainer, "val/psnr")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer, "train/mse")
