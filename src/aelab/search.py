"""Hyper-parameter search: ``python src/train.py -m hparams_search=mlp``.

Optuna's own API (ask and tell) behind a small Hydra sweeper (``hydra_plugins.aelab_search``):
the registry's ``hydra-optuna-sweeper`` pins ``optuna<3`` and its sweeps stop at the first failed
trial. Here each trial is one job of the sweep, launched by whatever ``hydra/launcher`` is chosen
(in-process by default, joblib or submitit alike), into ``<sweep dir>/trial-<number>``; the study
lives in ``<sweep dir>/search.db`` (SQLite), so the same command with the same ``hydra.sweep.dir``
goes on where a search stopped, and a trial that was running when it stopped runs again in its
own folder, resuming from its checkpoint. A failed trial is recorded and the search goes on.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from aelab import runs
from aelab.errors import ConfigError
from aelab.names import VAL_MSE_BEST
from aelab.paths import command_line

log = logging.getLogger(__name__)

STORAGE = "search.db"
TRIAL_DIR = "trial-"
SPACE_KEY = "hydra.sweeper.params"
SPACE_RULE = "{low: 1e-4, high: 1e-2, log: true} (numbers; int: true for integers) or {choices: [64, 128, 256]}"


def distributions(params: Mapping[str, Any]) -> dict[str, Any]:
    """``hydra.sweeper.params`` as Optuna distributions, one per config key. A choice may be a
    list (``model.encoder.hidden_dims``): Optuna stores it as its override text."""
    import optuna.distributions as d

    space: dict[str, Any] = {}
    for key, spec in params.items():
        spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{SPACE_KEY}.{key}={spec} is invalid: give {SPACE_RULE}")
        if set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
            stored = [override_text(c) if isinstance(c, (list, dict)) else c for c in spec["choices"]]
            space[key] = d.CategoricalDistribution(stored)
            continue
        low: Any = spec.get("low")
        high: Any = spec.get("high")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or set(spec) - {"low", "high", "log", "int"} or not low < high:
            raise ConfigError(f"{SPACE_KEY}.{key}={_shown(spec)} is invalid: give {SPACE_RULE}")
        log_scale = bool(spec.get("log", False))
        if log_scale and low <= 0:
            raise ConfigError(f"{SPACE_KEY}.{key}={_shown(spec)} is invalid: log: true needs low > 0")
        if spec.get("int", False):
            space[key] = d.IntDistribution(int(low), int(high), log=log_scale)
        else:
            space[key] = d.FloatDistribution(float(low), float(high), log=log_scale)
    if not space:
        raise ConfigError(f"{SPACE_KEY} is empty: name the keys to search, e.g. model.optimizer.lr: {SPACE_RULE}")
    return space


def _shown(spec: Any) -> str:
    return override_text(spec).replace("'", "")


def override_text(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back: ``[256,128]``, ``0.001``, ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, float) else str(value)


def fixed_overrides(arguments: Sequence[str]) -> list[str]:
    """The command line's own overrides, kept in every trial; a sweep of values (``a=1,2``) is the
    search's to make."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(arguments)):
        if override.is_sweep_override():
            raise ConfigError(
                f"{override.input_line} is a sweep, and hparams_search chooses the values itself: give one value, "
                f"or add the key to {SPACE_KEY}"
            )
    return list(arguments)


