"""What a trained latent space is for: search by example, suspect labels, outliers.

Every function here takes codes as an (N, D) float array (``D`` = the model's latent size, a conv
map flattened) and labels as (N,) class indices, and is plain NumPy and scikit-learn, so the audit
task, ``LoadedRun.neighbours`` and ``scripts/audit_benchmark.py`` share it.

Neighbours come from scikit-learn's ``NearestNeighbors`` (a k-d or ball tree for small codes, a
chunked brute-force search for wide ones): it never builds the N x N distance matrix, which at
70,000 images would be 39 GB in float64.

Each suspect-label method turns codes into out-of-sample class probabilities (an image never votes
for itself), and ranks by the margin ``max_{j != label} p_j - p_label``, Northcutt et al.'s
"normalized margin": ~-1 for an image its neighbourhood agrees with, ~+1 for one it contradicts.
Which method is the default, and why, is measured by ``scripts/audit_benchmark.py`` (docs/results.md, "The audit's
defaults").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUSPECT_METHODS = ("knn", "probe", "confident")
OUTLIER_METHODS = ("reconstruction", "knn")


class CodeIndex:
    """Nearest neighbours among a fixed set of codes (``pool``, (N, D))."""

    def __init__(self, pool: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.codes = np.ascontiguousarray(pool, dtype=np.float32)
        self.size = len(self.codes)
        self._search = NearestNeighbors().fit(self.codes)
        self._own: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def query(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest pool members of each code, nearest first: indices into the pool (M, k)
        and Euclidean distances (M, k)."""
        distances, indices = self._search.kneighbors(np.asarray(codes, dtype=np.float32), n_neighbors=k)
        return indices, distances

    def pool_neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest *other* pool members of every pool member: (N, k) indices and distances.
        An image is never its own neighbour (an exact duplicate of it still is one). Kept, as the
        suspect and the outlier scores both ask."""
        if k not in self._own:
            distances, indices = self._search.kneighbors(n_neighbors=k)
            self._own[k] = indices, distances
        return self._own[k]


def knn_probabilities(neighbours: np.ndarray, distances: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, C) class probabilities from each image's neighbours' labels, each vote weighted by
    1 / distance (so the ranking has few ties), an exact duplicate's vote counting most."""
    weights = 1.0 / np.maximum(distances, 1e-12)
    probabilities = np.zeros((len(neighbours), n_classes))
    np.add.at(probabilities, (np.arange(len(neighbours))[:, None], labels[neighbours]), weights)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def probe_probabilities(codes: np.ndarray, labels: np.ndarray, n_classes: int, seed: int, folds: int = 5) -> np.ndarray:
    """(N, C) out-of-fold probabilities of a multinomial logistic regression on standardised codes:
    each image is scored by a classifier fit on the other ``folds - 1`` folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out_of_fold = cross_val_predict(classifier, codes, labels, cv=split, method="predict_proba")
    probabilities = np.zeros((len(codes), n_classes))
    probabilities[:, np.unique(labels)] = out_of_fold  # its columns: the classes present, in order
    return probabilities


def margins(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``max_{j != label} p_j - p_label`` per image: higher = more suspect."""
    rows = np.arange(len(labels))
    given = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return others.max(axis=1) - given


def confident_errors(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confident learning's off-diagonal of the confident joint (Northcutt, Jiang & Chuang, 2021):
    an image is flagged when some other class's probability reaches that class's threshold (the
    mean probability of it over the images labelled with it) and beats the given class's. Their
    count estimates how many labels are wrong, whatever the ranking's cut-off."""
    n_classes = probabilities.shape[1]
    thresholds = np.array(
        [probabilities[labels == c, c].mean() if (labels == c).any() else np.inf for c in range(n_classes)]
    )
    # p > 0 too: a class whose members all get p = 0 (a lone image of it) has a threshold of 0,
    # which every image would reach
    confident = np.where((probabilities >= thresholds) & (probabilities > 0), probabilities, -np.inf)
    return np.isfinite(confident.max(axis=1)) & (confident.argmax(axis=1) != labels)


@dataclass
class Suspects:
    """Every image's suggested class (the most probable) and suspicion score; ``flagged`` the images
    confident learning counts as wrongly labelled."""

    suggested: np.ndarray
    score: np.ndarray
    flagged: np.ndarray


def suspect_labels(method: str, pool: CodeIndex, labels: np.ndarray, n_classes: int, k: int, seed: int) -> Suspects:
    """``knn``: a distance-weighted vote of the ``k`` nearest other codes; ``probe``: a
    cross-validated logistic regression; ``confident``: the kNN vote's probabilities, the images
    confident learning flags ranked first."""
    if method == "probe":
        probabilities = probe_probabilities(pool.codes, labels, n_classes, seed)
    else:
        neighbours, distances = pool.pool_neighbours(k)
        probabilities = knn_probabilities(neighbours, distances, labels, n_classes)
    score = margins(probabilities, labels)
    flagged = confident_errors(probabilities, labels)
    if method == "confident":
        # margins lie in [-1, 1]: flagged images first, each group by its margin
        score = score + 2.0 * flagged
    return Suspects(probabilities.argmax(axis=1), score, flagged)


def outlier_scores(method: str, pool: CodeIndex, errors: np.ndarray, k: int) -> np.ndarray:
    """Higher = less like the rest. ``reconstruction``: the image's reconstruction MSE; ``knn``: the
    mean distance from its code to the ``k`` nearest other codes. Reconstruction is the default by
    measurement: an encoder maps an unfamiliar image (a shirt among digits) onto the codes it knows,
    so its code looks ordinary, while the decoder cannot draw it back."""
    if method == "reconstruction":
        return np.asarray(errors, dtype=np.float64)
    _, distances = pool.pool_neighbours(k)
    return distances.mean(axis=1)


def ranking(score: np.ndarray) -> np.ndarray:
    """Positions sorted by ``score``, highest first; ties keep their order (deterministic)."""
    return np.argsort(-score, kind="stable")


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))
