"""The regions file: regions as GeoJSON features, written and read back (SPEC §7).

One dialect for the session's ``regions.geojson`` and the QuPath export alike: accepted
regions are ``Region*`` annotation rectangles, proposals ``Proposal: <method>`` (QuPath's
derived-class form); files are written atomically as strict JSON and read size-bounded.
:mod:`napari_alregions.session` and :mod:`napari_alregions.io_qupath` both use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import write_text
from .geometry import DEFAULT_REGION_COLOR, REGION_CLASS, Region

__all__ = ["MAX_GEOJSON_BYTES", "read_features", "read_geojson", "read_regions", "region_features",
           "regions_to_geojson", "write_features", "write_regions"]

logger = logging.getLogger(__name__)

#: Our prefix for proposed (not yet accepted) regions: ``Proposal: <method>``.
PROPOSAL_CLASS = "Proposal"

#: Refuse GeoJSON files larger than this (bytes): a bound on untrusted input (parsing takes
#: ~10x the file's size in memory). The readers' ``max_bytes`` keyword raises it.
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


def region_features(accepted: Iterable[Region], proposed: Iterable[Region] = (),
                    color_of: Callable[[str], Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """The one GeoJSON dialect of regions, for the session file and the QuPath export alike:
    accepted regions as ``Region*`` annotations, proposals as ``Proposal: <method>``
    (QuPath's derived-class form), so that importing either file adds no proposal.
    ``color_of(method)`` gives each method's proposals (and ``"accepted"`` the accepted
    regions) their RGB colour; QuPath's default region colour otherwise."""
    color = color_of or (lambda method: DEFAULT_REGION_COLOR)
    return ([r.to_feature(color=color("accepted")) for r in accepted]
            + [r.to_feature(classification=f"{PROPOSAL_CLASS}: {r.method}", color=color(r.method)) for r in proposed])


def write_regions(path: str | os.PathLike[str], regions: Iterable[Region], **kwargs: Any) -> Path:
    """Write regions as QuPath GeoJSON, atomically (temporary file, then rename)."""
    return write_features(path, regions_to_geojson(regions, **kwargs)["features"])


def write_features(path: str | os.PathLike[str], features: Iterable[dict[str, Any]]) -> Path:
    """Write GeoJSON features as a ``FeatureCollection``, atomically, as strict JSON, one
    feature a line (json's C encoder: an indented file goes through its Python encoder,
    6 s for 15 000 regions, the save of a session after a large QuPath import).

    Non-finite numbers are no JSON: a measurement that is NaN or infinite is written as
    QuPath writes it (the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, which QuPath
    and :func:`read_regions` read back as numbers); anywhere else it becomes ``null``.
    """
    lines = []
    for f in features:
        try:
            lines.append(json.dumps(f, allow_nan=False))
        except ValueError:  # a non-finite number somewhere (rare): replace them, then write
            lines.append(json.dumps(_strict(f), allow_nan=False))
    body = ",\n".join(lines)
    return write_text(path, '{"type": "FeatureCollection", "features": [\n' + body + ("\n" if lines else "") + "]}\n")


def _strict(value: Any, measurement: bool = False) -> Any:
    """``value`` with its non-finite floats replaced (see :func:`write_features`)."""
    if isinstance(value, dict):
        return {k: _strict(v, measurement or k == "measurements") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v, measurement) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        if not measurement:
            return None
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_regions(path: str | os.PathLike[str], *, max_bytes: int = MAX_GEOJSON_BYTES) -> list[Region]:
    """Bounding boxes of the polygon annotations of a GeoJSON file (QuPath export or ours).

    Accepts a ``FeatureCollection``, a single ``Feature`` or a list of features (QuPath's
    "Export objects" writes any of these). Non-polygonal features are skipped (and
    counted in a logged warning). ``max_bytes``: the largest file read (default
    :data:`MAX_GEOJSON_BYTES`).

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing, oversized or malformed file (the message names it and the feature).
    """
    path = Path(path)
    regions = []
    for i, f in enumerate(read_features(path, max_bytes=max_bytes)):
        try:
            regions.append(Region.from_feature(f))
        except ValueError as exc:
            raise ValueError(f"{path}: feature {i}: {exc}") from exc
    return regions


def read_features(path: str | os.PathLike[str], *, max_bytes: int = MAX_GEOJSON_BYTES) -> list[dict[str, Any]]:
    """The polygonal features (Polygon, MultiPolygon) of a GeoJSON file; the others are
    skipped, counted by geometry type in a logged warning."""
    features = read_geojson(path, max_bytes=max_bytes)
    kept = [f for f in features if _is_polygonal(f)]
    if len(kept) < len(features):
        kinds: dict[str, int] = {}
        for f in features:
            if not _is_polygonal(f):
                geom = f.get("geometry") if isinstance(f, dict) else None
                kind = str(geom.get("type")) if isinstance(geom, dict) else "no geometry"
                kinds[kind] = kinds.get(kind, 0) + 1
        logger.warning("%s: skipped %d of %d features that are not Polygon or MultiPolygon (%s)", path,
                       len(features) - len(kept), len(features), ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
    return kept


def _is_polygonal(f: Any) -> bool:
    geom = f.get("geometry") if isinstance(f, dict) else None
    return isinstance(geom, dict) and geom.get("type") in ("Polygon", "MultiPolygon")


def read_geojson(path: str | os.PathLike[str], *, max_bytes: int = MAX_GEOJSON_BYTES) -> list[Any]:
    """All features of a GeoJSON file, size-bounded and validated at the top level.

    Parameters
    ----------
    path : str or PathLike
    max_bytes : int
        The largest file read (default :data:`MAX_GEOJSON_BYTES`, 256 MiB).

    Raises
    ------
    FileNotFoundError, ValueError
    """
    path = Path(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; choose a .geojson file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size / 2**20:.1f} MiB is larger than the {max_bytes / 2**20:.1f} MiB read at most; "
                         "refusing to read (pass max_bytes= to raise the bound)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:  # arrays nested thousands deep
        raise ValueError(f"{path}: JSON nested too deeply to be GeoJSON") from exc
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
