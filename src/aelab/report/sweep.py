"""The sweep report: one table and two figures for a training multirun, written when it ends.

``SweepReport`` is a Hydra callback of ``train.yaml`` only; ``scripts/sweep_report.py`` re-creates
the same files from an existing sweep directory. A sweep directory is read as data: job configs
are parsed, never instantiated, and checkpoints go through ``aelab.runs.open_run``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aelab import runs
from aelab.data import normalize, normalized_rows
from aelab.errors import AelabError
from aelab.models.inference import decode_random_codes
from aelab.names import ANOMALY_AUROC, FIGURES, NORMAL_CLASSES, VAL_MSE, VAL_MSE_BEST, VAL_PCA_MSE
from aelab.report import plots
from aelab.report.metrics import pca_reconstruction_mse
from aelab.report.tables import write_table

log = logging.getLogger(__name__)

COLUMNS = [
    "job",
    "data",
    "backbone",
    "objective",
    "latent_dim",
    "latent_size",
    "params",
    "compression",
    VAL_MSE_BEST,
    VAL_MSE,
    VAL_PCA_MSE,
    "epochs",
    "wall_time_s",
    "status",
    "error",
]
# the columns a job's run_summary.json holds as they are
COPIED = ["data", "backbone", "latent_size", "params", VAL_MSE_BEST, VAL_MSE, ANOMALY_AUROC, "epochs"]
# only in a sweep with one-class jobs (data.keep_classes), after latent_size
ONE_CLASS_COLUMNS = [NORMAL_CLASSES, ANOMALY_AUROC]
FIGURE_MSE = "mse_vs_latent_size"
FIGURE_RECONSTRUCTIONS = "reconstructions_by_latent_size"
FIGURE_RANDOM_CODES = "random_codes"


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job, in the order Hydra numbered them; PCA filled in by ``add_pca_baseline``."""
    rows: list[dict[str, Any]] = []
    for job_dir in runs.job_dirs(sweep_dir):
        job_cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        hydra_file = job_dir / ".hydra" / "hydra.yaml"
        job_num = OmegaConf.load(hydra_file).hydra.job.num if hydra_file.is_file() else len(rows)
        summary = runs.read_status(job_dir) or {
            "status": "failed",
            "error": "the job stopped before writing its summary (crash or kill)",
        }
        # the summary's own record first: .hydra/ is rewritten whenever the job is launched again
        latent_dim = summary.get("latent_dim", OmegaConf.select(job_cfg, "model.latent_dim"))
        rows.append(
            {k: summary.get(k) for k in COPIED}
            | {
                "job_num": job_num,
                "job_dir": job_dir,
                "job": job_dir.name,
                "objective": summary.get("objective", "plain"),
                "latent_dim": latent_dim if isinstance(latent_dim, int) else None,
                "compression": _rounded(summary.get("compression"), 4),
                VAL_PCA_MSE: None,
                # names like Fashion-MNIST's "Ankle boot" hold spaces
                NORMAL_CLASSES: ", ".join(summary.get(NORMAL_CLASSES) or []) or None,
                "wall_time_s": _rounded(summary.get("wall_time_s"), 1),
                "status": summary.get("status", "failed"),
                "error": summary.get("error", ""),
                "checkpoint": runs.best_checkpoint(job_dir) if summary.get("status") == "ok" else None,
            }
        )
    return sorted(rows, key=lambda r: r["job_num"])


def table_columns(rows: list[dict[str, Any]]) -> list[str]:
    if not any(r[ANOMALY_AUROC] is not None for r in rows):
        return COLUMNS
    at = COLUMNS.index("latent_size") + 1
    return [*COLUMNS[:at], *ONE_CLASS_COLUMNS, *COLUMNS[at:]]


def one_class_line(rows: list[dict[str, Any]]) -> str:
    """The one-class benchmark's headline: mean and lowest AUROC over the jobs that have one."""
    scored = [r for r in rows if r[ANOMALY_AUROC] is not None]
    if not scored:
        return ""
    worst = min(scored, key=lambda r: r[ANOMALY_AUROC])
    mean = sum(r[ANOMALY_AUROC] for r in scored) / len(scored)
    return (
        f"\n\nOne-class jobs (trained on {NORMAL_CLASSES} only): {ANOMALY_AUROC}, reconstruction error "
        f"as the score for any other class over the whole test split, mean {mean:.4f} over "
        f"{len(scored)} job{'' if len(scored) == 1 else 's'}, lowest {worst[ANOMALY_AUROC]:.4f} "
        f"(normal class {worst[NORMAL_CLASSES]})."
    )


