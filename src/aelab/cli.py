"""What every entry point shares: one-line errors for user mistakes, sweeps that survive failures."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab import upstream
from aelab.errors import AelabError, ConfigError
from aelab.names import VAL_MSE_BEST
from aelab.paths import entry_point
from aelab.quiet import quiet_known_warnings

log = logging.getLogger("aelab")

EXIT_USER_ERROR = 2
EXIT_TERMINATED = 128 + 15  # the shell's convention for "ended by SIGTERM"
EXIT_INTERRUPTED = 128 + 2  # ... and for Ctrl-C
INTERRUPTED_BEFORE = {"train": "training had not started, so nothing was saved"}
# A task by name -> its function, imported when it runs: torch and Lightning take seconds to import,
# and Hydra answers --help and TAB completion without running the task, so those stay fast.
TASKS = {
    "train": "aelab.tasks.train:train",
    "eval": "aelab.tasks.evaluate:evaluate",
    "analyze": "aelab.tasks.analyze:analyze",
    "audit": "aelab.tasks.audit:audit",
    "encode": "aelab.tasks.encode:encode",
    "decode": "aelab.tasks.encode:decode",
    "export": "aelab.tasks.export:export",
}


def task_function(name: str) -> Callable[[DictConfig], dict[str, Any]]:
    return pkgutil.resolve_name(TASKS[name])


def run_task(name: str, cfg: DictConfig) -> float | None:
    """Run the task ``name`` (a key of ``TASKS``); return the best val MSE for Hydra sweepers
    (``None`` for other tasks).

    A user mistake is one line on stderr and exit code 2 (``HYDRA_FULL_ERROR=1`` shows the
    traceback). In a multirun any failure is recorded in the job's summary and the sweep goes on;
    the sweep report then exits non-zero.
    """
    quiet_known_warnings()
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        task = task_function(name)
        log_lightning_through_the_root_logger()
        from aelab.launch import launched_rank
        from aelab.runs import RECORD_DIR, write_record

        if launched_rank() == 0 and not (Path(cfg.paths.output_dir) / RECORD_DIR).exists():
            # a new folder: how it was made, even if the task fails (train rewrites it once checked);
            # of the processes torchrun or srun start for one run, the first one writes
            write_record(Path(cfg.paths.output_dir), cfg)
        result = task(cfg)
    except SystemExit as exit_request:
        # Lightning turns SIGTERM into a bare SystemExit, which would exit 0 as if all went well.
        if exit_request.code is None:
            sys.exit(EXIT_TERMINATED)
        raise
    except KeyboardInterrupt:
        # Ctrl-C during fit is Lightning's to handle (InterruptCheckpoint saves interrupted.ckpt);
        # this is Ctrl-C in start-up, or in eval / analyze, whose results are written at the end
        if not multirun:
            _discard_unstarted(cfg)
        print(
            f"aelab: interrupted; {INTERRUPTED_BEFORE.get(name, 'its results were not written')}"
            + (" (finished jobs of the sweep are kept)" if multirun else ""),
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED)
    except Exception as raised:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        from aelab.runs import NotOurFolder, record_failure

        err = user_error(raised, Path(cfg.paths.output_dir)) or raised
        if multirun and not isinstance(err, NotOurFolder):
            log.error("job failed: %s", err, exc_info=not isinstance(err, AelabError))  # a bug with its traceback
            record_failure(Path(cfg.paths.output_dir), error_line(err))
            return None
        if isinstance(err, AelabError):
            if not isinstance(err, NotOurFolder):
                _discard_unstarted(cfg)
            print(f"aelab: error: {err}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        raise
    return result.get(VAL_MSE_BEST)


def _discard_unstarted(cfg: DictConfig) -> None:
    """A command that failed before it produced anything leaves no run folder behind."""
    from aelab.runs import discard_unstarted

    discard_unstarted(Path(cfg.paths.output_dir), Path(cfg.paths.log_dir))


def user_error(err: BaseException, output_dir: Path | None = None) -> AelabError | None:
    """The translation layer: what a user can fix, as one ``AelabError`` line; ``None`` for a bug.

    Follows explicit causes (``raise ... from``: Hydra's ``instantiate`` wraps what constructors
    raise) and errors of spawned DDP processes to an ``AelabError``, an OS error a user can fix
    (disk full, permissions) or Lightning's refusal of trainer settings. An error raised while
    handling another one is not followed: a bug in a handler keeps its traceback.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException
    from torch.multiprocessing import ProcessRaisedException

    from aelab.launch import raised_in_spawned_process

    if isinstance(err, ProcessRaisedException):
        # raised in a DDP process the fit (or test) spawned: torch passes only its traceback's text
        err = raised_in_spawned_process(err)
    chain: list[BaseException] = []
    link: BaseException | None = err
    while link is not None and link not in chain:
        chain.append(link)
        # OmegaConf reports what a resolver raised (a refused task_name) as the error's context
        link = link.__cause__ or (link.__context__ if isinstance(link, OmegaConfBaseException) else None)
    for cause in chain:
        if isinstance(cause, AelabError):
            return cause
    for cause in chain:
        package, name = type(cause).__module__.partition(".")[0], type(cause).__name__
        for (their_package, their_name, start), line in LIBRARY_USER_ERRORS.items():
            if (package, name) == (their_package, their_name) and str(cause).startswith(start):
                return ConfigError(line)
        if isinstance(cause, OSError) and cause.errno in OS_ERROR_FIXES:
            return ConfigError(os_error_line(cause, output_dir))
        if isinstance(cause, MisconfigurationException):
            return ConfigError(f"Lightning refuses the trainer settings: {first_line(cause)}")
    return None


