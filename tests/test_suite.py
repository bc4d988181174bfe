"""The suite itself: green on the set-up the README gives (without the optional extras)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import EXTRAS, REPO, module_missing

# every test whose name or parameters mention an extra or what needs one (the loggers, the export
# task); test_exports.py's tests of encode, decode and eval need none (its ONNX test is selected)
NEEDS_AN_EXTRA = "mlflow or wandb or many or onnx or (export and not test_exports)"


@pytest.mark.slow
def test_without_the_extras_every_test_that_needs_one_skips_with_the_install_line(tmp_path):
    """The default lock (requirements/dev.lock) has none of the extras: every process of a nested
    pytest (its zygote, its cold interpreters, their DDP children) starts with them hidden, and the
    tests that need one skip, each saying what to install, while the rest pass.

    Where no extra is installed (the default lock), the run this test is part of is that run: the
    rest have passed in it. The nested run then takes only the tests that need an extra."""
    installed = [extra for extra in EXTRAS if module_missing(extra) is None]
    selection = ["-k", NEEDS_AN_EXTRA] if installed else ["-m", "extra"]
    hidden = [module for modules in EXTRAS.values() for module in modules]
    (tmp_path / "sitecustomize.py").write_text(f"import sys\n\nfor name in {hidden!r}:\n    sys.modules[name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("CI", None)  # outside CI a missing extra skips
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q", "-rs"]
        + [*selection, "--durations=0", "tests"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("extra" in line and "make install LOCK=requirements/all.lock" in line for line in skips), skips
    # the tests that only mention an extra pass without it (they are in the nested run only where
    # some extra is installed)
    assert bool(re.search(r"\d+ passed", result.stdout)) == bool(installed), result.stdout[-2000:]


def test_every_mutation_of_scripts_mutations_still_applies_to_the_package():
    """A mutation whose text the package no longer holds would stop the check halfway."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutations", REPO / "scripts" / "mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutations"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    for mutation in module.MUTATIONS:
        assert mutation.mutated((REPO / mutation.file).read_text()) != (REPO / mutation.file).read_text()
