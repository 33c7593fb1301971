"""QuPath GeoJSON import/export of regions (SPEC §7)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .geometry import DEFAULT_REGION_COLOR, REGION_CLASS, Region

__all__ = ["read_regions", "regions_to_geojson", "write_regions"]

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
    path = Path(path)
    data = json.dumps(regions_to_geojson(regions, **kwargs), indent=1)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(data)
    os.replace(tmp, path)
    return path


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
    regions = []
    for i, f in enumerate(features):
        geom = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            regions.append(Region.from_feature(f))
        except ValueError as exc:
            raise ValueError(f"{path}: feature {i}: {exc}") from exc
    return regions
