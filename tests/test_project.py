"""The headless annotation loop the widgets drive (napari_alregions.project)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_alregions.geometry import Region
from napari_alregions.project import AnnotationProject, region_size_px, run
from napari_alregions.settings import SuggestPlan, TrainingBudget
from napari_alregions.wsi import open_labels

FAST = {"initial_steps": 12, "fine_tune_steps": 8, "patches_per_slide": 64}


def _project(tmp_path, small_pool, *, members=1, name="s", learner="deep"):
    """A project on the pool's first slide; these tests drive the deep learner's loop unless
    ``learner="fast"`` (the fast learner's loop: tests at the end)."""
    folder, manifest = small_pool
    p = AnnotationProject.create(tmp_path / name, patch_size=32, level=1, members=members)
    p.session.update_settings(training=TrainingBudget(**FAST))
    p.session.update_settings(learner=learner, in_use=learner)
    entry = manifest["slides"][0]
    slide = p.add_slide(folder / entry["image"])
    truth = np.asarray(open_labels(folder / entry["mask"])[1])
    return p, slide, truth


def _labeled(tmp_path, small_pool, *, k, seed, learner="deep"):
    """:func:`_project` with ``k`` random regions of 4 cells accepted and painted."""
    p, slide, truth = _project(tmp_path, small_pool, learner=learner)
    for r in p.suggest(slide, "random", region_size=4 * p.stride, k=k, seed=seed):
        _paint_truth(p, p.accept(r), truth)
    return p, slide, truth


def _paint_truth(p, region, truth):
    """Paint like a pathologist: tumour where the ground truth is tumour (label 2)."""
    y0, x0, y1, x1 = p.label_box(region)
    lab = p.region_labels(region)
    lab[truth[y0:y1, x0:x1] == 2] = 2
    p.write_region_labels(region, lab)


def test_region_size_px_units_and_rounding():
    assert region_size_px(500, "µm", mpp=0.5, stride=128) == 1024
    assert region_size_px(1000, "px", mpp=None, stride=128) == 1024  # nearest multiple
    assert region_size_px(10, "px", mpp=None, stride=128) == 128  # at least one cell
    with pytest.raises(ValueError, match="no pixel size"):
        region_size_px(500, "µm", mpp=None, stride=128)
    with pytest.raises(ValueError, match="positive"):
        region_size_px(0, "px", mpp=None, stride=128)


def test_loop_accept_paint_retrain_refresh_and_reopen(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    l_ = 4 * p.stride
    proposals = p.suggest(slide, "random", region_size=l_, k=3, seed=1)
    assert len(proposals) == 3 and all(r.uid and r.w == l_ for r in proposals)
    for r in proposals[:2]:
        a = p.accept(r)
        y0, x0, y1, x1 = p.label_box(a)
        # accepting fills the region with background (label 1)
        assert (p.session.labels(slide)[y0:y1, x0:x1] == 1).all()
        _paint_truth(p, a, truth)
    assert len(p.session.accepted) == 2 and len(p.proposals(slide)) == 1
    assert p.pending_regions == 2
    # labels are autosaved: a fresh open sees the strokes
    np.testing.assert_array_equal(AnnotationProject.open(p.folder).session.labels(slide), p.session.labels(slide))

    first = run(p.iter_priority(slide))
    assert first.priority.shape == p.slides[slide].map_shape(p.stride)
    p.suggest(slide, "standard", region_size=l_, k=2)
    records = []
    summary = run(p.iter_retrain(), records.append)
    assert summary["cycle"] == 1 and p.cycle == 1 and p.trained and p.pending_regions == 0
    assert {r["phase"] for r in records} >= {"train", "epoch", "predict"}
    # the map was recomputed with the new model and the proposals refreshed for cycle 1
    assert p.maps[slide].cycle == 1
    assert not np.array_equal(p.maps[slide].priority, first.priority)
    assert {r.cycle for r in p.proposals(slide)} == {1}
    assert {r.method for r in p.proposals(slide)} == {"random", "standard"}
    assert (p.folder / p.session.checkpoints[0]).is_file()

    back = AnnotationProject.open(p.folder)
    assert back.cycle == 1 and back.session.accepted == p.session.accepted
    assert back.session.regions == p.session.regions
    np.testing.assert_array_equal(back.maps[slide].priority, p.maps[slide].priority)
    # the reloaded model predicts the same map
    np.testing.assert_allclose(run(back.iter_priority(slide)).priority, p.maps[slide].priority, atol=1e-5)
    back.close()
    p.close()


def test_painting_is_refused_outside_accepted_regions(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    proposal = p.suggest(slide, "random", region_size=4 * p.stride, k=1)[0]
    with pytest.raises(ValueError, match="accept the region first"):
        p.write_region_labels(proposal, np.ones((128, 128), np.uint8))
    a = p.accept(proposal)
    with pytest.raises(ValueError, match="shape"):
        p.write_region_labels(a, np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError, match="label values"):
        p.write_region_labels(a, np.full(p.region_labels(a).shape, 7, np.uint8))
    labels_before = p.session.labels(slide).copy()
    assert (labels_before > 0).sum() == p.region_labels(a).size  # only the region is labeled
    p.close()


def test_remove_accepted_region_deletes_its_labels_only(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    # two hand-drawn regions that overlap on level-0 [256, 512) x [256, 512), and one apart
    a = p.accept(Region(0, 0, 512, 512, slide=slide))
    b = p.accept(Region(256, 256, 512, 512, slide=slide))
    c = p.accept(Region(0, 768, 256, 256, slide=slide))
    for r in (a, b, c):
        _paint_truth(p, r, truth)
    assert p.accepted_overlapping(a) == [b] and p.accepted_overlapping(b) == [a] and p.accepted_overlapping(c) == []
    before = p.session.labels(slide).copy()
    f = p.label_factor(slide)
    assert f == 2 and (before[: 768 // 2, : 768 // 2] > 0).sum() == 384 * 384 - 2 * 128 * 128  # a ∪ b

    assert p.remove_accepted(b) == b
    after = p.session.labels(slide)
    expected = before.copy()
    expected[128:384, 128:384] = 0  # b's label box ...
    expected[128:256, 128:256] = before[128:256, 128:256]  # ... except where a covers it too
    np.testing.assert_array_equal(after, expected)
    assert [r.uid for r in p.session.accepted] == [a.uid, c.uid] and p.pending_regions == 2
    # saved: a reopened session has the same regions and labels
    back = AnnotationProject.open(p.folder)
    assert back.session.accepted == p.session.accepted
    np.testing.assert_array_equal(back.session.labels(slide), expected)
    back.close()
    with pytest.raises(ValueError, match="not an accepted region"):
        p.remove_accepted(b)
    with pytest.raises(ValueError, match="not an accepted region"):
        p.remove_accepted(Region(0, 0, 256, 256, slide=slide))  # never accepted (no uid)
    p.close()


def test_annotated_share_matches_a_whole_slide_count(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    # overlapping regions (an import can make them), one at the slide's edge
    for r in (Region(0, 0, 512, 512, slide=slide), Region(256, 256, 512, 512, slide=slide),
              Region(768, 640, 256, 384, slide=slide)):
        _paint_truth(p, p.accept(r), truth)
    p.session.labels(slide)[5:9, 5:9] = 0  # erased pixels are not annotated
    tissue = p.tissue_labels(slide)  # the whole slide, the reference
    expected = 100.0 * ((p.session.labels(slide) > 0) & tissue).sum() / tissue.sum()
    assert 0 < expected < 100 and p.annotated_pct(slide) == pytest.approx(expected)
    assert p.annotated_pct() == pytest.approx(expected)  # one slide
    y0, x0, y1, x1 = 100, 200, 300, 260
    np.testing.assert_array_equal(p.tissue_labels(slide, (y0, x0, y1, x1)), tissue[y0:y1, x0:x1])
    p.close()


def test_pending_regions_count_by_region_through_removals(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    a, b = (p.accept(Region(x, 0, 256, 256, slide=slide)) for x in (0, 512))
    for r in (a, b):
        _paint_truth(p, r, truth)
    run(p.iter_retrain(refresh=False))
    assert p.pending_regions == 0
    c = p.accept(Region(0, 512, 256, 256, slide=slide))
    assert p.pending_regions == 1
    p.remove_accepted(a)  # trained on: the new region is still the one pending
    assert p.pending_regions == 1
    p.remove_accepted(c)
    assert p.pending_regions == 0
    # a session saved before regions were tracked by uid counted the first accepted ones
    p.accept(Region(512, 512, 256, 256, slide=slide))
    p.close()
    meta = json.loads((p.folder / "session.json").read_text())
    del meta["params"]["trained_on"]
    meta["params"]["trained_on_regions"] = 1
    (p.folder / "session.json").write_text(json.dumps(meta))
    back = AnnotationProject.open(p.folder)
    assert back.pending_regions == 1
    back.close()


def test_retrain_without_labels_and_cancelled_retrain_change_nothing(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    with pytest.raises(ValueError, match="no labels to train on"):
        run(p.iter_retrain())
    a = p.accept(p.suggest(slide, "random", region_size=4 * p.stride, k=1)[0])
    _paint_truth(p, a, truth)
    before = {k: v.clone() for k, v in p.models[0].state_dict().items()}
    from napari_alregions.model import TrainingCancelled

    calls = iter(range(1000))
    with pytest.raises(TrainingCancelled):
        run(p.iter_retrain(cancel=lambda: next(calls) >= 3))
    assert p.cycle == 0 and not p.trained
    after = p.models[0].state_dict()
    assert all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)
    p.close()


def test_checkpoint_for_other_classes_is_refused(tmp_path, small_pool):
    from napari_alregions.model import CheckpointError, ModelSpec, save_checkpoint

    p, _, _ = _project(tmp_path, small_pool)
    spec = ModelSpec(classes=("a", "b", "c"), patch_size=32, level=1)
    path = save_checkpoint(tmp_path / "other.pt", spec.build(), spec)
    with pytest.raises(CheckpointError, match="predicts"):
        p.load_model(path)
    assert not p.trained
    ours = ModelSpec(classes=p.classes, patch_size=32, level=1)
    p.load_model(save_checkpoint(tmp_path / "ours.pt", ours.build(), ours))
    assert p.trained and (p.folder / p.session.checkpoints[0]).is_file()
    p.close()


def test_ensemble_measures_need_members(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    with pytest.raises(ValueError, match="needs an ensemble"):
        run(p.iter_priority(slide, measure="ensemble_disagreement"))
    p.new_model(patch_size=32, level=1, members=2)
    rec = run(p.iter_priority(slide, measure="ensemble_disagreement"))
    assert rec.probabilities.shape[0] == 2
    # two differently initialised members disagree somewhere in the tissue
    assert rec.priority.max() > 0
    p.close()


def test_prefill_with_prediction_uses_the_model_class(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    rec = run(p.iter_priority(slide))
    prob = rec.probabilities.mean(axis=0)
    r = Region(0, 0, 4 * p.stride, 4 * p.stride, slide=slide, method="manual")
    a = p.accept(r, prefill="prediction")
    lab = p.region_labels(a)
    cell = p.stride // 2  # label px per map cell (level 1)
    for i in range(4):
        for j in range(4):
            q = prob[i, j]
            want = 1 if not np.isfinite(q).all() else int(np.argmax(q)) + 1
            assert (lab[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] == want).all()
    p.close()


def test_compare_overlap_matches_brute_force(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    run(p.iter_priority(slide))
    methods = ["standard", "adaptive", "random"]
    out, summaries, overlap = p.compare(slide, methods, region_size=4 * p.stride, k=3)
    assert [s.method for s in summaries] == methods
    h, w = p.slides[slide].shape
    masks = []
    for m in methods:
        mask = np.zeros((h, w), bool)
        for r in out[m]:
            mask[r.y : r.y1, r.x : r.x1] = True
        masks.append(mask)
    for i, s in enumerate(summaries):
        assert s.count == len(out[methods[i]]) and s.area == masks[i].sum()
        for j in range(len(methods)):
            want = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert overlap[i, j] == pytest.approx(want)
    p.close()


QUPATH_FILE = {
    "type": "FeatureCollection",
    "features": [
        {   # a region drawn in QuPath (rectangle, no class we know)
            "type": "Feature", "id": "r1",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "Region*", "color": [0, 0, 180]}},
        },
        {   # a tumour triangle inside it, with measurements as QuPath's old list form
            "type": "Feature", "id": "t1",
            "geometry": {"type": "Polygon", "coordinates": [[[32, 32], [161, 32], [32, 161], [32, 32]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "tumour", "color": [200, 0, 0]},
                           "measurements": [{"name": "Area", "value": 8192}]},
        },
        {   # a tumour square with a hole, outside any region (MultiPolygon)
            "type": "Feature", "id": "t2",
            "geometry": {"type": "MultiPolygon", "coordinates": [[
                [[512, 512], [640, 512], [640, 640], [512, 640], [512, 512]],
                [[544, 544], [576, 544], [576, 576], [544, 576], [544, 544]],
            ]]},
            "properties": {"objectType": "annotation", "classification": {"name": "tumour", "color": [200, 0, 0]}},
        },
        {"type": "Feature", "id": "p", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ],
}


def test_import_hand_written_qupath_file(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(QUPATH_FILE))
    counts = p.import_qupath(path, slide)
    assert counts["regions"] == 2 and counts["labeled_annotations"] == 2
    boxes = sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted)
    assert boxes == [(0, 0, 256, 256), (512, 512, 128, 128)]
    # expected labels at level 1 (factor 2), by hand: pixel centres inside the shapes
    want = np.zeros(p.session.labels(slide).shape, np.uint8)
    want[0:128, 0:128] = 1  # the region, background (the file has no background class)
    yy, xx = np.mgrid[0:128, 0:128] + 0.5
    tri = (xx >= 16) & (yy >= 16) & (xx + yy < 96.5)  # level-0 x + y < 193; no centre on an edge
    want[0:128, 0:128][tri] = 2
    want[256:320, 256:320] = 2
    want[272:288, 272:288] = 1  # the hole is background of the accepted bounding box
    np.testing.assert_array_equal(p.session.labels(slide), want)
    back = AnnotationProject.open(p.folder)  # saved (by the chunks the import wrote)
    np.testing.assert_array_equal(back.session.labels(slide), want)
    back.close()
    p.close()


def test_export_import_round_trip(tmp_path, small_pool):
    p, slide, truth = _labeled(tmp_path, small_pool, k=3, seed=3)
    lab = p.session.labels(slide)
    r0 = p.session.accepted[0]
    y0, x0, _, _ = p.label_box(r0)
    lab[y0 : y0 + 5, x0 : x0 + 5] = 0  # some erased (unlabeled) pixels survive too
    p.session.mark_labels_changed(slide)
    from napari_alregions._errors import describe

    with pytest.raises(IsADirectoryError) as err:
        p.export_qupath(tmp_path, slide)  # a folder picked as the target
    assert describe(err.value) == f"{tmp_path}: Is a directory (choose a file name, not a folder)"
    with pytest.raises(FileNotFoundError) as err:
        p.export_qupath(tmp_path / "nope" / "export.geojson", slide)
    assert describe(err.value).startswith(f"{tmp_path / 'nope' / 'export.geojson'}: No such file")  # not the temporary name
    assert not list(tmp_path.rglob(".*.part*"))
    out = p.export_qupath(tmp_path / "export.geojson", slide)
    data = json.loads(out.read_text())
    assert all(f["properties"]["classification"]["color"] for f in data["features"])
    q, slide_q, _ = _project(tmp_path, small_pool, name="s2")
    q.import_qupath(out, slide_q)
    np.testing.assert_array_equal(q.session.labels(slide_q), p.session.labels(slide))
    assert sorted((r.x, r.y, r.w, r.h) for r in q.session.accepted) == sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted)
    # importing the same file again (or into the session it came from) adds nothing twice
    for project, name in ((q, slide_q), (p, slide)):
        accepted, labels = list(project.session.accepted), project.session.labels(name).copy()
        assert project.import_qupath(out, name)["regions"] == 0
        assert project.session.accepted == accepted
        np.testing.assert_array_equal(project.session.labels(name), labels)
    p.close()
    q.close()


def test_malformed_geojson_changes_nothing(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
                   '{"type": "Polygon", "coordinates": [[["a", 1]]]}}]}')
    with pytest.raises(ValueError, match="bad.geojson"):
        p.import_qupath(bad, slide)
    with pytest.raises(IsADirectoryError, match=r"is a folder; choose a \.geojson file in it"):
        p.import_qupath(tmp_path, slide)  # a folder picked in the file field
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        p.import_qupath(bad, slide)
    assert str(err.value).count(str(bad)) == 1  # the path once, not once per layer that passed the error on
    assert not p.session.accepted and not p.session.labels(slide).any()
    p.close()


def test_prototype_similarity_and_pool_methods(tmp_path, small_pool):
    from napari_alregions.embed import embed_patches
    from napari_alregions.model import read_patches
    from napari_alregions.prototypes import PrototypeSet, save_prototypes

    p, slide, truth = _project(tmp_path, small_pool)
    folder, manifest = small_pool
    p.add_slide(folder / manifest["slides"][1]["image"], group="centre-b")
    p.session.slides[slide].group = "centre-a"
    emb = run(p.iter_embed(slide))
    assert emb.shape[:2] == p.slides[slide].map_shape(p.stride)
    assert (p.folder / "embeddings" / f"{slide}.npy").is_file()
    # prototypes: the encoder's own embedding of one patch of the slide -> similarity 1 there
    r, c = np.argwhere(np.isfinite(emb).all(-1))[5]
    s = p.stride
    centre = np.array([[(r * s + s // 2) // 2, (c * s + s // 2) // 2]])  # level-1 px
    patch = read_patches(p.slides[slide], centre, level=1, patch_size=32)
    protos = PrototypeSet({"tumour": embed_patches(patch, p.encoder())}, {"source": "test"})
    p.set_prototypes(save_prototypes(tmp_path / "protos.npz", protos))
    sim = run(p.iter_similarity(slide))
    assert sim[r, c] == pytest.approx(1.0, abs=1e-4) and sim.argmax() == r * sim.shape[1] + c
    regions = p.suggest(slide, "prototype", region_size=s, k=1, base="standard")
    assert (regions[0].y // s, regions[0].x // s) == (r, c)
    back = AnnotationProject.open(p.folder)
    assert back.prototypes is not None and slide in back.embeddings
    # wrong dimension: a clear error
    p.set_prototypes(save_prototypes(tmp_path / "bad.npz", PrototypeSet({"tumour": np.ones((2, 3))})))
    with pytest.raises(ValueError, match="dimension"):
        run(p.iter_similarity(slide))
    # diversity over the pool, and UGA top patches per group
    for name in p.slides:
        run(p.iter_priority(name))
    chosen = p.suggest_pool_diversity(region_size=4 * s, n_per_slide=2)
    assert all(len(v) == 2 for v in chosen.values())
    with pytest.raises(ValueError):
        p.suggest_pool_diversity(region_size=4 * s, n_per_slide=1000)
    by_group = p.uncertain_by_group(n=3)
    assert set(by_group) == {"centre-a", "centre-b"}
    for group, regs in by_group.items():
        names = {n for n, e in p.session.slides.items() if e.group == group}
        assert {r.slide for r in regs} <= names and len(regs) == 3
        scores = [r.score for r in regs]
        assert scores == sorted(scores, reverse=True)
    back.close()
    p.close()


def test_encoder_choice_and_stale_classifier_embeddings(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    emb = run(p.iter_embed(slide))
    assert p.encoder_source == "classifier" and emb.shape[-1] == 128
    a = p.accept(p.suggest(slide, "random", region_size=4 * p.stride, k=1)[0])
    _paint_truth(p, a, truth)
    run(p.iter_retrain(refresh=False))
    # the classifier changed: its old embeddings are gone (memory and disk)
    assert slide not in p.embeddings and not list((p.folder / "embeddings").glob("*.npy"))
    p.set_encoder("random:3")
    fixed = run(p.iter_embed(slide))
    run(p.iter_retrain(refresh=False))
    assert slide in p.embeddings  # a fixed encoder's embeddings survive retraining
    np.testing.assert_array_equal(AnnotationProject.open(p.folder).embeddings[slide], fixed)
    with pytest.raises(ValueError, match="no such file"):
        p.set_encoder(str(tmp_path / "missing.pt"))
    assert p.encoder_source == "random:3"
    p.close()


def test_retrain_on_more_labels_does_not_lower_validation_auc(tmp_path, small_pool):
    """More labels never leave the session with a worse model on the labeled regions' validation patches."""
    import copy

    from napari_alregions.model import CYCLE_SCHEDULE
    from napari_alregions.model.train import Validation, validation_split

    p, slide, truth = _project(tmp_path, small_pool)
    p.session.update_settings(training=TrainingBudget(epochs=8, patience=3, patches_per_slide=32))
    grid = [Region(x, y, 256, 256, slide=slide) for y in range(0, 1024, 256) for x in range(0, 1024, 256)]
    for r in grid[:8]:  # the top half first
        _paint_truth(p, p.accept(r), truth)
    run(p.iter_retrain(refresh=False))
    before = copy.deepcopy(p.models[0])
    for r in grid[8:]:  # then all of it: a superset
        _paint_truth(p, p.accept(r), truth)
    summary = run(p.iter_retrain(refresh=False))
    assert summary["model"][0] in ("new", "kept previous") and summary["n_val"][0] > 0
    # both models on the second retrain's validation patches (stable: the first one's are among them)
    _, val = validation_split(p.candidates(), CYCLE_SCHEDULE.val_fraction)
    v = Validation(val, p.spec, 256, seed=0)
    auc_before, auc_after = v.score(before, "cpu")[1], v.score(p.models[0], "cpu")[1]
    assert np.isfinite(auc_before) and auc_after >= auc_before - 0.01, (auc_before, auc_after)
    assert summary["val_auc"][0] == pytest.approx(auc_after, abs=0.02)


def test_a_method_that_cannot_rerun_does_not_break_the_retrain(tmp_path, small_pool):
    """A prototype selector used before, whose similarity map a retrain drops, used to make every retrain raise."""
    p, slide, truth = _project(tmp_path, small_pool)
    l_ = 4 * p.stride
    for r in p.suggest(slide, "random", region_size=l_, k=2, seed=1):
        _paint_truth(p, p.accept(r), truth)
    run(p.iter_priority(slide))
    p.suggest(slide, "standard", region_size=l_, k=2)
    p.session.update_settings(suggest=p.session.settings.with_plan(slide, "prototype", SuggestPlan(l_, 2, 0, {})).suggest)
    summary = run(p.iter_retrain())
    assert any("prototype proposals not refreshed" in m for m in summary["messages"]), summary["messages"]
    assert {r.cycle for r in p.proposals(slide, "standard")} == {1}  # the others refreshed all the same


def test_reimporting_the_sessions_own_files_adds_nothing(tmp_path, small_pool):
    """The session file and the QuPath export are one dialect: importing either adds no region,
    accepts no proposal, and a label polygon spanning two touching regions needs no new one."""
    from napari_alregions.io_qupath import read_labeled_regions

    p, slide, truth = _project(tmp_path, small_pool)
    for r in (Region(256, 256, 256, 256, slide=slide), Region(512, 256, 256, 256, slide=slide)):  # touching
        _paint_truth(p, p.accept(r), truth)
    proposals = p.suggest(slide, "random", region_size=256, k=2, seed=4)
    labels = p.session.labels(slide).copy()
    boxes = sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted)
    out = p.import_qupath(p.folder / "regions.geojson", slide)
    assert out["regions"] == 0 and out["skipped_by"] == {"proposal": 2}
    p.export_qupath(tmp_path / "export.geojson", slide)
    assert p.import_qupath(tmp_path / "export.geojson", slide)["regions"] == 0
    assert sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted) == boxes
    assert [r.uid for r in p.proposals(slide)] == [r.uid for r in proposals]
    np.testing.assert_array_equal(p.session.labels(slide), labels)
    # `suggest --annotated` reads the labeled set from either file: no proposal, no label polygon
    for f in (p.folder / "regions.geojson", tmp_path / "export.geojson"):
        assert sorted((r.x, r.y, r.w, r.h) for r in read_labeled_regions(f)) == boxes
    # the session still opens with its proposals and accepted regions apart
    back = AnnotationProject.open(p.folder)
    assert len(back.session.accepted) == 2 and len(back.proposals(slide)) == 2


def test_a_failed_compare_changes_no_proposal(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    run(p.iter_priority(slide))
    before = [r.uid for r in p.suggest(slide, "adaptive", region_size=4 * p.stride, k=2)]
    with pytest.raises(ValueError, match="similarity map"):
        p.compare(slide, ["adaptive", "prototype"], region_size=4 * p.stride, k=2)  # prototype cannot run
    assert [r.uid for r in p.proposals(slide, "adaptive")] == before
    assert [r.uid for r in AnnotationProject.open(p.folder).proposals(slide, "adaptive")] == before
    out, summaries, _ = p.compare(slide, ["adaptive", "standard"], region_size=4 * p.stride, k=2)
    assert set(out) == {"adaptive", "standard"} and len(summaries) == 2


def test_opening_repairs_caches_and_unacknowledged_labels_and_notices_a_replaced_slide(tmp_path, small_pool):
    import shutil

    from napari_alregions.session import SessionError

    p, slide, truth = _project(tmp_path, small_pool)
    region = p.accept(p.suggest(slide, "random", region_size=4 * p.stride, k=1, seed=0)[0])
    run(p.iter_priority(slide))
    y0, x0, y1, x1 = p.label_box(region)
    labels = p.session.labels(slide)
    # a save killed after the labels of a new region, before the session file recorded it
    outside = (y1 + 5, x1 + 5) if y1 + 5 < labels.shape[0] else (0, 0)
    labels[outside] = 2
    p.session.mark_labels_changed(slide, (*outside, outside[0] + 1, outside[1] + 1))
    p.session._store.save()
    p.close()
    (p.folder / "maps" / f"{slide}.npz").write_bytes(b"PK\x03\x04 truncated")
    back = AnnotationProject.open(p.folder)
    assert back.session.labels(slide)[outside] == 0
    assert (back.session.labels(slide)[y0:y1, x0:x1] == 1).all()  # the region's own labels stay
    assert slide not in back.maps
    assert any("outside every accepted region" in m for m in back.open_messages)
    assert any("priority map is damaged" in m for m in back.open_messages)
    back.close()
    # the slide file replaced by another slide: refused, nothing rewritten
    folder, manifest = small_pool
    entry = back.session.slides[slide]
    before = (p.folder / "session.json").read_text()
    original = tmp_path / "original.tif"
    shutil.copy(entry.path, original)
    try:
        shutil.copy(folder / manifest["slides"][1]["image"], entry.path)
        with pytest.raises(SessionError, match="not the file added to this session"):
            AnnotationProject.open(p.folder)
    finally:
        shutil.copy(original, entry.path)
    assert (p.folder / "session.json").read_text() == before
    assert not (p.folder / "session.lock").exists()  # a failed open holds no lock
    AnnotationProject.open(p.folder).close()


def test_regions_partly_or_wholly_off_the_slide_are_clipped_or_refused(tmp_path, small_pool):
    p, slide, _ = _project(tmp_path, small_pool)
    h, w = p.slides[slide].shape
    # negative coordinates: clipped at 0, labels at the top-left corner (never wrapped around)
    a = p.accept(Region(-100, -64, 300, 200, slide=slide))
    assert (a.x, a.y, a.w, a.h) == (0, 0, 200, 136)
    labels = p.session.labels(slide)
    y0, x0, y1, x1 = p.label_box(a)
    assert (y0, x0) == (0, 0) and labels[y0:y1, x0:x1].all() and labels.sum() == (y1 - y0) * (x1 - x0)
    # past the far corner: clipped to the slide
    b = p.accept(Region(w - 50, h - 40, 500, 500, slide=slide))
    assert (b.x1, b.y1) == (w, h)
    # wholly off the slide: refused, nothing changes
    before = list(p.session.accepted)
    with pytest.raises(ValueError, match="outside the slide"):
        p.accept(Region(10**6, 0, 256, 256, slide=slide))
    assert p.session.accepted == before


def _files(folder):
    """The bytes of every file of a session folder, by relative path."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_suggest_that_cannot_run_changes_nothing(tmp_path, small_pool):
    """A selector that cannot run raises before any state changes: proposals, the rerun plan
    and every file of the session stay as they were."""
    p, slide, truth = _project(tmp_path, small_pool)
    other = p.add_slide(small_pool[0] / small_pool[1]["slides"][1]["image"])  # no map there
    run(p.iter_priority(slide))
    before = [r.uid for r in p.suggest(slide, "adaptive", region_size=4 * p.stride, k=2)]
    plan, files = json.dumps(p.session.settings.to_dict()["suggest"]), _files(p.folder)
    for args, match in [((slide, "prototype"), "similarity map"), ((other, "adaptive"), "needs a priority map"),
                        ((other, "diversity"), "needs a priority map"), ((slide, "bogus"), "unknown method"),
                        ((slide, "adaptive", {"region_size": p.stride + 1}), "multiple of the map stride"),
                        ((slide, "adaptive", {"warp": 9}), "takes no option")]:
        kw = {"region_size": 4 * p.stride, "k": 2, **(args[2] if len(args) > 2 else {})}
        with pytest.raises(ValueError, match=match):
            p.suggest(args[0], args[1], **kw)
        assert [r.uid for r in p.proposals(slide, "adaptive")] == before and not p.proposals(other)
        assert json.dumps(p.session.settings.to_dict()["suggest"]) == plan and _files(p.folder) == files
    p.close()


def test_autosave_off_writes_nothing_until_save(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    p.autosave = False
    files = _files(p.folder)
    keep = p.accept(Region(0, 0, 256, 256, slide=slide))
    _paint_truth(p, keep, truth)
    p.remove_accepted(p.accept(Region(512, 0, 256, 256, slide=slide)))
    p.suggest(slide, "random", region_size=4 * p.stride, k=2, seed=1)
    assert _files(p.folder) == files  # nothing written yet
    p.save()
    back = AnnotationProject.open(p.folder)
    assert [r.uid for r in back.session.accepted] == [keep.uid] and len(back.proposals(slide)) == 2
    np.testing.assert_array_equal(back.session.labels(slide), p.session.labels(slide))
    assert (back.session.labels(slide) == 2).any() == (p.region_labels(keep) == 2).any()
    back.close()
    p.close()


def test_set_probabilities_derives_the_map_as_iter_priority(tmp_path, small_pool):
    from napari_alregions.model import predict_probability_map

    p, slide, _ = _project(tmp_path, small_pool)
    rec = run(p.iter_priority(slide, measure="entropy"))
    s = p.slides[slide]
    prob = predict_probability_map(s, p.models[0], p.spec, stride=p.stride, tissue=s.tissue_map(p.stride))
    got = p.set_probabilities(slide, prob, measure="entropy")
    np.testing.assert_array_equal(got.priority, rec.priority)
    assert got.cycle == p.cycle and AnnotationProject.open(p.folder).maps[slide].measure == "entropy"
    with pytest.raises(ValueError, match="probabilities must have shape"):
        p.set_probabilities(slide, prob[1:])
    with pytest.raises(ValueError, match="needs an ensemble"):
        p.set_probabilities(slide, prob, measure="ensemble_disagreement")
    p.close()


def test_iter_inputs_builds_what_a_method_reads_once_per_model(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool)
    run(p.iter_inputs(slide, "random"))
    assert slide not in p.maps and slide not in p.embeddings  # random reads nothing
    with pytest.raises(ValueError, match="prototype set"):
        run(p.iter_inputs(slide, "prototype"))
    run(p.iter_inputs(slide, "adaptive"))
    first = p.maps[slide]
    run(p.iter_inputs(slide, "adaptive"))
    assert p.maps[slide] is first  # the current model's map is not computed again
    run(p.iter_inputs(slide, "diversity"))
    assert slide in p.embeddings and p.maps[slide] is first
    p.suggest(slide, "diversity", region_size=4 * p.stride, k=2)
    _paint_truth(p, p.accept(p.suggest(slide, "random", region_size=4 * p.stride, k=1, seed=2)[0]), truth)
    run(p.iter_retrain(refresh=False))
    run(p.iter_inputs(slide, "adaptive"))  # a new model: a new map
    assert p.maps[slide] is not first and p.maps[slide].cycle == p.cycle == 1
    p.close()


def test_training_seed_offsets_the_initial_weights_and_the_schedule(tmp_path, small_pool):
    a, _, _ = _project(tmp_path, small_pool, name="a")
    b, _, _ = _project(tmp_path, small_pool, name="b")
    assert a.train_config().seed == 0
    b.set_training(seed=700)
    b.new_model(patch_size=32, level=1)
    assert b.train_config().seed == 700
    wa, wb = (next(iter(m.models[0].state_dict().values())).numpy() for m in (a, b))
    assert not np.array_equal(wa, wb)
    a.set_training(seed=700)
    a.new_model(patch_size=32, level=1)
    np.testing.assert_array_equal(next(iter(a.models[0].state_dict().values())).numpy(), wb)
    a.close()
    b.close()


def test_cli_suggest_builds_cell_features_as_the_project(tmp_path, small_pool):
    """`alregions suggest --cell-features` and the project pool features into the same
    region embeddings and descriptors: the same regions."""
    from napari_alregions.cli import main
    from napari_alregions.io_qupath import read_regions

    p, slide, _ = _project(tmp_path, small_pool)
    rec = run(p.iter_priority(slide))
    emb = np.random.default_rng(0).random((*rec.priority.shape, 6)).astype(np.float32)
    p.session.maps.set(slide, "embeddings", emb)
    tissue = p.slides[slide].tissue_map(p.stride)
    for name, arr in (("map", rec.priority), ("tissue", tissue), ("emb", emb)):
        np.save(tmp_path / f"{name}.npy", arr)
    l_ = 4 * p.stride
    for method, extra in (("diversity", []), ("focannot", ["--option", "overlap=0.25"])):
        options = {"overlap": 0.25} if extra else {}
        mine = p.suggest(slide, method, region_size=l_, k=2, seed=3, **options)
        out = tmp_path / f"{method}.geojson"
        assert main(["suggest", str(tmp_path / "map.npy"), "--method", method, "-l", str(l_), "-k", "2",
                     "--stride", str(p.stride), "--tissue", str(tmp_path / "tissue.npy"), "--cell-features",
                     str(tmp_path / "emb.npy"), "--seed", "3", "--out", str(out), *extra]) == 0
        cli = read_regions(out)
        assert len(mine) == 2 and [(r.x, r.y, r.w, r.h) for r in cli] == [(r.x, r.y, r.w, r.h) for r in mine]
    p.close()


# -- the fast learner's loop (the viewer's default) -------------------------------------------
def test_fast_loop_refits_in_seconds_on_cached_features_and_refreshes(tmp_path, small_pool, monkeypatch):
    p, slide, truth = _project(tmp_path, small_pool, learner="fast")
    assert p.session.settings.learner == "fast" and not p.fast_in_use  # untrained: the untrained CNN's map
    l_ = 4 * p.stride
    for r in p.suggest(slide, "random", region_size=l_, k=2, seed=3):
        _paint_truth(p, p.accept(r), truth)
    run(p.iter_priority(slide))
    p.suggest(slide, "standard", region_size=l_, k=2)
    records = []
    summary = run(p.iter_retrain(), records.append)
    phases = {r["phase"] for r in records}
    assert phases >= {"features", "fit"} and "train" not in phases  # no CNN training
    assert summary["learner"] == "fast" and summary["cycle"] == 1 and p.fast_in_use and not p.trained
    assert summary["quality"].startswith("fast model (blend)")
    assert p.maps[slide].cycle == 1 and all(r.cycle == 1 for r in p.proposals(slide, "standard"))
    assert (p.folder / "features" / "texture" / f"{slide}.zarr").is_dir()

    # a retrain reads the cached features, never the slide
    def no_reads(*a, **k):
        raise AssertionError("the slide was read")

    monkeypatch.setattr(type(p.slides[slide]), "read_region", no_reads)
    a = p.accept(p.proposals(slide, "standard")[0])
    _paint_truth(p, a, truth)
    summary = run(p.iter_retrain())
    assert summary["cycle"] == 2 and summary["n_candidates"] > 0
    prob = p.prediction(slide)
    tissue = p.slides[slide].tissue_map(p.stride)
    assert np.isfinite(prob[tissue]).all() and np.isnan(prob[~tissue]).all()
    monkeypatch.undo()

    # reopened: the head refits from the cache on the first map; the forest's sub-forests
    # serve the ensemble measures
    p.close()
    q = AnnotationProject.open(p.folder)
    try:
        assert q.fast is None and q.fast_in_use
        record = run(q.iter_priority(slide, measure="ensemble_disagreement"))
        assert record.probabilities.shape[0] == 10 and q.fast is not None
    finally:
        q.close()


def test_deep_retrain_replaces_the_fast_model_only_when_it_estimates_better(tmp_path, small_pool):
    p, slide, truth = _labeled(tmp_path, small_pool, k=3, seed=5, learner="fast")
    run(p.iter_retrain())
    fast_auc = p.fast.quality.auc
    summary = run(p.iter_retrain(deep=True))
    assert summary["learner"] == "deep" and p.trained
    deep_auc = np.nanmean([v if v is not None else np.nan for v in summary["val_auc"]])
    replaced = p.session.settings.in_use == "deep"
    if replaced:
        assert any("replaces the fast one" in m for m in summary["messages"])
        assert fast_auc is None or deep_auc > fast_auc
    else:
        assert any("kept the fast model" in m for m in summary["messages"]) and p.fast_in_use


def test_sessions_of_earlier_versions_keep_their_trained_cnn():
    from napari_alregions.settings import Settings

    old = Settings.from_dict({"trained_on": ["a"]})
    assert old.in_use == "deep" and old.learner == "fast"
    assert Settings.from_dict({}).in_use == "fast"
    with pytest.raises(ValueError, match="learner"):
        Settings.from_dict({"learner": "svm"})


def test_a_deep_model_at_chance_is_trained_again_from_new_weights(tmp_path, small_pool):
    p, slide, truth = _labeled(tmp_path, small_pool, k=2, seed=1)
    run(p.iter_retrain(refresh=False))
    p.session.history[-1]["model"] = ["at chance"]  # as if the first training had learned nothing
    assert p.training._deep_at_chance() == [True]
    summary = run(p.iter_retrain(refresh=False))
    assert summary["model"] != ["kept previous"]
    assert any("new weights" in m for m in summary["messages"])


def test_set_learner_checks_its_choices_and_changes_features(tmp_path, small_pool):
    p, slide, truth = _project(tmp_path, small_pool, learner="fast")
    with pytest.raises(ValueError, match="learner"):
        p.set_learner(learner="svm")
    with pytest.raises(ValueError, match="head"):
        p.set_learner(head="svm")
    with pytest.raises(ValueError, match="no such file"):
        p.set_learner(features=str(tmp_path / "missing.pt"))
    for r in p.suggest(slide, "random", region_size=4 * p.stride, k=2, seed=2):
        _paint_truth(p, p.accept(r), truth)
    run(p.iter_retrain(refresh=False))
    p.set_learner(features="random:3", head="logistic")  # an untrained CNN's features, per map cell
    assert p.fast is None and not p.feature_grids
    summary = run(p.iter_retrain(refresh=False))
    grid = p.feature_grids[slide]
    assert grid.sub == 1 and grid.encoder == "random:3" and summary["quality"].startswith("fast model (logistic)")
    assert (p.folder / "features" / "random_3" / f"{slide}.zarr").is_dir()
    reopened = AnnotationProject.open(p.folder, take_over=True)
    try:
        assert reopened.session.settings.features == "random:3" and reopened.session.settings.head == "logistic"
    finally:
        reopened.close()


def test_a_reopened_fast_model_is_the_same_and_a_new_model_forgets_it(tmp_path, small_pool):
    p, slide, truth = _labeled(tmp_path, small_pool, k=3, seed=4, learner="fast")
    run(p.iter_retrain(refresh=False))
    before = run(p.iter_predict(slide))
    extra = p.accept(p.suggest(slide, "random", region_size=4 * p.stride, k=1, seed=9)[0])  # pending: not trained on
    _paint_truth(p, extra, truth)
    p.close()
    q = AnnotationProject.open(p.folder)
    try:
        np.testing.assert_allclose(run(q.iter_predict(slide)), before, atol=1e-6)  # its regions, its seed
        q.new_model(patch_size=32, level=1, stride=2 * q.stride)  # start over on another grid
        assert q.fast is None and not q.fast_in_use and not q.feature_grids
        record = run(q.iter_priority(slide))  # the untrained CNN's map, on the new grid
        assert record.priority.shape == q.slides[slide].map_shape(q.stride)
        summary = run(q.iter_retrain(refresh=False))  # features of the new grid
        assert q.feature_grids[slide].stride == q.stride and summary["learner"] == "fast"
    finally:
        q.close()


def test_a_fast_refit_keeps_a_deep_model_that_estimates_better(tmp_path, small_pool):
    p, slide, truth = _labeled(tmp_path, small_pool, k=2, seed=6, learner="fast")
    run(p.iter_retrain(deep=True, refresh=False))
    p.session.update_settings(in_use="deep")
    p.session.history[-1]["val_auc"] = [0.9999]  # as if the CNN had validated near perfectly
    summary = run(p.iter_retrain(refresh=False))
    assert p.session.settings.in_use == "deep" and any("kept the deep model" in m for m in summary["messages"])
    p.session.history[-2]["val_auc"] = [0.5]
    p.session.update_settings(in_use="deep")
    summary = run(p.iter_retrain(refresh=False))
    assert p.fast_in_use and any("replaces the deep one" in m for m in summary["messages"])
