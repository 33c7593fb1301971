"""k-means shared by the clustering selectors."""

from __future__ import annotations

import numpy as np

__all__ = ["apportion", "kmeans"]


def kmeans(
    data: np.ndarray,
    n_clusters: int,
    rng: np.random.Generator,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, D) and labels (M,) of the best of ``n_init`` k-means runs.

    Each run seeds with greedy k-means++ (the best of 2 + ln n candidates per centre, as
    scikit-learn does) and iterates Lloyd's steps until no label changes or the centres
    move less than ``tol`` times the data's mean variance (squared, summed; scikit-learn's
    criterion), or ``max_iter``; a cluster left empty takes the point farthest from its
    centre. The run with the lowest
    inertia (sum of squared distances to the centres; ties: the earlier run) is returned.
    Deterministic for ``rng``.

    Parameters
    ----------
    data : (M, D) array
    n_clusters : int
        1 <= n_clusters <= M.
    rng : Generator
    n_init : int
        Runs from different seeds.
    max_iter : int
        Lloyd steps per run at most.
    tol : float
        Convergence threshold on the centres' movement, relative to the data's variance.

    Returns
    -------
    centroids : (n_clusters, D) float ndarray
    labels : (M,) int ndarray
    """
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2 or not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be between 1 and the {len(x)} points, got {n_clusters}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be a positive integer, got {n_init!r}")
    x2 = np.einsum("ij,ij->i", x, x)
    shift = tol * float(np.var(x, axis=0).mean())
    best = None
    for _ in range(n_init):
        centroids, labels, inertia = _lloyd(x, x2, _plusplus(x, x2, n_clusters, rng), max_iter, shift)
        if best is None or inertia < best[2]:
            best = (centroids, labels, inertia)
    return best[0], best[1]


def inertia(data: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of the points to their centres."""
    x = np.asarray(data, dtype=np.float64)
    return float(((x - centroids[labels]) ** 2).sum())


def _sq_dist(x: np.ndarray, x2: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(M, n) squared distances, never negative."""
    d = x2[:, None] - 2.0 * (x @ c.T) + np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d, 0.0, out=d)


def _plusplus(x: np.ndarray, x2: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    trials = 2 + int(np.log(n))
    centres = [int(rng.integers(len(x)))]
    closest = _sq_dist(x, x2, x[centres])[:, 0]
    for _ in range(1, n):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: any point
            cand = rng.integers(len(x), size=trials)
        else:
            cand = np.minimum(np.searchsorted(np.cumsum(closest), rng.random(trials) * total), len(x) - 1)
        d = np.minimum(closest[:, None], _sq_dist(x, x2, x[cand]))
        j = int(np.argmin(d.sum(axis=0)))
        centres.append(int(cand[j]))
        closest = d[:, j]
    return x[centres].copy()


def _lloyd(x: np.ndarray, x2: np.ndarray, c: np.ndarray, max_iter: int,
           shift: float) -> tuple[np.ndarray, np.ndarray, float]:
    n = len(c)
    labels = None
    for _ in range(max_iter):
        d = _sq_dist(x, x2, c)
        new = d.argmin(axis=1)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        onehot = (labels[:, None] == np.arange(n)[None, :]).astype(np.float64)
        counts = np.bincount(labels, minlength=n)
        sums = onehot.T @ x
        empty = np.flatnonzero(counts == 0)
        new_c = sums / np.maximum(counts, 1)[:, None]
        if empty.size:  # the points farthest from their centres start the empty clusters
            far = np.argsort(-d[np.arange(len(x)), labels], kind="stable")[: empty.size]
            new_c[empty] = x[far]
        moved = float(((new_c - c) ** 2).sum())
        c = new_c
        if moved <= shift:
            break
    d = _sq_dist(x, x2, c)
    labels = d.argmin(axis=1)
    return c, labels, float(d[np.arange(len(x)), labels].sum())


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
