"""``evaluate(cfg)``: the test-split reconstruction MSE of a checkpoint, through the real Trainer."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from aelab.analyze import run_dir_of
from aelab.checkpoints import load_run, trained_data_dir
from aelab.config import resolve_ckpt_path
from aelab.data import MNISTDataModule
from aelab.errors import ConfigError

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.ckpt_path:
        raise ConfigError("give ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt (or ckpt_path=last)")
    ckpt_path = Path(resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.log_dir) / "train"))
    model, checkpoint = load_run(ckpt_path)
    data_dir = trained_data_dir(checkpoint, ckpt_path, cfg.data_dir)
    datamodule = MNISTDataModule(data_dir, batch_size=cfg.batch_size, download=False)
    trainer = L.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    result = {"checkpoint": str(ckpt_path), "data_dir": str(data_dir), "test_mse": float(metrics["test/loss"]),
              "n_test": len(datamodule.splits["test"][0])}
    out = run_dir_of(ckpt_path) / "eval.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"test MSE {result['test_mse']:.5f} on {result['n_test']} images of {Path(str(data_dir)).name}; "
          f"written to {out}")
    return result