def _rounded(value: Any, digits: int) -> Any:
    return round(value, digits) if isinstance(value, (int, float)) else None


def _open_runs(rows: list[dict[str, Any]]) -> dict[str, runs.LoadedRun]:
    """Each finished job's checkpoint rebuilt (model and datamodule), keyed by job name."""
    opened = {}
    for row in rows:
        if row["checkpoint"] is None:
            continue
        try:
            opened[row["job"]] = runs.open_run(row["checkpoint"])
        except AelabError as err:
            log.warning("job %s: its checkpoint cannot be read for the report: %s", row["job"], err)
    return opened


def add_pca_baseline(rows: list[dict[str, Any]], opened: dict[str, runs.LoadedRun]) -> None:
    """PCA val MSE at each job's latent size, fit on that job's training split, on its val split."""
    groups: dict[str, list[dict[str, Any]]] = {}  # jobs on the same data share one PCA
    for row in rows:
        if row["job"] in opened:
            data = json.dumps(dict(opened[row["job"]].datamodule.hparams), sort_keys=True, default=str)
            groups.setdefault(data, []).append(row)
    for group in groups.values():
        datamodule = opened[group[0]["job"]].datamodule
        datamodule.setup()
        mse = pca_reconstruction_mse(
            normalized_rows(datamodule.split("train")[0]),
            normalized_rows(datamodule.split("val")[0]),
            [r["latent_size"] for r in group],
        )
        for row in group:
            row[VAL_PCA_MSE] = round(mse[row["latent_size"]], 5)


@torch.no_grad()
def job_figures(rows: list[dict[str, Any]], opened: dict[str, runs.LoadedRun], data: str, num_images: int = 8):
    """One row per finished job: its reconstructions of fixed validation inputs (the article's
    figure), and its decoding of one seeded draw of codes from N(0, I): an objective with a prior
    (the VAE) makes images of them, a plain autoencoder mostly does not."""
    finished = sorted(
        (r for r in rows if r["job"] in opened), key=lambda r: (r["backbone"], r["latent_size"], plots.series(r))
    )
    if not finished:
        return {}
    datamodule = opened[finished[0]["job"]].datamodule
    datamodule.setup()
    inputs = normalize(datamodule.split("val")[0][:num_images])
    models = [opened[r["job"]].model for r in finished]
    titles = [_panel_title(r) for r in finished]
    return {
        FIGURE_RECONSTRUCTIONS: plots.image_rows(
            [np.asarray(inputs), *(np.asarray(model(inputs)) for model in models)],
            ["input", *titles],
            f"Reconstructions of fixed validation images by latent size ({data})",
        ),
        FIGURE_RANDOM_CODES: plots.image_rows(
            [decode_random_codes(model, num_images, 0, torch.device("cpu")) for model in models],
            titles,
            f"Random codes from N(0, I) decoded, one row per job ({data})",
        ),
    }


def _panel_title(row: dict[str, Any]) -> str:
    objective = row.get("objective") or "plain"
    title = f"{row['backbone']} d={row['latent_size']}" + ("" if objective == "plain" else f"\n{objective}")
    return title + (f"\nnormal: {row[NORMAL_CLASSES]}" if row.get(NORMAL_CLASSES) else "")


def write_report(sweep_dir: Path, figure_files: plots.FigureFiles) -> list[dict[str, Any]]:
    """Write summary.csv/.md, the figures (``figure_files``), and a TensorBoard ``sweep`` run into ``sweep_dir``."""
    rows = collect_rows(sweep_dir)
    opened = _open_runs(rows)
    add_pca_baseline(rows, opened)
    data = ", ".join(sorted({r["data"] for r in rows if r["data"]})) or "unknown data"
    write_table(
        rows,
        table_columns(rows),
        sweep_dir / "summary",
        f"# Sweep {sweep_dir.name} ({data})\n\nMSE per pixel on the [-1, 1] scale, on the validation "
        "split; PCA: the best linear code of the same size, fit on the same training data." + one_class_line(rows),
    )
    sized = [r for r in rows if r["status"] == "ok" and r["latent_size"]]
    figures = job_figures(rows, opened, data)
    # a sweep that does not vary the latent size (a search, one-class digits) would stack its points at one x
    if len({r["latent_size"] for r in sized}) > 1:
        figures[FIGURE_MSE] = plots.mse_vs_latent_size(sized, data)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(sweep_dir / "sweep"))
    for name, fig in figures.items():
        figure_files.save(fig, sweep_dir / name)
        writer.add_figure(f"{FIGURES}/sweep_{name}", fig)
    writer.add_text("sweep/summary", (sweep_dir / "summary.md").read_text())
    writer.close()
    return rows


