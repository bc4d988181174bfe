"""Fixtures: tiny generated MNIST in IDX format, the real mnist-10k copy, composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from aelab.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def make_tiny_mnist(root: Path, n_train: int = 96, n_test: int = 40, seed: int = 0) -> Path:
    """Write ``root/MNIST/raw`` with random-but-structured digits: each label draws a bar."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 4:24, 2 + 2 * label : 4 + 2 * label] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return make_tiny_mnist(tmp_path / "data")


@pytest.fixture(scope="session")
def mnist10k() -> Path:
    """The real mnist-10k copy. In CI its absence is a failure, never a skip."""
    value = os.environ.get("AELAB_DATA_DIR")
    if value and (Path(value) / "MNIST" / "raw").is_dir():
        return Path(value)
    message = "AELAB_DATA_DIR must point at mnist-10k (a folder holding MNIST/raw)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def compose_train(tmp_path: Path, data_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The train config as ``src/train.py`` would compose it, writing under ``tmp_path``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.data.data_dir = str(data_dir)
    return cfg


def run_cli(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an entry point as a user does, from the repository root."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(REPO / "src" / script), *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
