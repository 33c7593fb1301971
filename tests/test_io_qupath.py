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


def test_rasterized_polygons_match_a_point_in_polygon_test():
    import numpy as np
    import shapely

    from napari_alregions.io_qupath import ClassAnnotation, rasterize_annotations

    rng = np.random.default_rng(3)
    factor, origin = 2.0, (100, 40)  # label px = (level-0 - origin) / factor
    labels = np.zeros((90, 120), np.uint8)
    polygons = []
    for _ in range(6):  # star-like polygons, some past the mask's edges, one with a hole
        cx, cy = rng.uniform(-20, 260) + origin[0], rng.uniform(-20, 200) + origin[1]
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = rng.uniform(15, 60, 9)
        outer = np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
        hole = np.column_stack([cx + 6.3 * np.cos(angles), cy + 6.3 * np.sin(angles)])
        polygons.append([outer.tolist(), hole.tolist()] if not polygons else [outer.tolist()])
    anns = [ClassAnnotation("tumour", [poly], {}) for poly in polygons]
    rasterize_annotations(anns, labels, classes=("background", "tumour"), factor=factor, origin=origin)
    # a label pixel is inside when its centre, in level-0 px, is inside the polygon (holes out)
    rows, cols = np.mgrid[0:90, 0:120]
    x, y = (cols + 0.5) * factor + origin[0], (rows + 0.5) * factor + origin[1]
    expected = np.zeros(labels.shape, bool)
    for poly in polygons:
        expected |= shapely.contains_xy(shapely.Polygon(poly[0], poly[1:]), x, y)
    assert expected.sum() > 500 and np.array_equal(labels == 2, expected)


def test_features_from_labeled_boxes_equal_the_whole_mask():
    import numpy as np
    import shapely
    from shapely.geometry import shape

    from napari_alregions.geometry import labeled_boxes
    from napari_alregions.io_qupath import labels_to_features

    labels = np.zeros((300, 400), np.uint8)
    labels[10:60, 20:90] = 1
    labels[30:40, 40:50] = 2  # a hole in the background area, filled by tumour
    labels[50:120, 80:100] = 2  # touches the first area
    labels[200:290, 300:390] = 1
    labels[250:260, 10:15] = 2
    boxes = labeled_boxes(labels, block=32)
    assert len(boxes) >= 3
    whole = labels_to_features(labels, classes=("background", "tumour"), factor=2.0, origin=(8, 4))
    parts = labels_to_features(labels, classes=("background", "tumour"), factor=2.0, origin=(8, 4), boxes=boxes)
    assert [f["properties"]["name"] for f in parts] == [f["properties"]["name"] for f in whole] == ["background", "tumour"]
    for a, b in zip(whole, parts, strict=True):
        assert shapely.equals(shape(a["geometry"]), shape(b["geometry"]))


@pytest.mark.parametrize("seed", range(6))
def test_traced_polygons_equal_the_union_of_their_pixels(seed):
    """Speckle (one-pixel blobs, diagonal contacts, holes in holes) in overlapping boxes,
    against the union of one unit square per labeled pixel inside any box."""
    import numpy as np
    import shapely
    from shapely.geometry import shape

    from napari_alregions.geometry import Box
    from napari_alregions.io_qupath import labels_to_features

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (40, 50)).astype(np.uint8) if seed % 2 else (rng.random((40, 50)) < 0.5).astype(np.uint8)
    y0, x0 = rng.integers(0, 25, 3), rng.integers(0, 35, 3)
    boxes = [Box(int(a), int(b), int(a + rng.integers(1, 16)), int(b + rng.integers(1, 16))) for a, b in zip(y0, x0)]
    inside = np.zeros(labels.shape, bool)
    for box in boxes:
        inside[box.slices] = True
    features = labels_to_features(labels, classes=("background", "tumour"), boxes=boxes, factor=2.0, origin=(3, 5))
    by_name = {f["properties"]["name"]: shape(f["geometry"]) for f in features}
    for value, name in ((1, "background"), (2, "tumour")):
        ys, xs = np.nonzero((labels == value) & inside)
        if not len(ys):
            assert name not in by_name
            continue
        want = shapely.union_all(shapely.box(2 * xs + 3, 2 * ys + 5, 2 * xs + 5, 2 * ys + 7))
        got = by_name[name]
        assert got.is_valid and shapely.equals(got, want) and got.area == want.area == 4 * len(ys)


