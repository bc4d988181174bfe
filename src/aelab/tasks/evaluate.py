"""``evaluate(cfg)``: a checkpoint's reconstruction error on the official test split, through the
real Trainer, overall and per class; written next to the checkpoint as ``eval.json``."""

from __future__ import annotations

from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from aelab import runs
from aelab.config import device_of, validate
from aelab.files import write_json
from aelab.launch import cluster_plugins
from aelab.models.inference import as_model_input, encode_images
from aelab.names import FIGURES, TEST_MSE, TEST_MSE_PER_CLASS
from aelab.quiet import quiet_known_warnings
from aelab.report.metrics import per_class_mean
from aelab.report.plots import image_grid, save_image_grid

EVAL_FILE = "eval.json"
EVAL_GRID_FILE = "eval_reconstructions.png"
EVAL_GRID_IMAGES = 16


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    quiet_known_warnings()
    loaded = runs.open_for(cfg, device="cpu")  # the Trainer moves it
    model, datamodule = loaded.model, loaded.datamodule
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=cluster_plugins(cfg.trainer.get("strategy")),
    )
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    runs.require_finite(loaded.path, f"{TEST_MSE} {metrics[TEST_MSE]}", metrics[TEST_MSE])
    images, labels = datamodule.split("test")
    device = device_of(cfg)
    # under the Trainer's precision (bf16 autocast with trainer=cpu), so the classes average to test/mse
    with trainer.precision_plugin.forward_context():
        _, errors = encode_images(model.to(device), images, device, datamodule.settings.batch_size)
    result = {
        "checkpoint": str(loaded.path),
        "dataset": datamodule.dataset,
        "data": datamodule.name,
        "data_dir": str(datamodule.source),
        "n_test": len(images),
        TEST_MSE: float(metrics[TEST_MSE]),
        TEST_MSE_PER_CLASS: per_class_mean(errors, labels.numpy(), datamodule.classes),
    }
    out = loaded.results / EVAL_FILE
    write_json(out, result)
    # the first test images over their reconstructions, as the training run's grids show val images
    shown = as_model_input(images[:EVAL_GRID_IMAGES], model.image_shape)
    grid = torch.cat([shown, loaded.reconstruct(shown)])
    save_image_grid(grid, loaded.results / EVAL_GRID_FILE, nrow=len(shown))
    write_tensorboard(loaded, result, image_grid(grid, nrow=len(shown)))
    worst = max(result[TEST_MSE_PER_CLASS].items(), key=lambda item: item[1])
    print(
        f"{TEST_MSE} {result[TEST_MSE]:.5f} on {result['n_test']} test images of {result['data']} "
        f"(hardest class: {worst[0]}, {worst[1]:.5f}); written to {out}"
    )
    return result


def write_tensorboard(loaded, result: dict[str, Any], grid: torch.Tensor) -> None:
    """Into the run's own TensorBoard folder, at its last epoch: the test MSE overall and by class
    as a table (TEXT; a one-point chart would open ahead of the loss curves) and the
    reconstruction grid (IMAGES)."""
    from torch.utils.tensorboard import SummaryWriter

    epochs = int(loaded.checkpoint.get("epoch", 0)) + 1
    rows = [("all", result[TEST_MSE]), *result[TEST_MSE_PER_CLASS].items()]
    table = "\n".join(f"| {name} | {value:.5f} |" for name, value in rows)
    with SummaryWriter(str(loaded.events)) as writer:
        writer.add_text(TEST_MSE, f"| class | {TEST_MSE} |\n| --- | --- |\n{table}", epochs)
        writer.add_image(f"{FIGURES}/test_reconstructions", grid, epochs)
