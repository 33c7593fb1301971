"""Importing what QuPath writes (its object model), each case from QuPath's own rules.

Every fixture is built by ``tests/qupath_shapes.py`` (QuPath's writing rules, read from
its source), never by our exporter. A fresh session has classes background, tumour; labels
live at level 1 (2 level-0 px per label px) of a 1024² slide.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_alregions.project import AnnotationProject
from napari_alregions.settings import TrainingBudget
from tests import qupath_shapes as q

FAST = {"initial_steps": 12, "fine_tune_steps": 8, "patches_per_slide": 64}


@pytest.fixture
def project(tmp_path, small_pool):
    folder, manifest = small_pool
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    p.session.update_settings(training=TrainingBudget(**FAST))
    name = p.add_slide(folder / manifest["slides"][0]["image"])
    yield p, name
    p.close()


def _write(tmp_path, features, *, collection=True, name="qupath.geojson"):
    path = tmp_path / name
    path.write_text(q.text(features, collection=collection))
    return path


def _boxes(p):
    return sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted)


def _want(p, slide, *boxes_and_values):
    """Labels by hand: level-0 boxes (x, y, w, h) with even corners, painted in order."""
    want = np.zeros(p.session.labels(slide).shape, np.uint8)
    for (x, y, w, h), v in boxes_and_values:
        want[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = v
    return want


def test_our_proposal_after_a_qupath_round_trip_is_not_accepted(tmp_path, project):
    p, slide = project
    features = [
        q.feature(q.rectangle(0, 0, 256, 256), cls="Region*", class_color=(0, 0, 180), name="random #1",
                  measurements_={"score": 0.5, "rank": 0}, metadata={"method": "random"}),
        # QuPath read our "Proposal: random" with PathClass.fromString and writes names
        q.feature(q.rectangle(512, 0, 256, 256), cls=["Proposal", "random"], class_color=(0, 0, 180),
                  measurements_={"score": 0.4, "rank": 1}),
        q.feature(q.rectangle(512, 512, 256, 256)),
    ]
    # as we write it (a file that never went through QuPath)
    features[2]["properties"]["classification"] = {"name": "Proposal: random", "color": [0, 0, 180]}
    counts = p.import_qupath(_write(tmp_path, features), slide)
    assert _boxes(p) == [(0, 0, 256, 256)]
    assert counts["regions"] == 1 and counts["skipped_by"] == {"proposal": 2}
    [r] = p.session.accepted
    assert r.method == "random" and r.score == 0.5
    np.testing.assert_array_equal(p.session.labels(slide), _want(p, slide, ((0, 0, 256, 256), 1)))


@pytest.mark.parametrize("cls", ["Tumor", "tumour", "TUMOUR", ["tumour", "Positive"], ["Tumor", "Positive"], "Tumor: Negative"])
def test_tumour_in_every_spelling_and_derived_class_is_tumour(tmp_path, project, cls):
    p, slide = project
    features = [
        q.feature(q.rectangle(0, 0, 256, 256), cls="Region*", class_color=(0, 0, 180)),
        q.feature(q.rectangle(64, 64, 64, 32), cls=cls),
    ]
    counts = p.import_qupath(_write(tmp_path, features), slide)
    assert counts["labeled_annotations"] == 1 and counts["regions"] == 1
    want = _want(p, slide, ((0, 0, 256, 256), 1), ((64, 64, 64, 32), 2))
    np.testing.assert_array_equal(p.session.labels(slide), want)


def test_detections_cells_tiles_and_tma_cores_are_skipped_and_counted(tmp_path, project):
    p, slide = project
    features = [q.feature(q.rectangle(8 * (i % 100), 8 * (i // 100), 6, 6), object_type="detection", cls="Tumor",
                          measurements_={"Area µm^2": 9.0}) for i in range(1000)]
    features += [q.feature(q.polygon([(300, 300), (310, 300), (310, 312)]), object_type="cell", cls=["Tumor", "Positive"],
                           nucleus=q.polygon([(303, 303), (306, 303), (306, 306)]),
                           measurements_={"Nucleus: Area": 4.5, "Cell: DAB OD mean": math.nan}) for _ in range(5)]
    features.append(q.feature(q.rectangle(0, 0, 512, 512), object_type="tile", cls="Tumor"))
    features.append(q.feature(q.ellipse(100, 100, 400, 400), object_type="tmaCore", name="A-1", is_missing=False))
    features.append(q.feature(q.ellipse(600, 600, 100, 100), cls="Tumor"))  # an ellipse annotation
    counts = p.import_qupath(_write(tmp_path, features), slide)
    assert counts["skipped_by"] == {"detection": 1000, "cell": 5, "tile": 1, "TMA core": 1, "ellipse": 1}
    assert counts["regions"] == 0 and counts["labeled_annotations"] == 0
    assert counts["message"] == "1 annotation: 0 regions, 0 labels; skipped 1000 detections, 5 cells, 1 tile, 1 TMA core, 1 ellipse"
    assert not p.session.accepted and not p.session.labels(slide).any()


def test_a_tissue_outline_is_no_region_but_a_drawn_rectangle_is(tmp_path, project):
    p, slide = project
    # QuPath's tissue detection: an unclassified, named polygon around the tissue, with a hole
    outline = q.polygon([(3.25, 5.5), (1019.75, 4), (1020, 1018.5), (2, 1017)], [(400, 400), (500, 400), (500, 500)])
    features = [q.feature(outline, name="Tissue"), q.feature(q.rectangle(128, 128, 256, 128))]
    counts = p.import_qupath(_write(tmp_path, features), slide)
    assert counts["skipped_by"] == {"tissue outline": 1}
    assert _boxes(p) == [(128, 128, 256, 128)]
    np.testing.assert_array_equal(p.session.labels(slide), _want(p, slide, ((128, 128, 256, 128), 1)))
    # an explicit bound takes the outline as a region after all
    assert p.import_qupath(_write(tmp_path, features), slide, max_region=2000, dry_run=True)["regions"] == 1


def test_annotations_wholly_outside_the_slide_are_skipped_and_those_partly_outside_cut(tmp_path, project):
    p, slide = project
    features = [q.feature(q.rectangle(1024, 0, 256, 256)),  # touches the right edge only
                q.feature(q.rectangle(-300, -300, 100, 100), cls="Tumor"),
                q.feature(q.rectangle(1000, 1000, 100, 100))]  # overlaps the corner: kept, cut to the slide
    counts = p.import_qupath(_write(tmp_path, features), slide)
    assert counts["skipped_by"] == {"outside the slide": 2}
    assert counts["message"].endswith("; cut 1 annotation to the slide (feature 2)")
    assert _boxes(p) == [(1000, 1000, 24, 24)]


def test_annotations_on_another_plane_warn_and_are_skipped(tmp_path, project):
    p, slide = project
    features = [q.feature(q.rectangle(0, 0, 256, 256), cls="Tumor", plane=(-1, 1, 0)),
                q.feature(q.rectangle(256, 0, 256, 256), plane=(-1, 0, 2)),
                q.feature(q.rectangle(0, 512, 128, 128), cls="Tumor", plane=(0, 0, 0))]  # channel 0, still plane z=0 t=0
    with pytest.warns(UserWarning, match="2 annotation"):
        counts = p.import_qupath(_write(tmp_path, features), slide)
    assert counts["skipped_by"] == {"other plane": 2}
    assert _boxes(p) == [(0, 512, 128, 128)]


def test_unknown_classes_are_an_error_listing_them_and_a_class_map_resolves_them(tmp_path, project):
    p, slide = project
    features = [q.feature(q.rectangle(0, 0, 256, 256), cls="Region*", class_color=(0, 0, 180)),
                q.feature(q.rectangle(0, 0, 64, 64), cls="Stroma", class_color=(150, 200, 150)),
                q.feature(q.rectangle(64, 0, 64, 64), cls="Stroma"),
                q.feature(q.rectangle(128, 0, 64, 64), cls=["Immune cells", "Positive"]),
                q.feature(q.rectangle(0, 128, 64, 64), cls="Tumor")]
    path = _write(tmp_path, features)
    with pytest.raises(ValueError, match=r"'Immune cells: Positive' \(1\), 'Stroma' \(2\)"):
        p.import_qupath(path, slide)
    assert not p.session.accepted and not p.session.labels(slide).any()  # nothing written
    with pytest.raises(ValueError, match="not a class of the session"):
        p.import_qupath(path, slide, class_map={"Stroma": "epithelium"})
    counts = p.import_qupath(path, slide, class_map={"stroma": "background", "Immune cells": None})
    assert counts["skipped_by"] == {"ignored class": 1}
    # stroma painted background; as the file has background now, the rest of the region stays unlabeled
    want = _want(p, slide, ((0, 0, 128, 64), 1), ((0, 128, 64, 64), 2))
    np.testing.assert_array_equal(p.session.labels(slide), want)


def test_geometry_collections_use_their_polygons(tmp_path, project):
    p, slide = project
    mixed = {"type": "GeometryCollection", "geometries": [
        q.rectangle(0, 0, 128, 128), {"type": "LineString", "coordinates": [[0, 0], [500, 500]]}]}
    points = {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [5, 5]}]}
    features = [q.feature(mixed), q.feature(points), q.feature({"type": "LineString", "coordinates": [[1, 1], [9, 9]]})]
    counts = p.import_qupath(_write(tmp_path, features, collection=False), slide)
    assert _boxes(p) == [(0, 0, 128, 128)]
    assert counts["skipped_by"] == {"not polygonal": 2}


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "1e300", "9.3e18"])
def test_non_finite_or_huge_coordinates_are_an_error(tmp_path, project, bad):
    p, slide = project
    text = q.text([q.feature(q.rectangle(0, 0, 256, 256)), q.feature(q.rectangle(0, 0, 64, 64), cls="Tumor")])
    path = tmp_path / "bad.geojson"
    path.write_text(text.replace("64,\n", f"{bad},\n", 1))
    with pytest.raises(ValueError, match="feature 1: Polygon"):
        p.import_qupath(path, slide)
    assert not p.session.accepted and not p.session.labels(slide).any()


def test_dry_run_summarises_and_writes_nothing(tmp_path, project):
    p, slide = project
    features = [q.feature(q.rectangle(0, 0, 256, 256), cls="Region*", class_color=(0, 0, 180)),
                q.feature(q.rectangle(512, 512, 128, 128)),
                q.feature(q.rectangle(64, 64, 32, 32), cls="Tumor"),
                q.feature(q.rectangle(700, 64, 32, 32), cls="Tumor"),  # outside every region: its box is accepted
                q.feature(q.rectangle(0, 0, 256, 256), cls=["Proposal", "standard"])]
    features += [q.feature(q.rectangle(i, i, 4, 4), object_type="detection") for i in range(12)]
    path = _write(tmp_path, features)
    before = sorted((f.relative_to(p.folder), f.read_bytes()) for f in p.folder.rglob("*") if f.is_file())
    dry = p.import_qupath(path, slide, dry_run=True)
    assert dry["message"] == "5 annotations: 2 regions, 2 labels; skipped 12 detections, 1 proposal"
    assert dry["regions"] == 3  # the two regions and the bounding box of the label outside them
    after = sorted((f.relative_to(p.folder), f.read_bytes()) for f in p.folder.rglob("*") if f.is_file())
    assert after == before and not p.session.accepted
    done = p.import_qupath(path, slide)
    assert done == dry
    assert _boxes(p) == [(0, 0, 256, 256), (512, 512, 128, 128), (700, 64, 32, 32)]


@pytest.mark.parametrize("shape", ["collection", "list", "children"])
def test_a_qupath_reexport_of_our_export_changes_nothing(tmp_path, project, small_pool, shape):
    p, slide = project
    for i, r in enumerate(p.suggest(slide, "random", region_size=4 * p.stride, k=3, seed=3)):
        r = p.accept(r)
        y0, x0, y1, x1 = p.label_box(r)
        lab = p.region_labels(r)
        lab[2 : 2 + 7 * (i + 1), 3:20] = 2
        lab[20:25, 1:4] = 0  # erased: unlabeled survives
        lab[9:12, 9:12] = 1  # a hole in the tumour
        p.write_region_labels(r, lab)
    p.suggest(slide, "random", region_size=4 * p.stride, k=2, seed=9)  # proposals are exported too
    ours = json.loads(p.export_qupath(tmp_path / "ours.geojson", slide).read_text())["features"]
    back = q.reexport(ours)[::-1]  # QuPath's hierarchy order differs from ours
    if shape == "children":  # "include children": labels nested in the region they lie in
        regions = [f for f in back if f["properties"]["classification"].get("name") == "Region*"]
        regions[0]["properties"]["childObjects"] = [f for f in back if f not in regions]
        back = regions
    path = _write(tmp_path, back, collection=shape != "list", name="qupath.geojson")
    folder, manifest = small_pool
    other = AnnotationProject.create(tmp_path / "other", patch_size=32, level=1)
    name = other.add_slide(folder / manifest["slides"][0]["image"])
    counts = other.import_qupath(path, name)
    assert counts["skipped_by"] == {"proposal": 2}
    np.testing.assert_array_equal(other.session.labels(name), p.session.labels(slide))
    assert _boxes(other) == _boxes(p)
    other.close()
    # into the session that exported it: nothing changes
    accepted, labels = list(p.session.accepted), p.session.labels(slide).copy()
    assert p.import_qupath(path, slide)["regions"] == 0
    assert p.session.accepted == accepted
    np.testing.assert_array_equal(p.session.labels(slide), labels)


def test_export_is_strict_json_and_nan_scores_survive(tmp_path, project):
    from napari_alregions.geometry import Region

    p, slide = project
    p.session.propose([Region(0, 0, 256, 256, score=math.nan, method="standard", slide=slide),
                       Region(256, 0, 256, 256, score=math.inf, method="standard", slide=slide, rank=1)])
    text = p.export_qupath(tmp_path / "e.geojson", slide).read_text()

    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    data = json.loads(text, parse_constant=refuse)
    json.dumps(data, allow_nan=False)
    assert [f["properties"]["measurements"]["score"] for f in data["features"]] == ["NaN", "Infinity"]  # as QuPath writes
    p.session.save()
    back = AnnotationProject.open(p.folder)  # the session's regions file is written the same way
    scores = [r.score for r in sorted(back.session.regions, key=lambda r: r.x)]
    assert math.isnan(scores[0]) and scores[1] == math.inf
    back.close()


def test_cli_import_with_class_map_dry_run_then_export(tmp_path, project, capsys):
    from napari_alregions.cli import main

    p, slide = project
    features = [q.feature(q.rectangle(0, 0, 256, 256), cls="Region*", class_color=(0, 0, 180)),
                q.feature(q.rectangle(0, 0, 64, 64), cls="Stroma"),
                q.feature(q.rectangle(64, 64, 64, 64), cls="Tumor"),
                q.feature(q.rectangle(128, 0, 8, 8), cls="Other"),
                q.feature(q.rectangle(0, 0, 4, 4), object_type="detection")]
    path = _write(tmp_path, features)
    folder = str(p.folder)
    assert main(["qupath-import", folder, str(path)]) == 2
    assert "'Other' (1), 'Stroma' (1)" in capsys.readouterr().err
    args = ["qupath-import", folder, str(path), "--class-map", "stroma=background,Other=", "--slide", slide]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 annotations: 1 region, 2 labels; skipped 1 detection, 1 annotation of an ignored class" in out
    assert "would add 1 region(s) to the labeled set of" in out and ": 1 region annotation(s) (a dry run" in out
    reopened = AnnotationProject.open(folder)
    assert not reopened.session.accepted  # a dry run writes nothing
    reopened.close()
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labeled_annotations"] == 2
    back = AnnotationProject.open(folder)
    want = _want(back, slide, ((0, 0, 64, 64), 1), ((64, 64, 64, 64), 2))
    np.testing.assert_array_equal(back.session.labels(slide), want)
    back.close()
    assert main(["qupath-export", folder, str(tmp_path / "out.geojson")]) == 0
    names = [f["properties"]["classification"]["name"] for f in json.loads((tmp_path / "out.geojson").read_text())["features"]]
    assert sorted(names) == ["Region*", "Tumor", "background"]  # QuPath's own class name
    assert main(["qupath-import", folder, str(path), "--class-map", "nonsense"]) == 2
    assert "QUPATH_CLASS=SESSION_CLASS" in capsys.readouterr().err


def test_cli_import_says_where_each_added_region_comes_from(tmp_path, project, capsys):
    """One region annotation and a label outside it: the file has "1 region", the import adds
    2 regions (the second a box around that label), and every output says both."""
    from napari_alregions.cli import main

    p, slide = project
    path = _write(tmp_path, [q.feature(q.rectangle(0, 0, 256, 256), cls="Region*"),
                             q.feature(q.rectangle(512, 512, 64, 64), cls="Tumor")])
    folder = str(p.folder)
    assert main(["qupath-import", folder, str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}: 2 annotations: 1 region, 1 label"
    assert out[1] == (f"would add 2 region(s) to the labeled set of {slide}: 1 region annotation(s); "
                      "1 box(es) around labels outside every region (a dry run: nothing written)")
    assert main(["qupath-import", folder, str(path), "--dry-run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["regions"], summary["from_regions"], summary["label_boxes"]) == (2, 1, 1)
    assert main(["qupath-import", folder, str(path)]) == 0
    assert "added 2 region(s)" in capsys.readouterr().out
    back = AnnotationProject.open(folder)
    assert _boxes(back) == [(0, 0, 256, 256), (512, 512, 64, 64)]
    back.close()


def test_a_region_on_a_proposal_accepts_that_proposal(tmp_path, project):
    """A proposal the user made a Region* in QuPath (same box) is accepted as that proposal:
    its selector, score and uid are kept, and it is no longer proposed."""
    p, slide = project
    proposal = p.suggest(slide, "random", region_size=4 * p.stride, k=1, seed=0)[0]
    feature = q.feature(q.rectangle(proposal.x, proposal.y, proposal.w, proposal.h), cls="Region*")
    assert p.import_qupath(_write(tmp_path, [feature]), slide)["from_regions"] == 1
    [accepted] = p.session.accepted
    assert (accepted.uid, accepted.method, accepted.score) == (proposal.uid, "random", proposal.score)
    assert not p.proposals(slide)


def test_export_with_the_priority_map_as_qupath_tiles(tmp_path, project):
    from napari_alregions.project import MapRecord

    p, slide = project
    with pytest.raises(ValueError, match="no priority map"):
        p.export_qupath(tmp_path / "e.geojson", slide, priority=True)
    tissue = p.slides[slide].tissue_map(p.stride)
    h, w = tissue.shape
    prio = (np.arange(h * w).reshape(h, w) % 7 / 7).astype(np.float32)
    prio[~tissue] = 0
    p.session.maps.set(slide, "priority", MapRecord(np.zeros((1, h, w, 2), np.float32), prio, "least_confidence", p.stride, 0))
    features = json.loads(p.export_qupath(tmp_path / "e.geojson", slide, priority=True).read_text())["features"]
    tiles = [f for f in features if f["properties"]["objectType"] == "tile"]
    got = {}
    for f in tiles:
        ring = f["geometry"]["coordinates"][0]
        (x0, y0), (x1, y1) = ring[0], ring[2]
        assert (x1 - x0, y1 - y0) == (p.stride, p.stride)
        got[(y0 // p.stride, x0 // p.stride)] = f["properties"]["measurements"]["priority"]
    assert got == {(int(r), int(c)): float(prio[r, c]) for r, c in zip(*np.nonzero(tissue), strict=True)}
    assert tiles[0]["properties"]["metadata"] == {"measure": "least_confidence", "cycle": "0", "slide": slide}
    counts = p.import_qupath(tmp_path / "e.geojson", slide)  # the tiles are no regions
    assert counts["skipped_by"] == {"tile": int(tissue.sum())} and not p.session.accepted
