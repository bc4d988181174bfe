"""Latent-space and baseline metrics as pure functions on arrays (no plotting, no Lightning)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def pca_reconstruction_mse(train: np.ndarray, test: np.ndarray, dims: Iterable[int]) -> dict[int, float]:
    """Test MSE of the best linear ``d``-dimensional code, fit on ``train``: the baseline an
    autoencoder with latent size ``d`` has to beat. Rows are flattened images.

    One eigendecomposition of the 784x784 covariance serves every ``d``.
    """
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    test = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    mean = train.mean(axis=0)
    centred = train - mean
    _, eigenvectors = np.linalg.eigh(centred.T @ centred)
    components = eigenvectors[:, ::-1]  # largest variance first
    test_centred = test - mean
    result = {}
    for d in sorted(set(int(d) for d in dims)):
        basis = components[:, :d]
        residual = test_centred - (test_centred @ basis) @ basis.T
        result[d] = float(np.mean(residual**2))
    return result
