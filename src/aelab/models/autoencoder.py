"""The LightningModule: an encoder, a decoder, an objective of named terms, the optimiser from config.

Constructor arguments are plain dicts/numbers (the model configs set ``_convert_: all``), so the
hyperparameters stored in checkpoints load with ``torch.load(weights_only=True)``, and the parts
are built through ``aelab.registry`` so that a stored config can never name arbitrary code.

The objective (``model.objective``: plain, denoising, sparse, variational) is a part built like
the backbones, from ``aelab.models.objectives``; a subclass overriding ``loss_terms`` is the other
way in, for an objective that needs the module itself.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from aelab.data.datamodule import batches_in, is_chunk, steps_in
from aelab.errors import AelabError, ConfigError
from aelab.models import step_graph
from aelab.models.backbones import IMAGE_SHAPE, IMAGE_SIZE, backbone_label
from aelab.models.objectives import Objective, objective_spec
from aelab.names import (
    DATA_CLASS_KEY,
    EPOCH_SUMS_KEY,
    EPOCHS,
    IDENTITY_KEY,
    LOSS,
    MODEL_CLASS_KEY,
    OVERRIDES_KEY,
    VAL_MSE_BEST,
    metric,
)
from aelab.quiet import quiet_known_warnings
from aelab.registry import build, qualified_name, register

log = logging.getLogger(__name__)

COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune")


class NonFiniteLossError(AelabError):
    pass


@register
class AutoEncoder(L.LightningModule):
    """``latent_dim`` is the knob the backbone configs interpolate (``${model.latent_dim}``); it is
    kept for the record and for sweeps. ``latent_size`` is what the encoder really outputs."""

    def __init__(
        self,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        latent_dim: int | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool | str = False,
        objective: Mapping[str, Any] | None = None,
        cuda_graph: bool = True,
    ) -> None:
        super().__init__()
        if compile not in COMPILE_MODES:
            raise ConfigError(f"model.compile={compile!r} is not one of {', '.join(map(str, COMPILE_MODES))}")
        # logger=False: the HyperparameterSummary callback logs a curated, flat set instead.
        self.save_hyperparameters(logger=False)
        self.objective: Objective = build(objective_spec(objective), "model.objective")
        self.encoder = build(self.objective.encoder_spec(encoder), "model.encoder")
        self.decoder = build(decoder, "model.decoder")
        self.example_input_array = torch.zeros(2, *IMAGE_SHAPE)
        # the encoder's and decoder's forward, compiled in setup when model.compile asks
        self._run_encoder = self.encoder.__call__
        self._run_decoder = self.decoder.__call__
        self.best_val_mse = math.inf
        self._sums: dict[str, Tensor] = {}
        self._count = 0
        # the current epoch's training batches optimised so far (a resume skips them)
        self.epoch_batches_done = 0
        self._train_state: tuple[dict[str, Tensor], int] = ({}, 0)
        self._metric_names: list[str] | None = None
        # what the training run is (aelab.runs.run_identity), set by the train task, kept in checkpoints
        self.run_identity: dict[str, Any] | None = None
        # the command-line overrides the run was started with (aelab.runs.resume_overrides)
        self.run_overrides: list[str] | None = None
        self._validating = False
        # the training chunks' CUDA graphs (aelab.models.step_graph), when this fit replays them
        self._step_graphs: step_graph.StepGraphs | None = None
        # whether this fit's eager steps can skip Lightning's backward and optimiser-step wrappers
        self._plain_steps = False
        # each optimiser group's own ``capturable`` while the graph path has made them capturable
        self._eager_capturable: list[bool] | None = None
        # The step is four lines, and Lightning's automatic-optimisation closure costs ~0.3 ms per
        # step on CPU, a third of an MLP step: measured with scripts/benchmark.py.
        self.automatic_optimization = False

    @property
    def settings(self) -> Any:
        """``hparams``, read as attributes (Lightning types ``hparams`` as a plain mapping)."""
        return self.hparams

    @property
    def backbone(self) -> str:
        """A short label derived from the encoder's class: ``MLPEncoder`` -> ``mlp``."""
        return backbone_label(type(self.encoder).__name__)

    @contextlib.contextmanager
    def probe(self) -> Iterator[Tensor]:
        """Two blank images on the model's device, to pass through it in eval mode, without
        gradients and with the random state put back: a probe leaves the model (training flag,
        batch-norm statistics) and the run's random stream as they were."""
        training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            # only this device's generator: forking every GPU's would initialise CUDA for a CPU model
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                yield torch.zeros(2, *IMAGE_SHAPE, device=device)
        finally:
            self.train(training)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's code: (d,), or (64, 2, 2) for the conv AE's map."""
        with self.probe() as images:
            return tuple(self.encode(images).shape[1:])

    @property
    def latent_size(self) -> int:
        """Numbers per image in the bottleneck (256 for the conv AE's 64x2x2 map)."""
        return math.prod(self.latent_shape)

    @property
    def compression(self) -> float:
        return 1 - self.latent_size / IMAGE_SIZE

    def encoded(self, x: Tensor) -> Tensor:
        """What the encoder outputs (for a VAE: mean and log-variance side by side)."""
        return self._run_encoder(x)

    def encode(self, x: Tensor) -> Tensor:
        """The code of ``x``: deterministic, since analysis and export read it as *the* latent."""
        return self.objective.code(self.encoded(x))

    def decode(self, z: Tensor) -> Tensor:
        return self._run_decoder(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        """The objective as named batch means; their sum is optimised. Train, val and test share it.

        ``mse`` must be among them: it is the reconstruction error every run reports.
        """
        return self.objective.loss_terms(self, x)

    def logged_metrics(self) -> list[str]:
        """The per-epoch metrics a checkpoint callback may monitor: they follow the objective's terms."""
        if self._metric_names is not None:
            return self._metric_names
        # once: a compiled model would compile a graph for this probe
        with self.probe() as images:
            terms = list(self.loss_terms(images))
        if len(terms) > 1:
            terms.append(LOSS)
        self._metric_names = [metric(split, term) for split in ("val", "train") for term in terms] + [VAL_MSE_BEST]
        return self._metric_names

    def setup(self, stage: str) -> None:
        # here, so that a DDP process spawned for the fit sets them too: it starts without the
        # parent's warning filters and matmul precision
        quiet_known_warnings()
        if self._trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            # TF32 matmuls: ample for MSE on 8-bit images, several times faster on Ampere and later
            torch.set_float32_matmul_precision("high")
        mode = self.settings.compile
        if mode:
            mode = None if mode is True or mode == "default" else mode
            self._run_encoder = torch.compile(self.encoder.forward, mode=mode)
            self._run_decoder = torch.compile(self.decoder.forward, mode=mode)

    # Terms are summed on the device and logged once per epoch: Lightning's ``self.log`` costs
    # ~0.7 ms per call on CPU, more than a whole MLP step's arithmetic. Validation sums in float64,
    # so the epoch's MSE is the exact mean over images whatever the batch size.
    def _reset_sums(self) -> None:
        self._sums = {}
        self._count = 0

    def _accumulate(self, terms: dict[str, Tensor], n: int, dtype: torch.dtype) -> None:
        for name, value in terms.items():
            term = value.detach().to(dtype) * n
            self._sums[name] = self._sums[name] + term if name in self._sums else term
        self._count += n

    def _epoch_means(self) -> dict[str, Tensor]:
        """The epoch's means so far over the images of every process: under DDP the sums and
        counts are added across processes first (one collective per epoch), so the value is the
        one a single process computes over all the images."""
        sums, count = self._sums, self._count
        if self._trainer is None or self.trainer.world_size == 1:
            return {name: (total / count).float() for name, total in sums.items()}
        names = list(sums)
        local = [sums[name].double() for name in names] + [torch.tensor(float(count), device=self.device)]
        total = self.trainer.strategy.reduce(torch.stack(local).double(), reduce_op="sum")
        return {name: (total[i] / total[-1]).float() for i, name in enumerate(names)}

    def _log_means(self, split: str, means: dict[str, Tensor]) -> None:
        for name, value in means.items():
            self.log(metric(split, name), value, prog_bar=split == "val" and name == "mse")
        if len(means) > 1:
            self.log(metric(split, LOSS), torch.stack(list(means.values())).sum())

    def running_loss(self) -> float | None:
        """The mean optimised loss over the current epoch's steps so far (``None`` before the first).
        Reads the device once: the progress bar asks only when it redraws."""
        sums, count = self._train_state if self._validating else (self._sums, self._count)
        if not count:
            return None
        return float(functools.reduce(operator.add, sums.values()) / count)

    def on_train_start(self) -> None:
        # sums restored from a mid-epoch checkpoint were made before the model reached its device
        self._sums = {name: total.to(self.device) for name, total in self._sums.items()}
        self._step_graphs = self._eager_capturable = None
        wrapped = step_graph.wrapper_refusal(self)
        self._plain_steps = wrapped is None
        refusal = step_graph.refusal(self, wrapped)
        if refusal is None:
            optimizer = self.optimizers()
            assert not isinstance(optimizer, list)
            self._step_graphs = step_graph.StepGraphs(self, optimizer)
            self._eager_capturable = self._step_graphs.was_capturable
        log.info(self._training_path(refusal, wrapped, step_graph.GRAPH_DEVICES))

    def _training_path(self, refusal: str | None, wrapped: str | None, graph_devices: list[str]) -> str:
        """The one line that says how this fit's training steps run, and what keeps them from
        running faster."""
        datamodule = getattr(self.trainer, "datamodule", None)
        steps = getattr(datamodule, "train_steps_per_call", 1)
        how = "CUDA graph" if refusal is None else "eager"
        device = self.trainer.strategy.root_device
        line = f"training steps: {how} on {device}, {steps} batch{'es' if steps > 1 else ''} per training_step call"
        why = []
        if wrapped is not None:
            why.append(f"through Lightning's backward and step: {wrapped}")
        if refusal is not None and refusal != wrapped and device.type in graph_devices:
            why.append(f"no CUDA graph: {refusal}")
        elif steps == 1 and (note := getattr(datamodule, "steps_per_call_note", "")):
            why.append(note)
        return line + (f" ({'; '.join(why)})" if why else "")

    def on_train_epoch_start(self) -> None:
        self._reset_sums()
        self.epoch_batches_done = 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One optimiser step per (x, y) batch: one, or a chunk of them (``data.steps_per_call``),
        each exactly as if Lightning had called this once per batch."""
        with self._ctrl_c_after_the_call():
            self._train_on(batch)

    def _train_on(self, batch: Any) -> None:
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one
        if self._step_graphs is not None and is_chunk(batch):
            self._step_graphs.run(batch)
            self._count_batches(batch)
            return
        for x, _ in batches_in(batch):
            if self._plain_steps:
                terms = step_graph.plain_step(self, optimizer, x)
                step_graph.count_steps(optimizer, 1)
            else:
                optimizer.zero_grad(set_to_none=True)
                terms = self.loss_terms(x)
                self.manual_backward(functools.reduce(operator.add, terms.values()))
                optimizer.step()
            self._accumulate(terms, x.shape[0], torch.float32)
        self._count_batches(batch)

    @contextlib.contextmanager
    def _ctrl_c_after_the_call(self) -> Iterator[None]:
        """A Ctrl-C during a training_step call takes effect once the call is done, so the weights,
        the epoch's sums and its count of batches agree in the interrupt checkpoint, and its resume
        ends where an uninterrupted run does (a chunk is a whole epoch on a GPU)."""
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return
        pressed: list[int] = []
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if pressed:
            # the count Lightning's loop adds after a finished call, which the interrupt skips
            self.trainer.fit_loop.epoch_loop._batches_that_stepped += 1
            raise KeyboardInterrupt

    def _count_batches(self, batch: Any) -> None:
        # Lightning counts training_step calls as the step it gives loggers; a chunk's batches all
        # count, so a CSV/MLflow/W&B step is a batch whatever data.steps_per_call is
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += steps_in(batch) - 1
        self.epoch_batches_done += steps_in(batch)

    def on_train_epoch_end(self) -> None:
        # Lightning validates before this hook; that validation checked these sums are finite.
        if self._count:
            self._log_means("train", self._epoch_means())
        scheduler = self.lr_schedulers()
        if scheduler is not None and not isinstance(scheduler, list):
            scheduler.step()

    def on_train_end(self) -> None:
        # the graphs' memory pools are not needed by what follows (test, analysis, the next job)
        self._step_graphs = None
        self.trainer.callback_metrics[EPOCHS] = torch.tensor(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        # Validation runs inside the training epoch: keep the training sums for on_train_epoch_end.
        self._train_state = (self._sums, self._count)
        self._validating = True
        self._reset_sums()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self._accumulate(self.loss_terms(x), x.shape[0], torch.float64)

    def on_validation_epoch_end(self) -> None:
        val = self._epoch_means() if self._count else {}
        self._sums, self._count = self._train_state
        self._validating = False
        if not val or self.trainer.sanity_checking:
            return
        train = self._epoch_means() if self._count else {}
        if not torch.isfinite(torch.stack([*val.values(), *train.values()])).all():
            raise NonFiniteLossError(self._non_finite_message(train, val))
        self._log_means("val", val)
        self.best_val_mse = min(self.best_val_mse, float(val["mse"]))
        self.log(VAL_MSE_BEST, self.best_val_mse)

    def _non_finite_message(self, train: dict[str, Tensor], val: dict[str, Tensor]) -> str:
        callback = self.trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        lr = self.settings.optimizer.get("lr")
        shown = ", ".join(
            f"{split} {name} {float(v)}"
            for split, terms in (("train", train), ("val", val))
            for name, v in terms.items()
        )
        return (
            f"the loss became non-finite in epoch {self.current_epoch} ({shown}); training stopped "
            f"and {kept}. Lower model.optimizer.lr (now {lr})"
        )

    def on_test_epoch_start(self) -> None:
        self._reset_sums()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self._accumulate(self.loss_terms(x), x.shape[0], torch.float64)

    def on_test_epoch_end(self) -> None:
        if self._count:
            self._log_means("test", self._epoch_means())

    def configure_optimizers(self):
        optimizer = build(self.settings.optimizer, "model.optimizer")(self.parameters())
        if not self.settings.scheduler:
            return optimizer
        scheduler = build(self.settings.scheduler, "model.scheduler")(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[VAL_MSE_BEST] = float(self.best_val_mse)
        if self._eager_capturable is not None:
            # as the eager path would have saved them, so any run resumes from either path
            if "optimizer_states" in checkpoint:
                (state,) = checkpoint["optimizer_states"]
                checkpoint["optimizer_states"] = [step_graph.plain_optimizer_state(state, self._eager_capturable)]
            if "lr_schedulers" in checkpoint:
                checkpoint["lr_schedulers"] = [step_graph.plain_scheduler_state(s) for s in checkpoint["lr_schedulers"]]
        # A mid-epoch save (an interrupt) keeps the epoch's sums so far: a restore into the middle
        # of an epoch skips on_train_epoch_start, and the epoch's train/mse stays exact.
        sums, count = self._train_state if self._validating else (self._sums, self._count)
        checkpoint[EPOCH_SUMS_KEY] = {
            "sums": {k: float(v) for k, v in sums.items()},
            "count": count,
            "batches": self.epoch_batches_done,
        }
        # With Lightning's hyper_parameters, enough to rebuild model and data (aelab.runs.load_run).
        checkpoint[MODEL_CLASS_KEY] = qualified_name(type(self))
        if self.run_identity is not None:
            checkpoint[IDENTITY_KEY] = self.run_identity
        if self.run_overrides is not None:
            checkpoint[OVERRIDES_KEY] = list(self.run_overrides)
        datamodule = getattr(self._trainer, "datamodule", None)
        if datamodule is not None:
            checkpoint[DATA_CLASS_KEY] = qualified_name(type(datamodule))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_mse = float(checkpoint.get(VAL_MSE_BEST, math.inf))
        state = checkpoint.get(EPOCH_SUMS_KEY) or {"sums": {}, "count": 0}
        self._sums = {k: torch.tensor(v, device=self.device) for k, v in state["sums"].items()}
        self._count = int(state["count"])
        self.epoch_batches_done = int(state.get("batches", 0))
