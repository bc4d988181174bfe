"""``analyze(cfg)``: encode a trained run's data and measure how good its latent space is.

Writes ``analysis/`` (figures, ``analysis.json``) into the run directory, and the same figures,
the numbers as a table and a projector embedding into the run's TensorBoard folder.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from aelab import runs
from aelab.config import device_of, validate
from aelab.data import normalize, normalized_rows
from aelab.errors import ConfigError
from aelab.files import write_json
from aelab.models.inference import decode_random_codes, encode_images
from aelab.names import (
    ANOMALY_AUROC,
    FIGURES,
    KNN_ACCURACY,
    LINEAR_PROBE_ACCURACY,
    NORMAL_CLASSES,
    TEST_MSE,
    TEST_MSE_PER_CLASS,
    TEST_PCA_MSE,
    TRUSTWORTHINESS,
)
from aelab.quiet import quiet_known_warnings
from aelab.report import metrics as analysis
from aelab.report import plots, projector
from aelab.report.tables import key_values, write_table

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = [
    "job",
    "data",
    "backbone",
    "objective",
    "latent_size",
    TEST_MSE,
    TEST_PCA_MSE,
    KNN_ACCURACY,
    LINEAR_PROBE_ACCURACY,
    *(f"latent/{method}_{score}" for method in ("kmeans", "umap_gmm") for score in ("acc", "nmi", "ari")),
    TRUSTWORTHINESS,
    ANOMALY_AUROC,
]


# Progress within a stage comes only on a terminal, asked when the stage runs (analyze may be
# called from Python with its streams redirected since import); a log file gets the stage lines
# alone. The bar is drawn on stderr, t-SNE and UMAP print their reports on stdout.


def bar(steps: range, desc: str) -> Iterable[int]:
    """``steps`` with a bar that redraws in place on a terminal, and is cleared when done."""
    from tqdm import tqdm

    return tqdm(steps, desc=desc, leave=False, disable=not sys.stderr.isatty())


@contextmanager
def stage(name: str):
    """Logs a stage's start and its duration: the progress report for slow steps."""
    log.info("%s ...", name)
    start = time.perf_counter()
    yield
    log.info("%s done in %.1f s", name, time.perf_counter() - start)


def analyze(cfg: DictConfig) -> dict[str, Any]:
    validate(cfg)
    quiet_known_warnings()
    if bool(cfg.ckpt_path) == bool(cfg.sweep_dir):
        raise ConfigError(
            "give exactly one of ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt (or ckpt_path=last) "
            "or sweep_dir=logs/train/multiruns/<sweep>"
        )
    if cfg.sweep_dir:
        return analyze_sweep(Path(cfg.sweep_dir), cfg)
    return analyze_checkpoint(cfg)


