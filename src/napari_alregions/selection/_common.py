"""Shared input validation and the exact greedy window search used by several selectors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .._integral import box_sum, integral_image
from ..geometry import MapBox, Region, map_box_to_region, region_to_map_box

__all__ = ["MapInput", "choose_search", "greedy_windows", "prepare"]


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


_SAFE_MAX = (1e-3, 1e6)  # a map's maximum in this range is used as it is


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

    NaN priorities count as 0, and so do those outside ``tissue``; inf or negative priorities
    are an error. A map whose
    maximum is above 1e6 or below 1e-3 is divided by that maximum (same picks, finite and
    distinguishable window sums).
    """
    p = np.asarray(priority)
    if p.ndim != 2:
        raise ValueError(f"priority must be a 2-D map, got shape {p.shape}")
    if p.dtype.kind not in "fiub":
        raise ValueError(f"priority must be numeric, got dtype {p.dtype}")
    p = p.astype(np.float64)  # a copy: the caller's array is never modified
    # min and max are NaN if any value is: the element-wise checks run only then
    lo, hi = (float(p.min()), float(p.max())) if p.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        if np.isinf(p).any():
            raise ValueError("priority contains inf; priorities must be finite (NaN counts as 0)")
        p[np.isnan(p)] = 0.0
        lo = float(p.min())
    if lo < 0:
        raise ValueError(f"priority must be non-negative, got minimum {lo:.4g}; clip or rescale the map")
    hi = float(p.max()) if p.size else 0.0
    if hi > 0 and not _SAFE_MAX[0] <= hi <= _SAFE_MAX[1]:
        # window sums of values near 1e308 overflow to inf, and of values near 1e-12 round to
        # 0 (sums are compared to 1e-9): the picks depend only on the map's ratios, so a map
        # this far from [0, 1] is divided by its maximum (scores then count in that unit)
        p /= hi
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
        p[~mask] = 0.0  # outside tissue, priority 0 (SPEC §4): an empty mask proposes nothing
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

#: Window sums scored at once by the dense scan (a band of rows that stays in cache).
_BAND_ELEMENTS = 1 << 16

#: Up to this many windows (all shapes) the dense scan is used without trying the bounds.
DENSE_WINDOWS = 1 << 22

#: Up to this many windows (all shapes, 8 bytes each) the dense scan keeps its tables of sums.
_STORE_WINDOWS = 1 << 21


