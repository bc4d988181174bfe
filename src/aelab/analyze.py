"""``analyze(cfg)``: encode a trained run's data and measure how good its latent space is.

Writes ``analysis/`` (figures, ``analysis.json``) into the run directory, and the same figures,
the numbers as scalars and a projector embedding into the run's TensorBoard folder.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aelab import analysis
from aelab.errors import ConfigError

log = logging.getLogger(__name__)

MAPS = ("tsne", "umap", "pca", "all")
SUMMARY_COLUMNS = [
    "overrides", "backbone", "latent_size", "test_mse", "pca_test_mse", "knn_accuracy",
    "linear_probe_accuracy", "kmeans_acc", "kmeans_nmi", "kmeans_ari", "umap_gmm_acc", "umap_gmm_nmi",
    "umap_gmm_ari", "trustworthiness", "anomaly_auroc",
]


@contextmanager
def stage(name: str):
    """Logs a stage's start and its duration: the progress report for slow steps."""
    log.info("%s ...", name)
    start = time.perf_counter()
    yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def analyze(cfg: DictConfig) -> dict[str, Any]:
    if str(cfg.map) not in MAPS:
        raise ConfigError(f"map={cfg.map} is not one of {', '.join(MAPS)}")
    if bool(cfg.ckpt_path) == bool(cfg.run_dir):
        raise ConfigError(
            "give exactly one of ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt "
            "or run_dir=logs/train/multiruns/<sweep>"
        )
    if cfg.run_dir:
        return analyze_sweep(Path(cfg.run_dir), cfg)
    return analyze_checkpoint(Path(cfg.ckpt_path), cfg)


def device_for(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"accelerator={accelerator} needs a CUDA GPU, and torch finds none; use accelerator=cpu")
        return torch.device("cuda")
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


