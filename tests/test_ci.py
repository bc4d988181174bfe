"""The GitHub workflow runs what .ci/run runs; its one extra step, fetching the data, is run here
against file:// copies of the official files (this machine reaches no dataset host)."""

import subprocess
from pathlib import Path

import yaml

from conftest import REPO

WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
DOWNLOADS = {
    "https://ossci-datasets.s3.amazonaws.com/mnist/": ("mnist", "MNIST"),
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/": ("fashion_mnist", "FashionMNIST"),
}


def steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["ci"]["steps"]


def test_the_workflow_ends_by_running_ci_run_as_ci_does():
    runs = [step["run"] for step in steps() if "run" in step]
    assert runs[-1].strip().endswith("CI=true bash .ci/run")
    assert any(step.get("with", {}).get("python-version") == "3.11" for step in steps())


def test_the_workflows_data_step_fetches_the_official_files_and_checks_their_md5(tmp_path, mnist, fashion_mnist):
    (fetch,) = [step["run"] for step in steps() if "md5sum" in step.get("run", "")]
    local = {"mnist": mnist, "fashion_mnist": fashion_mnist}
    for url, (dataset, folder) in DOWNLOADS.items():
        assert url in fetch
        fetch = fetch.replace(url, (local[dataset] / folder / "raw").as_uri() + "/")
    checkout = tmp_path / "main"
    checkout.mkdir()
    result = subprocess.run(["bash", "-c", fetch], cwd=checkout, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": OK") == 8
    # where .ci/run's `require` looks: ../shared/data/<dataset>/<Class>/raw
    for folder in ("mnist/MNIST/raw", "fashion-mnist/FashionMNIST/raw"):
        assert len(list((tmp_path / "shared" / "data" / folder).glob("*-ubyte.gz"))) == 4


def test_a_corrupt_download_fails_the_data_step(tmp_path, mnist):
    (fetch,) = [step["run"] for step in steps() if "md5sum" in step.get("run", "")]
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for file in (mnist / "MNIST" / "raw").glob("*.gz"):
        (mirror / file.name).write_bytes(file.read_bytes())
    with (mirror / "t10k-labels-idx1-ubyte.gz").open("ab") as tampered:
        tampered.write(b"\0")
    fetch = fetch.replace("https://ossci-datasets.s3.amazonaws.com/mnist/", mirror.as_uri() + "/")
    checkout = tmp_path / "main"
    checkout.mkdir()
    result = subprocess.run(["bash", "-c", fetch], cwd=checkout, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "t10k-labels-idx1-ubyte.gz: FAILED" in result.stdout
    assert not Path(checkout.parent / "shared" / "data" / "fashion-mnist").exists()
