"""QuPath GeoJSON import/export of regions and label masks (SPEC §7).

Regions are rectangles (:class:`~napari_alregions.geometry.Region`). Label masks (0
unlabeled, ``i + 1`` for class i, at a pyramid level of downsample ``factor``) become one
Polygon/MultiPolygon annotation per class whose edges follow pixel borders, so that
rasterising them back (a pixel belongs to a polygon when its centre does) restores the mask
exactly.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
import warnings
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import relay, run
from .geometry import MAX_COORDINATE, REGION_CLASS, Box, Region, _measurements
from .regionfile import (  # the regions file's codec, shared with the session (re-exported)
    MAX_GEOJSON_BYTES,
    PROPOSAL_CLASS,
    _is_polygonal,
    read_features,
    read_geojson,
    read_regions,
    region_features,
    regions_to_geojson,
    write_features,
    write_regions,
)

#: Class colours for QuPath (r, g, b): background grey, tumour red, then others.
_PALETTE = [(160, 160, 160), (200, 0, 0), (0, 150, 0), (0, 90, 220), (230, 160, 0), (150, 0, 200)]

__all__ = [
    "CLASS_SYNONYMS",
    "MAX_GEOJSON_BYTES",
    "ClassAnnotation",
    "ImportPlan",
    "class_names",
    "iter_import",
    "iter_plan",
    "iter_rasterize",
    "labels_to_features",
    "match_class",
    "plan_import",
    "priority_to_features",
    "qupath_class_name",
    "qupath_objects",
    "rasterize_annotations",
    "read_features",
    "read_geojson",
    "read_regions",
    "region_features",
    "regions_to_geojson",
    "write_features",
    "write_regions",
]

logger = logging.getLogger(__name__)

def read_labeled_regions(path: str | os.PathLike[str], *, max_bytes: int = MAX_GEOJSON_BYTES) -> list[Region]:
    """The labeled set's regions in a GeoJSON file (the session's, our export or QuPath's):
    ``Region*`` and unclassified polygon annotations. Proposals, class (label) polygons and
    objects that are no annotation are not regions of the labeled set."""
    path = Path(path)
    out = []
    features = read_geojson(path, max_bytes=max_bytes)
    try:
        objects = list(qupath_objects(features))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    for i, kind, f in objects:
        if kind != "annotation" or not _is_polygonal(f):
            continue
        try:
            names = class_names((f.get("properties") or {}).get("classification"))
            if not names or names[0].lower() == REGION_CLASS.lower():
                out.append(Region.from_feature(f))
        except ValueError as exc:
            raise ValueError(f"{path}: feature {i}: {exc}") from exc
    return out


# ---------------------------------------------------------------------------------------
# Label masks <-> class annotations
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassAnnotation:
    """A polygonal annotation with a classification (QuPath's "annotation" object)."""

    classification: str | None
    polygons: list[list[list[tuple[float, float]]]]  # [polygon][ring][(x, y)], level-0 px
    feature: dict[str, Any]

    @property
    def region(self) -> Region:
        return Region.from_feature(self.feature)


def labels_to_features(
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    factor: float = 1.0,
    origin: tuple[int, int] = (0, 0),
    slide: str | None = None,
    boxes: Sequence[Box] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath annotation per class present in a label mask.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        0 unlabeled, ``i + 1`` for ``classes[i]``.
    classes : sequence of str
        Class names (QuPath classifications).
    colors : sequence of (r, g, b), optional
        One colour per class (QuPath needs one); a default palette otherwise.
    factor : float
        Level-0 px per label pixel (the labeling level's downsample).
    origin : (x, y)
        Level-0 position of ``labels[0, 0]``'s corner (a crop's offset).
    slide : str, optional
        Recorded in each feature's metadata.
    boxes : sequence of :class:`~.geometry.Box` ``(y0, x0, y1, x1)``, optional
        Only these parts of ``labels`` hold labels (e.g. :func:`~.geometry.labeled_boxes`;
        they may overlap): read only there, so a slide-sized mask costs its labeled area.

    Returns
    -------
    list of dict
        GeoJSON ``Feature`` s with Polygon or MultiPolygon geometry (holes kept) whose
        edges follow pixel borders.

    Examples
    --------
    >>> m = np.zeros((4, 4), np.uint8); m[1:3, 1:3] = 2
    >>> f = labels_to_features(m, classes=("background", "tumour"))
    >>> f[0]["properties"]["classification"]["name"], f[0]["geometry"]["type"]
    ('tumour', 'Polygon')
    """
    import shapely
    import shapely.affinity
    import shapely.geometry

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    colors = list(colors) if colors is not None else [_PALETTE[i % len(_PALETTE)] for i in range(len(classes))]
    if len(colors) != len(classes):
        raise ValueError(f"colors needs one colour per class ({len(classes)}), got {len(colors)}")
    features = []
    ox, oy = origin
    boxes = [Box(0, 0, *labels.shape)] if boxes is None else [Box(*(int(v) for v in b)) for b in boxes]
    values = sorted({int(v) for b in boxes for v in np.unique(labels[b.slices])} - {0})
    disjoint = _disjoint_boxes(boxes)
    for value in values:
        if not 1 <= value <= len(classes):
            raise ValueError(f"label value {value} has no class (classes: {list(classes)})")
        geom = _mask_polygons(labels, value, disjoint)
        geom = shapely.affinity.affine_transform(geom, [factor, 0, 0, factor, ox, oy])
        # drops the collinear vertices of the run boxes; a tolerance of 0 moves no edge, so
        # the topology-preserving variant (5-15x slower) is not needed
        geom = shapely.simplify(geom, 0, preserve_topology=False)
        name = classes[value - 1]
        props: dict[str, Any] = {
            "objectType": "annotation",
            "name": name,
            "classification": {"name": name, "color": [int(c) for c in colors[value - 1]]},
            "metadata": {"source": "napari-alregions labels"},
        }
        if slide is not None:
            props["metadata"]["slide"] = str(slide)
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": _geojson_geometry(geom),
            "properties": props,
        })
    return features


def priority_to_features(
    priority: np.ndarray,
    *,
    stride: int,
    mask: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One QuPath *tile* per map cell, with the cell's value as its ``priority`` measurement.

    QuPath's *Measure ▸ Show measurement maps* then colours the map over the slide.

    Parameters
    ----------
    priority : (H, W) float ndarray
        A priority (or similarity) map; map pixel (r, c) covers level-0
        ``[c*stride, (c+1)*stride) x [r*stride, (r+1)*stride)``.
    stride : int
        Level-0 px per map pixel.
    mask : (H, W) bool ndarray, optional
        Cells to write (e.g. the tissue map); all finite cells by default.
    metadata : dict of str to str, optional
        Written with every tile (e.g. the measure and cycle).

    Returns
    -------
    list of dict
        GeoJSON features with ``objectType: "tile"``; non-finite cells are left out.

    Examples
    --------
    >>> [f] = priority_to_features(np.array([[0.25, np.nan]]), stride=64)
    >>> f["geometry"]["coordinates"][0][2], f["properties"]["measurements"]
    ([64, 64], {'priority': 0.25})
    """
    priority = np.asarray(priority)
    if priority.ndim != 2:
        raise ValueError(f"priority must be a 2-D map, got shape {priority.shape}")
    if not isinstance(stride, (int, np.integer)) or stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    keep = np.isfinite(priority)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != priority.shape:
            raise ValueError(f"mask must have the map's shape {priority.shape}, got {mask.shape}")
        keep &= mask
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    s = int(stride)
    features = []
    for r, c in zip(*np.nonzero(keep), strict=True):
        x, y = int(c) * s, int(r) * s
        props: dict[str, Any] = {"objectType": "tile", "measurements": {"priority": float(priority[r, c])}}
        if meta:
            props["metadata"] = dict(meta)
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]},
            "properties": props,
        })
    return features


