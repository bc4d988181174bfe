"""Latent-space metrics on synthetic data with known answers, and analyze.py end to end."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from aelab.data import DATASETS
from aelab.report import metrics as analysis

from conftest import QUIET, events_dir, make_tiny_dataset, run_cli


def blobs(n_per: int = 30, k: int = 10, dims: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.eye(k, dims * 2)[:, :dims] * 0 + rng.normal(size=(k, dims)) * 50
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


def test_perfectly_separated_clusters_score_acc_nmi_ari_1():
    labels = np.repeat(np.arange(10), 5)
    scores = analysis.clustering_scores(labels, labels)
    assert scores == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}


def test_cluster_ids_permuted_give_the_same_acc():
    labels = np.repeat(np.arange(10), 5)
    permutation = np.random.default_rng(3).permutation(10)
    assert analysis.cluster_accuracy(labels, permutation[labels]) == 1.0
    noisy = labels.copy()
    noisy[:7] = 9
    assert analysis.cluster_accuracy(labels, permutation[noisy]) == analysis.cluster_accuracy(labels, noisy)


def test_cluster_accuracy_of_a_known_confusion():
    # clusters {0,1,2} -> label 0 matches 2 of 3, cluster 3 -> label 1 matches 1; best map gives 3/4... of 4
    assert analysis.cluster_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 1, 0])) == 0.75


def test_knn_and_linear_probe_are_perfect_on_separated_blobs():
    z, y = blobs()
    assert analysis.knn_accuracy(z[::2], y[::2], z[1::2], y[1::2], k=5) == 1.0
    assert analysis.linear_probe_accuracy(z[::2], y[::2], z[1::2], y[1::2]) == 1.0


def test_knn_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(2000, 4)), rng.integers(0, 10, 2000)
    assert analysis.knn_accuracy(z[:1000], y[:1000], z[1000:], y[1000:]) < 0.2


def test_kmeans_recovers_separated_blobs():
    z, y = blobs()
    assert analysis.clustering_scores(y, analysis.kmeans_clusters(z, 10))["acc"] == 1.0


def test_anomaly_auroc_is_1_when_errors_separate_and_half_when_random():
    labels = np.repeat(np.arange(10), 10)
    errors = np.where(labels == 3, 0.01, 0.5)
    assert analysis.anomaly_auroc(errors, labels, [3]) == 1.0
    random_errors = np.random.default_rng(0).random(len(labels))
    assert abs(analysis.anomaly_auroc(random_errors, labels, [3]) - 0.5) < 0.2


def test_trustworthiness_of_a_faithful_map_is_1():
    z = np.random.default_rng(0).normal(size=(200, 2))
    assert analysis.trustworthiness(z, z * 3 + 1) == pytest.approx(1.0)


def test_two_dimensional_latents_are_their_own_map():
    z = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    assert np.array_equal(analysis.embed_2d(z, "tsne"), z)
    one = z[:, :1]
    assert np.array_equal(analysis.embed_2d(one, "umap"), np.hstack([one, np.zeros_like(one)]))


def test_per_class_mean_is_keyed_by_class_name():
    classes = [str(d) for d in range(7)] + ["seven"]
    assert analysis.per_class_mean(np.array([1.0, 3.0, 10.0]), np.array([0, 0, 7]), classes) == {
        "0": 2.0,
        "seven": 10.0,
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    data = make_tiny_dataset(root / "data", n_train=200, n_test=60)
    result = run_cli(
        "train.py",
        "model=conv",
        "model.latent_dim=8",
        "data.keep_classes=[1]",
        "trainer.max_epochs=2",
        f"paths.log_dir={root / 'logs'}",
        QUIET,
        env={"AELAB_DATA_DIR": str(data)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    return root, run


@pytest.mark.slow
def test_analyze_writes_json_figures_and_projector(tiny_run):
    root, run = tiny_run
    result = run_cli(
        "analyze.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "map=pca",
        "umap_gmm=false",
        f"paths.log_dir={root / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    assert report["latent_size"] == 8 and report["n_test"] == 60 and report["n_train"] == 200
    for key in (
        "test/mse",
        "test/pca_mse",
        "latent/knn_accuracy",
        "latent/linear_probe_accuracy",
        "latent/kmeans_acc",
        "latent/kmeans_nmi",
        "latent/kmeans_ari",
    ):
        assert 0 <= report[key] < 2
    assert 0 < report["latent/trustworthiness_pca"] <= 1
    assert list(report["test/mse_per_class"]) == [str(d) for d in range(10)]
    assert report["normal_classes"] == ["1"] and 0 <= report["test/anomaly_auroc"] <= 1
    for name in ("map_pca", "per_class_errors", "interpolation", "random_codes"):
        assert (run / "analysis" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    projector = (events_dir(run) / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test latents, conv d=8 (MNIST)"' in projector and "sprite" in projector
    events = EventAccumulator(str(events_dir(run)))
    events.Reload()
    # the numbers as one table, not as one-point charts ahead of the loss curves
    assert "analysis/numbers/text_summary" in events.Tags()["tensors"]
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith(("latent/", "test/"))]
    assert {"views/map_pca", "views/interpolation"} <= set(events.Tags()["images"])
    assert "encoding 200 train and 60 test images" in result.stderr + result.stdout
    # the console ends with the numbers measured, then where they are
    printed = result.stdout.splitlines()
    assert printed[-1] == f"written to {run / 'analysis'}"
    assert any(line.split() == ["latent/knn_accuracy", f"{report['latent/knn_accuracy']:.4g}"] for line in printed)


def test_figures_can_be_vector_files_with_their_text_as_text(tiny_run):
    root, run = tiny_run
    result = run_cli(
        "analyze.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "map=pca",
        "umap_gmm=false",
        "figure_format=svg",
        f"paths.log_dir={root / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    svg = (run / "analysis" / "map_pca.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert (
        "pca map of test latents, conv d=8 (MNIST)" in svg
        and "reconstruction MSE per image" in (run / "analysis" / "per_class_errors.svg").read_text()
    )
    audited = run_cli(
        "audit.py", "ckpt_path=last", "figure_format=pdf", "figure_dpi=72", f"paths.log_dir={root / 'logs'}"
    )
    assert audited.returncode == 0, audited.stderr[-3000:]
    for name in ("suspect_labels", "outliers", "neighbours"):
        assert (run / "audit" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    # the audit's embedding joins analyze's in the projector instead of replacing it
    projector = (events_dir(run) / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test latents, conv d=8 (MNIST)"' in projector
    assert 'tensor_name: "audited latents, conv d=8 (MNIST)"' in projector


@pytest.mark.slow
def test_analyze_a_sweep_writes_one_table_and_a_figure(tmp_path, tiny_mnist):
    sweep_dir = tmp_path / "sweep"
    trained = run_cli(
        "train.py",
        "-m",
        "model.latent_dim=2,4",
        "trainer.max_epochs=1",
        f"hydra.sweep.dir={sweep_dir}",
        QUIET,
        env={"AELAB_DATA_DIR": str(tiny_mnist)},
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    before = sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*"))
    # written elsewhere (results_dir): each job's analysis in its own folder, the table beside them
    results = tmp_path / "results"
    result = run_cli(
        "analyze.py",
        f"sweep_dir={sweep_dir}",
        f"results_dir={results}",
        "map=pca",
        "umap_gmm=false",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    with open(results / "analysis_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["latent_size"] for r in rows] == ["2", "4"]
    assert rows[0]["job"] == "model.latent_dim=2,trainer.max_epochs=1"
    assert all(0 <= float(r["latent/knn_accuracy"]) <= 1 and float(r["test/mse"]) > 0 for r in rows)
    assert (results / "analysis_vs_latent_size.png").is_file()
    assert "| mlp | plain | 2 |" in (results / "analysis_summary.md").read_text()
    assert (results / rows[0]["job"] / "analysis" / "analysis.json").is_file()
    assert sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*")) == before  # the sweep untouched


@pytest.mark.slow
def test_every_map_and_the_n2d_clustering_on_a_tiny_run(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", n_train=200, n_test=120)
    trained = run_cli(
        "train.py",
        "model.latent_dim=4",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        QUIET,
        env={"AELAB_DATA_DIR": str(data)},
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_cli("analyze.py", "ckpt_path=last", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    for method in ("tsne", "umap", "pca"):
        assert 0 < report[f"latent/trustworthiness_{method}"] <= 1
        assert (run / "analysis" / f"map_{method}.png").is_file()
    assert {"latent/umap_gmm_acc", "latent/umap_gmm_nmi", "latent/umap_gmm_ari"} <= set(report)


@pytest.mark.slow
def test_fashion_mnist_trains_and_eval_and_analyze_use_its_checkpoint_and_class_names(tmp_path, fashion_mnist):
    """The issue's first must-show: no data override after training."""
    trained = run_cli(
        "train.py",
        "data=fashion_mnist",
        # the MLP with a 10-number code: the same checks as the conv AE at a third of its analysis time
        # (kNN and the linear probe over 256 numbers per image take most of it)
        "model.latent_dim=10",
        f"data.data_dir={fashion_mnist}",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
        QUIET,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["dataset"] == "fashion_mnist" and summary["data"] == "Fashion-MNIST"
    # AELAB_DATA_DIR (MNIST in CI) must not pull eval to the wrong dataset
    evaluated = run_cli("eval.py", "ckpt_path=last", f"paths.log_dir={tmp_path}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((run / "eval.json").read_text())
    assert report["n_test"] == 10000 and report["data"] == "Fashion-MNIST"
    assert report["test/mse"] == pytest.approx(summary["val/mse"], rel=1e-5)
    assert list(report["test/mse_per_class"])[:2] == ["T-shirt/top", "Trouser"]
    analyzed = run_cli("analyze.py", "ckpt_path=last", "map=pca", "umap_gmm=false", f"paths.log_dir={tmp_path}")
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis["n_train"] == 60000 and analysis["latent_size"] == 10
    assert "Ankle boot" in analysis["test/mse_per_class"]
    # one epoch already gives a latent space where neighbours share a class far above chance (0.1)
    assert analysis["latent/knn_accuracy"] > 0.7
    metadata = next(events_dir(run).glob("**/metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 10000 and set(metadata) == set(DATASETS["fashion_mnist"].classes)


def test_the_latent_size_figure_promises_the_dashed_n2d_line_only_when_it_draws_it():
    from aelab.report.plots import metrics_vs_latent_size

    row = {"backbone": "mlp", "objective": "plain", "data": "MNIST", "latent/knn_accuracy": 0.9}
    rows = [{**row, "latent_size": d, "latent/kmeans_acc": 0.5, "test/mse": 0.1} for d in (2, 4)]
    titles = [ax.get_title() for ax in metrics_vs_latent_size(rows).axes]
    assert titles[1] == "clustering ACC (k-means)"
    rows = [{**r, "latent/umap_gmm_acc": 0.7} for r in rows]
    panel = metrics_vs_latent_size(rows).axes[1]
    assert panel.get_title() == "clustering ACC (k-means; UMAP+GMM dashed)"
    assert [line.get_linestyle() for line in panel.get_lines()] == ["-", "--"]