class Search:
    """The ask-launch-tell loop of one search (``hydra_plugins.aelab_search.SearchSweeper``)."""

    def __init__(
        self,
        *,
        launcher: Any,
        sweep_dir: Path,
        params: Mapping[str, Any],
        n_trials: int,
        n_jobs: int,
        seed: int,
        study_name: str,
        figure_files: Any,
    ) -> None:
        import optuna

        if not (isinstance(n_trials, int) and n_trials > 0):
            raise ConfigError(f"hydra.sweeper.n_trials={n_trials} is invalid: it must be a positive integer, e.g. 20")
        if not (isinstance(n_jobs, int) and n_jobs > 0):
            raise ConfigError(f"hydra.sweeper.n_jobs={n_jobs} is invalid: it must be a positive integer, e.g. 1")
        self.launcher = launcher
        self.sweep_dir = sweep_dir
        self.figure_files = figure_files
        self.space = distributions(params)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        # why trials of this session failed (earlier ones: their folder's run_summary.json)
        self.errors: dict[int, str] = {}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(
            study_name=study_name, storage=f"sqlite:///{sweep_dir / STORAGE}", direction="minimize", load_if_exists=True
        )
        # seeded past the trials already stored, so a resumed search does not propose its first
        # trials again; constant_liar keeps trials asked together apart
        self.study.sampler = optuna.samplers.TPESampler(seed=seed + len(self.study.trials), constant_liar=True)

    def run(self, fixed: list[str]) -> None:
        from optuna.trial import TrialState

        # what the trials train with: where files go and how figures look may change on resume
        training = [o for o in fixed if not runs.is_place_override(o)]
        stored = self.study.user_attrs.get("fixed_overrides")
        if stored is None:
            self.study.set_user_attr("fixed_overrides", training)
        elif stored != training:
            raise ConfigError(
                f"{self.sweep_dir / STORAGE} holds a search run with {' '.join(stored) or 'no overrides'}, not "
                f"{' '.join(training) or 'no overrides'}: resume it with the same overrides, or start a new search "
                f"without hydra.sweep.dir"
            )

        done = [t for t in self.study.trials if t.state.is_finished()]
        interrupted = [t.number for t in self.study.trials if t.state == TrialState.RUNNING]
        if done or interrupted:
            stored_in = self.sweep_dir / STORAGE
            log.info("search: %d trials in %s, %d to run again (interrupted)", len(done), stored_in, len(interrupted))
        log.info("search: resume it if it stops with: %s", resume_command(self.sweep_dir))
        finished = len(done)
        while interrupted or finished < self.n_trials:
            if interrupted:
                numbers, interrupted = interrupted[: self.n_jobs], interrupted[self.n_jobs :]
            else:
                count = min(self.n_jobs, self.n_trials - finished)
                numbers = [self.study.ask(self.space).number for _ in range(count)]
            self._launch(numbers, fixed)
            finished = sum(t.state.is_finished() for t in self.study.trials)
        self._write_report(fixed)

    def _launch(self, numbers: list[int], fixed: list[str]) -> None:
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        # the launcher numbers jobs consecutively from its first: one call per run of numbers
        groups: list[list[int]] = []
        for number in numbers:
            if groups and number == groups[-1][-1] + 1:
                groups[-1].append(number)
            else:
                groups.append([number])
        for group in groups:
            overrides = [fixed + [f"{k}={override_text(trials[n].params[k])}" for k in self.space] for n in group]
            returns = self.launcher.launch(overrides, initial_job_idx=group[0])
            for number, job in zip(group, returns, strict=True):
                self._tell(number, job)

    def _tell(self, number: int, job: Any) -> None:
        from optuna.trial import TrialState

        job_dir = self.sweep_dir / f"{TRIAL_DIR}{number}"
        try:
            value = job.return_value
        except Exception as raised:  # noqa: BLE001 - the job's own failure: recorded, the search goes on
            value, error = None, f"{type(raised).__name__}: {raised}"
        else:
            error = runs.read_summary(job_dir).get("error") or "no val/mse_best (see its train.log)"
        if isinstance(value, float) and math.isfinite(value):
            self.study.tell(number, value)
            return
        self.errors[number] = str(error).splitlines()[0] if error else ""
        self.study.tell(number, state=TrialState.FAIL)
        log.warning("search: trial %d failed (%s); the search goes on", number, error)

    def _write_report(self, fixed: Sequence[str]) -> None:
        """``trials.csv``/``.md`` (every trial: its values, state and result; the command that trains
        the best one, ``fixed`` overrides included) and the ``trials`` figure (the result by trial and
        the best so far)."""
        from aelab.report import plots
        from aelab.report.tables import write_table

        keys = sorted({k for t in self.study.trials for k in t.params})
        rows = []
        for trial in self.study.trials:
            row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower(), VAL_MSE_BEST: trial.value}
            row.update({k: trial.params.get(k) for k in keys})
            if trial.value is None:
                saved = runs.read_summary(self.sweep_dir / f"{TRIAL_DIR}{trial.number}").get("error")
                row["error"] = self.errors.get(trial.number) or str(saved or "").split("\n")[0]
            row["folder"] = f"{TRIAL_DIR}{trial.number}"
            rows.append(row)
        complete = [r for r in rows if r[VAL_MSE_BEST] is not None]
        best = min(complete, key=lambda r: r[VAL_MSE_BEST]) if complete else None
        intro = f"# Search: {len(rows)} trials, {len(complete)} complete, minimising {VAL_MSE_BEST}\n"
        if best is not None:
            # as one run: without the search itself
            kept = [o for o in fixed if not o.startswith(("hparams_search=", "hydra.sweeper.", "hydra/sweeper="))]
            chosen = " ".join(shlex.quote(o) for o in [*kept, *(f"{k}={override_text(best[k])}" for k in keys)])
            intro += (
                f"\nBest: trial {best['trial']}, {VAL_MSE_BEST} {best[VAL_MSE_BEST]:.5f}: `{command_line()} {chosen}`\n"
            )
            log.info("search: best trial %d, %s %.5f: %s", best["trial"], VAL_MSE_BEST, best[VAL_MSE_BEST], chosen)
        write_table(rows, ["trial", "state", VAL_MSE_BEST, *keys, "error", "folder"], self.sweep_dir / "trials", intro)
        self.figure_files.save(plots.search_trials(rows, VAL_MSE_BEST), self.sweep_dir / "trials")
        log.info("search report: %s", self.sweep_dir / "trials.md")


def resume_command(sweep_dir: Path) -> str:
    """The sweep's own command (``-m`` and its overrides) into ``sweep_dir``: it goes on where it stopped."""
    given = [a for a in sys.argv[1:] if a not in ("-m", "--multirun") and not a.startswith("hydra.sweep.dir=")]
    return " ".join([command_line(), "-m", *map(shlex.quote, given), f"\"hydra.sweep.dir='{sweep_dir}'\""])