def greedy_windows(
    priority: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    k: int,
    blocked: Sequence[MapBox] = (),
    *,
    coarse: int = 64,
    batch: int = 2048,
    dense_after: int | None = None,
    search: str = "auto",
) -> list[tuple[MapBox, float]]:
    """Greedy non-maximum suppression over all windows of the given shapes, exactly.

    Repeats k times: take the window (of any shape) with the largest priority sum that
    overlaps neither an earlier pick nor a ``blocked`` box; windows with sum 0 are never
    taken. Equal sums (to 1e-9) go to the smaller row, then column, then the earlier shape.

    Two searches give the same result (that of scoring every window and suppressing
    overlaps, the brute-force reference in tests):

    * ``"dense"`` scores every window from the integral image (with a zero first row and
      column), one band of rows at a time, keeping each row's best; a pick rescores only
      the rows whose best window it overlaps. Its cost is one pass over all windows.
    * ``"bound"``, a best-first branch and bound, keeps blocks of window positions (one
      shape each) with an upper bound of their sums: the sum of the rectangle all their
      windows lie in, less its picked pixels (valid because priorities are non-negative),
      exact for a single position. The blocks with the largest bounds are split 4 x 4,
      ``batch`` at a time, until the largest bound belongs to a single valid window. Where
      bounds cannot prune, its work (queue rows handled; measured at ~48 windows of the
      dense scan each) passes ``dense_after``, and the remaining picks are dense.

    ``"auto"`` (the default) is dense up to :data:`DENSE_WINDOWS` windows, and otherwise
    looks at the initial blocks' bounds (:func:`_bounds_prune`): branch and bound on
    sparse maps, and for several shapes of windows no smaller than half a block unless the
    bounds are alike; dense otherwise.

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
        Branch-and-bound work (queue rows handled, or projected from the picks so far) at
        which the remaining picks use the dense scan (default: all windows / 48; before the
        first pick, half of it).
    search : {"auto", "dense", "bound"}

    Returns
    -------
    list of (MapBox, sum)
    """
    H, W = priority.shape
    shapes = [(int(h), int(w)) for h, w in shapes if 0 < h <= H and 0 < w <= W]
    if k <= 0 or not shapes:
        return []
    if search not in ("auto", "dense", "bound"):
        raise ValueError(f"search must be 'auto', 'dense' or 'bound', got {search!r}")
    s = integral_image(priority)
    hs = np.array([h for h, _ in shapes])
    ws = np.array([w for _, w in shapes])
    nr, nc = H - hs + 1, W - ws + 1  # valid top-left ranges per shape
    blocked = list(blocked)
    n_windows = int((nr * nc).sum())
    if search == "dense" or (search == "auto" and n_windows <= DENSE_WINDOWS):
        return _dense_greedy(s, shapes, k, blocked)
    q = _initial_blocks(nr, nc, coarse)
    if dense_after is None:
        dense_after = n_windows // 48  # a queue row costs ~48x a window of the dense scan

    taken: list[MapBox] = []  # this search's picks, disjoint from each other

    def bound(si: np.ndarray, r0: np.ndarray, c0: np.ndarray, size: np.ndarray) -> np.ndarray:
        r_end = np.minimum(r0 + size, nr[si]) - 1 + hs[si]
        c_end = np.minimum(c0 + size, nc[si]) - 1 + ws[si]
        total = box_sum(s, r0, c0, r_end, c_end)
        # A valid window holds no picked pixel: the picks' share of the rectangle is
        # subtracted (a single position needs none: it is valid or dropped). A slack of
        # 2e-9 keeps the bound above round-off.
        cut = np.zeros(total.shape, dtype=bool)
        for b in taken:
            ir0, ir1 = np.maximum(r0, b.r0), np.minimum(r_end, b.r1)
            ic0, ic1 = np.maximum(c0, b.c0), np.minimum(c_end, b.c1)
            hit = np.flatnonzero((ir1 > ir0) & (ic1 > ic0) & (size > 1))
            if hit.size:
                total[hit] -= box_sum(s, ir0[hit], ic0[hit], ir1[hit], ic1[hit])
                cut[hit] = True
        total[cut] += 2 * 10.0**-SUM_DECIMALS
        return np.round(total, SUM_DECIMALS)

    def valid(si: np.ndarray, r0: np.ndarray, c0: np.ndarray) -> np.ndarray:
        hit = np.zeros(si.shape, dtype=bool)
        for b in blocked:
            hit |= (r0 < b.r1) & (r0 + hs[si] > b.r0) & (c0 < b.c1) & (c0 + ws[si] > b.c0)
        return ~hit

    # The queue: one row per block (shape, r0, c0, size, bound) as parallel arrays. Rows
    # that cannot win the current pick wait in `deferred` and come back for the next one.
    ub = bound(q[:, 0], q[:, 1], q[:, 2], q[:, 3])
    if search == "auto" and not _bounds_prune(ub, shapes, coarse):
        return _dense_greedy(s, shapes, k, blocked)
    if coarse == 1:
        ok = valid(q[:, 0], q[:, 1], q[:, 2])
        q, ub = q[ok], ub[ok]
    keep = ub > 0
    q, ub = q[keep], ub[keep]
    deferred_q, deferred_ub = [], []
    offs = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    picks: list[tuple[MapBox, float]] = []
    work = len(q)  # queue rows handled so far
    first = 0  # work done by the first pick
    while len(picks) < k:
        # Switch to the dense scan when the work spent, or projected from the picks after
        # the first (which pays for refining the initial blocks), passes `dense_after`; up
        # to the first pick, at half of it.
        n = len(picks)
        projected = work if n < 2 else work + (work - first) / (n - 1) * (k - n)
        if projected > (dense_after if n else dense_after // 2):
            picks += _dense_greedy(s, shapes, k - n, blocked)
            break
        work += len(q)
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
            taken.append(box)
            first = first or work
            q = np.concatenate([q, *deferred_q])
            ub = np.concatenate([ub, *deferred_ub])
            deferred_q, deferred_ub = [], []
            drop = (q[:, 3] == 1) & ~valid(q[:, 0], q[:, 1], q[:, 2])
            q, ub = q[~drop], ub[~drop]
            # tighten the bounds of the blocks whose rectangle holds picked pixels
            r_end = np.minimum(q[:, 1] + q[:, 3], nr[q[:, 0]]) - 1 + hs[q[:, 0]]
            c_end = np.minimum(q[:, 2] + q[:, 3], nc[q[:, 0]]) - 1 + ws[q[:, 0]]
            near = np.flatnonzero((q[:, 3] > 1) & (q[:, 1] < box.r1) & (r_end > box.r0) & (q[:, 2] < box.c1) & (c_end > box.c0))
            if near.size:
                ub[near] = bound(q[near, 0], q[near, 1], q[near, 2], q[near, 3])
                keep = ub > 0
                q, ub = q[keep], ub[keep]
            work += near.size
            continue
        # Split the open blocks with the largest bounds into 4 x 4 children.
        # (at least `batch`, and a fixed share of the open blocks, so that the number of
        # steps stays logarithmic when many blocks tie for the lead, as on plateaus)
        n_split = max(batch, open_.size // 32)
        cand = open_ if open_.size <= n_split else open_[np.argpartition(-ub[open_], n_split - 1)[:n_split]]
        parent = q[cand]
        child = np.maximum(parent[:, 3] // 4, 1)
        kids = np.repeat(parent, 16, axis=0)
        kids[:, 1:3] += (offs[None, :, :] * child[:, None, None]).reshape(-1, 2)
        kids[:, 3] = np.repeat(child, 16)
        end = np.repeat(parent[:, 1:3] + parent[:, 3:4], 16, axis=0)
        inside = (kids[:, 1] < nr[kids[:, 0]]) & (kids[:, 2] < nc[kids[:, 0]]) & (kids[:, 1] < end[:, 0]) & (kids[:, 2] < end[:, 1])
        kids = kids[inside]
        work += 2 * len(kids)
        kub = bound(kids[:, 0], kids[:, 1], kids[:, 2], kids[:, 3])
        ok = (kub > 0) & ((kids[:, 3] > 1) | valid(kids[:, 0], kids[:, 1], kids[:, 2]))
        rest = np.ones(len(q), dtype=bool)
        rest[cand] = False
        q = np.concatenate([q[rest], kids[ok]])
        ub = np.concatenate([ub[rest], kub[ok]])
    return picks


def choose_search(priority: np.ndarray, shapes: Sequence[tuple[int, int]], *, coarse: int = 64) -> str:
    """The search ``greedy_windows(search="auto")`` takes on this map: "dense" or "bound"."""
    H, W = priority.shape
    shapes = [(int(h), int(w)) for h, w in shapes if 0 < h <= H and 0 < w <= W]
    hs, ws = np.array([h for h, _ in shapes]), np.array([w for _, w in shapes])
    nr, nc = H - hs + 1, W - ws + 1
    if not shapes or int((nr * nc).sum()) <= DENSE_WINDOWS:
        return "dense"
    q = _initial_blocks(nr, nc, coarse)
    si = q[:, 0]
    r_end = np.minimum(q[:, 1] + coarse, nr[si]) - 1 + hs[si]
    c_end = np.minimum(q[:, 2] + coarse, nc[si]) - 1 + ws[si]
    ub = np.round(box_sum(integral_image(priority), q[:, 1], q[:, 2], r_end, c_end), SUM_DECIMALS)
    return "bound" if _bounds_prune(ub, shapes, coarse) else "dense"


def _initial_blocks(nr: np.ndarray, nc: np.ndarray, coarse: int) -> np.ndarray:
    """Rows (shape, r0, c0, size) of coarse x coarse blocks covering every shape's positions."""
    parts = []
    for i in range(len(nr)):
        gr, gc = np.meshgrid(np.arange(0, nr[i], coarse), np.arange(0, nc[i], coarse), indexing="ij")
        parts.append(np.stack([np.full(gr.size, i), gr.ravel(), gc.ravel(), np.full(gr.size, coarse)], axis=1))
    return np.concatenate(parts)


def _bounds_prune(ub: np.ndarray, shapes: list[tuple[int, int]], coarse: int) -> bool:
    """Whether the branch and bound is expected to beat the dense scan, judged from the
    bounds of the initial blocks (the rule measured in benchmarks/bench_selection.py, see
    docs/design.md): on sparse maps (at most 1/16 of the blocks hold any priority), and
    for several shapes whose windows are not much smaller than a block (the bounds are
    then tight) unless the bounds are alike (over 1/4 of them within half of the best)."""
    if np.count_nonzero(ub > 0) <= ub.size / 16:
        return True
    if len(shapes) == 1 or min(min(hw) for hw in shapes) < coarse // 2:
        return False
    return np.count_nonzero(ub >= ub.max() / 2) <= ub.size / 4


def _dense_greedy(s: np.ndarray, shapes: list[tuple[int, int]], k: int,
                  blocked: list[MapBox]) -> list[tuple[MapBox, float]]:
    """:func:`greedy_windows` by scoring every window, kept as one maximum per row.

    For each shape, every row of window positions keeps its largest valid sum and the
    first column holding it. Up to :data:`_STORE_WINDOWS` windows the tables of sums are
    kept (picks mask them in place); beyond, rows are scored in bands and rescored when
    needed, so no table is held. A pick takes the largest row maximum; among the rows that
    may tie with it after rounding (in increasing row order) the first holding the rounded
    maximum wins, then its first such column, then the earlier shape. The pick then
    rescores only the rows whose best window it overlaps. ``blocked`` grows with the picks.
    Sums are computed as :func:`box_sum` does, so values and ties are those of the branch
    and bound.
    """
    H, W = s.shape[0] - 1, s.shape[1] - 1
    store = sum((H - h + 1) * (W - w + 1) for h, w in shapes) <= _STORE_WINDOWS
    tables: list[np.ndarray] = []

    def rows(i: int, r0: int, r1: int, out: np.ndarray | None = None) -> np.ndarray:
        if store:
            return tables[i][r0:r1]
        return _row_sums(s, *shapes[i], r0, r1, blocked, out)

    row_max, row_arg = [], []
    for i, (h, w) in enumerate(shapes):
        nr, nc = H - h + 1, W - w + 1
        if store:
            tables.append(_row_sums(s, h, w, 0, nr, blocked))
        best = np.empty(nr)
        arg = np.empty(nr, dtype=np.int64)
        band = nr if store else max(1, _BAND_ELEMENTS // nc)
        buf = None if store else np.empty((min(band, nr), nc))
        for r0 in range(0, nr, band):
            r1 = min(r0 + band, nr)
            sums = rows(i, r0, r1, None if store else buf[: r1 - r0])
            a = sums.argmax(axis=1)
            arg[r0:r1] = a
            best[r0:r1] = sums[np.arange(r1 - r0), a]
        row_max.append(best)
        row_arg.append(arg)

    picks: list[tuple[MapBox, float]] = []
    while len(picks) < k:
        top = max(float(m.max()) for m in row_max)
        value = round(top, SUM_DECIMALS)  # the largest rounded sum (rounding is monotone)
        if value <= 0:
            break
        # rows that may hold a window whose rounded sum equals `value`
        slack = 2 * 10.0**-SUM_DECIMALS + 1e-15 * abs(top)
        cand = [np.flatnonzero(m >= top - slack) for m in row_max]
        at = [0] * len(shapes)
        found = None  # (row, column, shape) of the first window whose rounded sum is `value`
        while True:
            left = [(int(cand[i][at[i]]), i) for i in range(len(shapes)) if at[i] < cand[i].size]
            if not left:
                break
            r, si = min(left)
            if found is not None and r > found[0]:
                break
            at[si] += 1
            hit = np.flatnonzero(np.round(rows(si, r, r + 1)[0], SUM_DECIMALS) == value)
            if hit.size and (found is None or (int(hit[0]), si) < found[1:]):
                found = (r, int(hit[0]), si)
        r, c, si = found
        box = MapBox(r, c, r + shapes[si][0], c + shapes[si][1])
        picks.append((box, value))
        blocked.append(box)
        for i, (h, w) in enumerate(shapes):
            lo, hi = max(box.r0 - h + 1, 0), min(box.r1, len(row_max[i]))
            if lo >= hi:
                continue
            if store:
                tables[i][lo:hi, max(box.c0 - w + 1, 0) : box.c1] = -np.inf
            arg = row_arg[i][lo:hi]
            stale = lo + np.flatnonzero((arg > box.c0 - w) & (arg < box.c1))
            for r0, r1 in _runs(stale):
                sums = rows(i, r0, r1)
                a = sums.argmax(axis=1)
                row_arg[i][r0:r1] = a
                row_max[i][r0:r1] = sums[np.arange(r1 - r0), a]
    return picks


def _row_sums(s, h, w, r0, r1, blocked, out=None):
    """Sums of the h x w windows with top-left rows r0..r1-1 (all columns); windows that
    overlap a ``blocked`` box are -inf."""
    nc = s.shape[1] - w
    out = np.subtract(s[r0 + h : r1 + h, w:], s[r0:r1, w:], out=out)
    out -= s[r0 + h : r1 + h, :nc]
    out += s[r0:r1, :nc]
    for b in blocked:  # windows overlapping b: top-left rows b.r0-h+1..b.r1-1, likewise columns
        lo, hi = max(b.r0 - h + 1, r0), min(b.r1, r1)
        if lo < hi:
            out[lo - r0 : hi - r0, max(b.c0 - w + 1, 0) : max(b.c1, 0)] = -np.inf
    return out


def _runs(idx):
    """Consecutive runs of sorted indices as half-open (start, stop) pairs."""
    if not idx.size:
        return []
    if idx[-1] - idx[0] + 1 == idx.size:  # one run (the usual case)
        return [(int(idx[0]), int(idx[-1]) + 1)]
    cut = np.flatnonzero(np.diff(idx) > 1) + 1
    starts = idx[np.concatenate(([0], cut))]
    stops = idx[np.concatenate((cut - 1, [idx.size - 1]))] + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))
