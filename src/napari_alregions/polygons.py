"""Polygons drawn by people, made usable: repaired, clipped to the slide, tested for cover by
boxes and rasterised, each in O(n log n) for n polygons (the QuPath import's geometry).

Polygons are ``[ring][(x, y)]`` lists of floats, the outer ring first, then its holes; a
ring may or may not repeat its first point at its end.

Rules (documented in the QuPath import, :func:`napari_alregions.io_qupath.plan_import`):

* a ring with fewer than 3 points (a line, a point) has no area and is dropped; a polygon
  whose outer ring is dropped is dropped;
* an invalid polygon (self-intersecting "bow-tie", a ring traced twice, a hole crossing its
  outer ring, ...) is replaced by its valid form: GEOS's ``make_valid`` with the
  ``structure`` method (JTS's ``GeometryFixer``, the library QuPath's geometry is built on):
  the area enclosed by the outer ring's valid form, less the holes' areas. A ring traced
  twice is the area it encloses once (its square is the whole square, not an even-odd
  count of crossings); a bow-tie is its two triangles; a polygon with no area left is
  dropped;
* a polygon partly outside the slide ``[0, w] x [0, h]`` is cut to it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import numpy as np

__all__ = ["clean_polygons", "iter_spans", "iter_uncovered", "outer_bounds"]

Ring = list[tuple[float, float]]
Polygon = list[Ring]

#: Polygons rasterised per batch (bounds the crossings held at once; one progress step each).
SPAN_BATCH = 20_000
#: Row crossings computed at once, at most (unless one polygon has more): ~40 bytes each.
CROSSINGS = 4_000_000
#: Polygons tested for cover between two progress reports.
COVER_BATCH = 20_000


def _points(ring: Sequence[tuple[float, float]]) -> Sequence[tuple[float, float]]:
    """The ring without its closing point."""
    return ring[:-1] if len(ring) > 1 and tuple(ring[0]) == tuple(ring[-1]) else ring


def _rings_of(geom) -> list[Polygon]:
    """The polygons of a Polygon, MultiPolygon or collection (``make_valid`` may return
    one) as closed ring lists; other parts (lines, points) have no area and are left out."""
    import shapely

    out = []
    for part in shapely.get_parts(geom):
        kind = shapely.get_type_id(part)
        if kind in (6, 7):
            out += _rings_of(part)
        elif kind == 3 and not part.is_empty:
            out.append([[(float(x), float(y)) for x, y in r.coords] for r in (part.exterior, *part.interiors)])
    return out


def clean_polygons(shapes: Sequence[Sequence[Sequence[Sequence[tuple[float, float]]]]],
                   extent: tuple[float, float] | None = None) -> list[tuple[list[Polygon], bool, bool]]:
    """Polygons with area, valid and on the slide (see the module's rules), for many
    shapes at once (GEOS's vectorised calls: 100 000 shapes take a second or two).

    Parameters
    ----------
    shapes : sequence of shapes
        Each a sequence of polygons ``[polygon][ring][(x, y)]``, outer ring first (a
        Polygon's or MultiPolygon's coordinates).
    extent : (width, height), optional
        The slide: parts outside ``[0, width] x [0, height]`` are cut off.

    Returns
    -------
    list of (polygons, repaired, clipped)
        Per shape: the polygons kept, unchanged where they were valid and on the slide (so
        their pixels are exactly those drawn), ``[]`` when none has area (on the slide);
        whether an invalid polygon was replaced by its valid form; whether a polygon was
        cut to the slide.

    Examples
    --------
    >>> square = [(0, 0), (10, 0), (10, 10), (0, 10)]
    >>> [(polygons, repaired, clipped)] = clean_polygons([[[square + square]]])  # traced twice
    >>> polygons, repaired, clipped
    ([[[(0.0, 0.0), (0.0, 10.0), (10.0, 10.0), (10.0, 0.0), (0.0, 0.0)]]], True, False)
    >>> clean_polygons([[[[(0, 0), (10, 0)]]]])  # a line: no area
    [([], False, False)]
    """
    import shapely

    kept: list[list[Polygon]] = [
        [[list(poly[0])] + [list(r) for r in poly[1:] if len(_points(r)) >= 3] for poly in polys if len(_points(poly[0])) >= 3]
        for polys in shapes]
    flat = [poly for polys in kept for poly in polys]
    of_shape = np.repeat(np.arange(len(kept)), [len(polys) for polys in kept])
    out = [([], False, False) for _ in kept]
    if not flat:
        return out
    rings = [ring for poly in flat for ring in poly]
    coords = np.array([p for ring in rings for p in ring], dtype=np.float64).reshape(-1, 2)
    ring_of = np.repeat(np.arange(len(rings)), [len(r) for r in rings])
    polygon_of = np.repeat(np.arange(len(flat)), [len(poly) for poly in flat])
    geoms = shapely.polygons(shapely.linearrings(coords, indices=ring_of), indices=polygon_of)
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms[invalid] = shapely.make_valid(geoms[invalid], method="structure", keep_collapsed=False)
    cut = np.zeros(len(flat), dtype=bool)
    if extent is not None:
        b = shapely.bounds(geoms)
        cut = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > extent[0]) | (b[:, 3] > extent[1])
        if cut.any():
            geoms[cut] = shapely.intersection(geoms[cut], shapely.box(0, 0, float(extent[0]), float(extent[1])))
    changed = invalid | cut
    repaired = np.bincount(of_shape[invalid], minlength=len(kept)) > 0
    clipped = np.bincount(of_shape[cut], minlength=len(kept)) > 0
    first = np.concatenate([[0], np.cumsum([len(polys) for polys in kept])])
    for k, polys in enumerate(kept):
        lo, hi = first[k], first[k + 1]
        if changed[lo:hi].any():
            polys = [q for j, poly in enumerate(polys) for q in (_rings_of(geoms[lo + j]) if changed[lo + j] else [poly])]
        out[k] = (polys, bool(repaired[k]), bool(clipped[k]))
    return out


def outer_bounds(polygons: Sequence[Polygon]) -> np.ndarray:
    """The bounding box ``x0, y0, x1, y1`` of each polygon's outer ring, as an (n, 4) array."""
    if not len(polygons):
        return np.zeros((0, 4))
    xy = np.array([pt for p in polygons for pt in p[0]], dtype=np.float64).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum([len(p[0]) for p in polygons])[:-1]])
    return np.column_stack([np.minimum.reduceat(xy, starts), np.maximum.reduceat(xy, starts)])


