from __future__ import annotations

import json

import pytest

from napari_alregions.geometry import Region
from napari_alregions.io_qupath import read_regions, regions_to_geojson, write_regions

# What QuPath 0.5 writes for "Export objects as GeoJSON" (hand-written, trimmed).
QUPATH_EXPORT = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "5f3b8d2e-8a1c-4d7e-9b2f-1a2b3c4d5e6f",
            "geometry": {"type": "Polygon", "coordinates": [[[1000, 2000], [3000, 2000], [3000, 2500], [1000, 2500], [1000, 2000]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}, "isLocked": True},
        },
        {
            "type": "Feature",
            "id": "6a4c9e3f-9b2d-4e8f-8c3a-2b3c4d5e6f70",
            "geometry": {"type": "Point", "coordinates": [5, 5]},
            "properties": {"objectType": "annotation"},
        },
    ],
}


def test_round_trip_keeps_everything(tmp_path):
    regions = [
        Region(0, 0, 512, 512, score=3.0, method="standard", rank=0, slide="a", cycle=1),
        Region(1024, 256, 300, 700, score=1.5, method="adaptive", rank=1, slide="a", cycle=1),
    ]
    path = write_regions(tmp_path / "r.geojson", regions)
    back = read_regions(path)
    assert back == regions
    assert all(b.uid for b in back)
    # ids survive a second round trip
    again = read_regions(write_regions(tmp_path / "r2.geojson", back))
    assert [a.uid for a in again] == [b.uid for b in back]
    assert not list(tmp_path.glob(".*.part*"))  # no temporary file left


def test_reads_qupath_export(tmp_path):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(QUPATH_EXPORT))
    [r] = read_regions(path)  # the point is skipped
    assert (r.x, r.y, r.w, r.h) == (1000, 2000, 2000, 500)
    path.write_text(json.dumps(QUPATH_EXPORT["features"]))  # a bare list of features
    assert len(read_regions(path)) == 1


def test_written_features_are_qupath_compatible():
    fc = regions_to_geojson([Region(1, 2, 3, 4)])
    props = fc["features"][0]["properties"]
    assert props["classification"]["color"] and props["objectType"] == "annotation"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"type": "Topology"}), json.dumps({"type": "FeatureCollection", "features": 3})])
def test_malformed_files_raise(tmp_path, text):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.geojson"):
        read_regions(path)
