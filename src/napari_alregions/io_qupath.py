"""QuPath GeoJSON import/export of regions and label masks (SPEC §7).

Regions are rectangles (:class:`~napari_alregions.geometry.Region`). Label masks (0
unlabeled, ``i + 1`` for class i, at a pyramid level of downsample ``factor``) become one
Polygon/MultiPolygon annotation per class whose edges follow pixel borders, so that
rasterising them back (a pixel belongs to a polygon when its centre does) restores the mask
exactly.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import write_text
from .geometry import DEFAULT_REGION_COLOR, REGION_CLASS, Region

#: Class colours for QuPath (r, g, b): background grey, tumour red, then others.
_PALETTE = [(160, 160, 160), (200, 0, 0), (0, 150, 0), (0, 90, 220), (230, 160, 0), (150, 0, 200)]

__all__ = [
    "ClassAnnotation",
    "class_annotations",
    "labels_to_features",
    "rasterize_annotations",
    "read_features",
    "read_geojson",
    "read_regions",
    "regions_to_geojson",
    "write_features",
    "write_regions",
]

#: Refuse GeoJSON files larger than this (bytes): a bound on untrusted input.
MAX_GEOJSON_BYTES = 256 * 1024 * 1024


def regions_to_geojson(
    regions: Iterable[Region],
    *,
    classification: str = REGION_CLASS,
    color: Sequence[int] = DEFAULT_REGION_COLOR,
    locked: bool = False,
) -> dict[str, Any]:
    """A QuPath-compatible ``FeatureCollection`` of annotation rectangles."""
    return {
        "type": "FeatureCollection",
        "features": [r.to_feature(classification=classification, color=color, locked=locked) for r in regions],
    }


def write_regions(path: str | os.PathLike[str], regions: Iterable[Region], **kwargs: Any) -> Path:
    """Write regions as QuPath GeoJSON, atomically (temporary file, then rename)."""
    return write_features(path, regions_to_geojson(regions, **kwargs)["features"])


def write_features(path: str | os.PathLike[str], features: Iterable[dict[str, Any]]) -> Path:
    """Write GeoJSON features as a ``FeatureCollection``, atomically."""
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": list(features)}, indent=1))


def read_regions(path: str | os.PathLike[str]) -> list[Region]:
    """Bounding boxes of the polygon annotations of a GeoJSON file (QuPath export or ours).

    Accepts a ``FeatureCollection``, a single ``Feature`` or a list of features (QuPath's
    "Export objects" writes any of these). Non-polygonal features are skipped.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing, oversized or malformed file (the message names it).
    """
    path = Path(path)
    regions = []
    for i, f in enumerate(read_features(path)):
        try:
            regions.append(Region.from_feature(f))
        except ValueError as exc:
            raise ValueError(f"{path}: feature {i}: {exc}") from exc
    return regions


def read_features(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The polygonal features (Polygon, MultiPolygon) of a GeoJSON file, others skipped."""
    return [f for f in read_geojson(path) if _is_polygonal(f)]


def _is_polygonal(f: Any) -> bool:
    geom = f.get("geometry") if isinstance(f, dict) else None
    return isinstance(geom, dict) and geom.get("type") in ("Polygon", "MultiPolygon")


