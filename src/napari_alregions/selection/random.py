"""Random region selection: the baseline of every paper."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .._integral import integral_image
from ..geometry import MapBox, Region
from ._common import prepare

__all__ = ["random"]


def random(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    min_tissue: float = 0.1,
    max_attempts: int | None = None,
) -> list[Region]:
    """Select k non-overlapping l x l regions at uniformly random positions.

    Each region has at least ``min_tissue`` of its area on tissue (all map pixels count as
    tissue when no mask is given) and overlaps neither another region nor an annotated one.

    Parameters
    ----------
    priority : (H, W) ndarray
        Only its shape is used (and validated); scores report the summed priority.
    stride, region_size, k, tissue, annotated
        As for ``standard``.
    rng : numpy Generator or int seed, optional
        Same seed, same regions.
    min_tissue : float
        Minimum tissue fraction of a region (paper: 10 %).
    max_attempts : int, optional
        Random positions tried before giving up (default 200 k + 1000).

    Returns
    -------
    list of Region
        Fewer than k when no valid position is found within the attempts (a full slide).
    """
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    gen = np.random.default_rng(rng)
    H, W = inp.shape
    l = inp.size
    if H < l or W < l or inp.k == 0:
        return []
    taken: list[MapBox] = list(inp.annotated)
    regions: list[Region] = []
    # no more than (H // l) * (W // l) disjoint l x l boxes fit: a k beyond that must not buy
    # attempts (k = 10^4 on a map that holds 38 ran 71 s)
    k = min(inp.k, (H // l) * (W // l))
    budget = max_attempts if max_attempts is not None else 200 * k + 1000
    need = min_tissue * l * l - 1e-9

    def try_at(r: int, c: int) -> None:
        box = MapBox(r, c, r + l, c + l)
        if any(box.overlaps(t) for t in taken):
            return
        if inp.tissue is not None and inp.tissue[box.slices].sum() < need:
            return
        score = float(inp.priority[box.slices].sum())
        regions.append(inp.region(box, score=score, method="random", rank=len(regions)))
        taken.append(box)

    # Plain rejection sampling first: cheap while tissue is plentiful.
    first = min(budget, 20 * k)
    for _ in range(first):
        if len(regions) == k:
            return regions
        try_at(int(gen.integers(0, H - l + 1)), int(gen.integers(0, W - l + 1)))
    if len(regions) == k or budget == first:
        return regions
    # Then sample only positions with enough tissue, so the attempts go to overlaps.
    if inp.tissue is not None:
        tis = integral_image(inp.tissue.astype(np.float64))
        sums = tis[l:, l:] - tis[:-l, l:] - tis[l:, :-l] + tis[:-l, :-l]
        candidates = np.flatnonzero(sums >= need)
    else:
        candidates = np.arange((H - l + 1) * (W - l + 1))
    if candidates.size == 0:
        return regions
    for _ in range(budget - first):
        if len(regions) == k:
            break
        r, c = divmod(int(candidates[gen.integers(candidates.size)]), W - l + 1)
        try_at(r, c)
    return regions
