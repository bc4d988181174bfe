"""What every entry point shares: one-line errors for user mistakes, sweeps that survive failures."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.errors import AelabError
from aelab.names import VAL_MSE_BEST
from aelab.runs import RunDirectoryBusy, record_failure

log = logging.getLogger("aelab")

EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + 15  # the shell's convention for "ended by SIGTERM"


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> float | None:
    """Run ``task``; return the best val MSE for Hydra sweepers (``None`` for other tasks).

    A user mistake is one line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1`` shows the
    traceback). In a multirun any failure is recorded in the job's summary and the sweep goes on;
    the sweep report then exits non-zero.
    """
    quiet_known_warnings()
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = task(cfg)
    except SystemExit as exit_request:
        # Lightning turns SIGTERM into a bare SystemExit, which would exit 0 as if all went well.
        if exit_request.code is None:
            sys.exit(EXIT_TERMINATED)
        raise
    except Exception as raised:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        err = user_error(raised) or raised
        if multirun and not isinstance(err, RunDirectoryBusy):
            if isinstance(err, AelabError):
                log.error("job failed: %s", err)
            else:
                log.exception("job failed: %s", err)
            record_failure(Path(cfg.paths.output_dir), error_line(err))
            return None
        if isinstance(err, AelabError):
            print(f"aelab: error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    return result.get(VAL_MSE_BEST)


def user_error(err: BaseException) -> AelabError | None:
    """The ``AelabError`` behind ``err``: Hydra's ``instantiate`` wraps what constructors raise."""
    while err is not None:
        if isinstance(err, AelabError):
            return err
        err = err.__cause__
    return None


def error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def quiet_known_warnings() -> None:
    # Lightning's own pytree call under torch >= 2.10, and a hint about step logging, which aelab
    # does not use (it logs once per epoch): neither is actionable for a user.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* logging interval")
    # umap-learn: a fixed random_state (which aelab always sets, for reproducibility) means one thread
    warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden to 1 by setting random_state")
    # openTSNE announces at INFO that it was given an initialisation it was given
    logging.getLogger("openTSNE").setLevel(logging.WARNING)
    # advertisements for Lightning's cloud services, printed on every run
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvert) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropAdvert())


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage().lower()
        return "litlogger" not in message and "litmodels" not in message
