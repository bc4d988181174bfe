"""The README's Python snippets run as printed (read from README.md, so an edit there is tested here).
The extension snippet is exercised by tests/test_extension.py, which builds the same two classes."""

import re
import subprocess

import pytest

from conftest import QUIET, REPO, run_cli


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)


def run_snippet(code: str, cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_cli("-c", code, env=env, cwd=cwd, timeout=300)


def test_the_readme_has_the_snippets_this_file_runs():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "initialize_config_dir" in blocks[0] and "aelab.load" in blocks[1] and "SparseAutoEncoder" in blocks[2]


def test_the_instantiate_snippet_builds_the_model_and_datamodule(tmp_path, tiny_mnist):
    check = "\nprint(type(model).__name__, type(datamodule).__name__, model.backbone)\n"
    result = run_snippet(python_blocks()[0] + check, tmp_path, {"AELAB_DATA_DIR": str(tiny_mnist)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["AutoEncoder", "MNISTLikeDataModule", "conv"]


@pytest.mark.slow
# one worker for the tests that train into the repository's logs/: each removes the runs made while it ran
@pytest.mark.xdist_group("repository_logs")
def test_the_load_snippet_encodes_the_newest_runs_test_images(tmp_path, tiny_mnist, new_repo_runs):
    # the snippet reads the repository's newest run (ckpt_path=last), so one is trained there
    trained = run_cli("train.py", "trainer.max_epochs=1", f"data.data_dir={tiny_mnist}", QUIET)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert len(new_repo_runs()) == 1
    result = run_snippet(python_blocks()[1], tmp_path, {})
    assert result.returncode == 0, result.stderr[-3000:]
    # latent_dim 3; the tiny test split's labels run 0, 1, 2, ...
    assert result.stdout.strip() == "(8, 3) ['0', '1', '2', '3', '4', '5', '6', '7']"
