"""Where the project lives, so ``logs/`` and ``data/`` do not depend on the working directory.

``configs/paths/default.yaml`` reads ``${project_root:}``. In a checkout (the package installed
editable from ``src/``) that is the repository; installed elsewhere (a wheel), the working
directory. The configs are the checkout's ``configs/``, or the copy a wheel carries.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aelab.errors import ConfigError, hydra_value
from aelab.launch import ddp_strategy, run_stamp

# A directory name made from a user's string stays one directory inside the log root.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")
SAFE_NAME_RULE = "a plain name of letters, digits and _ . - (it names a directory under the log root), e.g. my_run"


def checkout() -> Path | None:
    """The repository this package runs from (an editable install), or ``None`` (a wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "configs").is_dir() and (root / "src" / "aelab").is_dir() else None


def project_root() -> Path:
    return checkout() or Path.cwd()


def config_dir() -> Path:
    """What ``src/<task>.py`` and the ``aelab-<task>`` commands compose from: ``configs/`` of the
    checkout, or ``aelab/configs`` inside an installed wheel (pyproject.toml maps one to the other)."""
    return (checkout() or Path(__file__).resolve().parent) / "configs"


def entry_point() -> str:
    """What this process was started as, for messages: ``src/train.py`` or ``aelab-train``; anything
    else (a notebook, a benchmark script, pytest) trains as ``src/train.py`` would."""
    started = Path(sys.argv[0])
    if started.name.startswith("aelab-"):
        return started.name
    root = checkout()
    if root is not None and started.suffix == ".py" and started.resolve().parent == root / "src":
        return f"src/{started.name}"
    return "src/train.py"


def command_line() -> str:
    """How to type ``entry_point()`` again: ``python src/train.py`` or ``aelab-train``."""
    started = entry_point()
    return f"python {started}" if started.endswith(".py") else started


def is_safe_name(value: object) -> bool:
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value


def checked_name(key: str, value: object) -> str:
    """``${checked_name:task_name,${task_name}}``: refuses ``../x`` before Hydra makes the directory."""
    if not is_safe_name(value):
        raise ConfigError(f"{key}={hydra_value(value)} is invalid: it must be {SAFE_NAME_RULE}")
    return str(value)


def path_component(value: object) -> str:
    """``${path_component:${hydra.job.override_dirname}}``: an override such as ``+tag=a/../..``
    names one directory (slashes become ``_``) instead of a path out of the sweep."""
    return str(value).replace("/", "_").replace("\\", "_") or "_"


# a run folder's name stays well under the 255 bytes a file system allows
MAX_SUFFIX = 120


def run_suffix(_root_: Any) -> str:
    """``${run_suffix:}``: ``_model-conv_model.latent_dim-5`` after a single run's time, made from
    ``hydra.job.override_dirname``, so its folder (and TensorBoard's run list) says what it is;
    ``""`` without overrides. Only letters, digits and ``. _ -``: the path can be pasted into
    ``ckpt_path=`` unquoted (Hydra's grammar reads ``=``, ``,`` and brackets as syntax), and it is
    one directory. Read unresolved: an override holding a broken ``${...}`` must reach the schema's
    one-line message, not break the folder's name first."""
    job = OmegaConf.to_container(_root_.hydra.job, resolve=False)
    assert isinstance(job, dict)
    name = str(job.get("override_dirname") or "").replace("=", "-")
    if not name:
        return ""
    return "_" + re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:MAX_SUFFIX]


def run_label(output_dir: object, log_dir: object) -> str:
    """``${run_label:${paths.output_dir},${paths.log_dir}}``: a run as MLflow and W&B list it, its
    folder's name first and where it is after, e.g. ``model.latent_dim=5
    (train/multiruns/2026-11-30_12-00-00)``: their run tables cut long names, and a sweep's jobs
    differ only in the last part of their path."""
    output, root = Path(str(output_dir)).resolve(), Path(str(log_dir)).resolve()
    parent = output.parent
    # a run put outside the log root (hydra.run.dir=...) says its whole path
    where = parent.relative_to(root) if parent.is_relative_to(root) else parent
    return output.name if where == Path() else f"{output.name} ({where.as_posix()})"


def register_resolvers() -> None:
    for name, resolver in (
        ("project_root", lambda: str(project_root())),
        ("checked_name", checked_name),
        ("path_component", path_component),
        ("run_suffix", run_suffix),
        ("run_stamp", run_stamp),
        ("ddp_strategy", ddp_strategy),
        # configs/model/mlp.yaml: the decoder's widths are the encoder's, reversed, unless set
        ("mirrored", lambda widths: list(reversed(list(widths)))),
        ("run_label", run_label),
    ):
        if not OmegaConf.has_resolver(name):
            # cached, as Hydra's ${now:} is: a folder's time read twice is one time
            OmegaConf.register_new_resolver(name, resolver, use_cache=name == "run_stamp")
