"""The one LightningModule: an encoder, a decoder, MSE, and the optimiser from config.

Constructor arguments are plain dicts/numbers (Hydra configs converted with ``_convert_="all"``),
so the hyperparameters stored in checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from aelab.backbones import IMAGE_SHAPE, IMAGE_SIZE
from aelab.errors import AelabError, ConfigError

COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune")


class NonFiniteLossError(AelabError):
    pass


class AutoEncoder(L.LightningModule):
    def __init__(
        self,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        latent_dim: int | None = None,
        scheduler: Mapping[str, Any] | None = None,
        compile: bool | str = False,
        backbone: str = "",
    ) -> None:
        super().__init__()
        if compile not in COMPILE_MODES:
            raise ConfigError(
                f"model.compile={compile!r} is not one of {', '.join(map(str, COMPILE_MODES))}"
            )
        # logger=False: the HyperparameterSummary callback logs a curated, flat set instead.
        self.save_hyperparameters(logger=False)
        self.encoder = instantiate(encoder)
        self.decoder = instantiate(decoder)
        self.example_input_array = torch.zeros(2, *IMAGE_SHAPE)
        self._reconstruct = self.reconstruct
        self.best_val_loss = math.inf
        # The step is four lines, and Lightning's automatic-optimisation closure costs ~0.3 ms per
        # step on CPU, a third of an MLP step: measured with scripts/benchmark.py.
        self.automatic_optimization = False

    @property
    def latent_size(self) -> int:
        """Numbers per image in the bottleneck (256 for the conv AE's 64x2x2 map)."""
        with torch.no_grad():
            device = next(self.parameters()).device
            return self.encode(torch.zeros(1, *IMAGE_SHAPE, device=device))[0].numel()

    @property
    def compression(self) -> float:
        return 1 - self.latent_size / IMAGE_SIZE

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return self._reconstruct(x)

    def setup(self, stage: str) -> None:
        mode = self.hparams.compile
        if mode:
            self._reconstruct = torch.compile(
                self.reconstruct, mode=None if mode is True or mode == "default" else mode
            )

    # The epoch's loss is summed on the device and logged once at epoch end: Lightning's
    # ``self.log`` costs ~0.7 ms per call on CPU, more than a whole MLP step's arithmetic.
    def on_train_epoch_start(self) -> None:
        self._train_sum = torch.zeros((), device=self.device)
        self._train_count = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(self(x), x)
        self.manual_backward(loss)
        optimizer.step()
        self._train_sum += loss.detach() * x.shape[0]
        self._train_count += x.shape[0]
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_count:
            self.log("train/loss", self._train_sum / self._train_count)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_validation_epoch_start(self) -> None:
        self._sse = torch.zeros((), device=self.device, dtype=torch.float64)
        self._count = 0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, _ = batch
        self._sse += F.mse_loss(self(x).float(), x, reduction="sum").double()
        self._count += x.numel()

    def on_validation_epoch_end(self) -> None:
        if self._count == 0:
            return
        val_loss = (self._sse / self._count).float()
        if self.trainer.sanity_checking:
            return
        train_sum = getattr(self, "_train_sum", None)
        values = torch.stack([val_loss, train_sum if train_sum is not None else val_loss])
        if not torch.isfinite(values).all():
            raise NonFiniteLossError(self._non_finite_message(float(values[1]), float(values[0])))
        self.best_val_loss = min(self.best_val_loss, float(val_loss))
        self.log("val/loss", val_loss)
        self.log("val/loss_best", self.best_val_loss)
        # TensorBoard's HPARAMS tab reads the newest value of this scalar.
        self.log("hp_metric", self.best_val_loss)

    def _non_finite_message(self, train_sum: float, val_loss: float) -> str:
        callback = self.trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"
        lr = self.hparams.optimizer.get("lr")
        return (
            f"the loss became non-finite in epoch {self.current_epoch} (train {train_sum}, val "
            f"{val_loss}); training stopped and {kept}. Lower model.optimizer.lr (now {lr})"
        )

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", (self._sse / max(self._count, 1)).float())

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optimizer)(self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_val_loss"] = float(self.best_val_loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_val_loss = float(checkpoint.get("best_val_loss", math.inf))
