"""Shared input validation and the exact greedy window search used by several selectors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .._integral import box_sum, integral_image
from ..geometry import MapBox, Region, map_box_to_region, region_to_map_box

__all__ = ["MapInput", "greedy_windows", "prepare"]


@dataclass(frozen=True)
class MapInput:
    """Validated selector input in map pixels."""

    priority: np.ndarray  # (H, W) float64, >= 0, annotated boxes zeroed
    stride: int
    size: int  # region side l in map pixels
    k: int
    tissue: np.ndarray | None  # (H, W) bool
    annotated: tuple[MapBox, ...]  # annotated regions, in map pixels (clipped)

    @property
    def shape(self) -> tuple[int, int]:
        return self.priority.shape  # type: ignore[return-value]

    def region(self, box: MapBox, **fields: object) -> Region:
        return map_box_to_region(box, self.stride, **fields)


def prepare(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
) -> MapInput:
    """Validate the common selector arguments (SPEC §5) and convert to map pixels.

    NaN priorities count as 0; inf or negative priorities are an error.
    """
    p = np.asarray(priority)
    if p.ndim != 2:
        raise ValueError(f"priority must be a 2-D map, got shape {p.shape}")
    if p.dtype.kind not in "fiub":
        raise ValueError(f"priority must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)  # a copy: the caller's array is never modified
    if np.isinf(p).any():
        raise ValueError("priority contains inf; priorities must be finite (NaN counts as 0)")
    p[np.isnan(p)] = 0.0
    if p.size and p.min() < 0:
        raise ValueError(
            f"priority must be non-negative, got minimum {p.min():.4g}; clip or rescale the map"
        )
    stride = _positive_int(stride, "stride")
    region_size = _positive_int(region_size, "region_size")
    if region_size % stride:
        raise ValueError(
            f"region_size ({region_size} level-0 px) must be a multiple of stride ({stride})"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    mask = None
    if tissue is not None:
        mask = np.asarray(tissue)
        if mask.shape != p.shape:
            raise ValueError(f"tissue must have the priority map's shape {p.shape}, got {mask.shape}")
        mask = mask.astype(bool)
    boxes = []
    for r in annotated:
        if not isinstance(r, Region):
            raise ValueError(f"annotated must hold Region objects, got {type(r).__name__}")
        box = region_to_map_box(r, stride, p.shape)
        if box.r1 > box.r0 and box.c1 > box.c0:
            boxes.append(box)
            p[box.slices] = 0.0  # previously selected pixels count as priority 0
    return MapInput(p, stride, region_size // stride, int(k), mask, tuple(boxes))


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer (level-0 px), got {value!r}")
    return int(value)


#: Window sums are rounded to this many decimals so that sums equal up to floating-point
#: round-off (windows holding the same non-zero pixels) tie exactly and the tie rule decides.
SUM_DECIMALS = 9


def greedy_windows(
    priority: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    k: int,
    blocked: Sequence[MapBox] = (),
    *,
    coarse: int = 64,
    batch: int = 2048,
    dense_after: int | None = None,
) -> list[tuple[MapBox, float]]:
    """Greedy non-maximum suppression over all windows of the given shapes, exactly.

    Repeats k times: take the window (of any shape) with the largest priority sum that
    overlaps neither an earlier pick nor a ``blocked`` box; windows with sum 0 are never
    taken. Equal sums (to 1e-9) go to the smaller row, then column, then the earlier shape.

    The result equals scoring every window and suppressing overlaps (the brute-force
    reference in tests). Instead of scoring every window, a best-first branch and bound
    keeps blocks of window positions (one shape each) with an upper bound of their sums:
    the sum of the rectangle that all their windows lie in, exact for a single position,
    valid because priorities are non-negative. The blocks with the largest bounds are split
    4 x 4, ``batch`` at a time, until the largest bound belongs to a single valid window.
    Where bounds cannot prune (a plateau, or noise that evens out over a window: every
    window sum alike) the queue grows toward one row per window; past ``dense_after`` rows
    the remaining picks score every window of a shape at once instead (same results).

    Parameters
    ----------
    priority : (H, W) float ndarray, non-negative
    shapes : sequence of (h, w)
        Window shapes in map pixels; shapes that do not fit the map are skipped.
    k : int
    blocked : sequence of MapBox
    coarse : int
        Side of the initial blocks of positions (a power of 4 keeps the splits even).
    batch : int
        Blocks split per step.
    dense_after : int, optional
        Queue length at which to switch to dense scoring (default: a 16th of all window
        positions, between 2**16 and 2**22).

    Returns
    -------
    list of (MapBox, sum)
    """
    H, W = priority.shape
    shapes = [(int(h), int(w)) for h, w in shapes if 0 < h <= H and 0 < w <= W]
    if k <= 0 or not shapes:
        return []
    s = integral_image(priority)
    hs = np.array([h for h, _ in shapes])
    ws = np.array([w for _, w in shapes])
    nr, nc = H - hs + 1, W - ws + 1  # valid top-left ranges per shape
    blocked = list(blocked)
    if dense_after is None:
        dense_after = int(np.clip(int((nr * nc).sum()) // 16, 2**16, 2**22))

    def bound(si: np.ndarray, r0: np.ndarray, c0: np.ndarray, size: np.ndarray) -> np.ndarray:
        r_end = np.minimum(r0 + size, nr[si]) - 1 + hs[si]
        c_end = np.minimum(c0 + size, nc[si]) - 1 + ws[si]
        return np.round(box_sum(s, r0, c0, r_end, c_end), SUM_DECIMALS)

    def valid(si: np.ndarray, r0: np.ndarray, c0: np.ndarray) -> np.ndarray:
        hit = np.zeros(si.shape, dtype=bool)
        for b in blocked:
            hit |= (r0 < b.r1) & (r0 + hs[si] > b.r0) & (c0 < b.c1) & (c0 + ws[si] > b.c0)
        return ~hit

    # The queue: one row per block (shape, r0, c0, size, bound) as parallel arrays. Rows
    # that cannot win the current pick wait in `deferred` and come back for the next one.
    parts = []
    for i in range(len(shapes)):
        gr, gc = np.meshgrid(np.arange(0, nr[i], coarse), np.arange(0, nc[i], coarse), indexing="ij")
        parts.append(np.stack([np.full(gr.size, i), gr.ravel(), gc.ravel(), np.full(gr.size, coarse)], axis=1))
    q = np.concatenate(parts)
    ub = bound(q[:, 0], q[:, 1], q[:, 2], q[:, 3])
    if coarse == 1:
        ok = valid(q[:, 0], q[:, 1], q[:, 2])
        q, ub = q[ok], ub[ok]
    keep = ub > 0
    q, ub = q[keep], ub[keep]
    deferred_q, deferred_ub = [], []
    offs = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    picks: list[tuple[MapBox, float]] = []
    while len(picks) < k:
        if len(q) + sum(len(d) for d in deferred_q) > dense_after:
            picks += _dense_greedy(s, shapes, k - len(picks), blocked)
            break
        exact = q[:, 3] == 1
        if exact.any():  # exact rows are valid windows: the best of them is a lower bound
            lower = ub[exact].max()
            low = ub < lower
            if low.any():
                deferred_q.append(q[low])
                deferred_ub.append(ub[low])
                q, ub, exact = q[~low], ub[~low], exact[~low]
        if not ub.size:
            break
        top = ub.max()
        open_ = np.flatnonzero(~exact)
        if not (ub[open_] >= top).any():
            # The best bound is an exact window: take it (ties: row, col, shape).
            tied = np.flatnonzero(ub == top)
            j = tied[np.lexsort((q[tied, 0], q[tied, 2], q[tied, 1]))[0]]
            si, r, c = (int(v) for v in q[j, :3])
            box = MapBox(r, c, r + int(hs[si]), c + int(ws[si]))
            picks.append((box, float(top)))
            blocked.append(box)
            q = np.concatenate([q, *deferred_q])
            ub = np.concatenate([ub, *deferred_ub])
            deferred_q, deferred_ub = [], []
            drop = (q[:, 3] == 1) & ~valid(q[:, 0], q[:, 1], q[:, 2])
            q, ub = q[~drop], ub[~drop]
            continue
        # Split the open blocks with the largest bounds into 4 x 4 children.
        # (at least `batch`, and a fixed share of the open blocks, so that the number of
        # steps stays logarithmic when many blocks tie for the lead, as on plateaus)
        n = max(batch, open_.size // 32)
        cand = open_ if open_.size <= n else open_[np.argpartition(-ub[open_], n - 1)[:n]]
        parent = q[cand]
        child = np.maximum(parent[:, 3] // 4, 1)
        kids = np.repeat(parent, 16, axis=0)
        kids[:, 1:3] += (offs[None, :, :] * child[:, None, None]).reshape(-1, 2)
        kids[:, 3] = np.repeat(child, 16)
        end = np.repeat(parent[:, 1:3] + parent[:, 3:4], 16, axis=0)
        inside = (kids[:, 1] < nr[kids[:, 0]]) & (kids[:, 2] < nc[kids[:, 0]]) & (kids[:, 1] < end[:, 0]) & (kids[:, 2] < end[:, 1])
        kids = kids[inside]
        kub = bound(kids[:, 0], kids[:, 1], kids[:, 2], kids[:, 3])
        ok = (kub > 0) & ((kids[:, 3] > 1) | valid(kids[:, 0], kids[:, 1], kids[:, 2]))
        rest = np.ones(len(q), dtype=bool)
        rest[cand] = False
        q = np.concatenate([q[rest], kids[ok]])
        ub = np.concatenate([ub[rest], kub[ok]])
    return picks


def _dense_greedy(s: np.ndarray, shapes: list[tuple[int, int]], k: int,
                  blocked: list[MapBox]) -> list[tuple[MapBox, float]]:
    """:func:`greedy_windows` by scoring every window of one shape at a time.

    Each shape keeps its best valid window (largest sum, then smallest row, then column); a
    pick only invalidates the shapes whose best it overlaps, and only those are rescored.
    ``blocked`` grows with the picks. Sums are computed as :func:`box_sum` does, so values
    and ties are those of the branch and bound.
    """

    def best_of(si: int) -> tuple[float, int, int]:
        h, w = shapes[si]
        sums = np.round(s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w], SUM_DECIMALS)
        for b in blocked:  # windows overlapping b: top-left rows b.r0-h+1..b.r1-1, likewise columns
            sums[max(b.r0 - h + 1, 0) : max(b.r1, 0), max(b.c0 - w + 1, 0) : max(b.c1, 0)] = -1.0
        j = int(np.argmax(sums))  # first maximum in row-major order: smallest row, then column
        r, c = divmod(j, sums.shape[1])
        return float(sums[r, c]), r, c

    best = [best_of(si) for si in range(len(shapes))]
    picks: list[tuple[MapBox, float]] = []
    while len(picks) < k:
        # largest sum, then row, column, shape order
        si = min(range(len(shapes)), key=lambda i: (-best[i][0], best[i][1], best[i][2], i))
        value, r, c = best[si]
        if value <= 0:
            break
        box = MapBox(r, c, r + shapes[si][0], c + shapes[si][1])
        picks.append((box, value))
        blocked.append(box)
        for i, (v, rr, cc) in enumerate(best):
            if v > 0 and box.overlaps(MapBox(rr, cc, rr + shapes[i][0], cc + shapes[i][1])):
                best[i] = best_of(i)
    return picks