def analyze_checkpoint(
    cfg: DictConfig, ckpt_path: Path | None = None, results_dir: Path | None = None
) -> dict[str, Any]:
    device = device_of(cfg)
    loaded = runs.open_for(cfg, ckpt_path, results_dir=results_dir)
    model, datamodule = loaded.model, loaded.datamodule
    keep = datamodule.settings.keep_classes
    # a one-class run's latent space is measured against every class: the same data without keep_classes
    every_class = datamodule if keep is None else type(datamodule)(**{**datamodule.hparams, "keep_classes": None})
    train_images, train_labels = every_class.split("train")
    test_images, test_labels = datamodule.split("test")
    if cfg.knn_k > len(train_images):
        raise ConfigError(
            f"knn_k={cfg.knn_k} is invalid for {datamodule.name}: its training split holds {len(train_images)} "
            f"images; e.g. knn_k={min(5, len(train_images))}"
        )
    check_split_sizes(cfg, datamodule.name, len(test_images), len(datamodule.classes), model.latent_size)
    out = loaded.folder("analysis")
    train_y, test_y = train_labels.numpy(), test_labels.numpy()
    classes = datamodule.classes
    seed = int(cfg.seed)
    title = f"{model.backbone} d={model.latent_size} ({datamodule.name})"

    with stage(f"encoding {len(train_images)} train and {len(test_images)} test images on {device}"):
        train_z, _ = encode_images(model, train_images, device, loaded.batch_size)
        test_z, test_errors = encode_images(model, test_images, device, loaded.batch_size)
    runs.require_finite(loaded.path, f"{TEST_MSE} {float(test_errors.mean())}", train_z, test_z, test_errors)

    result: dict[str, Any] = {
        "checkpoint": str(loaded.path),
        "dataset": datamodule.dataset,
        "data": datamodule.name,
        "data_dir": str(datamodule.source),
        "backbone": model.backbone,
        "objective": model.objective.label,
        "latent_size": int(test_z.shape[1]),
        "n_train": len(train_z),
        "n_test": len(test_z),
        TEST_MSE: float(test_errors.mean()),
    }
    with stage("PCA baseline"):
        result[TEST_PCA_MSE] = analysis.pca_reconstruction_mse(
            normalized_rows(train_images), normalized_rows(test_images), [result["latent_size"]]
        )[result["latent_size"]]
    with stage(f"kNN (k={cfg.knn_k}) and linear probe"):
        chunks = functools.partial(bar, desc=f"kNN: chunks of {analysis.KNN_CHUNK} test latents")
        result[KNN_ACCURACY] = analysis.knn_accuracy(train_z, train_y, test_z, test_y, k=cfg.knn_k, progress=chunks)
        result[LINEAR_PROBE_ACCURACY] = analysis.linear_probe_accuracy(train_z, train_y, test_z, test_y, seed)
    clusterings = [("kmeans", "k-means clustering", analysis.kmeans_clusters)]
    if cfg.umap_gmm:
        clusterings.append(("umap_gmm", "UMAP + Gaussian mixture clustering (N2D)", analysis.umap_gmm_clusters))
    for method, name, clusters in clusterings:
        with stage(f"{name} of test latents"):
            scores = analysis.clustering_scores(test_y, clusters(test_z, len(classes), seed))
        result.update({f"latent/{method}_{score}": value for score, value in scores.items()})

    figures = {}
    methods = analysis.MAP_METHODS if cfg.map == "all" else (str(cfg.map),)
    if test_z.shape[1] <= 2:
        methods = ("latent",)  # a 2-D latent space is its own map
    for method in methods:
        with stage(f"2-D map: {method} of {len(test_z)} x {test_z.shape[1]} latents"):
            # embed_2d returns latents of d <= 2 as they are, whatever the method
            embedded_by = "pca" if method == "latent" else method
            points = analysis.embed_2d(test_z, embedded_by, seed, verbose=sys.stdout.isatty())
        if method != "latent":
            sample = np.random.default_rng(seed).permutation(len(test_z))[: cfg.trustworthiness_points]
            result[f"{TRUSTWORTHINESS}_{method}"] = analysis.trustworthiness(test_z[sample], points[sample])
        figures[f"map_{method}"] = plots.latent_map(points, test_y, classes, f"{method} map of test latents, {title}")

    result[TEST_MSE_PER_CLASS] = analysis.per_class_mean(test_errors, test_y, classes)
    figures["per_class_errors"] = plots.per_class_errors(
        test_errors, test_y, classes, f"reconstruction error by class, {title}"
    )
    if keep:
        result[NORMAL_CLASSES] = [classes[c] for c in keep]
        result[ANOMALY_AUROC] = analysis.anomaly_auroc(test_errors, test_y, keep)
    figures["interpolation"], figures["random_codes"] = generation_figures(
        model, test_images, test_y, classes, train_z, device, seed, title
    )

    write_json(out / "analysis.json", result)
    for name, fig in figures.items():
        plots.FigureFiles.of(cfg).save(fig, out / name)
    with stage("TensorBoard: figures, scalars and projector"):
        rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in numbers(result).items())
        table = f"| measure | value |\n| --- | --- |\n{rows}"
        columns = {"class": [classes[int(y)] for y in test_y]}
        embedding = ("test_latents", f"test latents, {title}", test_z, test_images, columns)
        write_tensorboard(loaded.events, figures, embedding, ("analysis/numbers", table))
    print(key_values(f"analysis of {loaded.path} ({title}):", numbers(result)))
    print(f"written to {out}")
    return result


@torch.no_grad()
def generation_figures(model, test_images, test_y, classes, train_z, device, seed, title):
    """A latent interpolation between two test images of different classes; random codes decoded:
    two rows drawn from N(0, I) (a VAE's prior), two from the Gaussian fitted to the training
    latents (the best an autoencoder without a prior can be sampled)."""
    first = int(np.flatnonzero(test_y != test_y[0])[0])
    ends = normalize(test_images[[0, first]].to(device))
    z_shape = model.latent_shape
    z = model.encode(ends).flatten(1)
    weights = torch.linspace(0, 1, 10, device=device)[:, None]
    path = (1 - weights) * z[0] + weights * z[1]
    strip = model.decode(path.view(-1, *z_shape)).cpu().numpy()
    interpolation = plots.image_rows(
        [ends.cpu().numpy(), strip],
        ["ends", "decoded"],
        f"interpolation {classes[int(test_y[0])]} -> {classes[int(test_y[first])]}, {title}",
    )
    prior = decode_random_codes(model, 16, seed, device)
    mean, cov = analysis.fit_gaussian(train_z)
    samples = np.random.default_rng(seed).multivariate_normal(mean, cov, size=16).astype(np.float32)
    fitted = model.decode(torch.from_numpy(samples).to(device).view(-1, *z_shape)).cpu().numpy()
    grid = plots.image_rows(
        [prior[:8], prior[8:], fitted[:8], fitted[8:]],
        ["N(0, I)", "", "fitted\nGaussian", ""],
        f"random codes decoded, {title}",
    )
    return interpolation, grid