# What other libraries raise for what a user can fix: (top-level package, exception class, the start
# of its message) -> the way out. The message is matched too: the same class also reports misuse.
LIBRARY_USER_ERRORS = {
    # logger=wandb without an account, where W&B cannot ask for a key (a job, a pipe)
    ("wandb", "UsageError", "No API key configured"): (
        "W&B has no API key here: log in once with `wandb login`, or train offline with "
        "WANDB_MODE=offline (upload later with: wandb sync <run dir>/wandb)"
    ),
}


# what a user can fix (full disks and quotas, permissions, read-only mounts, missing folders) -> how
OS_ERROR_FIXES = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space within your quota",
    errno.EACCES: "make it writable, or point paths.log_dir (or data.data_dir) elsewhere",
    errno.EPERM: "make it writable, or point paths.log_dir (or data.data_dir) elsewhere",
    errno.EROFS: "point paths.log_dir at a writable disk, e.g. paths.log_dir=/tmp/aelab-logs",
    errno.ENOTDIR: "a file stands where a folder is needed; move it or choose another path",
    errno.EEXIST: "a file stands where a folder is needed; move it or choose another path",
    errno.EISDIR: "a folder stands where a file is written; move it or choose another path",
    errno.ENAMETOOLONG: "shorten it: fewer or shorter overrides in a sweep, or a shorter paths.log_dir",
}


def os_error_line(err: OSError, output_dir: Path | None) -> str:
    fix = OS_ERROR_FIXES[err.errno]  # type: ignore[index]  # one of them: user_error checked
    line = f"{err.filename or 'a file'}: {err.strerror or err}; {fix}"
    # a training run (it has checkpoints) can go on from its last one; eval and analyze just rerun
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and output_dir is not None and (output_dir / "checkpoints").is_dir():
        from aelab.callbacks import resume_sweep_command
        from aelab.runs import RECORD_DIR, finish_command, last_checkpoint

        if sweep := resume_sweep_command():
            line += f", then resume the sweep with: {sweep}"
        elif last_checkpoint(output_dir) and (output_dir / RECORD_DIR / "overrides.yaml").is_file():
            line += f", then finish the run with: {finish_command(output_dir)}"
    return line


