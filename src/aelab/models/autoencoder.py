"""The LightningModule: an encoder, a decoder and an objective, trained the way Lightning's
documentation teaches: automatic optimisation, a ``training_step`` that returns the loss, epoch
means through ``self.log`` of metric objects, ``configure_optimizers``. Every Trainer feature
(gradient clipping, accumulation, precision plugins, a callback's per-step hooks) works because
nothing here goes around the Trainer.

Constructor arguments are plain dicts/numbers (the model configs set ``_convert_: all``), so the
hyperparameters stored in checkpoints load with ``torch.load(weights_only=True)``, and the parts
are built through ``aelab.registry`` so that a stored config can never name arbitrary code.

The objective (``model.objective``: plain, denoising, sparse, variational) is a part built like
the backbones, from ``aelab.models.objectives``. Where a run allows it, ``aelab.fast`` trains this
same module faster; nothing here knows about it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, cast

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from aelab.constraints import PositiveInt
from aelab.errors import ObjectiveError
from aelab.models.backbones import ImageShape, backbone_label
from aelab.models.metrics import EpochMean, watched_metrics
from aelab.models.objectives import LossTerms, Objective, objective_spec
from aelab.names import (
    EPOCH_SUMS_KEY,
    LOSS,
    VAL_MSE,
    VAL_MSE_BEST,
    metric,
)
from aelab.quiet import no_gpu_probe_per_step, quiet_known_warnings
from aelab.registry import build, qualified_name, register

log = logging.getLogger(__name__)


@register
class AutoEncoder(L.LightningModule):
    """``latent_dim`` is the knob the backbone configs interpolate (``${model.latent_dim}``); it is
    kept for the record and for sweeps. ``latent_size`` is what the encoder really outputs.

    ``image_shape``, (channels, height, width), comes from the data, as in Lightning's
    ``Model(width=datamodule.width)``: the train task passes the datamodule's, a checkpoint keeps
    it among the hyperparameters, and the encoder and decoder are built with it.
    """

    def __init__(
        self,
        image_shape: Sequence[PositiveInt],
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        latent_dim: int | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: Literal[False, True, "default", "reduce-overhead", "max-autotune"] = False,
        objective: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        image_shape = list(image_shape)  # a plain list in the checkpoint, as build takes it back
        # logger=False: the HyperparameterSummary callback logs a curated, flat set instead.
        self.save_hyperparameters(logger=False)
        self.image_shape: ImageShape = tuple(image_shape)  # type: ignore[assignment]  # three, by the caller
        self.objective: Objective = build(objective_spec(objective), "model.objective")
        self.encoder = build({**self.objective.encoder_spec(encoder), "image_shape": image_shape}, "model.encoder")
        self.decoder = build({**decoder, "image_shape": image_shape}, "model.decoder")
        self.example_input_array = torch.zeros(2, *self.image_shape)
        # the encoder's and decoder's forward, compiled in setup when model.compile asks
        self._run_encoder = self.encoder.__call__
        self._run_decoder = self.decoder.__call__
        with self.probe() as images:
            terms = list(self.loss_terms(images).terms)
        # the optimised sum is logged as <split>/loss where there is more than one term to add
        self.terms = (*terms, LOSS) if len(terms) > 1 else tuple(terms)
        # each split's epoch means of the terms, and val's and test's metrics only watched
        # (aelab.models.metrics), by logged name: train/mse, val/psnr (a key cannot be a split: Module.train)
        self.means = nn.ModuleDict(
            {metric(s, term): EpochMean() for s in ("train", "val", "test") for term in self.terms}
        )
        self.watched = nn.ModuleDict({metric(s, n): m for s in ("val", "test") for n, m in watched_metrics().items()})
        latent_size, image_size = self.latent_size, math.prod(self.image_shape)  # latent_size probes the model
        if latent_size >= image_size:
            log.warning(
                "the code holds %d numbers and an image %d: the model can copy images instead of compressing them "
                "(a larger data.size, or a smaller model.latent_dim, makes it an autoencoder)",
                latent_size,
                image_size,
            )
        self.best_val_mse = math.inf
        # the splits whose metric objects were handed to self.log this epoch (log_metric_objects)
        self._logged_splits: set[str] = set()

    @property
    def settings(self) -> Any:
        """``hparams``, read as attributes (Lightning types ``hparams`` as a plain mapping)."""
        return self.hparams

    @property
    def backbone(self) -> str:
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
                yield torch.zeros(2, *self.image_shape, device=device)
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
        return 1 - self.latent_size / math.prod(self.image_shape)

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

    def loss_terms(self, x: Tensor) -> LossTerms:
        """The objective's named batch means (their sum is optimised) and the reconstructions
        they measured. Train, val and test share it.

        ``mse`` must be among the terms: it is the reconstruction error every run reports.
        """
        measured = self.objective.loss_terms(self, x)
        if not isinstance(measured, LossTerms):
            raise ObjectiveError(
                f"{qualified_name(type(self.objective))}.loss_terms returned a {type(measured).__name__}; "
                "return LossTerms(terms, reconstructions) (aelab.models.objectives): the named loss terms and "
                "the reconstructions they measured"
            )
        return measured

    def epoch_means(self, split: str) -> dict[str, EpochMean]:
        return {term: cast(EpochMean, self.means[metric(split, term)]) for term in self.terms}

    def watched_in(self, split: str) -> dict[str, Metric]:
        """The split's watched metrics, by logged name."""
        return {name: cast(Metric, watched) for name, watched in self.watched.items() if name.startswith(f"{split}/")}

    def logged_metrics(self) -> list[str]:
        """The per-epoch metrics a checkpoint callback may monitor."""
        logged = [metric(split, term) for split in ("val", "train") for term in self.terms]
        return [*logged, *self.watched_in("val"), VAL_MSE_BEST]

    def setup(self, stage: str) -> None:
        # here, so that a DDP process spawned for the fit sets them too: it starts without the
        # parent's warning filters and matmul precision, and imports Lightning again
        quiet_known_warnings()
        no_gpu_probe_per_step()
        if self.trainer.strategy.root_device.type == "cuda":
            # TF32 matmuls: ample for MSE on 8-bit images, several times faster on Ampere and later
            torch.set_float32_matmul_precision("high")
        mode = self.settings.compile
        if mode:
            mode = None if mode is True or mode == "default" else mode
            self._run_encoder = torch.compile(self.encoder.forward, mode=mode)
            self._run_decoder = torch.compile(self.decoder.forward, mode=mode)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, _ = batch
        terms = self.loss_terms(x).terms
        loss = functools.reduce(operator.add, terms.values())
        return {"loss": loss, **terms}

    def on_train_batch_end(self, outputs: Any, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # here, once the optimiser has stepped, so that an interrupted step counts in no mean
        self.add_to_epoch_means("train", outputs, len(batch[0]))

    def add_to_epoch_means(self, split: str, terms: Mapping[str, Tensor], count: int) -> None:
        """Add a batch's terms (means over its ``count`` images) to the split's epoch means, which
        Lightning logs when the epoch ends."""
        if LOSS in self.epoch_means(split):
            # the loss training_step returned, before Lightning divided it for accumulate_grad_batches
            optimised = [terms[term] for term in self.terms if term != LOSS]
            terms = {**terms, LOSS: functools.reduce(operator.add, optimised)}
        for term, mean in self.epoch_means(split).items():
            mean.update(terms[term].detach().double() * count, count)
        self.log_metric_objects(split)

    def log_metric_objects(self, split: str) -> None:
        """Hand the split's metric objects to ``self.log`` at the epoch's first batch; Lightning
        keeps them and computes (across processes) and resets them when the epoch ends.

        Once per epoch rather than once per batch: a ``self.log`` costs about 0.8 ms on the CPU, and
        80 of them were a sixth of the MLP's validation epoch (docs/benchmarks.md). At the first
        batch rather than in an ``on_*_epoch_end`` hook, where callbacks' hooks run first and would
        find last epoch's values in ``trainer.callback_metrics``.
        """
        if split in self._logged_splits:
            return
        for term, mean in self.epoch_means(split).items():
            self.log(metric(split, term), mean, on_step=False, on_epoch=True, prog_bar=split == "val" and term == "mse")
        for name, watched in self.watched_in(split).items():
            self.log(name, watched, on_step=False, on_epoch=True)
        self._logged_splits.add(split)

    def on_train_epoch_start(self) -> None:
        # (a restore into the middle of an epoch skips this hook, and keeps the sums it restored)
        self._reset("train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _evaluate(self, split: str, batch: tuple[Tensor, Tensor]) -> None:
        x, _ = batch
        terms, reconstructions = self.loss_terms(x)
        for watched in self.watched_in(split).values():
            watched.update(reconstructions.float(), x)
        self.add_to_epoch_means(split, terms, len(x))

    def on_validation_epoch_start(self) -> None:
        # the sanity check's batches are no epoch's
        self._reset("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def _reset(self, split: str) -> None:
        """Empty the split's metric objects, to be handed to ``self.log`` again at its first batch."""
        for metric_object in [*self.epoch_means(split).values(), *self.watched_in(split).values()]:
            metric_object.reset()
        self._logged_splits.discard(split)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.epoch_means("val")["mse"].count:
            return
        self.best_val_mse = min(self.best_val_mse, float(self.epoch_means("val")["mse"].compute()))
        self.log(VAL_MSE_BEST, self.best_val_mse)

    def configure_optimizers(self):
        optimizer = build(self.settings.optimizer, "model.optimizer")(self.parameters())
        if not self.settings.scheduler:
            return optimizer
        scheduler = build(self.settings.scheduler, "model.scheduler")(optimizer)
        schedule = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            schedule["monitor"] = VAL_MSE  # it steps on the epoch's val/mse, after validation
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[VAL_MSE_BEST] = float(self.best_val_mse)
        # A mid-epoch save (an interrupt) keeps the epoch's sums so far: a restore into the middle
        # of an epoch skips on_train_epoch_start, and the epoch's train/mse stays exact.
        means = self.epoch_means("train")
        checkpoint[EPOCH_SUMS_KEY] = {
            "sums": {term: float(mean.total) for term, mean in means.items()},
            "count": int(means["mse"].count),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_mse = float(checkpoint.get(VAL_MSE_BEST, math.inf))
        state = checkpoint.get(EPOCH_SUMS_KEY) or {"sums": {}, "count": 0}
        for term, mean in self.epoch_means("train").items():
            mean.reset()
            if term in state["sums"]:
                mean.update(torch.tensor(state["sums"][term], dtype=torch.float64), int(state["count"]))
