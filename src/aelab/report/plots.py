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


def _titled(fig, title: str, ax=None):
    """``fig`` laid out, with ``title`` over ``ax`` (over the whole figure without one)."""
    if ax is None:
        fig.suptitle(title)
    else:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _image(ax, image) -> None:
    """An image (C, H, W) in [-1, 1] on ``ax``, without ticks, as matplotlib draws it: grey (H, W) for
    one channel, or colour (H, W, 3) in [0, 1] for three."""
    image = np.asarray(image)
    ax.set(xticks=[], yticks=[])
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=-1, vmax=1)
    else:
        ax.imshow((image.transpose(1, 2, 0).clip(-1, 1) + 1) / 2)


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

        figure_format, dpi = cfg.get("figure_format", "png"), cfg.get("figure_dpi", 100)
        if figure_format not in FIGURE_FORMATS or isinstance(dpi, bool) or not isinstance(dpi, int):
            raise ConfigError(
                f"figure_format={figure_format}, figure_dpi={dpi} is invalid: the format must be one of "
                f"{', '.join(FIGURE_FORMATS)} and the dpi an integer, e.g. figure_format=pdf figure_dpi=300"
            )
        return cls(figure_format, dpi)

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
    ax.set(xticks=[], yticks=[])
    return _titled(fig, title, ax)


