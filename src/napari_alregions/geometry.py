"""Regions and coordinate frames (SPEC §3).

A :class:`Region` is an integer, half-open rectangle in **level-0 pixels** ``(x, y, w, h)``,
as in QuPath and the papers. A map of stride ``s`` has map pixel ``(r, c)`` covering the
level-0 box ``[c*s, (c+1)*s) x [r*s, (r+1)*s)``. Two regions overlap iff their intersection
has positive area: touching is not overlapping.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LABEL_BLOCK",
    "Box",
    "MAX_COORDINATE",
    "Region",
    "MapBox",
    "intersection_area",
    "labeled_boxes",
    "map_box_to_region",
    "overlaps",
    "rasterize",
    "region_to_map_box",
    "union_area",
]

#: QuPath's class for regions of interest; used for proposed regions by default.
REGION_CLASS = "Region*"
DEFAULT_REGION_COLOR = (0, 0, 180)
#: No slide is larger than this (level-0 px); bigger coordinates are an error (beyond ~9.2e18
#: they overflow int64 and a session holding them could not be opened again).
MAX_COORDINATE = 2.0**31 - 1


class Box(NamedTuple):
    """A half-open pixel box ``(y0, x0, y1, x1)`` of an array (rows, then columns, as numpy
    indexes): the one box type of label masks, maps and crops (a :class:`Region` is the
    level-0 rectangle ``(x, y, w, h)`` that QuPath and the papers use).

    Examples
    --------
    >>> b = Box(2, 3, 6, 8)
    >>> b.shape, b.area, np.zeros((10, 10))[b.slices].shape
    ((4, 5), 20, (4, 5))
    """

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def area(self) -> int:
        h, w = self.shape
        return max(h, 0) * max(w, 0)

    def intersection(self, other: Sequence[int]) -> Box:
        """The overlap with ``other`` (empty boxes have ``area`` 0)."""
        o = Box(*other)
        return Box(max(self.y0, o.y0), max(self.x0, o.x0), min(self.y1, o.y1), min(self.x1, o.x1))


@dataclass(frozen=True)
class Region:
    """A proposed or annotated rectangle in level-0 pixels.

    Parameters
    ----------
    x, y : int
        Top-left corner (level-0 px).
    w, h : int
        Width and height (level-0 px), positive.
    score : float
        The selector's score (e.g. summed priority).
    method : str
        Name of the selector that proposed it.
    rank : int
        Position in the selector's output, 0 first.
    slide : str, optional
        Slide name or path.
    cycle : int, optional
        Active-learning cycle.
    uid : str, optional
        Stable identifier (the QuPath feature id when round-tripped).
    """

    x: int
    y: int
    w: int
    h: int
    score: float = 0.0
    method: str = ""
    rank: int = 0
    slide: str | None = None
    cycle: int | None = None
    uid: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("x", "y", "w", "h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Region.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.w <= 0 or self.h <= 0:
            raise ValueError(f"Region size must be positive, got w={self.w}, h={self.h}")

    @property
    def x1(self) -> int:
        return self.x + self.w

    @property
    def y1(self) -> int:
        return self.y + self.h

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)

    def with_(self, **changes: Any) -> Region:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    # -- QuPath GeoJSON -----------------------------------------------------------------
    def to_feature(
        self,
        *,
        classification: str = REGION_CLASS,
        color: Sequence[int] = DEFAULT_REGION_COLOR,
        locked: bool = False,
        name: str | None = None,
    ) -> dict[str, Any]:
        """This region as a QuPath annotation ``Feature`` (SPEC §7).

        Coordinates are ``[x, y]`` level-0 pixels, the ring closed; QuPath needs a colour
        with every classification.
        """
        ring = [[self.x, self.y], [self.x1, self.y], [self.x1, self.y1], [self.x, self.y1], [self.x, self.y]]
        props: dict[str, Any] = {
            "objectType": "annotation",
            "name": name if name is not None else (f"{self.method} #{self.rank + 1}" if self.method else "region"),
            "classification": {"name": classification, "color": [int(c) for c in color]},
            "measurements": {"score": float(self.score), "rank": int(self.rank)},
            "metadata": {"method": self.method},
        }
        if self.cycle is not None:
            props["measurements"]["cycle"] = int(self.cycle)
        if self.slide is not None:
            props["metadata"]["slide"] = str(self.slide)
        if locked:
            props["isLocked"] = True
        return {
            "type": "Feature",
            "id": self.uid or str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": props,
        }

    @classmethod
    def from_feature(cls, feature: dict[str, Any]) -> Region:
        """The bounding box of a GeoJSON ``Feature`` (Polygon or MultiPolygon) as a Region.

        Our own properties (score, rank, cycle, method, slide) are restored when present.

        Raises
        ------
        ValueError
            If the feature has no polygonal geometry, coordinates that are not finite or
            beyond :data:`MAX_COORDINATE`, or properties of the wrong types.
        """
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise ValueError("feature must be a GeoJSON object with type 'Feature'")
        xs, ys = _polygon_points(feature.get("geometry"))
        x0, y0 = math.floor(min(xs)), math.floor(min(ys))
        x1, y1 = math.ceil(max(xs)), math.ceil(max(ys))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"feature {feature.get('id')!r} has an empty bounding box")
        props = feature.get("properties") or {}
        if not isinstance(props, dict):
            raise ValueError(f"properties must be an object, got {type(props).__name__}")
        meas = _measurements(props.get("measurements"))
        meta = props.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"properties.metadata must be an object, got {type(meta).__name__}")
        cycle = meas.get("cycle")
        try:
            return cls(
                x=int(x0), y=int(y0), w=int(x1 - x0), h=int(y1 - y0),
                score=float(meas.get("score", 0.0)),
                method=str(meta.get("method", "")),
                rank=int(meas.get("rank", 0)),
                slide=meta.get("slide"),
                cycle=None if cycle is None else int(cycle),
                uid=feature.get("id"),
            )
        except (TypeError, OverflowError) as exc:  # a measurement of another type, an infinite rank
            raise ValueError(f"malformed measurements ({exc})") from exc


def _measurements(m: Any) -> dict[str, Any]:
    # QuPath writes measurements as a dict; older exports use a list of {name, value}.
    if isinstance(m, dict):
        return m
    if isinstance(m, list):
        return {e["name"]: e["value"] for e in m if isinstance(e, dict) and "name" in e and "value" in e}
    return {}


def _polygon_points(geometry: Any) -> tuple[list[float], list[float]]:
    if not isinstance(geometry, dict):
        raise ValueError("feature has no geometry")
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        polygons = coords
    else:
        raise ValueError(f"unsupported geometry type {kind!r}; expected Polygon or MultiPolygon")
    xs: list[float] = []
    ys: list[float] = []
    try:
        for poly in polygons:
            for x, y, *_ in poly[0]:  # exterior ring bounds the polygon
                xs.append(float(x))
                ys.append(float(y))
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed {kind} coordinates: {exc}") from exc
    if not xs or not all(math.isfinite(v) for v in xs + ys):
        raise ValueError(f"{kind} has no finite coordinates")
    largest = max(abs(v) for v in xs + ys)
    if largest > MAX_COORDINATE:
        raise ValueError(f"{kind} coordinates out of range (|value| up to {largest:.4g} px; "
                         f"the limit is {MAX_COORDINATE:.0f})")
    return xs, ys


# ---------------------------------------------------------------------------------------
# Overlap and area
# ---------------------------------------------------------------------------------------
def intersection_area(a: Region, b: Region) -> int:
    """Area of the intersection of two regions (0 if they only touch)."""
    w = min(a.x1, b.x1) - max(a.x, b.x)
    h = min(a.y1, b.y1) - max(a.y, b.y)
    return w * h if w > 0 and h > 0 else 0


def overlaps(a: Region, b: Region) -> bool:
    """True iff the regions share positive area."""
    return intersection_area(a, b) > 0


def union_area(regions: Iterable[Region]) -> int:
    """Exact area covered by the union of regions (coordinate compression)."""
    regions = list(regions)
    if not regions:
        return 0
    xs = np.unique([v for r in regions for v in (r.x, r.x1)])
    ys = np.unique([v for r in regions for v in (r.y, r.y1)])
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    for r in regions:
        covered[np.searchsorted(ys, r.y) : np.searchsorted(ys, r.y1), np.searchsorted(xs, r.x) : np.searchsorted(xs, r.x1)] = True
    cell = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    return int((cell * covered).sum())


# ---------------------------------------------------------------------------------------
# Map frame <-> level 0
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapBox:
    """Half-open box in map pixels: rows ``r0:r1``, cols ``c0:c1``."""

    r0: int
    c0: int
    r1: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def overlaps(self, other: MapBox) -> bool:
        return min(self.r1, other.r1) > max(self.r0, other.r0) and min(self.c1, other.c1) > max(self.c0, other.c0)


def region_to_map_box(region: Region, stride: int, shape: tuple[int, int] | None = None) -> MapBox:
    """Map pixels that a level-0 region touches (any overlap), clipped to ``shape``."""
    r0, c0 = region.y // stride, region.x // stride
    r1, c1 = -(-region.y1 // stride), -(-region.x1 // stride)
    if shape is not None:
        r0, r1 = max(0, min(r0, shape[0])), max(0, min(r1, shape[0]))
        c0, c1 = max(0, min(c0, shape[1])), max(0, min(c1, shape[1]))
    return MapBox(r0, c0, r1, c1)


def map_box_to_region(box: MapBox, stride: int, **fields: Any) -> Region:
    """The level-0 region a map box covers exactly."""
    return Region(
        x=box.c0 * stride, y=box.r0 * stride, w=(box.c1 - box.c0) * stride, h=(box.r1 - box.r0) * stride, **fields
    )


def rasterize(regions: Iterable[Region], shape: tuple[int, int], stride: int) -> np.ndarray:
    """Boolean map (of ``shape``) of the map pixels that any region touches."""
    out = np.zeros(shape, dtype=bool)
    for r in regions:
        out[region_to_map_box(r, stride, shape).slices] = True
    return out


#: Side (px) of the blocks :func:`labeled_boxes` groups a mask by.
LABEL_BLOCK = 256


def labeled_boxes(labels: np.ndarray, *, block: int | None = None) -> list[Box]:
    """Bounding boxes (:class:`Box`: ``y0, x0, y1, x1``) of the labeled areas of a mask.

    The mask is cut into ``block``² blocks (default :data:`LABEL_BLOCK`); the 8-connected
    groups of blocks holding a nonzero pixel give one box each, so a connected labeled area
    lies in one box (boxes of two groups may overlap). Work on the boxes costs the labeled
    area, not the mask: a slide's labels at the labeling level can be ~10^9 px, of which
    annotated regions hold a few %. One pass reads the mask once, row band by row band.

    Examples
    --------
    >>> m = np.zeros((1024, 1024), np.uint8); m[10:20, 10:20] = 1; m[700:800, 900:1000] = 2
    >>> labeled_boxes(m)
    [Box(y0=0, x0=0, y1=256, x1=256), Box(y0=512, x0=768, y1=1024, x1=1024)]
    """
    from scipy import ndimage

    b = LABEL_BLOCK if block is None else int(block)
    if b < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    labels = np.asarray(labels)
    h, w = labels.shape
    if not h or not w:
        return []
    starts = np.arange(0, w, b)
    occupied = np.array([np.logical_or.reduceat(labels[r : r + b].any(axis=0), starts) for r in range(0, h, b)],
                        dtype=bool).reshape(-1, len(starts))
    groups, _ = ndimage.label(occupied, structure=np.ones((3, 3), bool))
    return [Box(sy.start * b, sx.start * b, min(h, sy.stop * b), min(w, sx.stop * b))
            for sy, sx in ndimage.find_objects(groups)]
