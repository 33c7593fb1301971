"""FocAnnot cluster-instance double ranking (SPEC §5; focannot paper §3.3, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .._integral import box_sum, integral_image
from ..geometry import MapBox, Region
from ._cluster import apportion, kmeans
from ._common import prepare

__all__ = ["focannot", "focannot_descriptors", "focannot_grid", "wasserstein_sorted"]


def focannot_grid(shape: tuple[int, int], size: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and columns (map px) of the patch grid with side ``size`` and overlap ρ."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    step = max(1, int(round(size * (1 - overlap))))
    rows = np.arange(0, shape[0] - size + 1, step)
    cols = np.arange(0, shape[1] - size + 1, step)
    return rows, cols


def focannot_descriptors(cell_features: np.ndarray, *, size: int, overlap: float = 0.5) -> np.ndarray:
    """Descriptors of the grid patches: the mean of per-cell features over each window.

    ``cell_features`` is (H, W, D), one feature vector per map cell (e.g. channel means of
    encoder features); NaN cells (off tissue) count as 0. Returns (Gr, Gc, D) for the
    grid of :func:`focannot_grid` with window side ``size`` map px.

    Examples
    --------
    >>> focannot_descriptors(np.ones((8, 8, 3)), size=4).shape
    (3, 3, 3)
    """
    f = np.nan_to_num(np.asarray(cell_features, dtype=np.float64))
    if f.ndim != 3:
        raise ValueError(f"cell_features must have shape (H, W, D), got {f.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1 map px, got {size}")
    rows, cols = focannot_grid(f.shape[:2], size, overlap)
    s = integral_image(f)
    rr, cc = rows[:, None], cols[None, :]
    return box_sum(s, rr, cc, rr + size, cc + size) / float(size * size)


def wasserstein_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. (4): min over permutations of sum (a_m - b_π(m))², i.e. of the sorted values.

    ``a`` (n, d) and ``b`` (m, d) give an (n, m) matrix.
    """
    sa, sb = np.sort(a, axis=1), np.sort(b, axis=1)
    return ((sa[:, None, :] - sb[None, :, :]) ** 2).sum(axis=2)


