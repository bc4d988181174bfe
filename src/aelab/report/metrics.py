"""Latent-space and baseline metrics as pure functions on arrays (no plotting, no Lightning)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def pca_reconstruction_mse(train: np.ndarray, test: np.ndarray, dims: Iterable[int]) -> dict[int, float]:
    """Test MSE of the best linear ``d``-dimensional code, fit on ``train``: the baseline an
    autoencoder with latent size ``d`` has to beat. Rows are flattened images.

    One eigendecomposition of the 784x784 covariance serves every ``d``. With fewer images than
    pixels (a small folder of 3x64x64 pictures: 12,288) the components come from the images'
    singular vectors instead, seconds sooner; the same for every ``d`` below the image count.
    """
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    test = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    dims = sorted(set(int(d) for d in dims))
    mean = train.mean(axis=0)
    centred = train - mean
    if len(train) < train.shape[1] and dims[-1] < len(train):
        components = np.linalg.svd(centred, full_matrices=False)[2].T  # largest variance first
    else:
        _, eigenvectors = np.linalg.eigh(centred.T @ centred)
        components = eigenvectors[:, ::-1]  # largest variance first
    test_centred = test - mean
    result = {}
    for d in dims:
        basis = components[:, :d]
        result[d] = float(np.mean((test_centred - test_centred @ basis @ basis.T) ** 2))
    return result


def cluster_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy of ``clusters`` under the best one-to-one mapping of clusters to labels
    (Hungarian matching): the standard unsupervised-clustering ACC."""
    from scipy.optimize import linear_sum_assignment

    labels = np.asarray(labels)
    clusters = np.asarray(clusters)
    size = max(labels.max(), clusters.max()) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (clusters, labels), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels))


def clustering_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "acc": cluster_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


# test latents voted on per step of ``knn_accuracy``'s progress
KNN_CHUNK = 1000


# wraps an iteration over chunks of work, e.g. with a progress bar
Progress = Callable[[range], Iterable[int]]


def knn_accuracy(train_z, train_y, test_z, test_y, k: int = 5, progress: Progress = iter) -> float:
    """Test accuracy of a k-nearest-neighbour vote among training latents (scikit-learn's
    ``score``, counted a chunk of test latents at a time; ``progress`` wraps the chunks' starts,
    e.g. with a bar: on the official split the search takes minutes)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=k).fit(train_z, train_y)
    chunks = progress(range(0, len(test_z), KNN_CHUNK))
    correct = sum(int((knn.predict(test_z[i : i + KNN_CHUNK]) == test_y[i : i + KNN_CHUNK]).sum()) for i in chunks)
    return correct / len(test_z)


def linear_probe_accuracy(train_z, train_y, test_z, test_y, seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardised latents (a linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return float(probe.fit(train_z, train_y).score(test_z, test_y))


def kmeans_clusters(z: np.ndarray, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(z)


def umap_gmm_clusters(z: np.ndarray, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """N2D (McConville et al., 2020): UMAP to ``n_clusters`` dimensions, then a Gaussian mixture."""
    import umap
    from sklearn.mixture import GaussianMixture

    manifold = umap.UMAP(n_components=n_clusters, n_neighbors=20, min_dist=0.0, random_state=seed)
    embedded = manifold.fit_transform(z)
    return GaussianMixture(n_components=n_clusters, covariance_type="full", random_state=seed).fit_predict(embedded)


MAP_METHODS = ("tsne", "umap", "pca")

# openTSNE with FFT-interpolated repulsion from 10,000 points (the MNIST family's test split), and
# Barnes-Hut below (openTSNE's own "auto" rule): the FFT grid's cost follows the map's extent, not the
# number of points, so 40 points took 7.4 s where Barnes-Hut takes 0.1 s. Two grid intervals per
# unit of the map instead of one: on 10,000 conv latents the optimisation took 8.8 s instead of
# 40.6 s at the same trustworthiness (0.992); scripts/benchmark_tsne.py measures it against
# scikit-learn.
TSNE_SETTINGS = {
    "perplexity": 30,
    "negative_gradient_method": "auto",
    "ints_in_interval": 2,
    "early_exaggeration_iter": 250,
    "n_iter": 750,
}


def embed_2d(z: np.ndarray, method: str, seed: int = 0, n_jobs: int = -1, verbose: bool = False) -> np.ndarray:
    """A 2-D map of ``z``: t-SNE with openTSNE's FFT-accelerated gradients, UMAP, or PCA;
    ``verbose``: the libraries' own progress (t-SNE's iterations, UMAP's epochs)."""
    z = np.asarray(z, dtype=np.float32)
    if z.shape[1] <= 2:
        return np.pad(z, ((0, 0), (0, 2 - z.shape[1])))
    if method == "tsne":
        from openTSNE import TSNE

        return np.asarray(TSNE(**TSNE_SETTINGS, random_state=seed, n_jobs=n_jobs, verbose=verbose).fit(z))
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, random_state=seed, verbose=verbose).fit_transform(z)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(z)
    raise ValueError(f"unknown map method {method!r}; use one of {', '.join(MAP_METHODS)}")


# The neighbourhood trustworthiness compares: scikit-learn defines it for more than twice as many points.
TRUSTWORTHINESS_NEIGHBOURS = 10
FEWEST_TRUSTWORTHINESS_POINTS = 2 * TRUSTWORTHINESS_NEIGHBOURS + 1


def fewest_clustered_points(n_clusters: int, method: str) -> int:
    """The smallest set of latents a clustering into ``n_clusters`` is defined for: k-means needs a
    point per cluster; UMAP's spectral start needs more points than its ``n_clusters`` dimensions + 1."""
    return n_clusters + 2 if method == "umap_gmm" else n_clusters


def trustworthiness(z: np.ndarray, embedded: np.ndarray, n_neighbors: int = TRUSTWORTHINESS_NEIGHBOURS) -> float:
    """How far the 2-D map's neighbourhoods are true neighbourhoods of the latents (1 = all)."""
    from sklearn.manifold import trustworthiness as sk_trustworthiness

    return float(sk_trustworthiness(z, embedded, n_neighbors=n_neighbors))


def per_class_mean(values: np.ndarray, labels: np.ndarray, classes) -> dict[str, float]:
    """Mean of ``values`` per class, keyed by class name (classes absent from ``labels`` left out)."""
    return {classes[int(c)]: float(values[labels == c].mean()) for c in np.unique(labels)}


def anomaly_auroc(errors: np.ndarray, labels: np.ndarray, normal_classes) -> float:
    """AUROC of reconstruction error as a score for "not one of ``normal_classes``"."""
    from aelab.report.audit import auroc

    return auroc(errors, ~np.isin(labels, list(normal_classes)))


def fit_gaussian(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    return z.mean(axis=0), np.cov(z, rowvar=False) + 1e-6 * np.eye(z.shape[1])