def first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def hydra_error_line(err: BaseException, argv: list[str]) -> str:
    """Hydra's multi-line composition errors as one line in the schema's wording."""
    from hydra.errors import MissingConfigException, OverrideParseException

    def typed(key: str) -> str:
        return next((arg.split("=", 1)[1] for arg in argv if arg.split("=", 1)[0] == key), "...")

    text = str(err)
    if isinstance(err, MissingConfigException) and "Could not find '" in text and err.missing_cfg_file:
        # an option of a config group that does not exist; Hydra lists the ones that do
        group, _, option = err.missing_cfg_file.rpartition("/")
        allowed = f"one of {', '.join(err.options)}" if err.options else f"an option of configs/{group}/"
        return f"{group}={option} is invalid: it must be {allowed}"
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        key = unknown.group(1)
        if "not in struct" in str(err.__cause__) and not key.startswith("hydra."):
            from aelab.config import unknown_key_message

            return unknown_key_message(key, typed(key), entry_point())
        return f"{key}={typed(key)} is invalid: {first_line(err.__cause__ or err)}"
    if isinstance(err, OverrideParseException):
        lines = text.splitlines()
        reason = lines[0]
        if reason.startswith("LexerNoViableAltException"):
            reason = "it holds a character Hydra cannot read here"
        elif reason.startswith("Error parsing override") and len(lines) > 1:
            reason = lines[1]
        return (
            f"{err.override} is not a valid override ({reason}); write key=value, and quote a value "
            "holding spaces or brackets, e.g. 'data.mirrors=[\"https://host/mnist/\"]'"
        )
    exists = re.search(r"An item is already at '([^']+)'", text)
    if exists:
        key, value = exists.group(1), typed(f"+{exists.group(1)}")
        return f"+{key}={value} adds a key that exists; set it without the +, e.g. {key}={value}"
    if "Config group override must be a string" in text:
        group = next((arg.split("=", 1)[0] for arg in argv if arg.endswith("=null") and "." not in arg), "a group")
        return (
            f"{group}=null is invalid: a config group is chosen by name, e.g. {group}=<option>, or left out "
            f"with ~{group}"
        )
    return "; ".join(first_line(e) for e in (err, err.__cause__) if e is not None)


def _reraise(err: BaseException) -> None:
    raise err


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Around an entry point's ``main()``: Hydra's own errors (unknown keys and options, override
    syntax) become one ``aelab: error:`` line and exit 2 like every other user mistake."""

    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

    # Hydra could not compose the config the command line asks for (MissingConfigException is one)
    composition = (ConfigCompositionException, OverrideParseException, SearchPathException)

    def report(func: Callable[[], Any]) -> Any:
        try:
            return func()
        except Exception as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            if isinstance(err, composition) or "Config group override must be a string" in str(err):
                line = hydra_error_line(err, sys.argv[1:])
            else:
                user = user_error(err)
                if user is None:  # a bug: Hydra prints its traceback
                    return hydra_report(functools.partial(_reraise, err))
                line = str(user)
            print(f"aelab: error: {line}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    with upstream.hydra_errors_reported_by(report) as hydra_report:
        try:
            yield
        except KeyboardInterrupt:
            print("aelab: interrupted while starting; nothing was written", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)


def error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def log_lightning_through_the_root_logger() -> None:
    """Lightning's messages into the run's ``<task>.log`` as well as the console.

    Imported before Hydra configures logging, Lightning found the root logger bare and gave its
    loggers private console handlers (``lightning.pytorch`` and ``lightning.fabric`` stopped from
    propagating); once Hydra's handlers (console and ``<task>.log``) are on the root logger,
    Lightning's records go there instead, once each.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        for handler in list(lightning_log.handlers):
            if type(handler) is logging.StreamHandler:
                lightning_log.removeHandler(handler)
        lightning_log.propagate = True
