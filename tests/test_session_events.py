"""The observable session: every change of regions, labels, maps, settings, slides and
model fires its event in the call that made it; labels obey the session's rules."""

from __future__ import annotations

import dataclasses
import json
import threading

import numpy as np
import pytest

from napari_alregions.geometry import Box, Region
from napari_alregions.project import AnnotationProject, RegionSummary, run
from napari_alregions.settings import Settings, TrainingBudget


@pytest.fixture
def project(tmp_path, small_pool):
    folder, manifest = small_pool
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    p.session.update_settings(training=TrainingBudget(initial_steps=12, fine_tune_steps=8, patches_per_slide=64))
    p.add_slide(folder / manifest["slides"][0]["image"])
    p.add_slide(folder / manifest["slides"][1]["image"])
    yield p
    p.close()


class Recorder:
    """Every event of a session, in order: (signal name, arguments)."""

    def __init__(self, session) -> None:
        self.seen: list[tuple] = []
        for name in ("regions", "labels", "maps", "settings", "slides", "model"):
            getattr(session.events, name).connect(lambda *args, _n=name: self.seen.append((_n, *args)))

    def of(self, name: str) -> list[tuple]:
        return [e[1:] for e in self.seen if e[0] == name]


def test_settings_are_frozen_and_changed_through_the_session(project):
    rec = Recorder(project.session)
    with pytest.raises(dataclasses.FrozenInstanceError):
        project.session.settings.learner = "deep"
    new = project.session.update_settings(learner="deep")
    assert project.session.settings is new and new.learner == "deep"
    assert rec.of("settings") == [(new,)]
    project.set_training(epochs=5, max_seconds=30)
    assert project.session.settings.training.epochs == 5 and project.session.settings.training.max_seconds == 30
    with pytest.raises(ValueError, match="epochs"):
        project.set_training(epochs=0)
    with pytest.raises(TypeError):
        project.session.update_settings(no_such_field=1)
    # saved and read back as set
    project.save()
    meta = json.loads((project.folder / "session.json").read_text())
    assert Settings.from_dict(meta["params"]) == project.session.settings


def test_accept_paint_and_remove_fire_regions_then_labels(project):
    slide = next(iter(project.slides))
    rec = Recorder(project.session)
    [r] = project.suggest(slide, "random", region_size=4 * project.stride, k=1, seed=0)
    a = project.accept(r)
    box = project.label_box(a)
    kinds = [(e[0], e[1].kind if e[0] == "regions" else e[1]) for e in rec.seen if e[0] in ("regions", "labels")]
    assert kinds == [("regions", "proposed"), ("regions", "accepted"), ("labels", slide)]
    assert rec.of("labels")[-1] == (slide, box)
    # painted in place (a napari layer's view), then one call marks, checks and fires
    view = project.region_view(a)
    view[:2, :2] = 2
    view[-1, -1] = 9  # no class: unlabeled
    assert project.labels_painted(a) == 1 and view[-1, -1] == 0
    assert rec.of("labels")[-1] == (slide, box)
    before = len(rec.of("labels"))
    project.remove_accepted(a)
    assert rec.of("labels")[before:] == [(slide, box)]
    assert not project.session.labels(slide)[box.slices].any()  # labels left with the region


def test_labels_outside_accepted_regions_are_not_kept(project):
    """The session's rule: labels lie in accepted regions only, whoever writes them."""
    slide = next(iter(project.slides))
    s = project.stride
    a = project.accept(Region(0, 0, 2 * s, 2 * s, slide=slide, method="drawn"))
    box = project.label_box(a)
    wider = Box(box.y0, box.x0, box.y1 + 5, box.x1 + 5)
    with project.session.editing_labels(slide, wider) as crop:
        crop[...] = 2
    labels = project.session.labels(slide)
    assert (labels[box.slices] == 2).all()
    assert not labels[box.y1:box.y1 + 5, box.x0:box.x1 + 5].any()
    assert not labels[box.y0:box.y1, box.x1:box.x1 + 5].any()


def test_maps_fire_when_set_and_when_the_model_changes(project):
    slide = next(iter(project.slides))
    rec = Recorder(project.session)
    record = run(project.iter_priority(slide))
    assert rec.of("maps") == [(slide, "priority")]
    assert project.maps[slide] is record
    with pytest.raises(TypeError):
        project.maps[slide] = record  # read-only: maps change through the session
    project.new_model(patch_size=32, level=1)
    assert (slide, "priority") in rec.of("maps")[1:] and slide not in project.maps
    assert rec.of("model") == [()]
    assert not (project.folder / "maps" / f"{slide}.npz").exists()


