"""The latent-space audit: the ranking methods on codes with known answers, then src/audit.py and
``LoadedRun.neighbours`` on a tiny run with a planted wrong label."""

import csv
import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import aelab
from aelab.data.idx import read_idx, write_idx
from aelab.report import audit

from conftest import QUIET, events_dir, make_tiny_dataset, run_cli


def blobs(n_per: int = 40, k: int = 5, dims: int = 4, seed: int = 0):
    """``k`` well-separated Gaussian blobs, labelled by blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dims)) * 20
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(size=(len(labels), dims))).astype(np.float32), labels


def test_an_image_is_never_its_own_neighbour_and_queries_find_exact_matches():
    codes, _ = blobs()
    pool = audit.CodeIndex(codes)
    neighbours, distances = pool.pool_neighbours(5)
    assert neighbours.shape == distances.shape == (200, 5)
    assert not (neighbours == np.arange(200)[:, None]).any()
    assert (np.diff(distances, axis=1) >= 0).all()
    found, at = pool.query(codes[[7, 123]], 3)
    assert found[:, 0].tolist() == [7, 123] and at[:, 0].tolist() == [0.0, 0.0]
    assert pool.pool_neighbours(5) is pool.pool_neighbours(5)  # the suspect and outlier scores share one search


def test_knn_probabilities_weigh_votes_by_inverse_distance():
    neighbours = np.array([[1, 2, 3]])
    distances = np.array([[1.0, 2.0, 4.0]])
    labels = np.array([0, 1, 1, 2])
    p = audit.knn_probabilities(neighbours, distances, labels, 3)
    np.testing.assert_allclose(p, [[0.0, (1 + 0.5) / 1.75, 0.25 / 1.75]])


def test_the_margin_is_the_best_other_class_minus_the_given_one():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(audit.margins(p, np.array([0, 0, 1])), [-0.5, 0.5, 0.0])


def test_confident_learning_flags_what_beats_its_class_threshold():
    # thresholds: class 0 = mean p0 over images labelled 0 = (0.9 + 0.8 + 0.1) / 3 = 0.6; class 1 = 0.8
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 0, 0, 1, 1])
    assert audit.confident_errors(p, labels).tolist() == [False, False, True, False, False]


def test_a_class_of_one_image_does_not_make_every_image_suspect():
    # its lone member has no neighbour of its class, so the class's threshold is 0
    codes, labels = blobs(k=3)
    codes = np.concatenate([codes, codes[:1] + 100])
    labels = np.append(labels, 3)
    suspects = audit.suspect_labels("knn", audit.CodeIndex(codes), labels, 4, k=10, seed=0)
    assert suspects.flagged.sum() == 1 and suspects.flagged[-1]


@pytest.mark.parametrize("method", audit.SUSPECT_METHODS)
def test_a_planted_wrong_label_ranks_first_with_every_method(method):
    codes, labels = blobs()
    given = labels.copy()
    given[17] = 3  # an image of blob 0 labelled 3
    suspects = audit.suspect_labels(method, audit.CodeIndex(codes), given, 5, k=10, seed=0)
    order = audit.ranking(suspects.score)
    assert order[0] == 17 and suspects.suggested[17] == 0
    if method != "probe":  # the probe's p_0 for it falls just short of class 0's high threshold
        assert suspects.flagged.tolist() == [i == 17 for i in range(200)]
    assert suspects.score[order[1]] < suspects.score[17]


@pytest.mark.parametrize("method", audit.OUTLIER_METHODS)
def test_a_far_point_is_the_top_outlier_with_every_score(method):
    codes, _ = blobs()
    codes[42] += 200
    errors = np.full(len(codes), 0.1)
    errors[42] = 5.0
    scores = audit.outlier_scores(method, audit.CodeIndex(codes), errors, k=10)
    assert audit.ranking(scores)[0] == 42


def test_ties_keep_the_pool_order():
    assert audit.ranking(np.array([0.5, 1.0, 0.5, 1.0])).tolist() == [1, 3, 0, 2]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny MLP run whose data holds one wrong label: test image 13 (a class-3 bar) labelled 8.
    Trained on a part of the training file (data.val_size, data.keep_classes), so the datamodule's
    splits and the files' positions differ: the audit's indices must be the files'."""
    root = tmp_path_factory.mktemp("audit")
    data = make_tiny_dataset(root / "data", n_train=200, n_test=60)
    labels_file = data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels = read_idx(labels_file, ndim=1).copy()
    assert labels[13] == 3
    labels[13] = 8
    write_idx(labels_file, labels)
    trained = run_cli(
        "train.py",
        "model.latent_dim=8",
        "trainer.max_epochs=2",
        "data.val_size=40",
        "data.keep_classes=[0,1,2,3,4,5,6,7,8]",
        f"paths.log_dir={root / 'logs'}",
        QUIET,
        env={"AELAB_DATA_DIR": str(data)},
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    (run,) = (root / "logs" / "train" / "runs").iterdir()
    return root, run


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_audit_puts_the_planted_label_first_and_writes_every_file(planted):
    root, run = planted
    result = run_cli("audit.py", "ckpt_path=last", "queries=[0,13]", f"paths.log_dir={root / 'logs'}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "audit"
    suspects = read_rows(out / "suspect_labels.csv")
    assert suspects[0] == ["split", "index", "label", "suggested", "score"]
    assert suspects[1][:4] == ["test", "13", "8", "3"] and float(suspects[1][4]) > 0.5
    assert len(suspects) == 1 + 60 and {row[0] for row in suspects[1:]} == {"test"}
    assert sorted(int(row[1]) for row in suspects[1:]) == list(range(60))
    scores = [float(row[4]) for row in suspects[1:]]
    assert scores == sorted(scores, reverse=True)
    outliers = read_rows(out / "outliers.csv")
    assert outliers[0] == ["split", "index", "label", "score"] and len(outliers) == 61
    for name in ("suspect_labels", "outliers", "neighbours"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "audit.json").read_text())
    assert report["images_audited"] == 60 and report["pool"] == 260 and report["queries"] == [0, 13]
    assert report["labels_flagged"] >= 1 and report["suspect_method"] == "knn"
    # test image 13's nearest training images by code are bars of its true class, 3
    train_labels = read_idx(root / "data" / "MNIST" / "raw" / "train-labels-idx1-ubyte", ndim=1)
    assert {int(train_labels[i]) for i in report["neighbours"]["13"]["by_code"]} == {3}
    # the console ends with the headline: the most suspect labels, then where the files are
    lines = result.stdout.splitlines()
    assert lines[-8].endswith("the most suspect test labels:")
    assert lines[-7].startswith("  test 13  given 8, suggested 3, score ")
    assert lines[-2].startswith("confident learning flags ") and lines[-1] == f"written to {out}"

    # TensorBoard: the figures, and a projector embedding with the suspect score and suggested class
    # as metadata columns (tests/test_analysis.py: beside analyze's)
    events = EventAccumulator(str(events_dir(run)), size_guidance={"images": 0})
    events.Reload()
    assert {"views/audit_suspect_labels", "views/audit_outliers", "views/audit_neighbours"} <= set(
        events.Tags()["images"]
    )
    projector = (events_dir(run) / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "audited latents, mlp d=8 (MNIST)"' in projector
    metadata = (events_dir(run) / "00000" / "audit_latents" / "metadata.tsv").read_text().splitlines()
    assert metadata[0] == "label\tsuggested\tsuspect_score" and len(metadata) == 61
    assert "8\t3\t" in "\n".join(metadata[1:])

    # the same seed, the same ranking, and a projector config that is not TensorBoard's is replaced
    (events_dir(run) / "projector_config.pbtxt").write_text("not { a projector")
    again = run_cli("audit.py", "ckpt_path=last", "queries=[0]", "top=4", f"paths.log_dir={root / 'logs'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_rows(out / "suspect_labels.csv") == suspects
    assert "projector_config.pbtxt could not be read" in again.stderr + again.stdout
    assert "Embedding dir exists" not in again.stdout
    projector = (events_dir(run) / "projector_config.pbtxt").read_text()
    assert projector.count("embeddings {") == 1 and "audited latents" in projector

    # split=all ranks both files' images, indices as positions in each file
    ranked = run_cli(
        "audit.py", "ckpt_path=last", "split=all", "queries=[0]", "top=4", f"paths.log_dir={root / 'logs'}"
    )
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    rows = read_rows(out / "suspect_labels.csv")[1:]
    assert len(rows) == 260 and sorted(int(r[1]) for r in rows if r[0] == "train") == list(range(200))
    assert sorted(int(r[1]) for r in rows if r[0] == "test") == list(range(60))
    assert rows[0][:4] == ["test", "13", "8", "3"]
    projector = (events_dir(run) / "projector_config.pbtxt").read_text()
    assert projector.count("embeddings {") == 1


def test_neighbours_in_python_find_a_training_image_itself_first(planted):
    root, run = planted
    loaded = aelab.load(run)
    images, _ = loaded.datamodule.official_split("train")
    indices, distances = loaded.neighbours(images[[5, 77]], k=4)
    assert indices.shape == distances.shape == (2, 4)
    assert indices[:, 0].tolist() == [5, 77] and distances[:, 0] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()
    with pytest.raises(ValueError, match="k=201: the training split holds 200 images; ask for 1 to 200"):
        loaded.neighbours(images[:1], k=201)
