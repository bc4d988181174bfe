"""Where the project lives, so ``logs/`` and ``data/`` do not depend on the working directory.

``configs/paths/default.yaml`` reads ``${project_root:}``. In a checkout (the package installed
editable from ``src/``) that is the repository; installed elsewhere, the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import OmegaConf

from aelab.errors import ConfigError, hydra_value

# A directory name made from a user's string stays one directory inside the log root.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")
SAFE_NAME_RULE = "a plain name of letters, digits and _ . - (it names a directory under the log root), e.g. my_run"


def project_root() -> Path:
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "configs").is_dir() and (checkout / "src" / "aelab").is_dir():
        return checkout
    return Path.cwd()


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


def register_resolvers() -> None:
    for name, resolver in (
        ("project_root", lambda: str(project_root())),
        ("checked_name", checked_name),
        ("path_component", path_component),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