def planned_jobs(config: DictConfig) -> int | None:
    """How many jobs the multirun launches: a search's ``n_trials``, or the product of the sweep's
    choices (``model.latent_dim=2,3,5`` on the command line or in ``hydra.sweeper.params``, the
    command line's winning for a key in both, as in Hydra's sweeper); ``None`` where a sweep's
    values are not a list (an interval)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    params = [f"{key}={value}" for key, value in (OmegaConf.select(sweeper, "params") or {}).items()]
    try:
        parsed = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        choices = {o.key_or_group: len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in parsed}
        return math.prod(choices.values())
    except Exception:  # noqa: BLE001 - a sweep of another kind: its jobs are numbered without a total
        return None


def progress_line(sweep_dir: Path, job_dir: Path, number: int, total: int | None, searched: bool = False) -> str:
    """``sweep: job 3 of 10 (model.latent_dim=5): val/mse_best 0.1199; best so far 0.0908
    (model.latent_dim=10)`` (``search: trial 3 of 20 (trial-2): ...`` for a search), for the job
    Hydra numbered ``number`` (from 1). The best so far is read from the summaries in the sweep
    folder, so that jobs of other processes (joblib) and of an earlier attempt count too."""
    statuses = {d.name: runs.read_status(d) for d in sorted(sweep_dir.iterdir()) if d.is_dir()}
    scored = {
        name: status[VAL_MSE_BEST]
        for name, status in statuses.items()
        if status.get("status") == "ok" and isinstance(status.get(VAL_MSE_BEST), float)
    }
    own = statuses.get(job_dir.name, {})
    if job_dir.name in scored:
        outcome = f"{VAL_MSE_BEST} {scored[job_dir.name]:.4g}"
    elif own.get("status") == "ok":
        outcome = f"done (no {VAL_MSE_BEST}: no validation)"
    else:
        outcome = f"failed: {str(own.get('error') or 'it wrote no summary (see its train.log)').splitlines()[0]}"
    best = f"; best so far {min(scored.values()):.4g} ({min(scored, key=scored.__getitem__)})" if scored else ""
    of = f" of {total}" if total else ""
    return f"{'search: trial' if searched else 'sweep: job'} {number}{of} ({job_dir.name}): {outcome}{best}"


def searched(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith(".SearchSweeper")


class SweepReport(Callback):
    """Prints a line as each job ends (its number, its val/mse_best and the best so far) and
    writes the report when a training multirun ends; exits non-zero if any job failed."""

    total: int | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.total = planned_jobs(config)
        folder = OmegaConf.select(config, "hydra.launcher.submitit_folder")
        if folder is not None:
            # submitit runs each job in a process of its own whose output goes to a file: the
            # console would show nothing until the report, so it says where the progress is
            jobs = f"{self.total} jobs" if self.total else "the jobs"
            logs = Path(str(folder).replace("%j", "<job id>")) / "<job id>_0_log.out"
            print(f"sweep: {jobs} handed to submitit; each one's line as it ends goes to {logs}", flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") is not RunMode.MULTIRUN:
            return
        # (under submitit this runs in the job's own process: the line goes to the job's log)
        sweep_dir, job_dir = Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir)
        number = int(config.hydra.job.num) + 1
        print(progress_line(sweep_dir, job_dir, number, self.total, searched(config)), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_report(sweep_dir, plots.FigureFiles.of(config))
        failed = [r for r in rows if r["status"] != "ok"]
        search = searched(config)
        # the table on the console too: a search's trials (aelab.search wrote them), a sweep's jobs
        report = sweep_dir / ("trials.md" if search else "summary.md")
        print(f"{report.read_text().rstrip()}\n\n{'search' if search else 'sweep'} report: {report}")
        if failed and search and len(failed) < len(rows):
            # a search expects some trials to fail (a learning rate too high): trials.md records them
            print(f"aelab: {len(failed)} of {len(rows)} trials failed; see {report}", file=sys.stderr)
            return
        if failed:
            for row in failed:
                print(f"aelab: job {row['job']} failed: {row['error']}", file=sys.stderr)
            print(f"aelab: {len(failed)} of {len(rows)} jobs failed; see {sweep_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(1)
