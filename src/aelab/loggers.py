"""Loggers beyond Lightning's defaults, and what each needs installed (``configs/logger/``).

MLflow and Weights & Biases are optional extras of the package: choosing one without its extra is
refused before anything runs, with the install command (``config.validate`` reads ``EXTRAS``).
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger

SQLITE_PREFIX = "sqlite:///"

# a logger class -> (the module it imports, the extra of aelab that installs it)
EXTRAS = {
    "aelab.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
}


# the folders a run directory holds besides its events (aelab.runs; csv/ and wandb/ are loggers')
RUN_FOLDERS = {"checkpoints", "analysis", "audit", "eval", "exports", "csv", "wandb"}


def events_folder(datamodule: Any) -> str:
    """The folder of a run's TensorBoard events: the data's name as one path component
    (``MNIST``, ``MNIST_mnist-10k``, ``Fashion-MNIST``). TensorBoard names a run by the path of
    that folder, so its run list reads ``multiruns/<time>/model.latent_dim=5/MNIST_mnist-10k``: the
    sweep, the job and the data, a subset told from the official split."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", datamodule.name).strip("_.") or "data"
    # own data named like a folder the run holds (a folder of images called "analysis") stays apart
    return f"{name}_data" if name in RUN_FOLDERS else name


def build_loggers(configs: Mapping[str, Any], datamodule: Any) -> list[Logger]:
    """``cfg.logger``'s loggers; a TensorBoard logger whose ``name`` is null gets ``events_folder``."""
    loggers = []
    for config in configs.values():
        if not config:
            continue
        unnamed = config.get("_target_") == f"{__name__}.TensorBoardLogger" and config.get("name", "") is None
        loggers.append(instantiate(config, **({"name": events_folder(datamodule)} if unnamed else {})))
    return loggers


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger with the epoch as every chart's x (1 = after the first
    epoch), as docs/loggers.md describes the charts, instead of the optimiser step count; Lightning's
    ``epoch`` value, which would otherwise be a chart of its own, becomes that x. The other loggers
    keep Lightning's convention (``step`` and an ``epoch`` column)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        if epoch is not None:
            metrics = {key: value for key, value in metrics.items() if key != "epoch"}
            step = int(epoch) + 1
        super().log_metrics(metrics, step)


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger over a local SQLite store (``tracking_uri: sqlite:///<log root>/
    mlflow/mlflow.db``): its folder is made first (SQLite creates the file, not the folder; MLflow's
    plain-file store is deprecated), and the store and the experiment are created by one process at
    a time, so the parallel jobs of a sweep (``hydra/launcher=joblib``) do not race to create them.

    The arguments are Lightning's, spelled out: the config schema checks ``logger.mlflow.*`` keys
    against this signature.
    """

    def __init__(
        self,
        experiment_name: str = "train",
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
    ) -> None:
        if tracking_uri is not None and tracking_uri.startswith(SQLITE_PREFIX):
            _create_store_once(tracking_uri, experiment_name, artifact_location)
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=tracking_uri,
            tags=tags,
            log_model=log_model,
            prefix=prefix,
            artifact_location=artifact_location,
            run_id=run_id,
            synchronous=synchronous,
        )


def _create_store_once(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> None:
    from mlflow.tracking import MlflowClient

    store = Path(tracking_uri.removeprefix(SQLITE_PREFIX))
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.parent / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the process creating them is done
        try:
            client = MlflowClient(tracking_uri)  # creates the tables of a new store
            if client.get_experiment_by_name(experiment_name) is None:
                client.create_experiment(experiment_name, artifact_location=artifact_location)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
