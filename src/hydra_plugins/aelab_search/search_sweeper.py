"""aelab's hyper-parameter search as a Hydra sweeper (``hydra/sweeper=search``, chosen by
``hparams_search=...``). Hydra imports every module of ``hydra_plugins`` when it starts, also for
``--help``, so this one imports nothing heavy: the search lives in ``aelab.search``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SearchSweeper(Sweeper):
    """Arguments: ``configs/hydra/sweeper/search.yaml``."""

    def __init__(
        self, params: Any, n_trials: int = 20, n_jobs: int = 1, seed: int = 0, study_name: str = "search"
    ) -> None:
        self.params = params
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.seed = seed
        self.study_name = study_name
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from aelab.report.plots import FigureFiles
        from aelab.search import Search, fixed_overrides

        assert self.config is not None  # Hydra calls setup first
        search = Search(
            launcher=self.launcher,
            sweep_dir=Path(self.config.hydra.sweep.dir),
            params=self.params,
            n_trials=self.n_trials,
            n_jobs=self.n_jobs,
            seed=self.seed,
            study_name=self.study_name,
            figure_files=FigureFiles.of(self.config),
        )
        search.run(fixed_overrides(arguments))
