"""Top uncertain patches (uncertainty-guided annotation, UGA): the best cells of a fixed grid."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ..geometry import MapBox, Region
from ._common import prepare

__all__ = ["top_patches", "top_patches_by_group"]


def top_patches(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    aggregate: str = "sum",
    max_background: float = 0.7,
) -> list[Region]:
    """Select the k cells of a non-overlapping l x l grid with the highest priority.

    The grid starts at the map origin; cells that do not fit entirely are not used. Cells
    with more than ``max_background`` of their area off tissue (UGA: 70 %) are skipped, as
    are cells overlapping annotated regions and cells whose priority sums to 0.

    Parameters
    ----------
    priority, stride, region_size, k, tissue, annotated, rng
        As for ``standard``; ``rng`` is unused.
    aggregate : {"sum", "mean"}
        Cell score: summed or mean priority (equal ranking for full cells; "mean" over
        tissue pixels only when a tissue mask is given).
    max_background : float
        Largest background fraction of a usable cell.

    Returns
    -------
    list of Region
        At most k cells, best first (ties: raster order).
    """
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
    if not 0 <= max_background <= 1:
        raise ValueError(f"max_background must be in [0, 1], got {max_background}")
    l = inp.size
    gh, gw = inp.shape[0] // l, inp.shape[1] // l
    if gh == 0 or gw == 0 or inp.k == 0:
        return []
    cells = inp.priority[: gh * l, : gw * l].reshape(gh, l, gw, l)
    score = cells.sum(axis=(1, 3))
    usable = score > 0
    if inp.tissue is not None:
        tissue_frac = inp.tissue[: gh * l, : gw * l].reshape(gh, l, gw, l).mean(axis=(1, 3))
        usable &= (1 - tissue_frac) <= max_background + 1e-12
        if aggregate == "mean":
            score = np.where(tissue_frac > 0, score / np.maximum(tissue_frac * l * l, 1), 0)
    elif aggregate == "mean":
        score = score / (l * l)
    for b in inp.annotated:
        usable[max(0, b.r0 // l) : -(-b.r1 // l), max(0, b.c0 // l) : -(-b.c1 // l)] = False
    order = np.lexsort((np.arange(score.size), -score.ravel()))
    regions: list[Region] = []
    for idx in order:
        if len(regions) == inp.k:
            break
        i, j = divmod(int(idx), gw)
        if not usable[i, j]:
            continue
        box = MapBox(i * l, j * l, (i + 1) * l, (j + 1) * l)
        regions.append(inp.region(box, score=float(score[i, j]), method="top_patches", rank=len(regions)))
    return regions


def top_patches_by_group(
    priorities: Mapping[str, np.ndarray],
    groups: Mapping[str, str | None],
    *,
    stride: int,
    region_size: int,
    n: int,
    tissue: Mapping[str, np.ndarray] | None = None,
    annotated: Mapping[str, Iterable[Region]] | None = None,
    **options,
) -> dict[str, list[Region]]:
    """The n most uncertain patches of each group of slides (e.g. per centre or scanner).

    Each slide's candidates are its own top-n cells (:func:`top_patches`, so the
    background filter applies); a group keeps the n best of its slides' candidates,
    which equals the top n of all its cells. Slides without a group form group ``""``.

    Returns
    -------
    dict group -> list of Region
        Best first, ``Region.slide`` set, ranks within the group.

    Examples
    --------
    >>> p = {"a": np.ones((4, 4)), "b": 2 * np.ones((4, 4))}
    >>> out = top_patches_by_group(p, {"a": "c1", "b": "c1"}, stride=1, region_size=2, n=2)
    >>> [r.slide for r in out["c1"]]
    ['b', 'b']
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pooled: dict[str, list[Region]] = {}
    for slide, prio in priorities.items():
        cands = top_patches(prio, stride=stride, region_size=region_size, k=n,
                            tissue=None if tissue is None else tissue.get(slide),
                            annotated=() if annotated is None else annotated.get(slide, ()), **options)
        pooled.setdefault(groups.get(slide) or "", []).extend(r.with_(slide=slide) for r in cands)
    out = {}
    for group, cands in pooled.items():
        best = sorted(cands, key=lambda r: -r.score)[:n]  # stable: slide order, then rank
        out[group] = [r.with_(rank=i) for i, r in enumerate(best)]
    return out