# A cell, a TMA core and a derived-class annotation as QuPath 0.5 writes them (Gson pretty
# printing; coordinates by ROITypeAdapters, classes by PathClassTypeAdapter, measurements by
# MeasurementListTypeAdapter with NaN as a string), and a v0.2 detection (type in "id").
QUPATH_TEXT = """{
  "type": "FeatureCollection",
  "features": [
    {
      "type": "Feature",
      "id": "0b5f6d0e-4a43-4f4c-9d57-2e1f3c0b7a11",
      "geometry": {
        "type": "Polygon",
        "coordinates": [
          [[310.5, 300], [318.25, 304.5], [314, 312.75], [306, 309.5], [310.5, 300]]
        ]
      },
      "nucleusGeometry": {
        "type": "Polygon",
        "coordinates": [
          [[311, 303], [314.5, 305], [312, 308], [311, 303]]
        ]
      },
      "properties": {
        "objectType": "cell",
        "classification": {
          "names": ["Tumor", "Positive"],
          "color": [200, 50, 50]
        },
        "measurements": {
          "Nucleus: Area": 12.5,
          "Cell: DAB OD mean": "NaN"
        }
      }
    },
    {
      "type": "Feature",
      "id": "a8e3c7d2-1f0b-4e5a-8c6d-9b7a5e3c1d20",
      "geometry": {
        "type": "Polygon",
        "coordinates": [
          [[500, 300], [499.01, 306.28], [496.07, 312.39], [300, 300], [500, 300]]
        ],
        "isEllipse": true
      },
      "properties": {
        "objectType": "tmaCore",
        "name": "A-1",
        "isMissing": false
      }
    },
    {
      "type": "Feature",
      "id": "PathDetectionObject",
      "geometry": {
        "type": "Polygon",
        "coordinates": [
          [[1, 1], [5, 1], [5, 5], [1, 5], [1, 1]]
        ]
      },
      "properties": {
        "classification": {
          "name": "Tumor",
          "colorRGB": -3670016
        }
      }
    },
    {
      "type": "Feature",
      "id": "c3d9e1f7-5b2a-4c8e-9f0d-7a6b5c4d3e21",
      "geometry": {
        "type": "Polygon",
        "coordinates": [
          [[100, 100], [200, 100], [200, 150.5], [100, 150.5], [100, 100]]
        ],
        "plane": {
          "c": -1,
          "z": 0,
          "t": 0
        }
      },
      "properties": {
        "objectType": "annotation",
        "color": [255, 0, 0],
        "classification": {
          "names": ["Tumor", "1+"],
          "color": [200, 0, 0]
        },
        "isLocked": true
      }
    }
  ]
}"""


def test_plan_import_of_qupath_text():
    from napari_alregions.io_qupath import plan_import

    plan = plan_import(json.loads(QUPATH_TEXT)["features"], classes=("background", "tumour"))
    assert plan.skipped == {"cell": 1, "TMA core": 1, "detection": 1}
    [ann] = plan.labeled
    assert ann.classification == "tumour" and ann.polygons == [[[(100.0, 100.0), (200.0, 100.0), (200.0, 150.5), (100.0, 150.5), (100.0, 100.0)]]]
    assert plan.message == "1 annotation: 0 regions, 1 label; skipped 1 detection, 1 cell, 1 TMA core"


@pytest.mark.parametrize("classification, names", [
    (None, []),
    ({}, []),  # PathClass.NULL_CLASS, serialised the default way
    ("Tumor", ["Tumor"]),
    ("Tumor: Positive", ["Tumor", "Positive"]),
    ({"name": "Region*", "color": [0, 0, 180]}, ["Region*"]),
    ({"name": "Proposal: random", "color": [0, 0, 180]}, ["Proposal", "random"]),
    ({"names": ["Proposal", "random"], "color": [0, 0, 180]}, ["Proposal", "random"]),
    # before v0.4: Gson's default form, the parent nested
    ({"parentClass": {"name": "Tumor", "colorRGB": -3670016}, "name": "Positive", "colorRGB": -2293760}, ["Tumor", "Positive"]),
])
def test_class_names_in_every_form_qupath_writes(classification, names):
    from napari_alregions.io_qupath import class_names

    assert class_names(classification) == names


@pytest.mark.parametrize("bad", [3, {"name": 3, "color": [1, 2, 3]}, {"names": "Tumor", "color": [1, 2, 3]}, ["Tumor"]])
def test_malformed_classifications_are_errors(bad):
    from napari_alregions.io_qupath import class_names

    with pytest.raises(ValueError, match="classification"):
        class_names(bad)


def test_match_class_map_before_synonyms_and_full_names_before_base():
    from napari_alregions.io_qupath import match_class

    classes = ("background", "tumour", "stroma")
    assert match_class(["Tumor"], classes) == (True, "tumour")
    assert match_class(["STROMAL"], classes) == (True, "stroma")
    assert match_class(["Other"], classes) == (False, None)
    assert match_class(["Tumor"], classes, {"tumor": "background"}) == (True, "background")
    cmap = {"Tumor": "tumour", "tumor: negative": "background", "Other": None}
    assert match_class(["Tumor", "Negative"], classes, cmap) == (True, "background")
    assert match_class(["Tumor", "Positive"], classes, cmap) == (True, "tumour")
    assert match_class(["Other"], classes, cmap) == (True, None)


def test_write_features_is_strict_json(tmp_path):
    import math

    from napari_alregions.io_qupath import write_features

    f = {"type": "Feature", "geometry": None, "properties": {"measurements": {"a": math.nan, "b": -math.inf, "c": 1.0},
                                                            "metadata": {"x": math.nan}}}
    text = write_features(tmp_path / "f.geojson", [f]).read_text()
    [back] = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))["features"]
    assert back["properties"] == {"measurements": {"a": "NaN", "b": "-Infinity", "c": 1.0}, "metadata": {"x": None}}


