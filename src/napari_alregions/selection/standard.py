"""Standard region selection (Mackowiak et al.; adaptive paper §2.2): the best l x l windows."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..geometry import Region
from ._common import greedy_windows, prepare

__all__ = ["standard"]


def standard(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
) -> list[Region]:
    """Select k non-overlapping l x l regions with the largest summed priority.

    Every window position at stride 1 map pixel is scored by the exact sum of its
    priorities (integral image with a zero first row and column, so windows starting at
    row or column 0 count too); greedy non-maximum suppression then takes the best window,
    drops every window that overlaps it or an ``annotated`` region, and repeats. Windows
    touch but never cross the map border.

    Parameters
    ----------
    priority : (H, W) float ndarray
        Non-negative priority map (NaN counts as 0).
    stride : int
        Level-0 pixels per map pixel.
    region_size : int
        Region side l in level-0 pixels, a multiple of ``stride``.
    k : int
        Number of regions.
    tissue : (H, W) bool ndarray, optional
        Priorities outside it count as 0 (an all-False mask: no region).
    annotated : iterable of Region
        Regions already labeled on this slide (level-0 px); never re-proposed.
    rng : optional
        Unused: the method is deterministic.

    Returns
    -------
    list of Region
        At most k regions in level-0 pixels, best first. Windows whose priority sums to 0
        are never proposed, so an all-zero map, or a map smaller than a region, gives [].

    Examples
    --------
    >>> p = np.zeros((16, 16)); p[10:12, 3:5] = 1.0
    >>> [(r.x, r.y, r.w, r.h) for r in standard(p, stride=256, region_size=1024, k=1)]
    [(0, 2048, 1024, 1024)]
    """
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    picks = greedy_windows(inp.priority, [(inp.size, inp.size)], inp.k, inp.annotated)
    return [inp.region(box, score=v, method="standard", rank=i) for i, (box, v) in enumerate(picks)]
