"""The console scripts ``aelab-train``, ``aelab-eval`` and ``aelab-analyze`` (``[project.scripts]``).

Each composes the same config as ``src/<task>.py`` (``aelab.paths.config_dir()`` is the checkout's
``configs/``), takes the same overrides and calls the same task through the same error handling, so
the command and the script are interchangeable. Hydra's own flags work too: ``--help``, ``--cfg job``,
``-m``, and ``-sc install=bash`` for tab completion of ``aelab-train``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task
from aelab.paths import config_dir

# command name -> (config name, the task function as "module:function")
TASKS = {
    "train": ("train", "aelab.tasks.train:train"),
    "eval": ("eval", "aelab.tasks.evaluate:evaluate"),
    "analyze": ("analyze", "aelab.tasks.analyze:analyze"),
}


def _task(path: str) -> Callable[[DictConfig], dict[str, Any]]:
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)


def _run(name: str) -> None:
    config_name, task_path = TASKS[name]

    def main(cfg: DictConfig) -> float | None:
        return run_task(_task(task_path), cfg)

    with one_line_errors():
        hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(main)()


def train() -> None:
    _run("train")


def evaluate() -> None:
    _run("eval")


def analyze() -> None:
    _run("analyze")
