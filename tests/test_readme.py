"""The Python snippets of README.md and docs/ run as printed (read from the pages, so an edit there
is tested here). Their commands are run by tests/test_docs.py; the extension page's files by
tests/test_extension.py."""

import pytest

from conftest import QUIET, REPO, run_cli
from pages import code


def python_blocks(page: str) -> list[str]:
    return code(REPO / page, "python")


def test_the_pages_have_the_snippets_this_file_runs():
    (load,) = python_blocks("README.md")
    (instantiate,) = python_blocks("docs/configuration.md")
    assert "aelab.load" in load and "initialize_config_dir" in instantiate
    # the reference page shows the README's snippet, so the test below runs both
    assert python_blocks("docs/using-a-model.md") == [load]


def test_the_instantiate_snippet_builds_the_model_and_datamodule(tmp_path, tiny_mnist):
    check = "\nprint(type(model).__name__, type(datamodule).__name__, model.backbone)\n"
    (snippet,) = python_blocks("docs/configuration.md")
    result = run_cli("-c", snippet + check, env={"AELAB_DATA_DIR": str(tiny_mnist)}, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["AutoEncoder", "MNISTLikeDataModule", "conv"]


@pytest.mark.slow
def test_the_load_snippet_encodes_the_newest_runs_test_images(tmp_path, tiny_mnist, new_repo_runs):
    # the snippet reads the repository's newest run (ckpt_path=last), so one is trained there
    trained = run_cli("train.py", "trainer.max_epochs=1", f"data.data_dir={tiny_mnist}", QUIET)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert len(new_repo_runs()) == 1
    (snippet,) = python_blocks("README.md")
    result = run_cli("-c", snippet, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # latent_dim 3; the tiny test split's labels run 0, 1, 2, ...
    assert result.stdout.strip() == "(8, 3) ['0', '1', '2', '3', '4', '5', '6', '7']"
