from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from napari_alregions.geometry import (
    MapBox,
    Region,
    intersection_area,
    map_box_to_region,
    overlaps,
    rasterize,
    region_to_map_box,
    union_area,
)


def test_region_validates_and_derives():
    r = Region(10, 20, 30, 40, score=1.5, method="standard", rank=2)
    assert (r.x1, r.y1, r.area, r.center) == (40, 60, 1200, (25.0, 40.0))
    with pytest.raises(ValueError, match="positive"):
        Region(0, 0, 0, 5)
    with pytest.raises(TypeError, match="integer"):
        Region(0.5, 0, 5, 5)  # type: ignore[arg-type]
    assert Region(np.int64(1), 2, 3, 4).x == 1


def test_touching_is_not_overlapping():
    a = Region(0, 0, 10, 10)
    assert not overlaps(a, Region(10, 0, 5, 5))
    assert not overlaps(a, Region(0, 10, 5, 5))
    assert overlaps(a, Region(9, 9, 5, 5))
    assert intersection_area(a, Region(5, 5, 10, 10)) == 25


def test_union_area_matches_raster():
    rng = np.random.default_rng(0)
    for _ in range(20):
        regions = [Region(int(x), int(y), int(w), int(h)) for x, y, w, h in rng.integers(1, 30, (6, 4))]
        canvas = np.zeros((80, 80), bool)
        for r in regions:
            canvas[r.y : r.y1, r.x : r.x1] = True
        assert union_area(regions) == canvas.sum()
    assert union_area([]) == 0


def test_map_box_conversions():
    r = Region(x=300, y=100, w=600, h=256)
    box = region_to_map_box(r, 256)
    assert box == MapBox(0, 1, 2, 4)  # rows 100..356 -> 0..1, cols 300..900 -> 1..3
    assert map_box_to_region(MapBox(2, 3, 4, 7), 256) == Region(768, 512, 1024, 512)
    clipped = region_to_map_box(Region(-512, 0, 1024, 1024), 256, shape=(3, 3))
    assert clipped == MapBox(0, 0, 3, 2)
    mask = rasterize([Region(256, 256, 256, 512)], (4, 4), 256)
    assert mask.sum() == 2 and mask[1, 1] and mask[2, 1]


def test_feature_round_trip():
    r = Region(100, 200, 300, 400, score=12.5, method="adaptive", rank=3, slide="s1", cycle=2, uid="abc")
    f = r.to_feature()
    json.dumps(f)  # JSON-serialisable
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] == [100, 200]  # closed, [x, y]
    assert [100 + 300, 200] in ring
    props = f["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"]["color"] == [0, 0, 180]
    assert "isLocked" not in props
    assert r.to_feature(locked=True)["properties"]["isLocked"] is True
    back = Region.from_feature(f)
    assert back == r and back.uid == "abc"


def test_from_hand_written_qupath_feature():
    """A QuPath export: MultiPolygon, list-style measurements, no metadata."""
    feature = {
        "type": "Feature",
        "id": "0f9a3c1e-2b4d-4e6f-8a1b-3c5d7e9f1a2b",
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[10.5, 20], [50, 20], [50, 60.2], [10.5, 60.2], [10.5, 20]]],
                [[[70, 5], [90, 5], [90, 25], [70, 5]]],
            ],
        },
        "properties": {
            "objectType": "annotation",
            "classification": {"name": "Tumor", "color": [200, 0, 0]},
            "measurements": [{"name": "score", "value": 0.5}],
        },
    }
    r = Region.from_feature(feature)
    assert (r.x, r.y, r.x1, r.y1) == (10, 5, 90, 61)
    assert r.score == 0.5 and r.method == "" and r.uid == feature["id"]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}},
        {"type": "Feature"},
        {"type": "FeatureCollection"},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [1, 1], [1, 1]]]}},
    ],
)
def test_from_feature_rejects_malformed(bad):
    with pytest.raises(ValueError):
        Region.from_feature(bad)


def test_mapbox_overlap_is_symmetric_half_open():
    boxes = [MapBox(0, 0, 2, 2), MapBox(2, 0, 4, 2), MapBox(1, 1, 3, 3)]
    for a, b in itertools.permutations(boxes, 2):
        assert a.overlaps(b) == b.overlaps(a)
    assert not boxes[0].overlaps(boxes[1])