def iter_uncovered(held: np.ndarray, polygons: Sequence[Polygon], boxes: np.ndarray, *, bounds: np.ndarray | None = None,
                   ) -> Generator[tuple[int, int], None, np.ndarray]:
    """Which polygons the boxes do not cover, each polygon adding its own box when not.

    Polygon ``i`` is covered when ``held`` together with ``boxes[j]`` of the polygons
    ``j < i`` found uncovered cover it (up to 1e-6 of its area): the order of a file, as a
    labeled set grows one bounding box at a time. An R-tree (``shapely.STRtree``) of all
    boxes finds the few that can cover each polygon, so n polygons cost O(n log n), not
    a union of every box for every polygon.

    Parameters
    ----------
    held : (m, 4) float array
        Boxes held already, ``x0, y0, x1, y1``.
    polygons : sequence of polygons
        Valid polygons (:func:`clean_polygons`).
    boxes : (n, 4) float array
        The box each polygon adds when uncovered (it must contain the polygon).
    bounds : (n, 4) float array, optional
        :func:`outer_bounds` of ``polygons``, when known.

    Yields
    ------
    (done, total)
        Polygons tested so far, every :data:`COVER_BATCH`.

    Returns
    -------
    (n,) bool array
        True where polygon ``i`` was not covered (and so added ``boxes[i]``).
    """
    import shapely

    n = len(polygons)
    held = np.asarray(held, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != n:
        raise ValueError(f"boxes needs one box per polygon ({n}), got {len(boxes)}")
    uncovered = np.zeros(n, dtype=bool)
    if not n:
        return uncovered
    m = len(held)
    every = np.concatenate([held, boxes])  # tree index: held first, then polygon i at m + i
    tree = shapely.STRtree(shapely.box(every[:, 0], every[:, 1], every[:, 2], every[:, 3]))
    active = np.zeros(len(every), dtype=bool)
    active[:m] = True
    outer = outer_bounds(polygons) if bounds is None else np.asarray(bounds, dtype=np.float64)
    for start in range(0, n, COVER_BATCH):
        stop = min(n, start + COVER_BATCH)
        o = outer[start:stop]
        query, hits = tree.query(shapely.box(o[:, 0], o[:, 1], o[:, 2], o[:, 3]), predicate="intersects")
        order = np.argsort(query, kind="stable")  # by polygon (GEOS gives them so already)
        query, hits = query[order], hits[order]
        bounds = np.searchsorted(query, np.arange(stop - start + 1))
        for k in range(stop - start):
            i = start + k
            cand = hits[bounds[k]:bounds[k + 1]]
            c = every[cand[active[cand]]]
            x0, y0, x1, y1 = outer[i]
            c = c[(c[:, 0] < x1) & (c[:, 2] > x0) & (c[:, 1] < y1) & (c[:, 3] > y0)]  # touching covers nothing
            if not len(c):
                uncovered[i] = True
            else:
                inside = (c[:, 0] <= x0) & (c[:, 1] <= y0) & (c[:, 2] >= x1) & (c[:, 3] >= y1)
                if not inside.any():  # no one box holds it: what the boxes together leave of it
                    shape = shapely.Polygon(polygons[i][0], polygons[i][1:])
                    union = shapely.union_all(shapely.box(c[:, 0], c[:, 1], c[:, 2], c[:, 3]))
                    uncovered[i] = shape.difference(union).area > 1e-6 * max(shape.area, 1.0)
            if uncovered[i]:
                active[m + i] = True
        yield stop, n
    return uncovered


def iter_spans(polygons: Sequence[Sequence[np.ndarray]], shape: tuple[int, int],
               ) -> Generator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None, None]:
    """The pixels inside each polygon as row spans, a batch of polygons at a time.

    A pixel ``(r, c)`` is inside when the point ``(c, r)`` is, by the even-odd rule (holes
    out); a point on an edge going down or right is in (half-open, so polygons that share
    an edge share no pixel). One scanline pass for all the edges of a batch: the crossings
    of every edge with every row it spans, sorted by polygon, row and x, then paired.

    Parameters
    ----------
    polygons : sequence of polygons
        Each a sequence of (k, 2) float arrays ``(x, y)`` in pixels, outer ring first.
    shape : (rows, cols)
        Spans are cut to ``[0, rows) x [0, cols)``.

    Yields
    ------
    (polygon, row, start, stop) : int arrays
        Spans ``[start, stop)`` of row ``row`` inside polygon ``polygon`` (index into
        ``polygons``), sorted by polygon, one batch of :data:`SPAN_BATCH` polygons at a time.
    """
    rows, cols = shape
    for first in range(0, len(polygons), SPAN_BATCH):
        batch = polygons[first:first + SPAN_BATCH]
        rings = [np.asarray(r, dtype=np.float64).reshape(-1, 2) for poly in batch for r in poly]
        of_ring = np.repeat(np.arange(first, first + len(batch)), [len(poly) for poly in batch])
        sizes = np.array([len(r) for r in rings], dtype=np.int64)
        if not len(rings) or not sizes.sum():
            continue
        start = np.concatenate(rings)
        # each ring's next point, the last closing on the first (as np.roll does per ring)
        nxt = np.arange(len(start)) + 1
        ends = np.cumsum(sizes)
        nxt[ends[sizes > 0] - 1] = (ends - sizes)[sizes > 0]
        end = start[nxt]
        pid = np.repeat(of_ring, sizes)
        x0, y0, x1, y1 = start[:, 0], start[:, 1], end[:, 0], end[:, 1]
        lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
        # the rows r with lo <= r < hi (a vertex on a scanline counts once), inside the mask
        r_first = np.maximum(np.ceil(lo), 0)
        r_last = np.minimum(np.ceil(hi) - 1, rows - 1)
        keep = (hi > lo) & (r_last >= r_first)
        x0, y0, x1, y1, pid = x0[keep], y0[keep], x1[keep], y1[keep], pid[keep]
        r_first, r_last = r_first[keep].astype(np.int64), r_last[keep].astype(np.int64)
        count = r_last - r_first + 1
        # polygons in groups of at most CROSSINGS crossings (a large polygon alone)
        per_polygon = np.cumsum(np.bincount(pid - first, weights=count, minlength=len(batch)))
        group = np.zeros(len(batch), dtype=np.int64)
        group[1:] = (per_polygon[:-1] // CROSSINGS).astype(np.int64)
        of_edge = group[pid - first]
        for g in np.unique(of_edge):
            e = of_edge == g
            yield _spans(x0[e], y0[e], x1[e], y1[e], pid[e], r_first[e], count[e], cols)


def _spans(x0, y0, x1, y1, pid, r_first, count, cols):
    """The spans of edges ``(x0, y0) -> (x1, y1)`` of polygons ``pid``, each crossing rows
    ``r_first`` to ``r_first + count - 1`` (see :func:`iter_spans`)."""
    edge = np.repeat(np.arange(len(count)), count)
    r = r_first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count))
    xs = x0[edge] + (r - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    p = pid[edge]
    order = np.lexsort((xs, r, p))
    # a closed ring crosses a row an even number of times: the sorted crossings pair up
    xs, r, p = xs[order], r[order], p[order]
    a = np.clip(np.ceil(xs[0::2]), 0, cols).astype(np.int64)
    b = np.clip(np.ceil(xs[1::2]), 0, cols).astype(np.int64)
    nonempty = b > a
    return p[0::2][nonempty], r[0::2][nonempty], a[nonempty], b[nonempty]
