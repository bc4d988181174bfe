"""The sweep report: one table and two figures for a multirun, written when the sweep ends.

``SweepReport`` is a Hydra callback (``hydra/callbacks``); ``scripts/sweep_report.py`` re-creates
the same files from an existing sweep directory.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aelab.training import SUMMARY_FILE

log = logging.getLogger(__name__)

COLUMNS = [
    "overrides", "backbone", "latent_dim", "params", "compression", "val_mse_best",
    "val_mse_final", "pca_val_mse", "epochs", "wall_time_s", "status", "error",
]
FIGURE_MSE = "mse_vs_latent_dim.png"
FIGURE_RECONSTRUCTIONS = "reconstructions_by_latent_dim.png"


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/config.yaml"))


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job, in the order Hydra numbered them; PCA filled in by ``add_pca_baseline``."""
    rows = []
    for job_dir in job_dirs(sweep_dir):
        cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        hydra_cfg = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
        summary_path = job_dir / SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {
            "status": "failed", "error": "the job stopped before writing its summary (crash or kill)"
        }
        latent_size = summary.get("latent_size")
        rows.append({
            "job_num": hydra_cfg.job.num,
            "job_dir": job_dir,
            "overrides": job_dir.name,
            "backbone": cfg.model.get("backbone", ""),
            "latent_dim": cfg.model.get("latent_dim"),
            "latent_size": latent_size,
            "params": summary.get("params"),
            "compression": None if summary.get("compression") is None else round(summary["compression"], 4),
            "val_mse_best": summary.get("val_loss_best"),
            "val_mse_final": summary.get("val_loss_final"),
            "pca_val_mse": None,
            "epochs": summary.get("epochs"),
            "wall_time_s": None if summary.get("wall_time_s") is None else round(summary["wall_time_s"], 1),
            "status": summary.get("status", "failed"),
            "error": summary.get("error", ""),
            "data_dir": summary.get("data_dir"),
            # located inside the job dir, so a moved or copied sweep still finds its checkpoints
            "best_checkpoint": summary.get("best_checkpoint")
            and job_dir / "checkpoints" / Path(summary["best_checkpoint"]).name,
        })
    return sorted(rows, key=lambda r: r["job_num"])


def add_pca_baseline(rows: list[dict[str, Any]]) -> None:
    """PCA val MSE at each job's latent size, on that job's data."""
    from aelab.analysis import pca_reconstruction_mse
    from aelab.data import MNISTDataModule, normalized_rows

    by_data: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["latent_size"] and row["data_dir"]:
            by_data.setdefault(row["data_dir"], []).append(row)
    for data_dir, group in by_data.items():
        datamodule = MNISTDataModule(data_dir, download=False)
        datamodule.setup()
        train = normalized_rows(datamodule.splits["train"][0])
        test = normalized_rows(datamodule.splits["test"][0])
        mse = pca_reconstruction_mse(train, test, [r["latent_size"] for r in group])
        for row in group:
            row["pca_val_mse"] = round(mse[row["latent_size"]], 5)


def write_table(rows: list[dict[str, Any]], columns: list[str], path_stem: Path, intro: str) -> None:
    """``<stem>.csv`` and ``<stem>.md`` with one row per job."""
    with open(path_stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    path_stem.with_suffix(".md").write_text(intro + "\n\n" + "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def data_name(rows: list[dict[str, Any]]) -> str:
    """The data folder's name (e.g. mnist-10k), so a figure says what it was measured on."""
    names = sorted({Path(r["data_dir"]).name for r in rows if r["data_dir"]})
    return ", ".join(names) or "unknown data"


def plot_mse_vs_latent_dim(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ok = [r for r in rows if r["status"] == "ok" and r["latent_size"]]
    for backbone in sorted({r["backbone"] for r in ok}):
        points = sorted((r["latent_size"], r["val_mse_best"]) for r in ok if r["backbone"] == backbone)
        ax.plot(*zip(*points), marker="o", label=backbone)
    pca = sorted({(r["latent_size"], r["pca_val_mse"]) for r in ok if r["pca_val_mse"] is not None})
    if pca:
        ax.plot(*zip(*pca), linestyle="--", color="gray", marker=".", label="PCA")
    ax.set_xscale("log")
    dims = sorted({r["latent_size"] for r in ok})
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("latent dim")
    ax.set_ylabel("best val MSE ([-1, 1] scale)")
    ax.set_title(f"Reconstruction error against bottleneck size ({data_name(ok)})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_reconstructions(rows: list[dict[str, Any]], num_images: int = 8):
    """The article's figure: fixed validation inputs, then each job's reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from aelab.checkpoints import load_autoencoder
    from aelab.data import MNISTDataModule, normalize

    ok = [r for r in rows if r["status"] == "ok" and r["best_checkpoint"]]
    ok.sort(key=lambda r: (r["backbone"], r["latent_size"] or 0))
    if not ok:
        return None
    datamodule = MNISTDataModule(ok[0]["data_dir"], download=False)
    datamodule.setup()
    inputs = normalize(datamodule.splits["test"][0][:num_images])
    panels = [("input", inputs)]
    for row in ok:
        model = load_autoencoder(row["best_checkpoint"])
        with torch.no_grad():
            panels.append((f"{row['backbone']} d={row['latent_size']}", model(inputs)))
    fig, axes = plt.subplots(len(panels), num_images, figsize=(num_images * 0.9, len(panels) * 1.0),
                             squeeze=False)
    for i, (title, images) in enumerate(panels):
        for j in range(num_images):
            ax = axes[i, j]
            ax.imshow(images[j, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"Reconstructions of fixed validation images by latent dim ({data_name(ok)})")
    fig.tight_layout()
    return fig


def write_report(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write summary.csv/.md, both figures, and a TensorBoard ``sweep`` run into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    rows = collect_rows(sweep_dir)
    add_pca_baseline(rows)
    write_table(rows, COLUMNS, sweep_dir / "summary", f"# Sweep {sweep_dir.name}\n\nval MSE on the "
                "[-1, 1] scale; PCA: the best linear code of the same size, fit on the same training data.")
    figures = {FIGURE_MSE: plot_mse_vs_latent_dim(rows), FIGURE_RECONSTRUCTIONS: plot_reconstructions(rows)}
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(sweep_dir / "sweep"))
    for name, fig in figures.items():
        if fig is None:
            continue
        fig.savefig(sweep_dir / name, dpi=100)
        writer.add_figure(f"sweep/{Path(name).stem}", fig)
    writer.add_text("sweep/summary", (sweep_dir / "summary.md").read_text())
    writer.close()
    return rows


class SweepReport(Callback):
    """Writes the report when a multirun ends; exits non-zero if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_report(sweep_dir)
        failed = [r for r in rows if r["status"] != "ok"]
        log.info("sweep report: %s", sweep_dir / "summary.md")
        if failed:
            for row in failed:
                print(f"aelab: job {row['overrides']} failed: {row['error']}", file=sys.stderr)
            print(f"aelab: {len(failed)} of {len(rows)} jobs failed; see {sweep_dir / 'summary.md'}",
                  file=sys.stderr)
            sys.exit(1)