@torch.no_grad()
def encode(model, images: torch.Tensor, device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Latents (N, latent_size) and per-image reconstruction MSE of uint8 ``images``."""
    from aelab.data import normalize

    latents, errors = [], []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device))
        z = model.encode(x)
        reconstruction = model.decode(z)
        latents.append(z.flatten(1).float().cpu())
        errors.append((reconstruction - x).pow(2).flatten(1).mean(1).float().cpu())
    return torch.cat(latents).numpy(), torch.cat(errors).numpy()


def run_dir_of(ckpt_path: Path) -> Path:
    return ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent


def analyze_checkpoint(ckpt_path: Path, cfg: DictConfig) -> dict[str, Any]:
    from aelab.checkpoints import load_run, trained_data_dir
    from aelab.data import MNISTDataModule, normalized_rows

    device = device_for(str(cfg.accelerator))
    model, checkpoint = load_run(ckpt_path, device)
    run_dir = run_dir_of(ckpt_path)
    out = run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    data_dir = trained_data_dir(checkpoint, ckpt_path, cfg.data_dir)
    datamodule = MNISTDataModule(data_dir, download=False)
    datamodule.setup()
    train_images, train_labels = datamodule.splits["train"]
    test_images, test_labels = datamodule.splits["test"]
    train_y, test_y = train_labels.numpy(), test_labels.numpy()
    seed = int(cfg.seed)
    hp = checkpoint["hyper_parameters"]
    title = f"{hp.get('backbone') or 'model'} d={model.latent_size} ({Path(str(data_dir)).name})"

    with stage(f"encoding {len(train_images)} train and {len(test_images)} test images on {device}"):
        train_z, _ = encode(model, train_images, device, cfg.batch_size)
        test_z, test_errors = encode(model, test_images, device, cfg.batch_size)

    result: dict[str, Any] = {
        "checkpoint": str(ckpt_path), "data_dir": str(data_dir), "backbone": hp.get("backbone"),
        "latent_size": int(test_z.shape[1]), "n_train": len(train_z), "n_test": len(test_z),
        "test_mse": float(test_errors.mean()),
    }
    with stage("PCA baseline"):
        result["pca_test_mse"] = analysis.pca_reconstruction_mse(
            normalized_rows(train_images), normalized_rows(test_images), [result["latent_size"]]
        )[result["latent_size"]]
    with stage(f"kNN (k={cfg.knn_k}) and linear probe"):
        result["knn_accuracy"] = analysis.knn_accuracy(train_z, train_y, test_z, test_y, k=cfg.knn_k)
        result["linear_probe_accuracy"] = analysis.linear_probe_accuracy(train_z, train_y, test_z, test_y, seed)
    with stage("k-means clustering of test latents"):
        result["kmeans"] = analysis.clustering_scores(test_y, analysis.kmeans_clusters(test_z, 10, seed))
    if cfg.umap_gmm:
        with stage("UMAP + Gaussian mixture clustering (N2D) of test latents"):
            result["umap_gmm"] = analysis.clustering_scores(test_y, analysis.umap_gmm_clusters(test_z, 10, seed))

    figures = {}
    methods = analysis.MAP_METHODS if cfg.map == "all" else (str(cfg.map),)
    if test_z.shape[1] <= 2:
        methods = ("latent",)  # a 2-D latent space is its own map
    result["trustworthiness"] = {}
    for method in methods:
        with stage(f"2-D map: {method} of {len(test_z)} x {test_z.shape[1]} latents"):
            # embed_2d returns latents of d <= 2 as they are, whatever the method
            points = analysis.embed_2d(test_z, "pca" if method == "latent" else method, seed)
        if method != "latent":
            sample = np.random.default_rng(seed).permutation(len(test_z))[: cfg.trustworthiness_points]
            result["trustworthiness"][method] = analysis.trustworthiness(test_z[sample], points[sample])
        figures[f"map_{method}"] = _plots().latent_map(points, test_y, f"{method} map of test latents, {title}")

    result["per_digit_mse"] = analysis.per_digit_mean(test_errors, test_y)
    figures["per_digit_errors"] = _plots().per_digit_errors(test_errors, test_y, f"reconstruction error by digit, {title}")
    keep = (checkpoint.get("datamodule_hyper_parameters") or {}).get("keep_digits")
    if keep:
        result["anomaly"] = {"normal_digits": list(keep),
                             "auroc": analysis.anomaly_auroc(test_errors, test_y, keep)}
    figures["interpolation"], figures["gaussian_samples"] = generation_figures(
        model, test_images, test_y, train_z, device, seed, title
    )

    (out / "analysis.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=100)
    with stage("TensorBoard: figures, scalars and projector"):
        write_tensorboard(run_dir / "tensorboard", result, figures, test_z, test_y, test_images)
    log.info("analysis of %s written to %s", ckpt_path, out)
    return result


def _plots():
    from aelab import plots

    return plots


@torch.no_grad()
def generation_figures(model, test_images, test_y, train_z, device, seed, title):
    """A latent interpolation between two test digits; a grid decoded from the fitted latent Gaussian."""
    from aelab.data import normalize

    first = int(np.flatnonzero(test_y != test_y[0])[0])
    ends = normalize(test_images[[0, first]].to(device))
    z_shape = model.encode(ends[:1]).shape[1:]
    z = model.encode(ends).flatten(1)
    weights = torch.linspace(0, 1, 10, device=device)[:, None]
    path = (1 - weights) * z[0] + weights * z[1]
    strip = model.decode(path.view(-1, *z_shape)).cpu().numpy()
    interpolation = _plots().image_rows(
        [ends.cpu().numpy(), strip], ["ends", "decoded"],
        f"interpolation {int(test_y[0])} -> {int(test_y[first])}, {title}",
    )
    mean, cov = analysis.fit_gaussian(train_z)
    samples = np.random.default_rng(seed).multivariate_normal(mean, cov, size=32).astype(np.float32)
    decoded = model.decode(torch.from_numpy(samples).to(device).view(-1, *z_shape)).cpu().numpy()
    grid = _plots().image_rows([decoded[i : i + 8] for i in range(0, 32, 8)], ["", "", "", ""],
                               f"decoded from the fitted latent Gaussian, {title}")
    return interpolation, grid


def flat_numbers(result: dict[str, Any]) -> dict[str, float]:
    numbers = {k: v for k, v in result.items() if isinstance(v, float)}
    for group in ("kmeans", "umap_gmm"):
        for k, v in (result.get(group) or {}).items():
            numbers[f"{group}_{k}"] = v
    for k, v in result.get("trustworthiness", {}).items():
        numbers[f"trustworthiness_{k}"] = v
    if "anomaly" in result:
        numbers["anomaly_auroc"] = result["anomaly"]["auroc"]
    return numbers


def write_tensorboard(log_dir: Path, result, figures, test_z, test_y, test_images) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for key, value in flat_numbers(result).items():
        writer.add_scalar(f"analysis/{key}", value)
    for name, fig in figures.items():
        writer.add_figure(f"analysis/{name}", fig)
    writer.add_embedding(
        torch.from_numpy(test_z), metadata=[str(int(y)) for y in test_y],
        label_img=test_images.unsqueeze(1).float() / 255, tag="test_latents",
    )
    writer.close()


def find_checkpoint(job_dir: Path) -> Path | None:
    best = sorted((job_dir / "checkpoints").glob("best-*.ckpt"))
    if best:
        return best[-1]
    last = job_dir / "checkpoints" / "last.ckpt"
    return last if last.exists() else None


def analyze_sweep(sweep_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    from aelab.sweep import data_name, job_dirs, write_table

    jobs = [(job, find_checkpoint(job)) for job in job_dirs(sweep_dir)]
    jobs = [(job, ckpt) for job, ckpt in jobs if ckpt is not None]
    if not jobs:
        raise ConfigError(f"run_dir={sweep_dir} holds no sweep jobs with checkpoints")
    rows = []
    for i, (job, ckpt) in enumerate(jobs, 1):
        log.info("job %d of %d: %s", i, len(jobs), job.name)
        result = analyze_checkpoint(ckpt, cfg)
        numbers = flat_numbers(result)
        trust = result["trustworthiness"]
        rows.append({
            **numbers, "overrides": job.name, "backbone": result["backbone"], "latent_size": result["latent_size"],
            "data_dir": result["data_dir"],
            "trustworthiness": next(iter(trust.values()), None),
        })
    rows.sort(key=lambda r: (r["backbone"] or "", r["latent_size"]))
    write_table(rows, SUMMARY_COLUMNS, sweep_dir / "analysis_summary",
                f"# Latent-space analysis of {sweep_dir.name}\n\nkNN: k={cfg.knn_k}, train latents -> test "
                "latents. Clustering of test latents into 10 clusters, scored against the digits (ACC with "
                "Hungarian matching). Trustworthiness of the first 2-D map.")
    _plots().metrics_vs_latent_dim(rows, data_name(rows)).savefig(sweep_dir / "analysis_vs_latent_dim.png", dpi=100)
    return {"jobs": rows}
