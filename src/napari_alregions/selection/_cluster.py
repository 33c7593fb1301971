"""k-means shared by the clustering selectors."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.cluster.vq import kmeans2


def kmeans(data: np.ndarray, n_clusters: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, D) and labels (M,) of k-means++ / Lloyd, deterministic for ``rng``."""
    data = np.asarray(data, dtype=np.float64)
    with warnings.catch_warnings():
        # an empty cluster keeps its centroid; that is acceptable here
        warnings.filterwarnings("ignore", message=".*clusters is empty.*")
        centroids, labels = kmeans2(data, n_clusters, minit="++", seed=rng, iter=30)
    return centroids, labels


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split an integer total proportionally to weights (largest remainders; ties: lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if total <= 0 or w.sum() <= 0:
        return np.zeros(w.size, dtype=np.int64)
    exact = total * w / w.sum()
    base = np.floor(exact).astype(np.int64)
    rest = total - int(base.sum())
    order = np.lexsort((np.arange(w.size), -(exact - base)))
    base[order[:rest]] += 1
    return base
