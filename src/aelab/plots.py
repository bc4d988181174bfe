"""Figures for analysis and sweeps (matplotlib, Agg backend, imported only when drawing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latent_map(points: np.ndarray, labels: np.ndarray, title: str):
    """Scatter of a 2-D map coloured by digit, with a legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    for digit in range(10):
        mask = labels == digit
        ax.scatter(points[mask, 0], points[mask, 1], s=3, color=cmap(digit), label=str(digit), alpha=0.7)
    ax.legend(title="digit", markerscale=4, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return fig


def per_digit_errors(errors: np.ndarray, labels: np.ndarray, title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([errors[labels == d] for d in range(10)], showfliers=False)
    ax.set_xticks(range(1, 11), [str(d) for d in range(10)])
    ax.set_xlabel("digit")
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


def metrics_vs_latent_dim(rows: list[dict], data_name: str):
    """kNN accuracy, clustering ACC and test MSE against latent dim, one line per backbone."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("knn_accuracy", "kNN accuracy (k=5)"), ("kmeans_acc", "clustering ACC (k-means; UMAP+GMM dashed)"), ("test_mse", "test MSE")]
    for ax, (key, label) in zip(axes, panels):
        for backbone in sorted({r["backbone"] for r in rows}):
            points = sorted((r["latent_size"], r[key]) for r in rows if r["backbone"] == backbone)
            ax.plot(*zip(*points), marker="o", label=backbone)
        if key == "kmeans_acc" and any(r.get("umap_gmm_acc") is not None for r in rows):
            for backbone in sorted({r["backbone"] for r in rows}):
                points = sorted((r["latent_size"], r["umap_gmm_acc"]) for r in rows if r["backbone"] == backbone)
                ax.plot(*zip(*points), marker=".", linestyle="--", label=f"{backbone} UMAP+GMM")
        dims = sorted({r["latent_size"] for r in rows})
        ax.set_xscale("log")
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("latent dim")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Latent-space quality against bottleneck size ({data_name})")
    fig.tight_layout()
    return fig