def test_an_import_plan_gains_only_what_the_labeled_set_lacks():
    from napari_alregions.geometry import Region
    from napari_alregions.io_qupath import ClassAnnotation, ImportPlan

    a, b = Region(0, 0, 100, 100, slide="s"), Region(100, 0, 100, 100, slide="s")  # touching, accepted
    square = lambda x0, y0, x1, y1: [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]  # noqa: E731
    plan = ImportPlan(
        regions=[Region(0, 0, 100, 100), Region(300, 300, 50, 50, method="")],  # a again, and a new one
        labeled=[ClassAnnotation("tumour", [square(50, 10, 150, 60)], {}),  # spans a and b: covered together
                 ClassAnnotation("tumour", [square(180.5, 90, 260, 130.2)], {})],  # partly outside both
        skipped={}, annotations=4)
    new = plan.new_regions([a, b], slide="s")
    assert [(r.x, r.y, r.w, r.h, r.method, r.slide) for r in new] == [
        (300, 300, 50, 50, "qupath", "s"), (180, 90, 80, 41, "qupath", "s")]
    # the same plan again, now that those are in the labeled set: nothing
    assert plan.new_regions([a, b, *new], slide="s") == []


def test_later_polygons_paint_over_earlier_ones_across_batches(monkeypatch):
    import numpy as np
    import shapely

    from napari_alregions import polygons as P
    from napari_alregions.io_qupath import ClassAnnotation, rasterize_annotations

    monkeypatch.setattr(P, "SPAN_BATCH", 7)  # 40 polygons: six batches,
    monkeypatch.setattr(P, "CROSSINGS", 100)  # each in groups of a few polygons
    rng = np.random.default_rng(5)
    classes = ("background", "tumour", "stroma")
    anns = []
    for i in range(40):  # overlapping stars of three classes, some past the mask's edges
        cx, cy = rng.uniform(-10, 130), rng.uniform(-10, 90)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        ring = np.column_stack([cx + rng.uniform(5, 30, 7) * np.cos(angles), cy + rng.uniform(5, 30, 7) * np.sin(angles)])
        anns.append(ClassAnnotation(classes[i % 3], [[ring.tolist()]], {}))
    labels = np.zeros((80, 120), np.uint8)
    rasterize_annotations(anns, labels, classes=classes)
    rows, cols = np.mgrid[0:80, 0:120]
    want = np.zeros_like(labels)
    for a in anns:  # one at a time, in order: a pixel takes the last polygon holding its centre
        want[shapely.contains_xy(shapely.Polygon(a.polygons[0][0]), cols + 0.5, rows + 0.5)] = classes.index(a.classification) + 1
    assert len(np.unique(want)) == 4 and np.array_equal(labels, want)


def _covered_naively(polygon, boxes) -> bool:
    """The union of every box against the polygon: the import's rule, by brute force."""
    import shapely

    if not boxes:
        return False
    shape = shapely.Polygon(polygon[0], polygon[1:])
    union = shapely.union_all([shapely.box(*b) for b in boxes])
    return shape.difference(union).area <= 1e-6 * max(shape.area, 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_regions_equal_the_union_of_every_box_in_file_order(seed, monkeypatch):
    import math

    import numpy as np

    from napari_alregions import polygons as P
    from napari_alregions.geometry import Region
    from napari_alregions.io_qupath import ClassAnnotation, ImportPlan

    monkeypatch.setattr(P, "COVER_BATCH", 16)  # several batches of the R-tree's queries
    rng = np.random.default_rng(seed)
    grid = [Region(100 * i, 100 * j, 100, 100, slide="s") for i in range(3) for j in range(3) if rng.random() < 0.6]
    anns = []
    for _ in range(60):  # polygons on box edges, spanning touching boxes, outside all, nested in earlier ones
        x, y = rng.uniform(-20, 300, 2)
        w, h = rng.uniform(2, 60, 2)
        ring = [(x, y), (x + w, y + rng.uniform(-5, 5)), (x + w, y + h), (x + rng.uniform(0, w), y + h + 3), (x, y + h)]
        anns.append(ClassAnnotation("tumour", [[ring], [[(b + 3, c + 3) for b, c in ring[:3]]]], {}))
    plan = ImportPlan(regions=[], labeled=anns, skipped={}, annotations=len(anns))
    new = plan.new_regions(grid, slide="s")
    boxes, want = [(r.x, r.y, r.x1, r.y1) for r in grid], []
    for a in anns:
        for poly in a.polygons:
            if not _covered_naively(poly, boxes):
                xs, ys = [x for x, _ in poly[0]], [y for _, y in poly[0]]
                x0, y0, x1, y1 = math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))
                want.append((x0, y0, x1 - x0, y1 - y0))
                boxes.append((x0, y0, x1, y1))
    got = [(r.x, r.y, r.w, r.h) for r in new]
    assert got == want and 10 < len(want) < 100
    assert plan.new_regions(grid + new, slide="s") == []
