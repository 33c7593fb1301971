"""Side-by-side statistics of several selectors' proposals on one slide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import Region, rasterize, union_area

__all__ = ["MethodSummary", "compare_proposals"]


@dataclass(frozen=True)
class MethodSummary:
    """What one method proposed: count, covered area and the priority it covers."""

    method: str
    count: int
    area: int  # level-0 px², overlaps counted once
    tissue_pct: float  # share of the slide's tissue the regions cover, in %
    mean_priority: float  # mean priority over the covered map cells


def compare_proposals(
    proposals: Mapping[str, Sequence[Region]],
    priority: np.ndarray,
    *,
    stride: int,
    tissue: np.ndarray | None = None,
) -> tuple[list[MethodSummary], np.ndarray]:
    """Summaries per method and the pairwise overlap (IoU of covered areas) between methods.

    Parameters
    ----------
    proposals : mapping of method name -> regions
    priority : (H, W) ndarray
        The priority map the regions were chosen on (stride ``stride``).
    stride : int
        Level-0 px per map pixel.
    tissue : (H, W) bool ndarray, optional
        Tissue at map resolution (for the covered tissue share).

    Returns
    -------
    summaries : list of MethodSummary, in the order of ``proposals``
    overlap : (M, M) float ndarray
        ``overlap[i, j]`` = area(A_i ∩ A_j) / area(A_i ∪ A_j) of the methods' covered
        level-0 areas (exact, not rasterised); 1 on the diagonal of a non-empty method.

    Examples
    --------
    >>> a = [Region(0, 0, 10, 10)]; b = [Region(5, 0, 10, 10)]
    >>> _, ov = compare_proposals({"a": a, "b": b}, np.ones((2, 2)), stride=10)
    >>> round(float(ov[0, 1]), 3)
    0.333
    """
    priority = np.nan_to_num(np.asarray(priority, dtype=np.float64))
    if priority.ndim != 2:
        raise ValueError(f"priority must be 2-D, got shape {priority.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if tissue is None:
        tissue = np.ones(priority.shape, dtype=bool)
    tissue = np.asarray(tissue, dtype=bool)
    if tissue.shape != priority.shape:
        raise ValueError(f"tissue must have the priority map's shape {priority.shape}, got {tissue.shape}")
    names = list(proposals)
    areas = [union_area(proposals[m]) for m in names]
    summaries = []
    for name, area in zip(names, areas):
        regions = list(proposals[name])
        covered = rasterize(regions, priority.shape, stride)
        n_tissue = int(tissue.sum())
        summaries.append(MethodSummary(
            method=name,
            count=len(regions),
            area=int(area),
            tissue_pct=100.0 * int((covered & tissue).sum()) / n_tissue if n_tissue else 0.0,
            mean_priority=float(priority[covered].mean()) if covered.any() else 0.0,
        ))
    overlap = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j in range(i, len(names)):
            both = union_area([*proposals[a], *proposals[names[j]]])
            inter = areas[i] + areas[j] - both
            overlap[i, j] = overlap[j, i] = inter / both if both else 0.0
    return summaries, overlap
