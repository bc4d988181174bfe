"""Where the project lives, so ``logs/`` and ``data/`` do not depend on the working directory.

``configs/paths/default.yaml`` reads ``${project_root:}``. In a checkout (the package installed
editable from ``src/``) that is the repository; installed elsewhere, the working directory.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def project_root() -> Path:
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "configs").is_dir() and (checkout / "src" / "aelab").is_dir():
        return checkout
    return Path.cwd()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(project_root()))