def read_geojson(path: str | os.PathLike[str]) -> list[Any]:
    """All features of a GeoJSON file, size-bounded and validated at the top level."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_GEOJSON_BYTES:
        raise ValueError(f"{path}: larger than {MAX_GEOJSON_BYTES // 2**20} MiB; refusing to read")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection, Feature or list of features")
    if not isinstance(features, list):
        raise ValueError(f"{path}: 'features' must be a list")
    return features


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
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
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
    boxes : sequence of (y0, y1, x0, x1), optional
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
    boxes = [(0, labels.shape[0], 0, labels.shape[1])] if boxes is None else [tuple(int(v) for v in b) for b in boxes]
    values = sorted({int(v) for y0, y1, x0, x1 in boxes for v in np.unique(labels[y0:y1, x0:x1])} - {0})
    for value in values:
        if not 1 <= value <= len(classes):
            raise ValueError(f"label value {value} has no class (classes: {list(classes)})")
        # overlapping boxes give some runs twice: the union merges them
        geom = shapely.union_all([run for y0, y1, x0, x1 in boxes for run in _row_runs(labels[y0:y1, x0:x1] == value, (y0, x0))])
        geom = shapely.affinity.affine_transform(geom, [factor, 0, 0, factor, ox, oy])
        geom = shapely.simplify(geom, 0)  # drop collinear vertices of the run boxes
        mapping = shapely.geometry.mapping(geom)
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
            "geometry": {"type": mapping["type"], "coordinates": _lists(mapping["coordinates"])},
            "properties": props,
        })
    return features


def _row_runs(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list:
    """Boxes of the horizontal runs of True in each row (their union is the mask), moved
    by ``offset`` (y, x)."""
    import shapely

    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    oy, ox = offset
    return list(shapely.box(starts + ox, rows + oy, ends + ox, rows + oy + 1))


def _lists(coords: Any) -> Any:
    if isinstance(coords, (tuple, list)) and coords and isinstance(coords[0], (int, float)):
        return [float(c) if not float(c).is_integer() else int(c) for c in coords]
    return [_lists(c) for c in coords]


def class_annotations(features: Iterable[dict[str, Any]]) -> list[ClassAnnotation]:
    """Polygonal features with their classification name (None when unclassified)."""
    out = []
    for i, f in enumerate(features):
        if not _is_polygonal(f):
            continue
        geom = f["geometry"]
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        try:
            rings = [[[(float(x), float(y)) for x, y, *_ in ring] for ring in poly] for poly in polys]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"feature {i}: malformed {geom['type']} coordinates ({exc})") from exc
        if not all(np.isfinite(p).all() for poly in rings for ring in poly for p in ring) or not any(rings):
            raise ValueError(f"feature {i}: {geom['type']} without finite coordinates")
        props = f.get("properties") or {}
        cls = props.get("classification")
        name = cls.get("name") if isinstance(cls, dict) else (cls if isinstance(cls, str) else None)
        out.append(ClassAnnotation(name, rings, f))
    return out


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
    are not painted and are returned (e.g. region rectangles).
    """
    skipped = []
    ox, oy = origin
    for ann in annotations:
        if ann.classification not in classes:
            skipped.append(ann)
            continue
        value = list(classes).index(ann.classification) + 1
        for poly in ann.polygons:
            # pixel (r, c) has its centre at (c + 0.5, r + 0.5) in label px
            rings = [np.column_stack([(np.asarray(ring)[:, 0] - ox) / factor - 0.5, (np.asarray(ring)[:, 1] - oy) / factor - 0.5])
                     for ring in poly]
            # fill in the polygon's bounding box only (the mask may be slide-sized); an
            # integer shift of the rings moves every crossing by the same whole pixels
            pts = np.concatenate(rings)
            y0, x0 = (max(0, int(np.floor(v)) - 1) for v in pts.min(axis=0)[::-1])
            y1, x1 = (min(n, int(np.ceil(v)) + 2) for v, n in zip(pts.max(axis=0)[::-1], labels.shape, strict=True))
            if y1 <= y0 or x1 <= x0:
                continue
            inside = _fill_even_odd([r - (x0, y0) for r in rings], (y1 - y0, x1 - x0))
            labels[y0:y1, x0:x1][inside] = value
    return skipped


def _fill_even_odd(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose integer (c, r) lies inside the rings by the even-odd rule (holes out).

    A scanline fill: per row, the crossings of all ring edges, paired. O(rows x edges),
    unlike a per-pixel point-in-polygon test over the bounding box.
    """
    out = np.zeros(shape, dtype=bool)
    starts = np.concatenate([r for r in rings if len(r) > 1])
    ends = np.concatenate([np.roll(r, -1, axis=0) for r in rings if len(r) > 1])
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    keep = hi > lo  # horizontal edges never cross a scanline
    x0, y0, x1, y1, lo, hi = x0[keep], y0[keep], x1[keep], y1[keep], lo[keep], hi[keep]
    if not len(lo):
        return out
    r_first = max(0, int(np.ceil(lo.min())))
    r_last = min(shape[0] - 1, int(np.floor(hi.max())))
    for r in range(r_first, r_last + 1):
        active = (lo <= r) & (r < hi)  # half-open: a vertex on the scanline counts once
        if not active.any():
            continue
        xs = np.sort(x0[active] + (r - y0[active]) * (x1[active] - x0[active]) / (y1[active] - y0[active]))
        a = np.clip(np.ceil(xs[0::2]), 0, shape[1]).astype(int)
        b = np.clip(np.ceil(xs[1::2]), 0, shape[1]).astype(int)
        row = np.zeros(shape[1] + 1, dtype=np.int32)
        np.add.at(row, a, 1)
        np.add.at(row, b, -1)
        out[r] = np.cumsum(row[:-1]) > 0
    return out