def numbers(result: dict[str, Any]) -> dict[str, float]:
    """The scalar results: each key is also its TensorBoard tag and its sweep-table column."""
    return {k: v for k, v in result.items() if isinstance(v, float)}


def write_tensorboard(log_dir: Path, figures: dict[str, Any], embedding: tuple, text: tuple[str, str] | None = None):
    """Into a run's TensorBoard folder: the figures (IMAGES), ``text`` as (tag, markdown) (TEXT:
    one-point charts would open before the run's loss curves) and ``embedding``, (tag, name, codes
    (N, D), images, metadata columns), in the PROJECTOR, named rather than Torch's ``<tag>:<step>``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        if text is not None:
            writer.add_text(*text)
        for name, fig in figures.items():
            writer.add_figure(f"{FIGURES}/{name}", fig)
    tag, name, codes, images, columns = embedding
    projector.add_embedding(log_dir, tag, name, torch.from_numpy(codes), images, columns)


def check_split_sizes(cfg: DictConfig, data: str, n_test: int, n_classes: int, latent_size: int) -> None:
    """Measures of the test latents that need more of them than a small split holds, refused before
    any work with the smallest split each is defined for (the libraries' own errors are tracebacks)."""
    needs = [(f"k-means into its {n_classes} classes", analysis.fewest_clustered_points(n_classes, "kmeans"), "")]
    if cfg.umap_gmm:
        fewest = analysis.fewest_clustered_points(n_classes, "umap_gmm")
        needs.append((f"umap_gmm=true (UMAP to {n_classes}-D)", fewest, "; or leave it out: umap_gmm=false"))
    if latent_size > 2:  # maps of latents of more than 2 numbers are scored by trustworthiness
        fewest = analysis.FEWEST_TRUSTWORTHINESS_POINTS
        needs.append((f"the 2-D maps' trustworthiness ({analysis.TRUSTWORTHINESS_NEIGHBOURS} neighbours)", fewest, ""))
    for what, fewest, way_out in needs:
        if n_test < fewest:
            raise ConfigError(
                f"{data}'s test split holds {n_test} images, and {what} needs at least {fewest}: "
                f"analyze a run of data with a larger test split{way_out}"
            )


def analyze_sweep(sweep_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    jobs = [(job, runs.best_checkpoint(job)) for job in runs.job_dirs(sweep_dir)]
    jobs = [(job, ckpt) for job, ckpt in jobs if ckpt is not None]
    if not jobs:
        raise ConfigError(f"sweep_dir={sweep_dir} holds no sweep jobs with checkpoints")
    # each job's analysis in its own folder, or in <results_dir>/<job> with the summary beside them
    out = Path(str(cfg.results_dir)) if cfg.get("results_dir") else sweep_dir
    rows = []
    for i, (job, ckpt) in enumerate(jobs, 1):
        log.info("job %d of %d: %s", i, len(jobs), job.name)
        result = analyze_checkpoint(cfg, ckpt, out / job.name if out != sweep_dir else None)
        trust = [v for k, v in result.items() if k.startswith(TRUSTWORTHINESS)]
        described = {key: result[key] for key in ("dataset", "data", "backbone", "objective", "latent_size")}
        rows.append({**numbers(result), "job": job.name, **described, TRUSTWORTHINESS: trust[0] if trust else None})
    rows.sort(key=lambda r: (r["backbone"], r["objective"], r["latent_size"]))
    write_table(
        rows,
        SUMMARY_COLUMNS,
        out / "analysis_summary",
        f"# Latent-space analysis of {sweep_dir.name}\n\nkNN: k={cfg.knn_k}, train latents -> test "
        "latents. Clustering of test latents into as many clusters as classes, scored against the "
        "classes (ACC with Hungarian matching). Trustworthiness of the first 2-D map.",
    )
    if len({row["latent_size"] for row in rows}) > 1:  # one size would be one point per line
        plots.FigureFiles.of(cfg).save(plots.metrics_vs_latent_size(rows), out / "analysis_vs_latent_size")
    return {"jobs": rows}
