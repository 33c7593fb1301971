"""GeoJSON as QuPath writes it, for import tests: independent of our exporter.

Each rule is QuPath's (qupath-core, ``qupath.lib.io``; the same from v0.4 to v0.6):

* ``PathObjectTypeAdapter.write``: ``{"type": "Feature", "id": <UUID>, "geometry": ...,
  ["nucleusGeometry": ... for cells], "properties": {"objectType", ["name"], ["color"],
  ["classification"], ["isLocked": true only when locked], ["isMissing" for TMA cores],
  ["measurements"], ["metadata"]}}``; object types ``annotation``, ``detection``, ``cell``,
  ``tile``, ``tmaCore``.
* ``GsonTools.PathClassTypeAdapter.write``: ``{"name": n, "color": [r, g, b]}`` for a
  single class, ``{"names": [n1, n2, ...], "color": ...}`` for a derived one; a class is
  made from a string by splitting at ``:`` and stripping (``PathClass.fromString``), so
  ``"Proposal: random"`` becomes ``names: ["Proposal", "random"]``.
* ``MeasurementListTypeAdapter.write``: an object of doubles; NaN as the string ``"NaN"``,
  infinities as ``"Infinity"`` / ``"-Infinity"``. Metadata values are strings.
* ``ROITypeAdapters.ROITypeAdapter.write``: coordinates ``[x, y]`` with at most 2
  decimals; ``"plane": {"c", "z", "t"}`` inside the geometry when not the default plane
  (c = -1, z = 0, t = 0); ``"isEllipse": true`` for ellipse ROIs (TMA cores), whose
  polygon is JTS's 100-point ellipse of the bounding box; rectangles are JTS's 4-point
  rectangle from (min x, min y).
* "Export objects as GeoJSON": a ``FeatureCollection`` or a bare list of features (Gson
  pretty printing, 2-space indent); "include children" nests ``childObjects``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import Any


def qupath_number(v: float) -> float | int:
    """A coordinate as ``GeneralTools.formatNumber(Locale.US, v, 2)`` writes it."""
    r = round(float(v), 2)
    return int(r) if r.is_integer() else r


def coords(c: Any) -> Any:
    if isinstance(c, (int, float)):
        return qupath_number(c)
    return [coords(v) for v in c]


def rectangle(x: float, y: float, w: float, h: float) -> dict[str, Any]:
    """A RectangleROI's geometry (JTS GeometricShapeFactory.createRectangle, 4 points)."""
    ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
    return {"type": "Polygon", "coordinates": coords([ring])}


def ellipse(x: float, y: float, w: float, h: float, n: int = 100) -> dict[str, Any]:
    """An EllipseROI's geometry: JTS's createEllipse polygon and QuPath's ``isEllipse``."""
    cx, cy = x + w / 2, y + h / 2
    ring = [[cx + w / 2 * math.cos(2 * math.pi * i / n), cy + h / 2 * math.sin(2 * math.pi * i / n)] for i in range(n)]
    return {"type": "Polygon", "coordinates": coords([ring + ring[:1]]), "isEllipse": True}


def polygon(*rings: Sequence[Sequence[float]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": coords([list(r) + [r[0]] if list(r[0]) != list(r[-1]) else list(r) for r in rings])}


def path_class(cls: str | Sequence[str] | None, color: Sequence[int] = (200, 0, 0)) -> dict[str, Any] | None:
    """A PathClass as QuPath writes it (a string is split at ':' as PathClass.fromString does)."""
    if cls is None:
        return None
    names = [n.strip() for n in cls.split(":")] if isinstance(cls, str) else list(cls)
    out: dict[str, Any] = {"name": names[0]} if len(names) == 1 else {"names": names}
    out["color"] = [int(c) for c in color]
    return out


def measurements(values: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        v = float(v)
        out[k] = "NaN" if math.isnan(v) else ("Infinity" if v == math.inf else ("-Infinity" if v == -math.inf else v))
    return out


def feature(
    geometry: dict[str, Any],
    *,
    object_type: str = "annotation",
    name: str | None = None,
    cls: str | Sequence[str] | None = None,
    class_color: Sequence[int] = (200, 0, 0),
    color: Sequence[int] | None = None,
    locked: bool = False,
    measurements_: dict[str, float] | None = None,
    metadata: dict[str, str] | None = None,
    plane: tuple[int, int, int] | None = None,
    nucleus: dict[str, Any] | None = None,
    is_missing: bool | None = None,
    id: str | None = None,
    children: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One PathObject, with QuPath's keys in QuPath's order."""
    geometry = dict(geometry)
    if plane is not None and tuple(plane) != (-1, 0, 0):
        is_ellipse = geometry.pop("isEllipse", None)
        geometry["plane"] = {"c": plane[0], "z": plane[1], "t": plane[2]}
        if is_ellipse:
            geometry["isEllipse"] = True
    f: dict[str, Any] = {"type": "Feature", "id": id or str(uuid.uuid4()), "geometry": geometry}
    if nucleus is not None:
        f["nucleusGeometry"] = nucleus
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = name
    if color is not None:
        props["color"] = [int(c) for c in color]
    if cls is not None:
        props["classification"] = path_class(cls, class_color)
    if locked:
        props["isLocked"] = True
    if object_type == "tmaCore":
        props["isMissing"] = bool(is_missing)
    if measurements_:
        props["measurements"] = measurements(measurements_)
    if metadata:
        props["metadata"] = {k: str(v) for k, v in metadata.items()}
    if children:
        props["childObjects"] = children
    f["properties"] = props
    return f


def text(features: list[dict[str, Any]], *, collection: bool = True) -> str:
    """The file's text (Gson pretty printing: 2-space indent)."""
    return json.dumps({"type": "FeatureCollection", "features": features} if collection else features, indent=2)


def reexport(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our features after QuPath read and wrote them back ("Import objects", then
    "Export objects as GeoJSON"): each made a PathObject by QuPath's reading rules and
    written by its writing rules (classes split at ':', measurements as doubles with NaN
    as "NaN", metadata as strings, coordinates to 2 decimals, ``isLocked`` only when true,
    the object colour only when set)."""
    out = []
    for f in features:
        props = f.get("properties") or {}
        cls = props.get("classification")
        names = (cls.get("names") or [n.strip() for n in cls["name"].split(":")]) if cls else None
        meas = props.get("measurements") or {}
        out.append(feature(
            {"type": f["geometry"]["type"], "coordinates": coords(f["geometry"]["coordinates"])},
            object_type=props.get("objectType", "annotation"),
            name=props.get("name"),
            cls=names,
            class_color=cls["color"] if cls else (0, 0, 0),
            color=props.get("color"),
            locked=props.get("isLocked") is True,
            measurements_={k: (math.nan if v in ("NaN", None) else float(v)) for k, v in meas.items()},
            metadata={k: str(v) for k, v in (props.get("metadata") or {}).items() if v is not None and not isinstance(v, dict)},
            id=f.get("id"),
        ))
    return out
