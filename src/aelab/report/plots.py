"""Figures for analysis and sweeps (matplotlib, Agg backend, imported only when drawing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aelab.files import atomic_path
from aelab.names import KMEANS_ACC, KNN_ACCURACY, TEST_MSE, UMAP_GMM_ACC, VAL_MSE_BEST, VAL_PCA_MSE

FIGURE_FORMATS = ("png", "pdf", "svg")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    # SVG text as text, not outlines: a paper's editor can restyle it, and tests can read it
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class FigureFiles:
    """How every figure file is written: ``figure_format`` (png to look at; pdf or svg, vector, for a
    paper) at ``figure_dpi`` (a PNG's pixels, and the resolution of the images inside a PDF or SVG)."""

    format: str = "png"
    dpi: int = 100

    @classmethod
    def of(cls, cfg: Any) -> FigureFiles:
        """The ``figure_format`` and ``figure_dpi`` of a task's config; checked here too, since a
        sweep's report reads them after its jobs (which report a bad value as a job failure)."""
        from aelab.errors import ConfigError

        chosen = cfg.get("figure_format", "png"), cfg.get("figure_dpi", 100)
        if chosen[0] not in FIGURE_FORMATS or isinstance(chosen[1], bool) or not isinstance(chosen[1], int):
            raise ConfigError(
                f"figure_format={chosen[0]}, figure_dpi={chosen[1]} is invalid: the format must be one of "
                f"{', '.join(FIGURE_FORMATS)} and the dpi an integer, e.g. figure_format=pdf figure_dpi=300"
            )
        return cls(*chosen)

    def save(self, figure, path: Path) -> Path:
        """``figure`` at ``path`` with this format's suffix, never seen half-written; returns that path."""
        path = Path(path).with_suffix(f".{self.format}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=self.format, dpi=self.dpi)
        return path


def latent_map(points: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str):
    """Scatter of a 2-D map coloured by class, with a legend of class names."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for index, name in enumerate(classes):
        mask = labels == index
        ax.scatter(points[mask, 0], points[mask, 1], s=3, color=cmap(index), label=name, alpha=0.7)
    ax.legend(title="class", markerscale=4, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def per_class_errors(errors: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(classes)), 4))
    ax.boxplot([errors[labels == c] for c in range(len(classes))], showfliers=False)
    ax.set_xticks(range(1, len(classes) + 1), list(classes), rotation=30 if max(map(len, classes)) > 2 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("reconstruction MSE per image")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def image_rows(rows: Sequence[np.ndarray], row_titles: Sequence[str], title: str):
    """Rows of 28x28 images in [-1, 1]."""
    plt = _pyplot()
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * 0.9, len(rows) * 1.0 + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(np.asarray(row[j]).reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(row_titles[i], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def captioned_images(sections: Sequence[tuple[str, np.ndarray, Sequence[str]]], title: str, n_cols: int = 8):
    """Sections of 28x28 images in [-1, 1], each image over its caption (e.g. ``7 -> 1``); a
    section, ``(heading, images, captions)``, starts on a new row with its heading on the left."""
    plt = _pyplot()
    layout = [
        (heading if start == 0 else "", images[start : start + n_cols], captions[start : start + n_cols])
        for heading, images, captions in sections
        for start in range(0, max(len(images), 1), n_cols)
    ]
    fig, axes = plt.subplots(len(layout), n_cols, figsize=(n_cols * 1.1, len(layout) * 1.35 + 0.5), squeeze=False)
    for row, (heading, images, captions) in zip(axes, layout, strict=True):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(images):
                ax.imshow(np.asarray(images[j]).reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
                ax.set_title(captions[j], fontsize=7)
            else:
                ax.axis("off")
        row[0].set_ylabel(heading, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def neighbour_rows(queries: np.ndarray, found: Sequence[tuple[str, np.ndarray, np.ndarray]], classes, title: str):
    """One row per query: the query, then for each ``(how, images (Q, k, ...), labels (Q, k))`` its k
    neighbours found that way, each captioned with its class, a gap between the ways."""
    plt = _pyplot()
    k = max(images.shape[1] for _, images, _ in found)
    n_cols = 1 + len(found) * (k + 1)
    fig, axes = plt.subplots(len(queries), n_cols, figsize=(n_cols * 0.8, len(queries) * 1.0 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, query in enumerate(queries):
        cells = [(axes[i, 0], query, "query" if i == 0 else "")]
        for w, (how, images, labels) in enumerate(found):
            first = 1 + w * (k + 1) + 1
            cells += [
                (
                    axes[i, first + j],
                    images[i, j],
                    f"{how}: {classes[int(labels[i, j])]}" if i == 0 and j == 0 else classes[int(labels[i, j])],
                )
                for j in range(images.shape[1])
            ]
        for ax, image, caption in cells:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(caption, fontsize=7, loc="left" if ":" in caption else "center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def decoded_sweep(images: np.ndarray, across: np.ndarray, down: np.ndarray, axes: Sequence[int], title: str):
    """A decoded sweep over two code axes, ``len(down)`` rows of ``len(across)`` 28x28 images in
    [-1, 1], with the code values each column and row was decoded from as its ticks."""
    plt = _pyplot()
    steps_x, steps_y = len(across), len(down)
    mosaic = np.asarray(images).reshape(steps_y, steps_x, 28, 28).transpose(0, 2, 1, 3).reshape(steps_y * 28, -1)
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * steps_x, 1.2 + 0.5 * steps_y))
    ax.imshow(mosaic, cmap="gray", vmin=-1, vmax=1)
    ax.set_xticks(14 + 28 * np.arange(steps_x), [f"{v:.3g}" for v in across], rotation=90, fontsize=7)
    ax.set_yticks(14 + 28 * np.arange(steps_y), [f"{v:.3g}" for v in down], fontsize=7)
    ax.set_xlabel(f"z{axes[0]}")
    ax.set_ylabel(f"z{axes[1]}")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _latent_size_axis(ax, sizes) -> None:
    sizes = sorted(set(sizes))
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(d) for d in sizes])
    ax.minorticks_off()
    ax.set_xlabel("latent size (numbers per image)")
    ax.grid(True, alpha=0.3)


def series(row: dict) -> str:
    """The line a job belongs to in the figures: its backbone, and its objective unless plain."""
    objective = row["objective"]
    return row["backbone"] if objective == "plain" else f"{row['backbone']} {objective}"


def mse_vs_latent_size(rows: list[dict], data: str):
    """Best val MSE against latent size, one line per backbone and objective, PCA of the same size dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in sorted({series(r) for r in rows}):
        points = sorted((r["latent_size"], r[VAL_MSE_BEST]) for r in rows if series(r) == name)
        ax.plot(*zip(*points, strict=True), marker="o", label=name)
    pca = sorted({(r["latent_size"], r[VAL_PCA_MSE]) for r in rows if r[VAL_PCA_MSE] is not None})
    if pca:
        ax.plot(*zip(*pca, strict=True), linestyle="--", color="gray", marker=".", label="PCA")
    if rows:
        _latent_size_axis(ax, [r["latent_size"] for r in rows])
        ax.legend()
    ax.set_ylabel(f"{VAL_MSE_BEST} ([-1, 1] scale)")
    ax.set_title(f"Reconstruction error against bottleneck size ({data})")
    fig.tight_layout()
    return fig


def reconstructions_by_latent_size(panels: list[tuple[str, Any]], data: str):
    """Rows of images: the inputs, then each job's reconstructions of them."""
    return image_rows(
        [np.asarray(images.cpu()) for _, images in panels],
        [title for title, _ in panels],
        f"Reconstructions of fixed validation images by latent size ({data})",
    )


def random_codes_by_job(panels: list[tuple[str, Any]], data: str):
    """Rows of images: each job's decoding of codes drawn from N(0, I) with one seed."""
    return image_rows(
        [np.asarray(images) for _, images in panels],
        [title for title, _ in panels],
        f"Random codes from N(0, I) decoded, one row per job ({data})",
    )


def metrics_vs_latent_size(rows: list[dict]):
    """kNN accuracy, clustering ACC and test MSE against latent size, one line per backbone and objective."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    n2d = any(r.get(UMAP_GMM_ACC) is not None for r in rows)
    panels = [
        (KNN_ACCURACY, "kNN accuracy"),
        (KMEANS_ACC, "clustering ACC (k-means; UMAP+GMM dashed)" if n2d else "clustering ACC (k-means)"),
        (TEST_MSE, TEST_MSE),
    ]
    names = sorted({series(r) for r in rows})
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name in names:
            points = sorted((r["latent_size"], r[key]) for r in rows if series(r) == name)
            ax.plot(*zip(*points, strict=True), marker="o", label=name)
        if key == KMEANS_ACC and n2d:
            for name in names:
                points = sorted((r["latent_size"], r[UMAP_GMM_ACC]) for r in rows if series(r) == name)
                ax.plot(*zip(*points, strict=True), marker=".", linestyle="--", label=f"{name} UMAP+GMM")
        _latent_size_axis(ax, [r["latent_size"] for r in rows])
        ax.set_title(label)
        ax.legend(fontsize=7)
    data = ", ".join(sorted({r["data"] for r in rows}))
    fig.suptitle(f"Latent-space quality against bottleneck size ({data})")
    fig.tight_layout()
    return fig


def image_grid(images, nrow: int):
    """(N, 1, 28, 28) images in [-1, 1] -> one (3, H, W) tensor in [0, 1], ``nrow`` images a row."""
    import torch
    from torchvision.utils import make_grid

    return make_grid(
        torch.as_tensor(images).float().clamp(-1, 1), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1)
    )


def save_image_grid(images, path, nrow: int) -> None:
    """(N, 1, 28, 28) images in [-1, 1] as one PNG, pixel for pixel (no axes, no resampling)."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(image_grid(images, nrow), tmp, format="png")


def search_trials(rows: list[dict], metric: str):
    """A search's trials in order: each complete trial's ``metric``, the best so far as a line,
    failed trials as crosses along the bottom."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    complete = [(r["trial"], r[metric]) for r in rows if r.get(metric) is not None]
    failed = [r["trial"] for r in rows if r.get(metric) is None and r.get("state") == "fail"]
    if complete:
        trials, values = zip(*complete, strict=True)
        ax.scatter(trials, values, s=18, label="trial")
        ax.step(trials, np.minimum.accumulate(values), where="post", color="black", label="best so far")
        ax.set_yscale("log")
    if failed:
        bottom = min(v for _, v in complete) if complete else 1.0
        ax.scatter(failed, [bottom] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers
    ax.set_ylabel(metric)
    ax.set_title(f"search: {len(complete)} complete, {len(failed)} failed")
    ax.legend()
    fig.tight_layout()
    return fig