def per_class_errors(errors: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str):
    fig, ax = _pyplot().subplots(figsize=(max(7, 0.8 * len(classes)), 4))
    ax.boxplot([errors[labels == c] for c in range(len(classes))], showfliers=False)
    ax.set_xticks(range(1, len(classes) + 1), list(classes), rotation=30 if max(map(len, classes)) > 2 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("reconstruction MSE per image")
    return _titled(fig, title, ax)


def image_rows(rows: Sequence[np.ndarray], row_titles: Sequence[str], title: str):
    """Rows of images (C, H, W) in [-1, 1]."""
    n_cols = max(len(r) for r in rows)
    layout = [(heading, row, None) for heading, row in zip(row_titles, rows, strict=True)]
    return _image_table(layout, n_cols, (n_cols * 0.9, len(rows) * 1.0 + 0.4), title)


def captioned_images(sections: Sequence[tuple[str, np.ndarray, Sequence[str]]], title: str, n_cols: int = 8):
    """Sections of images (C, H, W) in [-1, 1], each image over its caption (e.g. ``7 -> 1``); a
    section, ``(heading, images, captions)``, starts on a new row with its heading on the left."""
    layout = [
        (heading if start == 0 else "", images[start : start + n_cols], captions[start : start + n_cols])
        for heading, images, captions in sections
        for start in range(0, max(len(images), 1), n_cols)
    ]
    return _image_table(layout, n_cols, (n_cols * 1.1, len(layout) * 1.35 + 0.5), title)


def _image_table(layout: list[tuple[str, Any, Any]], n_cols: int, figsize: tuple[float, float], title: str):
    """One row per ``(heading, images, captions or None)``, the heading on the left."""
    fig, axes = _pyplot().subplots(len(layout), n_cols, figsize=figsize, squeeze=False)
    for row, (heading, images, captions) in zip(axes, layout, strict=True):
        for j, ax in enumerate(row):
            if j >= len(images):
                ax.axis("off")
                continue
            _image(ax, images[j])
            if captions is not None:
                ax.set_title(captions[j], fontsize=7)
        row[0].set_ylabel(heading, rotation=0, ha="right", va="center", fontsize=8)
    return _titled(fig, title)


def neighbour_rows(queries: np.ndarray, found: Sequence[tuple[str, np.ndarray, np.ndarray]], classes, title: str):
    """One row per query: the query, then for each ``(how, images (Q, k, ...), labels (Q, k))`` its k
    neighbours found that way, each captioned with its class, a gap between the ways."""
    k = max(images.shape[1] for _, images, _ in found)
    n_cols = 1 + len(found) * (k + 1)
    fig, axes = _pyplot().subplots(
        len(queries), n_cols, figsize=(n_cols * 0.8, len(queries) * 1.0 + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, query in enumerate(queries):
        cells = [(axes[i, 0], query, "query" if i == 0 else "")]
        for w, (how, images, labels) in enumerate(found):
            for j in range(images.shape[1]):
                name = classes[int(labels[i, j])]
                # the query's column, then each way's k columns after an empty one
                column = 1 + w * (k + 1) + 1 + j
                cells.append((axes[i, column], images[i, j], f"{how}: {name}" if i == j == 0 else name))
        for ax, image, caption in cells:
            ax.axis("on")
            _image(ax, image)
            ax.set_title(caption, fontsize=7, loc="left" if ":" in caption else "center")
    return _titled(fig, title)


def decoded_sweep(images: np.ndarray, across: np.ndarray, down: np.ndarray, axes: Sequence[int], title: str):
    """A decoded sweep over two code axes, ``len(down)`` rows of ``len(across)`` images (C, H, W)
    in [-1, 1], with the code values each column and row was decoded from as its ticks."""
    steps_x, steps_y = len(across), len(down)
    images = np.asarray(images)
    channels, height, width = images.shape[1:]
    # (rows, columns, C, H, W) -> one (C, rows * H, columns * W) image
    grid = images.reshape(steps_y, steps_x, channels, height, width).transpose(2, 0, 3, 1, 4)
    fig, ax = _pyplot().subplots(figsize=(1.5 + 0.5 * steps_x, 1.2 + 0.5 * steps_y))
    _image(ax, grid.reshape(channels, steps_y * height, steps_x * width))
    ax.set_xticks(width / 2 + width * np.arange(steps_x), [f"{v:.3g}" for v in across], rotation=90, fontsize=7)
    ax.set_yticks(height / 2 + height * np.arange(steps_y), [f"{v:.3g}" for v in down], fontsize=7)
    ax.set_xlabel(f"z{axes[0]}")
    ax.set_ylabel(f"z{axes[1]}")
    return _titled(fig, title, ax)


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


def _series_lines(ax, rows: list[dict], key: str, suffix: str = "", marker: str = "o", linestyle: str = "-") -> None:
    """``key`` against latent size, one line per ``series``."""
    for name in sorted({series(r) for r in rows}):
        points = sorted((r["latent_size"], r[key]) for r in rows if series(r) == name)
        ax.plot(*zip(*points, strict=True), marker=marker, linestyle=linestyle, label=name + suffix)


def mse_vs_latent_size(rows: list[dict], data: str):
    """Best val MSE against latent size, one line per backbone and objective, PCA of the same size dashed."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    _series_lines(ax, rows, VAL_MSE_BEST)
    pca = sorted({(r["latent_size"], r[VAL_PCA_MSE]) for r in rows if r[VAL_PCA_MSE] is not None})
    if pca:
        ax.plot(*zip(*pca, strict=True), linestyle="--", color="gray", marker=".", label="PCA")
    _latent_size_axis(ax, [r["latent_size"] for r in rows])
    ax.legend()
    ax.set_ylabel(f"{VAL_MSE_BEST} ([-1, 1] scale)")
    return _titled(fig, f"Reconstruction error against bottleneck size ({data})", ax)


def metrics_vs_latent_size(rows: list[dict]):
    """kNN accuracy, clustering ACC and test MSE against latent size, one line per backbone and objective."""
    fig, axes = _pyplot().subplots(1, 3, figsize=(13, 3.8))
    n2d = any(r.get(UMAP_GMM_ACC) is not None for r in rows)
    panels = [
        (KNN_ACCURACY, "kNN accuracy"),
        (KMEANS_ACC, "clustering ACC (k-means; UMAP+GMM dashed)" if n2d else "clustering ACC (k-means)"),
        (TEST_MSE, TEST_MSE),
    ]
    for ax, (key, label) in zip(axes, panels, strict=True):
        _series_lines(ax, rows, key)
        if key == KMEANS_ACC and n2d:
            _series_lines(ax, rows, UMAP_GMM_ACC, " UMAP+GMM", marker=".", linestyle="--")
        _latent_size_axis(ax, [r["latent_size"] for r in rows])
        ax.set_title(label)
        ax.legend(fontsize=7)
    data = ", ".join(sorted({r["data"] for r in rows}))
    return _titled(fig, f"Latent-space quality against bottleneck size ({data})")


def image_grid(images, nrow: int):
    """(N, C, H, W) images in [-1, 1] -> one (3, H', W') tensor in [0, 1], ``nrow`` images a row."""
    import torch
    from torchvision.utils import make_grid

    return make_grid(torch.as_tensor(images).float().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1))


def save_image_grid(images, path, nrow: int) -> None:
    """(N, C, H, W) images in [-1, 1] as one PNG, pixel for pixel (no axes, no resampling)."""
    from torchvision.utils import save_image

    with atomic_path(path) as tmp:
        save_image(image_grid(images, nrow), tmp, format="png")


def search_trials(rows: list[dict], metric: str):
    """A search's trials in order: each complete trial's ``metric``, the best so far as a line,
    failed trials as crosses along the bottom."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(7, 4))
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
    ax.legend()
    return _titled(fig, f"search: {len(complete)} complete, {len(failed)} failed", ax)