def focannot(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    descriptors: np.ndarray | None = None,
    overlap: float = 0.5,
    n_clusters: int = 3,
    lam: float = 0.5,
    candidates_factor: float = 2.0,
    min_tissue: float = 0.1,
    n_init: int = 10,
) -> list[Region]:
    """Cluster-instance double ranking over an overlapping patch grid.

    Patches are l x l windows on a grid with overlap ρ (step l(1-ρ)); each has a
    descriptor (the channel means of encoder features) and an instance uncertainty IU, the
    mean of ``priority`` (e.g. an entropy map) over the patch. k-means splits the candidates
    into c clusters; cluster importance ``I = λ·CU + (1-λ)·CD`` (CU: mean squared distance to
    the centroid, CD: mean squared distance to the other centroids, each normalised to sum
    1) is normalised to sum 1. Cluster c keeps its Q·I_c most uncertain patches
    (Q = ``candidates_factor``·k), re-scores them ``S = IU × mean W₂`` to the other kept
    candidates, and contributes its top T·I_c (T = k) patches that overlap no earlier or
    annotated region. Quotas are whole numbers by largest remainders; quota a cluster cannot
    fill goes to the remaining candidates by S.

    Parameters
    ----------
    priority, stride, region_size, k, tissue, annotated
        As for ``standard``.
    rng : Generator or int seed
        Seeds k-means.
    descriptors : (Gr, Gc, D) float ndarray
        One descriptor per grid patch, for the grid of :func:`focannot_grid`.
    overlap, n_clusters, lam, candidates_factor, min_tissue
        ρ (0.5), c (3), λ (0.5), Q/T (paper: 5 % / 2.5 % = 2), minimum tissue fraction.
    n_init : int
        k-means runs from different k-means++ seeds; the lowest inertia is kept.

    Returns
    -------
    list of Region
        Non-overlapping patches, best first.
    """
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    if descriptors is None:
        raise ValueError("focannot needs descriptors: one (D,) descriptor per grid patch")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    if candidates_factor < 1:
        raise ValueError(f"candidates_factor must be >= 1, got {candidates_factor}")
    l = inp.size
    rows, cols = focannot_grid(inp.shape, l, overlap)
    desc = np.asarray(descriptors, dtype=np.float64)
    if desc.ndim != 3 or desc.shape[:2] != (rows.size, cols.size):
        raise ValueError(
            f"descriptors must have shape ({rows.size}, {cols.size}, D) for this map, region size and overlap, got {desc.shape}"
        )
    if not np.isfinite(desc).all():
        raise ValueError("descriptors contain NaN or inf")
    if rows.size == 0 or cols.size == 0 or inp.k == 0:
        return []
    # instance uncertainty and tissue fraction of every grid patch
    s = integral_image(inp.priority)
    rr, cc = rows[:, None], cols[None, :]

    def patch_sums(table: np.ndarray) -> np.ndarray:
        return box_sum(table, rr, cc, rr + l, cc + l)

    iu = patch_sums(s) / (l * l)
    ok = iu > 0
    if inp.tissue is not None:
        ok &= patch_sums(integral_image(inp.tissue)) / (l * l) >= min_tissue - 1e-12
    boxes = [MapBox(int(r), int(c), int(r) + l, int(c) + l) for r in rows for c in cols]
    for a in inp.annotated:
        ok &= ~np.array([b.overlaps(a) for b in boxes]).reshape(ok.shape)
    idx = np.flatnonzero(ok.ravel())
    if idx.size == 0:
        return []
    x = desc.reshape(-1, desc.shape[2])[idx]
    u = iu.ravel()[idx]
    c = min(n_clusters, idx.size)
    centroids, labels = kmeans(x, c, np.random.default_rng(rng), n_init=n_init)
    cu = np.array([((x[labels == j] - centroids[j]) ** 2).sum(axis=1).mean() if (labels == j).any() else 0.0 for j in range(c)])
    if c > 1:
        d2 = ((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        cd = d2.sum(axis=1) / (c - 1)
    else:
        cd = np.ones(1)
    norm = lambda v: v / v.sum() if v.sum() > 0 else np.full(v.size, 1.0 / v.size)  # noqa: E731
    importance = norm(lam * norm(cu) + (1 - lam) * norm(cd))
    present = np.bincount(labels, minlength=c) > 0
    importance = norm(importance * present)
    t_quota = apportion(inp.k, importance)
    q_quota = np.maximum(apportion(int(np.ceil(candidates_factor * inp.k)), importance), t_quota)
    taken: list[MapBox] = list(inp.annotated)
    picked: list[tuple[int, float]] = []
    leftovers: list[tuple[float, int]] = []
    for j in range(c):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        kept = members[np.lexsort((members, -u[members]))][: max(int(q_quota[j]), 1)]
        w = wasserstein_sorted(x[kept], x[kept])
        mean_w = w.sum(axis=1) / max(kept.size - 1, 1)
        score = u[kept] * mean_w if kept.size > 1 else u[kept]
        order = np.lexsort((kept, -u[kept], -score))  # ties: more uncertain, then grid order
        got = 0
        for o in order:
            box = boxes[idx[kept[o]]]
            if got < t_quota[j] and not any(box.overlaps(t) for t in taken):
                picked.append((int(idx[kept[o]]), float(score[o])))
                taken.append(box)
                got += 1
            else:
                leftovers.append((float(score[o]), int(idx[kept[o]])))
        for m in members[~np.isin(members, kept)]:
            leftovers.append((0.0, int(idx[m])))  # not a candidate: after every candidate
    if len(picked) < inp.k:
        rest = sorted(leftovers, key=lambda t: (-t[0], -iu.ravel()[t[1]], t[1]))
        for sc, i in rest:
            if len(picked) == inp.k:
                break
            if not any(boxes[i].overlaps(t) for t in taken):
                picked.append((i, sc))
                taken.append(boxes[i])
    return [inp.region(boxes[i], score=sc, method="focannot", rank=n) for n, (i, sc) in enumerate(picked)]
