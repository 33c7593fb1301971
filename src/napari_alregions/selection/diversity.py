"""Diversity sampling (baseline of the prototype-sampling paper): k-means over region embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..geometry import MapBox, Region, region_to_map_box
from ._cluster import kmeans
from ._common import prepare

__all__ = ["diversity", "diversity_pool", "region_embeddings"]


def region_embeddings(cell_features: np.ndarray, *, size: int) -> np.ndarray:
    """One embedding per l x l grid region: the mean of per-cell features, L2-normalised.

    ``cell_features`` is (H, W, D); NaN cells (off tissue) are left out of the mean.
    Returns (H // size, W // size, D), the grid :func:`diversity` expects.

    Examples
    --------
    >>> region_embeddings(np.ones((8, 8, 4)), size=4).shape
    (2, 2, 4)
    """
    f = np.asarray(cell_features, dtype=np.float64)
    if f.ndim != 3:
        raise ValueError(f"cell_features must have shape (H, W, D), got {f.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1 map px, got {size}")
    gh, gw = f.shape[0] // size, f.shape[1] // size
    if not (gh and gw):
        raise ValueError(f"region size: a region of {size}x{size} map px does not fit the {f.shape[0]}x{f.shape[1]} "
                         "map; choose a smaller region")
    blocks = f[: gh * size, : gw * size].reshape(gh, size, gw, size, -1)
    valid = np.isfinite(blocks).all(axis=-1, keepdims=True)
    total = np.where(valid, blocks, 0.0).sum(axis=(1, 3))
    mean = total / np.maximum(valid.sum(axis=(1, 3)), 1)
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    return np.divide(mean, norm, out=np.zeros_like(mean), where=norm > 0)


def diversity_pool(
    embeddings: Sequence[np.ndarray],
    *,
    stride: int,
    region_size: int,
    n_per_slide: int,
    tissue: Sequence[np.ndarray | None] | None = None,
    annotated: Sequence[Iterable[Region]] | None = None,
    rng: np.random.Generator | int | None = None,
    min_tissue: float = 0.1,
    slide_names: Sequence[str] | None = None,
    strict: bool = True,
    n_init: int = 10,
) -> list[list[Region]]:
    """Select n regions per slide that together represent the pool's variety.

    Every slide is divided into a grid of l x l regions (from the map origin); grid regions
    with at least ``min_tissue`` tissue that overlap no annotated region are candidates. The
    candidates' embeddings from all N slides are clustered by k-means into N·n clusters, and
    for each cluster (largest first) the candidate nearest its centroid is chosen, skipping
    candidates already chosen and slides that already have n regions.

    Parameters
    ----------
    embeddings : sequence of (Gh, Gw, D) float ndarray
        One embedding per grid region of each slide: ``embeddings[i][a, b]`` describes the
        region at rows ``a*l_map:(a+1)*l_map``, cols ``b*l_map:(b+1)*l_map`` of slide i's map.
    stride, region_size : int
        Map stride and region side l, level-0 pixels.
    n_per_slide : int
    tissue : sequence of (H, W) bool ndarray or None, optional
        Tissue masks at map resolution; must cover the grid.
    annotated : sequence of iterables of Region, optional
    rng : Generator or int seed
    min_tissue : float
    slide_names : sequence of str, optional
        Stored in ``Region.slide``.
    strict : bool
        If False, N·n larger than the number of candidates selects every candidate
        instead of raising.
    n_init : int
        k-means runs from different k-means++ seeds; the lowest inertia is kept.

    Returns
    -------
    list (one per slide) of list of Region

    Raises
    ------
    ValueError
        If N·n exceeds the number of candidate regions, or the embeddings disagree in dimension.
    """
    n_slides = len(embeddings)
    if n_slides == 0:
        raise ValueError("embeddings must hold at least one slide")
    if isinstance(n_per_slide, bool) or not isinstance(n_per_slide, (int, np.integer)) or n_per_slide < 0:
        raise ValueError(f"n_per_slide must be a non-negative integer, got {n_per_slide!r}")
    if region_size % stride:
        raise ValueError(f"region_size ({region_size}) must be a multiple of stride ({stride})")
    l_map = region_size // stride
    gen = np.random.default_rng(rng)
    dims = set()
    feats, where = [], []
    for i, emb in enumerate(embeddings):
        emb = np.asarray(emb, dtype=np.float64)
        if emb.ndim != 3:
            raise ValueError(f"embeddings[{i}] must have shape (Gh, Gw, D), got {emb.shape}")
        if not np.isfinite(emb).all():
            raise ValueError(f"embeddings[{i}] contains NaN or inf")
        dims.add(emb.shape[2])
        gh, gw = emb.shape[:2]
        ok = np.ones((gh, gw), dtype=bool)
        t = None if tissue is None else tissue[i]
        if t is not None:
            t = np.asarray(t, dtype=bool)
            if t.shape[0] < gh * l_map or t.shape[1] < gw * l_map:
                raise ValueError(f"tissue[{i}] {t.shape} does not cover the {gh}x{gw} grid of {l_map}-px regions")
            frac = t[: gh * l_map, : gw * l_map].reshape(gh, l_map, gw, l_map).mean(axis=(1, 3))
            ok &= frac >= min_tissue - 1e-12
        for r in (annotated[i] if annotated is not None else ()):
            b = region_to_map_box(r, stride)
            ok[max(0, b.r0 // l_map) : -(-b.r1 // l_map), max(0, b.c0 // l_map) : -(-b.c1 // l_map)] = False
        for a, b in zip(*np.nonzero(ok), strict=True):
            feats.append(emb[a, b])
            where.append((i, int(a), int(b)))
    if len(dims) > 1:
        raise ValueError(f"embeddings of all slides must have the same dimension, got {sorted(dims)}")
    n_clusters = n_slides * n_per_slide
    out: list[list[Region]] = [[] for _ in range(n_slides)]
    if n_clusters == 0:
        return out
    if n_clusters > len(feats) and not strict:
        n_clusters = len(feats)
    if n_clusters == 0:
        return out
    if n_clusters > len(feats):
        raise ValueError(
            f"N·n = {n_slides}·{n_per_slide} = {n_clusters} clusters exceed the {len(feats)} candidate regions"
        )
    x = np.stack(feats)
    centroids, labels = kmeans(x, n_clusters, gen, n_init=n_init)
    sizes = np.bincount(labels, minlength=n_clusters)
    chosen: set[int] = set()
    for ci in np.lexsort((np.arange(n_clusters), -sizes)):
        dist = ((x - centroids[ci]) ** 2).sum(axis=1)
        for idx in np.lexsort((np.arange(len(x)), dist)):
            i, a, b = where[idx]
            if idx in chosen or len(out[i]) >= n_per_slide:
                continue
            chosen.add(int(idx))
            box = MapBox(a * l_map, b * l_map, (a + 1) * l_map, (b + 1) * l_map)
            out[i].append(
                Region(
                    x=box.c0 * stride, y=box.r0 * stride, w=l_map * stride, h=l_map * stride,
                    score=float(-np.sqrt(dist[idx])), method="diversity", rank=len(out[i]),
                    slide=None if slide_names is None else slide_names[i],
                )
            )
            break
    return out


def diversity(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    embeddings: np.ndarray | None = None,
    min_tissue: float = 0.1,
    n_init: int = 10,
) -> list[Region]:
    """Diversity sampling on one slide: k clusters of its grid regions, one region each.

    ``priority`` only fixes the map's shape (the method ignores uncertainty); ``embeddings``
    is the (Gh, Gw, D) grid of region embeddings, Gh = H // l_map. For a pool of slides use
    :func:`diversity_pool`, which clusters all slides together. Score = minus the distance
    to the cluster centre.
    """
    if embeddings is None:
        raise ValueError("diversity needs embeddings: one (Gh, Gw, D) embedding per l x l grid region")
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    emb = np.asarray(embeddings)
    gh, gw = inp.shape[0] // inp.size, inp.shape[1] // inp.size
    if emb.ndim != 3 or emb.shape[:2] != (gh, gw):
        raise ValueError(f"embeddings must have shape ({gh}, {gw}, D) for this map and region size, got {emb.shape}")
    if gh * gw == 0:
        return []
    [regions] = diversity_pool(
        [emb], stride=stride, region_size=region_size, n_per_slide=inp.k,
        tissue=[inp.tissue] if inp.tissue is not None else None, annotated=[list(annotated)],
        rng=rng, min_tissue=min_tissue, strict=False, n_init=n_init,
    )
    return regions
