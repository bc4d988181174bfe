"""Loggers beyond Lightning's defaults, and what each needs installed (``configs/logger/``).

MLflow and Weights & Biases are optional extras of the package: choosing one without its extra is
refused before anything runs, with the install command (``config.validate`` reads ``EXTRAS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger

SQLITE_PREFIX = "sqlite:///"

# a logger class -> (the module it imports, the extra of aelab that installs it)
EXTRAS = {
    "aelab.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
}


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger, whose SQLite store (``tracking_uri: sqlite:///<log root>/mlflow/
    mlflow.db``) gets its folder made first: SQLite creates the file, not the folder, and MLflow's
    plain-file store is deprecated."""

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
            Path(tracking_uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
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