def test_retrain_in_a_worker_thread_fires_model_and_maps_there(project):
    """A retrain runs off the GUI thread: its events fire on that thread (views marshal)."""
    slide = next(iter(project.slides))
    for r in project.suggest(slide, "random", region_size=4 * project.stride, k=2, seed=1):
        a = project.accept(r)
        lab = project.region_labels(a)
        lab[: lab.shape[0] // 2] = 2
        project.write_region_labels(a, lab)
    run(project.iter_priority(slide))
    threads: dict[str, set] = {"model": set(), "maps": set()}
    project.session.events.model.connect(lambda: threads["model"].add(threading.get_ident()))
    project.session.events.maps.connect(lambda *a: threads["maps"].add(threading.get_ident()))
    worker = threading.Thread(target=lambda: run(project.iter_retrain()))
    worker.start()
    worker.join(timeout=600)
    assert not worker.is_alive()
    assert threads["model"] == {worker.ident} and worker.ident in threads["maps"]


def test_current_slide_is_saved_and_restored(project, tmp_path):
    names = list(project.slides)
    assert project.current_slide == names[0]
    project.set_current_slide(names[1])
    project.close()
    q = AnnotationProject.open(tmp_path / "s")
    try:
        assert q.current_slide == names[1]
        with pytest.raises(KeyError, match="no slide"):
            q.set_current_slide("nope.tif")
    finally:
        q.close()


def test_region_summary_area_classes_and_cycle(project):
    slide = next(iter(project.slides))
    s = project.stride
    a = project.accept(Region(0, 0, 2 * s, 2 * s, slide=slide, method="drawn", cycle=3))
    lab = project.region_labels(a)
    lab[:, : lab.shape[1] // 4] = 2  # a quarter tumour, the rest background (prefill)
    project.write_region_labels(a, lab)
    summary = project.region_summary(a)
    assert isinstance(summary, RegionSummary)
    assert summary.area_px == (2 * s) ** 2 and summary.cycle == 3 and summary.labeled == pytest.approx(1.0)
    assert summary.classes["tumour"] == pytest.approx(0.25, abs=0.01)
    assert summary.classes["background"] == pytest.approx(0.75, abs=0.01)
    mpp = project.slides[slide].mpp
    if mpp:
        assert summary.area_um2 == pytest.approx((2 * s * mpp) ** 2)
        assert summary.area_mm2 == pytest.approx(summary.area_um2 / 1e6)


def test_empty_reason_names_the_cause(project):
    slide = next(iter(project.slides))
    h, w = project.slides[slide].shape
    too_big = project.stride * (max(h, w) // project.stride + 1)
    assert "does not fit" in project.empty_reason(slide, "standard", region_size=too_big)
    run(project.iter_priority(slide))
    project.session.maps.set(slide, "priority", dataclasses.replace(
        project.maps[slide], priority=np.zeros_like(project.maps[slide].priority)))
    assert project.suggest(slide, "top_patches", region_size=2 * project.stride, k=3) == []
    assert "priority map is 0" in project.empty_reason(slide, "top_patches", region_size=2 * project.stride)


def test_export_every_slide_with_qupath_names_and_method_colours(project, tmp_path):
    from napari_alregions.layers import method_rgb

    names = list(project.slides)
    s = project.stride
    for n in names:
        a = project.accept(Region(0, 0, 2 * s, 2 * s, slide=n, method="drawn"))
        lab = project.region_labels(a)
        lab[:4, :4] = 2
        project.write_region_labels(a, lab)
    project.suggest(names[0], "random", region_size=2 * s, k=2, seed=0)
    paths = project.export_qupath_all(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(n.rsplit(".", 1)[0] + ".geojson" for n in names)
    feats = json.loads(paths[0].read_text())["features"]
    classes = {f["properties"]["classification"]["name"] for f in feats}
    assert "Tumor" in classes and "tumour" not in classes
    proposal = next(f for f in feats if f["properties"]["classification"]["name"] == "Proposal: random")
    assert proposal["properties"]["classification"]["color"] == list(method_rgb("random"))
    # QuPath's spelling imports back into the session's class: nothing new, nothing lost
    before = project.session.labels(names[0]).copy()
    summary = project.import_qupath(paths[0], names[0])
    assert summary["regions"] == 0
    np.testing.assert_array_equal(project.session.labels(names[0]), before)
    with pytest.raises(ValueError, match="is a file"):
        project.export_qupath_all(paths[0])


def test_save_model_writes_a_loadable_checkpoint(project, tmp_path):
    with pytest.raises(ValueError, match="not trained"):
        project.save_model(tmp_path / "m.pt")
    slide = next(iter(project.slides))
    for r in project.suggest(slide, "random", region_size=4 * project.stride, k=2, seed=1):
        a = project.accept(r)
        lab = project.region_labels(a)
        lab[: lab.shape[0] // 2] = 2
        project.write_region_labels(a, lab)
    run(project.iter_retrain(deep=True, refresh=False))
    [path] = project.save_model(tmp_path / "m.pt")
    from napari_alregions.model import load_checkpoint

    model, spec, _ = load_checkpoint(path)
    assert spec.classes == project.classes
    import torch

    x = torch.rand(2, 3, spec.patch_size, spec.patch_size)
    project.models[0].eval()
    model.eval()
    torch.testing.assert_close(model(x), project.models[0](x))