def _disjoint_boxes(boxes: Sequence[Box]) -> list[Box]:
    """Boxes that cover the union of ``boxes`` without overlapping: per band between
    consecutive box edges in y, the merged x-intervals of the boxes there."""
    ys = sorted({v for b in boxes for v in (b.y0, b.y1)})
    out = []
    for b0, b1 in zip(ys[:-1], ys[1:]):
        spans = sorted((b.x0, b.x1) for b in boxes if b.y0 <= b0 and b1 <= b.y1 and b.x0 < b.x1)
        merged: list[list[int]] = []
        for x0, x1 in spans:
            if merged and x0 <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], x1)
            else:
                merged.append([x0, x1])
        out += [Box(b0, x0, b1, x1) for x0, x1 in merged]
    return out


def row_runs(labels: np.ndarray, value: int, boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of ``labels == value`` along rows inside ``boxes``: row, first column and
    one past the last column of each (label px, int64)."""
    runs = []
    for y0, x0, y1, x1 in boxes:
        padded = np.zeros((y1 - y0, x1 - x0 + 2), dtype=np.int8)
        padded[:, 1:-1] = labels[y0:y1, x0:x1] == value
        d = np.diff(padded, axis=1)
        rows, starts = np.nonzero(d == 1)
        _, ends = np.nonzero(d == -1)  # row-major, so each run's end pairs with its start
        runs.append(np.stack([rows + y0, starts + x0, ends + x0], axis=1).astype(np.int64))
    return tuple(np.concatenate(runs).T) if runs else (np.zeros(0, np.int64),) * 3


def _mask_polygons(labels: np.ndarray, value: int, boxes: Sequence[Box]):
    """The pixels of ``labels == value`` inside the disjoint ``boxes`` as one shapely
    geometry (label px, edges on pixel borders).

    Each row's runs of the value become rectangles that carry, on their top and bottom
    edges, every run end of the rows above and below: then neighbours share whole edges
    vertex for vertex, a valid polygonal coverage, which GEOS's coverage union merges in
    linear time. A plain union of the run boxes (an overlay) took 3 s per 256² box at 30 %
    speckle (benchmarks/bench_labels.py).
    """
    import shapely

    r, s, e = row_runs(labels, value, boxes)
    if not len(r):
        return shapely.Polygon()
    # the vertices on each horizontal pixel border y: every run end in row y - 1 or row y,
    # as sorted keys y * k + x
    k = int(e.max()) + 1
    keys = np.unique(np.concatenate([r * k + s, r * k + e, (r + 1) * k + s, (r + 1) * k + e]))
    top_lo, top_hi = np.searchsorted(keys, r * k + s), np.searchsorted(keys, r * k + e, side="right")
    bot_lo, bot_hi = np.searchsorted(keys, (r + 1) * k + s), np.searchsorted(keys, (r + 1) * k + e, side="right")
    n_top, n_bot = top_hi - top_lo, bot_hi - bot_lo
    size = n_top + n_bot + 1  # the top left to right, the bottom right to left, closed
    ring = np.repeat(np.arange(len(r)), size)
    pos = np.arange(len(ring)) - np.repeat(np.cumsum(size) - size, size)  # index within the ring
    n_top_r, n_bot_r = n_top[ring], n_bot[ring]
    top = pos < n_top_r
    bottom = ~top & (pos < n_top_r + n_bot_r)
    which = np.where(top, top_lo[ring] + pos, bot_hi[ring] - 1 - (pos - n_top_r))
    which = np.where(top | bottom, which, top_lo[ring])  # the closing vertex is the first
    coords = np.stack([keys[which] % k, keys[which] // k], axis=1).astype(np.float64)
    polygons = shapely.polygons(shapely.linearrings(coords, indices=ring))
    return shapely.coverage_union_all(polygons)


def _geojson_geometry(geom) -> dict[str, Any]:
    """A (Multi)Polygon as a GeoJSON geometry of nested lists, built from shapely's arrays
    (``mapping`` and a walk over its tuples took longer than tracing); coordinates are ints
    when all are whole numbers (pixel borders at an integer factor)."""
    import shapely

    polygons = shapely.get_parts(geom)
    rings, of_polygon = shapely.get_rings(polygons, return_index=True)
    xy = shapely.get_coordinates(rings)
    if len(xy) and np.array_equal(xy, np.round(xy)) and np.abs(xy).max() < 2**53:
        xy = xy.astype(np.int64)
    bounds = np.cumsum(shapely.get_num_coordinates(rings))[:-1]
    ring_lists = [r.tolist() for r in np.split(xy, bounds)] if len(rings) else []
    by_polygon: list[list] = [[] for _ in polygons]
    for ring, i in zip(ring_lists, of_polygon.tolist()):
        by_polygon[i].append(ring)
    if shapely.get_type_id(geom) == 3:  # a Polygon
        return {"type": "Polygon", "coordinates": by_polygon[0] if by_polygon else []}
    return {"type": "MultiPolygon", "coordinates": by_polygon}


def rasterize_annotations(
    annotations: Iterable[ClassAnnotation],
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    factor: float = 1.0,
    origin: tuple[int, int] = (0, 0),
) -> list[ClassAnnotation]:
    """Paint classified annotations into a label mask (in place), holes respected.

    A pixel takes an annotation's class when its centre lies inside the polygon; later
    annotations paint over earlier ones. Annotations whose class is not in ``classes``
    are not painted and are returned (e.g. region rectangles). :func:`iter_rasterize`
    does the same and yields its progress.
    """
    return run(iter_rasterize(annotations, labels, classes=classes, factor=factor, origin=origin))


def iter_rasterize(annotations: Iterable[ClassAnnotation], labels: np.ndarray, *, classes: Sequence[str], factor: float = 1.0,
                   origin: tuple[int, int] = (0, 0)) -> Generator[dict[str, Any], None, list[ClassAnnotation]]:
    """:func:`rasterize_annotations`, yielding ``{"phase": "labels", "done", "total"}``
    (polygons painted) as it goes.

    All polygons of a batch are scanned at once (:func:`~napari_alregions.polygons.iter_spans`),
    then their row spans painted in the annotations' order: 100 000 small polygons take
    seconds, not the minutes of one scanline loop per polygon.
    """
    from .polygons import iter_spans

    classes = list(classes)
    skipped = []
    polygons: list[list[np.ndarray]] = []
    values: list[int] = []
    ox, oy = origin
    for ann in annotations:
        if ann.classification not in classes:
            skipped.append(ann)
            continue
        value = classes.index(ann.classification) + 1
        for poly in ann.polygons:
            # pixel (r, c) has its centre at (c + 0.5, r + 0.5) in label px
            polygons.append([(np.asarray(ring, dtype=np.float64).reshape(-1, 2) - (ox, oy)) / factor - 0.5
                             for ring in poly])
            values.append(value)
    value_of = np.asarray(values, dtype=labels.dtype)
    done = 0
    for pid, rows, starts, stops in iter_spans(polygons, labels.shape):
        # spans come sorted by polygon: later polygons paint over earlier ones
        for r, a, b, v in zip(rows.tolist(), starts.tolist(), stops.tolist(), value_of[pid].tolist(), strict=True):
            labels[r, a:b] = v
        done = int(pid[-1]) + 1 if len(pid) else done
        yield {"phase": "labels", "done": done, "total": len(polygons)}
    yield {"phase": "labels", "done": len(polygons), "total": len(polygons)}
    return skipped


# ---------------------------------------------------------------------------------------
# QuPath's object model: what an import takes, maps and skips
# ---------------------------------------------------------------------------------------
#: QuPath's object types (``properties.objectType``; v0.2 wrote the Java class as ``id``).
_OBJECT_TYPES = {
    "annotation": "annotation", "PathAnnotationObject": "annotation", "unknown": "annotation",
    "detection": "detection", "PathDetectionObject": "detection",
    "cell": "cell", "PathCellObject": "cell",
    "tile": "tile", "PathTileObject": "tile",
    "tmaCore": "TMA core", "tma_core": "TMA core", "TMACoreObject": "TMA core",
    "root": "root", "PathRootObject": "root",
}

#: Spellings of one class, matched case-insensitively (QuPath's default classes first).
CLASS_SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"tumour", "tumor"}),
    frozenset({"immune cells", "immune cell", "immune"}),
    frozenset({"necrosis", "necrotic"}),
    frozenset({"stroma", "stromal"}),
    frozenset({"haemorrhage", "hemorrhage"}),
    frozenset({"oedema", "edema"}),
)

#: QuPath's built-in class names (its default class list), by our lower-case spelling
QUPATH_CLASSES = {"tumour": "Tumor", "tumor": "Tumor", "stroma": "Stroma", "immune cells": "Immune cells",
                  "necrosis": "Necrosis", "other": "Other", "region": "Region*", "ignore": "Ignore*",
                  "positive": "Positive", "negative": "Negative"}


def qupath_class_name(name: str) -> str:
    """The name QuPath gives the class ``name`` (its built-in spelling, e.g. ``Tumor``), or
    ``name`` itself for a class QuPath does not have. An import matches both spellings.

    Examples
    --------
    >>> qupath_class_name("tumour"), qupath_class_name("background")
    ('Tumor', 'background')
    """
    return QUPATH_CLASSES.get(name.lower(), name)


#: QuPath's built-in class for areas to leave out.
IGNORE_CLASS = "Ignore*"

# reasons a feature is skipped: (singular, plural), in the order a summary lists them
_SKIP_REASONS = {
    "detection": ("detection", "detections"),
    "cell": ("cell", "cells"),
    "tile": ("tile", "tiles"),
    "TMA core": ("TMA core", "TMA cores"),
    "root": ("root object", "root objects"),
    "proposal": ("proposal", "proposals"),
    "tissue outline": ("tissue outline", "tissue outlines"),
    "ellipse": ("ellipse", "ellipses"),
    "other plane": ("annotation on another z/t plane", "annotations on other z/t planes"),
    "not polygonal": ("non-polygonal annotation", "non-polygonal annotations"),
    "outside the slide": ("annotation outside the slide", "annotations outside the slide"),
    "no area": ("annotation without area", "annotations without area"),
    "ignored class": ("annotation of an ignored class", "annotations of ignored classes"),
}


@dataclass
class ImportPlan:
    """What importing a QuPath file into a session would do, computed before any write.

    Attributes
    ----------
    regions : list of Region
        Annotations that become regions of the labeled set (``Region*`` or unclassified).
    labeled : list of ClassAnnotation
        Annotations whose class maps to a session class (``classification`` holds the
        session's class name); they are painted into the labels.
    skipped : dict of str to int
        Objects left out, by reason (detections, cells, tiles, TMA cores, proposals,
        tissue outlines, ellipses, other planes, non-polygonal, outside the slide, without
        area, ignored classes).
    annotations : int
        Annotation objects in the file (those kept plus those skipped for their shape,
        class or plane).
    repaired : list of int
        Indices of the features kept whose polygons were invalid and replaced by their
        valid form (see :func:`plan_import`).
    clipped : list of int
        Indices of the features kept that were partly outside the slide and cut to it.
    """

    regions: list[Region]
    labeled: list[ClassAnnotation]
    skipped: dict[str, int]
    annotations: int
    repaired: list[int] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)

    @property
    def message(self) -> str:
        """One line, e.g. ``12 annotations: 5 regions, 7 labels; skipped 1000 detections``,
        and the features repaired or cut to the slide, by index."""
        def count(n: int, one: str, many: str) -> str:
            return f"{n} {one if n == 1 else many}"

        def which(indices: list[int]) -> str:
            shown = ", ".join(str(i) for i in indices[:_LISTED])
            return f"({'feature' if len(indices) == 1 else 'features'} {shown}{', ...' if len(indices) > _LISTED else ''})"

        text = (f"{count(self.annotations, 'annotation', 'annotations')}: {count(len(self.regions), 'region', 'regions')}, "
                f"{count(len(self.labeled), 'label', 'labels')}")
        skipped = [count(self.skipped[k], *names) for k, names in _SKIP_REASONS.items() if self.skipped.get(k)]
        if skipped:
            text += f"; skipped {', '.join(skipped)}"
        if self.repaired:
            text += (f"; repaired {count(len(self.repaired), 'invalid polygon annotation', 'invalid polygon annotations')} "
                     f"{which(self.repaired)}")
        if self.clipped:
            text += f"; cut {count(len(self.clipped), 'annotation', 'annotations')} to the slide {which(self.clipped)}"
        return text

    def new_regions(self, accepted: Sequence[Region], *, slide: str | None = None) -> list[Region]:
        """The regions a labeled set holding ``accepted`` gains from this plan: each region
        not held already (same box), then the bounding box of each labeled polygon that the
        regions together do not cover (a label polygon may span two touching regions).
        Importing a file twice, or into the session that exported it, gains nothing."""
        own, boxes = self.added_regions(accepted, slide=slide)
        return own + boxes

    def added_regions(self, accepted: Sequence[Region], *, slide: str | None = None) -> tuple[list[Region], list[Region]]:
        """:meth:`new_regions` in its two parts: the file's regions not held already, and
        the boxes around labeled polygons that no region covers. :meth:`iter_added_regions`
        does the same and yields its progress."""
        return run(self.iter_added_regions(accepted, slide=slide))

    def iter_added_regions(self, accepted: Sequence[Region], *, slide: str | None = None,
                           ) -> Generator[dict[str, Any], None, tuple[list[Region], list[Region]]]:
        """:meth:`added_regions`, yielding ``{"phase": "regions", "done", "total"}``
        (labeled polygons tested) as it goes. The polygons are tested in the file's order,
        each against the boxes held and those added before it, found through an R-tree
        (:func:`~napari_alregions.polygons.iter_uncovered`): O(n log n) for n polygons."""
        from .polygons import iter_uncovered, outer_bounds

        held = {(a.x, a.y, a.w, a.h) for a in accepted}
        own: list[Region] = []
        for r in self.regions:
            if (r.x, r.y, r.w, r.h) not in held:
                held.add((r.x, r.y, r.w, r.h))
                own.append(r.with_(slide=slide, method=r.method or "qupath", uid=None))
        polygons = [poly for a in self.labeled for poly in a.polygons]
        bounds = outer_bounds(polygons)
        boxes = _bounding_boxes(bounds)
        have = np.array([(x, y, x + w, y + h) for x, y, w, h in held], dtype=np.float64).reshape(-1, 4)
        gen = iter_uncovered(have, polygons, boxes.astype(np.float64), bounds=bounds)
        uncovered = yield from relay(gen, lambda dt: {"phase": "regions", "done": dt[0], "total": dt[1]})
        return own, [Region(x0, y0, x1 - x0, y1 - y0, method="qupath", slide=slide)
                     for x0, y0, x1, y1 in boxes[uncovered].tolist()]


#: Features named by index in an import's message, at most.
_LISTED = 5


def _bounding_boxes(bounds: np.ndarray) -> np.ndarray:
    """Boxes ``x0, y0, x1, y1`` (int) around float bounds, rounded outwards, at least 1 px."""
    lo, hi = np.floor(bounds[:, :2]).astype(np.int64), np.ceil(bounds[:, 2:]).astype(np.int64)
    return np.concatenate([lo, np.maximum(hi, lo + 1)], axis=1).reshape(-1, 4)


def class_names(classification: Any) -> list[str]:
    """The names of a QuPath classification, base class first (``[]`` when unclassified).

    QuPath writes ``{"name": "Tumor", "color": [...]}`` for a class and ``{"names":
    ["Tumor", "Positive"], "color": [...]}`` for a derived one; it reads a plain string too,
    and a ``name`` with ``:`` is a derived class as well (``"Proposal: random"`` is
    ``["Proposal", "random"]``). Files from before v0.4 nest ``parentClass``.

    Raises
    ------
    ValueError
        If the classification is none of these.

    Examples
    --------
    >>> class_names({"names": ["Tumor", "Positive"], "color": [200, 0, 0]})
    ['Tumor', 'Positive']
    >>> class_names({"name": "Proposal: random", "color": [0, 0, 180]})
    ['Proposal', 'random']
    """
    if classification is None:
        return []
    if isinstance(classification, str):
        return [n.strip() for n in classification.split(":") if n.strip()]
    if not isinstance(classification, dict):
        raise ValueError(f"classification must be an object or a string, got {type(classification).__name__}")
    parent = class_names(classification["parentClass"]) if classification.get("parentClass") is not None else []
    if classification.get("name") is not None:
        if not isinstance(classification["name"], str):
            raise ValueError(f"classification name must be a string, got {classification['name']!r}")
        return parent + class_names(classification["name"])
    names = classification.get("names")
    if names is None:
        return parent
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"classification names must be a list of strings, got {names!r}")
    return parent + [p for n in names for p in class_names(n)]


def match_class(names: Sequence[str], classes: Sequence[str], class_map: dict[str, str | None] | None = None) -> tuple[bool, str | None]:
    """The session class a QuPath classification maps to.

    The explicit map is tried first (its keys case-insensitive: the full derived name
    ``"Tumor: Positive"``, then the base name), then the session's classes by the base
    name, case-insensitively and through :data:`CLASS_SYNONYMS`.

    Returns
    -------
    (found, cls) : (bool, str or None)
        ``found`` False when nothing matches; ``cls`` None when the map says to ignore
        the class.

    Examples
    --------
    >>> match_class(["Tumor", "Positive"], ("background", "tumour"))
    (True, 'tumour')
    >>> match_class(["Stroma"], ("background", "tumour"), {"stroma": "background"})
    (True, 'background')
    """
    lower = {c.lower(): c for c in classes}
    cmap = {k.strip().lower(): v for k, v in (class_map or {}).items()}
    for key in (": ".join(names).lower(), names[0].lower()):
        if key in cmap:
            return True, cmap[key]
    base = names[0].lower()
    for spelling in next((group for group in CLASS_SYNONYMS if base in group), {base}):
        if spelling in lower:
            return True, lower[spelling]
    return False, None


def _validate_class_map(class_map: dict[str, str | None] | None, classes: Sequence[str]) -> dict[str, str | None]:
    out = {}
    for k, v in (class_map or {}).items():
        if not isinstance(k, str) or not k.strip():
            raise ValueError(f"class_map keys must be QuPath class names, got {k!r}")
        if v is not None and v not in classes:
            raise ValueError(f"class_map maps {k!r} to {v!r}, which is not a class of the session ({', '.join(classes)})")
        out[k] = v
    return out


def qupath_objects(features: Iterable[Any]) -> Iterable[tuple[int, str, dict[str, Any]]]:
    """``(index, object type, feature)`` of each object, children (``childObjects``) after
    their parent, as QuPath reads a file. ``index`` is the top-level feature's."""
    stack = [(i, f) for i, f in reversed(list(enumerate(features)))]
    while stack:
        i, f = stack.pop()
        if not isinstance(f, dict):
            raise ValueError(f"feature {i}: not a GeoJSON object")
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            raise ValueError(f"feature {i}: properties must be an object")
        kind = props.get("objectType", props.get("object_type", props.get("type")))
        if kind is None:
            kind = f.get("id") if f.get("id") in _OBJECT_TYPES else "annotation"
        # QuPath makes an annotation of a type it does not know
        yield i, _OBJECT_TYPES.get(str(kind), "annotation"), f
        children = props.get("childObjects", props.get("children"))
        if isinstance(children, list):
            stack.extend((i, c) for c in reversed(children))


def _polygons(geometry: dict[str, Any]) -> list:
    """The Polygon coordinate lists of a Polygon, MultiPolygon or GeometryCollection (its
    polygonal members); ``[]`` for other geometry."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry.get("coordinates")]
    if kind == "MultiPolygon":
        coords = geometry.get("coordinates")
        if not isinstance(coords, list):
            raise ValueError("MultiPolygon coordinates must be a list")
        return coords
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list):
            raise ValueError("GeometryCollection without a 'geometries' list")
        return [p for g in members if isinstance(g, dict) for p in _polygons(g)]
    return []


def _rings(polygons: list, kind: str) -> tuple[list[list[list[tuple[float, float]]]], tuple[float, ...]]:
    """Float ``[polygon][ring][(x, y)]``, checked finite and bounded, empty polygons
    dropped, and the bounding box ``(x0, y0, x1, y1)`` of the outer rings (``()`` when
    none is left)."""
    try:  # numpy's conversion first (10x faster); anything it refuses, point by point
        arrays = [[a for a in (_xy(ring) for ring in poly) if len(a)] for poly in polygons]
    except (TypeError, ValueError):
        try:
            arrays = [[np.array([(float(x), float(y)) for x, y, *_ in ring], dtype=np.float64).reshape(-1, 2) for ring in poly]
                      for poly in polygons]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed {kind} coordinates ({exc})") from exc
        arrays = [[a for a in poly if len(a)] for poly in arrays]
    arrays = [poly for poly in arrays if poly]
    if not arrays:
        return [], ()
    values = np.concatenate([a for poly in arrays for a in poly])
    if not np.isfinite(values).all():
        raise ValueError(f"{kind} with non-finite coordinates")
    if np.abs(values).max() > MAX_COORDINATE:
        raise ValueError(f"{kind} coordinates out of range (|value| up to {np.abs(values).max():.4g} px; "
                         f"the limit is {MAX_COORDINATE:.0f})")
    outer = np.concatenate([poly[0] for poly in arrays])
    bounds = (*outer.min(axis=0).tolist(), *outer.max(axis=0).tolist())
    return [[list(map(tuple, a.tolist())) for a in poly] for poly in arrays], bounds


def _xy(ring: Any) -> np.ndarray:
    """A ring's points as an (n, 2) float array (z and more dropped), or an error."""
    a = np.asarray(ring, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"points of shape {a.shape}")
    return a[:, :2]


def _meets(bounds: tuple[float, ...], extent: tuple[int, int]) -> bool:
    """Whether the bounding box ``(x0, y0, x1, y1)`` overlaps the slide ``[0, w) x [0, h)``."""
    x0, y0, x1, y1 = bounds
    return x1 > 0 and y1 > 0 and x0 < extent[0] and y0 < extent[1]


def _plane(geometry: dict[str, Any]) -> tuple[int, int]:
    plane = geometry.get("plane")
    if plane is None:
        return 0, 0
    try:
        return int(plane.get("z", 0)), int(plane.get("t", 0))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed plane {plane!r}") from exc


def _measurement(value: Any) -> float | None:
    """A measurement value as QuPath reads it (numbers; the strings NaN, Infinity, ...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "NaN", "Infinity", "-inf", "1.5"
        except ValueError:
            return None
    return None


def _region_of(feature: dict[str, Any], rings: list) -> Region:
    """The bounding box of ``rings`` with our values (score, rank, cycle, method, slide)
    restored, tolerant of what other writers put there (NaN ranks, null scores)."""
    props = dict(feature.get("properties") or {})
    raw = _measurements(props.get("measurements"))
    meas: dict[str, Any] = {}
    score = _measurement(raw.get("score"))
    if score is not None:
        meas["score"] = score
    for key in ("rank", "cycle"):
        v = _measurement(raw.get(key))
        if v is not None and math.isfinite(v) and abs(v) < MAX_COORDINATE:
            meas[key] = int(v)
    meta = props.get("metadata")
    props["metadata"] = {k: v for k, v in meta.items() if isinstance(v, str)} if isinstance(meta, dict) else {}
    props["measurements"] = meas
    ring = [p for poly in rings for p in poly[0]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    return Region.from_feature({"type": "Feature", "id": feature.get("id"), "geometry": geometry, "properties": props})


def plan_import(
    features: Iterable[Any],
    *,
    classes: Sequence[str],
    class_map: dict[str, str | None] | None = None,
    max_region: float | None = None,
    extent: tuple[int, int] | None = None,
) -> ImportPlan:
    """Sort the objects of a QuPath GeoJSON file as an import into a session would.

    Follows QuPath's object model: only annotations are taken (detections, cells, tiles
    and TMA cores are skipped and counted); ellipses, annotations on another z or t plane
    (with a warning) and non-polygonal ones are skipped; ``Proposal: <method>`` in either
    form is one of our proposals and is skipped; ``Region*`` and unclassified polygons are
    regions, except unclassified outlines larger than ``max_region`` (tissue outlines, as
    QuPath's tissue detection makes), which are skipped; other classes map to a session
    class by :func:`match_class`.

    Polygons as people draw them are taken by defined rules
    (:mod:`napari_alregions.polygons`), never with a geometry library's error:

    * an invalid polygon (a self-intersecting "bow-tie", a ring traced twice, a hole
      crossing its outer ring) is replaced by its valid form (GEOS ``make_valid``,
      ``structure`` method, as JTS's ``GeometryFixer``): a bow-tie is its two triangles,
      a ring traced twice the area it encloses; the message names these features;
    * a ring of fewer than 3 points has no area and is dropped (a hole) or drops its
      polygon (an outer ring); an annotation left without area is skipped and counted;
    * with ``extent``, an annotation partly outside the slide is cut to it (its region or
      labels end at the slide's edge; the message names these features), one wholly
      outside is skipped and counted.

    Parameters
    ----------
    features : iterable of dict
        GeoJSON features (see :func:`read_geojson`).
    classes : sequence of str
        The session's classes.
    class_map : dict of str to (str or None), optional
        QuPath class name (base or full derived name, any case) -> session class, or None
        to skip annotations of that class.
    max_region : float, optional
        The largest side (level-0 px) an unclassified outline may have to be a region.
    extent : (width, height), optional
        The slide's level-0 size: annotations are cut to it, those wholly outside skipped.

    Returns
    -------
    ImportPlan

    Raises
    ------
    ValueError
        For malformed features (the message gives the feature's index), and for classes
        that match no session class: all of them are listed, nothing is imported.
    """
    return run(iter_plan(features, classes=classes, class_map=class_map, max_region=max_region, extent=extent))


def iter_plan(features: Iterable[Any], *, classes: Sequence[str], class_map: dict[str, str | None] | None = None,
              max_region: float | None = None, extent: tuple[int, int] | None = None,
              ) -> Generator[dict[str, Any], None, ImportPlan]:
    """:func:`plan_import`, yielding ``{"phase": "read", "done", "total"}`` (features
    read) as it goes."""
    from .polygons import clean_polygons

    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    class_map = _validate_class_map(class_map, classes)
    if max_region is not None and not max_region > 0:
        raise ValueError(f"max_region must be positive, got {max_region}")
    if extent is not None and (len(extent) != 2 or min(extent) <= 0):
        raise ValueError(f"extent must be a positive (width, height), got {extent}")
    features = list(features)
    regions: list[Region] = []
    labeled: list[ClassAnnotation] = []
    skipped: dict[str, int] = {}
    unknown: dict[str, int] = {}
    repaired: list[int] = []
    clipped: list[int] = []
    other_planes = 0
    n_annotations = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    # (index, feature, rings, class names, session class or None for a region), in file order
    kept: list[tuple[int, dict[str, Any], list, list[str], str | None]] = []
    step = max(1, len(features) // 100)
    for i, kind, f in qupath_objects(features):
        if i % step == 0:
            yield {"phase": "read", "done": i, "total": len(features)}
        if kind != "annotation":
            skip(kind)
            continue
        n_annotations += 1
        geom = f.get("geometry")
        try:
            if not isinstance(geom, dict):
                skip("not polygonal")
                continue
            if _plane(geom) != (0, 0):
                other_planes += 1
                skip("other plane")
                continue
            if geom.get("isEllipse") is True:
                skip("ellipse")
                continue
            rings, bounds = _rings(_polygons(geom), str(geom.get("type")))
            if not rings:
                skip("not polygonal")
                continue
            props = f.get("properties") or {}
            names = class_names(props.get("classification"))
        except ValueError as exc:
            raise ValueError(f"feature {i}: {exc}") from exc
        if extent is not None and not _meets(bounds, extent):
            skip("outside the slide")
            continue
        if names and names[0].lower() == PROPOSAL_CLASS.lower():
            skip("proposal")
            continue
        if names and names[0].lower() == IGNORE_CLASS.lower():
            skip("ignored class")
            continue
        if not names or names[0].lower() == REGION_CLASS.lower():
            kept.append((i, f, rings, names, None))
            continue
        found, cls = match_class(names, classes, class_map)
        if not found:
            unknown[": ".join(names)] = unknown.get(": ".join(names), 0) + 1
        elif cls is None:
            skip("ignored class")
        else:
            kept.append((i, f, rings, names, cls))
    if unknown:
        listed = ", ".join(f"{name!r} ({n})" for name, n in sorted(unknown.items()))
        raise ValueError(f"classes that match no class of the session ({', '.join(classes)}): {listed}; "
                         "map them to a session class (class_map / --class-map NAME=CLASS, NAME= to skip)")
    if other_planes:
        warnings.warn(f"skipped {other_planes} annotation(s) on a z or t plane other than 0: labels are 2-D",
                      UserWarning, stacklevel=3)
    # polygons as drawn -> with area, valid, on the slide: all at once
    for (i, f, _, names, cls), (rings, fixed, cut) in zip(kept, clean_polygons([k[2] for k in kept], extent), strict=True):
        if not rings:
            skip("outside the slide" if cut else "no area")
            continue
        if fixed and i not in repaired[-1:]:
            repaired.append(i)
        if cut and i not in clipped[-1:]:
            clipped.append(i)
        if cls is not None:
            labeled.append(ClassAnnotation(cls, rings, f))
            continue
        try:
            region = _region_of(f, rings)
        except ValueError as exc:
            raise ValueError(f"feature {i}: {exc}") from exc
        if not names and max_region is not None and max(region.w, region.h) > max_region:
            skip("tissue outline")
        else:
            regions.append(region)
    yield {"phase": "read", "done": len(features), "total": len(features)}
    return ImportPlan(regions, labeled, skipped, n_annotations, repaired, clipped)


def iter_import(
    features: Iterable[Any],
    *,
    classes: Sequence[str],
    accepted: Sequence[Region] = (),
    slide: str | None = None,
    class_map: dict[str, str | None] | None = None,
    max_region: float | None = None,
    extent: tuple[int, int] | None = None,
) -> Generator[dict[str, Any], None, tuple[ImportPlan, list[Region], list[Region]]]:
    """Plan an import (:func:`plan_import`) and find the regions a labeled set holding
    ``accepted`` gains from it (:meth:`ImportPlan.added_regions`), yielding the progress
    of both (``phase`` "read", then "regions"). Returns ``(plan, the file's regions, boxes
    around labels)``; the labels are painted after with :func:`iter_rasterize`."""
    plan = yield from iter_plan(features, classes=classes, class_map=class_map, max_region=max_region, extent=extent)
    own, boxes = yield from plan.iter_added_regions(accepted, slide=slide)
    return plan, own, boxes
