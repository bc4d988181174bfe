"""The console scripts ``aelab-train``, ``aelab-eval``, ``aelab-analyze``, ``aelab-audit``, ``aelab-encode``,
``aelab-decode`` and ``aelab-export`` (``[project.scripts]``).

Each composes the same config as ``src/<task>.py`` (``aelab.paths.config_dir()`` is the checkout's
``configs/``), takes the same overrides and calls the same task through the same error handling, so
the command and the script are interchangeable. Hydra's own flags work too: ``--help``, ``--cfg job``,
``-m``, and ``-sc install=bash`` for tab completion of ``aelab-train``.
"""

from __future__ import annotations

import functools

import hydra
from omegaconf import DictConfig

from aelab.cli import one_line_errors, run_task
from aelab.paths import config_dir


def _run(name: str) -> None:
    """The task ``name`` of ``aelab.cli.TASKS``, composed from ``configs/<name>.yaml``."""

    def main(cfg: DictConfig) -> float | None:
        return run_task(name, cfg)

    with one_line_errors():
        hydra.main(config_path=str(config_dir()), config_name=name, version_base="1.3")(main)()


train = functools.partial(_run, "train")
evaluate = functools.partial(_run, "eval")
analyze = functools.partial(_run, "analyze")
audit = functools.partial(_run, "audit")
encode = functools.partial(_run, "encode")
decode = functools.partial(_run, "decode")
export = functools.partial(_run, "export")
