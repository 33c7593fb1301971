"""The AL Regions dock widget in a real napari viewer (under Xvfb): click what a user clicks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_alregions.settings import TrainingBudget

pytestmark = pytest.mark.gui

FAST = {"initial_steps": 12, "fine_tune_steps": 8, "patches_per_slide": 64}


def _click(widget, text: str, *, wait: bool = True) -> None:
    """Click a button; ``wait``: until what it started (a worker, a redraw) is done."""
    from qtpy.QtWidgets import QPushButton

    buttons = [b for b in widget.findChildren(QPushButton) if b.text() == text]
    assert len(buttons) == 1, f"no single button {text!r}"
    assert buttons[0].isEnabled(), f"button {text!r} is disabled"
    buttons[0].click()
    if wait and hasattr(widget, "busy"):
        _idle(widget)


def _wait(qtbot, w, timeout=120_000) -> None:
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def _idle(w, timeout: float = 120.0) -> None:
    """Process events until the widget's task and redraw are done (where no qtbot is at hand)."""
    import time

    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while w.busy:
        QApplication.processEvents()
        time.sleep(0.005)
        assert time.monotonic() - t0 < timeout, "the widget stayed busy"


def _start(make_napari_viewer, tmp_path, small_pool, *, name="sess", learner="deep"):
    """A viewer with the widget, a new session and the pool's first slide. The session's
    learner is the deep one and live refits are off unless ``learner="fast"``: the tests
    before the fast learner's drive the CNN's loop with its buttons; those of the fast
    loop come last in this file."""
    from napari_alregions._widgets import ALRegionsWidget

    folder, manifest = small_pool
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    w = ALRegionsWidget(viewer)
    viewer.window.add_dock_widget(w, name="AL Regions")
    w.folder.value = str(tmp_path / name)
    w.patch_size.value = 32
    w.level.value = 1
    _click(w, "New session")
    _idle(w)
    assert w.project is not None, w.message.value
    w.project.session.update_settings(training=TrainingBudget(**FAST))
    w.project.session.update_settings(learner=learner, in_use=learner)
    w.live.value = learner == "fast"
    w.slide_file.value = str(folder / manifest["slides"][0]["image"])
    _click(w, "Add slide")
    return viewer, w, w.current


def _reopen(make_napari_viewer, qtbot, folder):
    """The session in ``folder`` opened in a fresh viewer, as a user does."""
    from napari_alregions._widgets import ALRegionsWidget

    viewer = make_napari_viewer(show=True)
    w = ALRegionsWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.folder.value = str(folder)
    _click(w, "Open session")
    _wait(qtbot, w)
    return viewer, w


def _accept_random(w, n: int, *, k: int | None = None) -> list:
    """Suggest k (default n) random 256-px regions and accept n, clicking as a user does;
    the slide's accepted regions."""
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, k or n
    _click(w, "Suggest")
    for _ in range(n):
        w.proposal_list.setCurrentRow(0)
        _click(w, "Accept region")
    return w.project.session.accepted_on(w.current)


def _compute(qtbot, w):
    _click(w, "Compute priority map")
    _wait(qtbot, w)


def test_loop_in_viewer_suggest_accept_paint_retrain_reopen(make_napari_viewer, qtbot, tmp_path, small_pool, artifacts_dir):
    from napari_alregions._widgets._colorbar import TISSUE, ColorBar
    from napari_alregions.selection import METHODS
    from napari_alregions.session import Session

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    assert slide in viewer.layers and viewer.layers[slide].multiscale
    _compute(qtbot, w)
    prio = viewer.layers[f"{slide} priority"]
    stride = w.project.stride
    # the coarse overlay lines up with level 0 (µm units: mpp 0.5)
    np.testing.assert_allclose(prio.scale, [stride * 0.5] * 2)
    np.testing.assert_allclose(prio.translate, [(stride - 1) / 2 * 0.5] * 2)
    np.testing.assert_array_equal(prio.data, w.project.maps[slide].priority)
    # the colour bar's range, in words (its ticks are vispy's, one label at times): a map with structure, a flat one
    rec = w.project.maps[slide]
    saved = rec.priority.copy()
    rec.priority[...] = np.linspace(0, 1, saved.size, dtype=saved.dtype).reshape(saved.shape)
    w.maps.show(slide, "priority")
    lo, hi = prio.contrast_limits
    assert hi - lo > 0.3
    assert w.maps.legend.value == (f"least confidence map: clear up to {lo:.3g} (the tissue's median), "
                                  f"full colour from {hi:.3g} (its top 0.5 %)")
    # the colour bar sits in the dock (napari's canvas bar cost ~0.3 s of the viewer's thread per map)
    assert not prio.colorbar.visible and w.maps.colorbar.isVisible()
    assert w.maps.colorbar.ticks() == [(0.0, f"{lo:.3g}"), (0.5, f"{(lo + hi) / 2:.3g}"), (1.0, f"{hi:.3g}")]
    bar = w.maps.colorbar.grab().toImage()
    y = ColorBar.BAR_HEIGHT // 2 + 1
    left, right = bar.pixelColor(4, y), bar.pixelColor(bar.width() - 5, y)
    # clear at the low end (the tissue shows through), the ramp's yellow at the high end
    np.testing.assert_allclose([left.red(), left.green(), left.blue()], [TISSUE.red(), TISSUE.green(), TISSUE.blue()], atol=8)
    assert right.red() > 240 and right.green() > 140 and right.blue() < 200, right.getRgb()
    prio.visible = False  # hiding the map hides its bar and legend
    assert not w.maps.colorbar.isVisible() and not w.maps.legend.value and not w.maps.legend.native.isVisible()
    prio.visible = True
    assert w.maps.colorbar.isVisible() and w.maps.legend.value and w.maps.legend.native.isVisible()
    rec.priority[...] = 0.98
    w.maps.show(slide, "priority")
    assert w.maps.legend.value == ("least confidence map: clear up to 0.98 (the tissue's median), "
                                  "faint above: the map is nearly flat over the tissue, no area stands out")
    rec.priority[...] = saved
    w.maps.show(slide, "priority")

    w.region_size.value, w.unit.value, w.k.value = 4 * stride, "px", 3
    for method in METHODS:
        w.method.value = method
        _click(w, "Suggest")
        if method == "prototype":  # needs prototypes (tested below)
            assert "similarity map" in w.message.value
            continue
        layer = viewer.layers[f"{slide} proposals"]  # one layer for every method
        mine = (layer.features["method"] == method).to_numpy()
        assert mine.sum() >= 1, (method, w.message.value)
        assert set(layer.features.columns) >= {"method", "score", "mean", "rank", "cycle", "uid"}
        assert sorted(layer.features["rank"][mine]) == list(range(1, mine.sum() + 1))
        corners = layer.data[int(np.flatnonzero(mine)[0])]
        assert corners.shape == (4, 2)
    # each box has its method's colour; the earlier methods' boxes stay
    layer = viewer.layers[f"{slide} proposals"]
    assert set(layer.features["method"]) == set(METHODS) - {"prototype"}
    from napari_alregions.layers import METHOD_COLORS

    for method, colour in zip(layer.features["method"], layer.edge_color):
        np.testing.assert_allclose(colour, METHOD_COLORS[method])

    # side by side: one row per method in the table (tag and name), the IoU with the others in the tooltip
    w.compare_methods.value = ["random", "standard"]
    _click(w, "Compare methods")
    table = w.table.to_dict("dict")  # one column per measure
    assert list(table["n"]) == ["R random", "S standard"]
    for row, m in (("R random", "random"), ("S standard", "standard")):  # the sum of the scores; the list has the mean
        assert float(table["sum p."][row]) == pytest.approx(sum(r.score for r in w.project.proposals(slide, m)), abs=0.01)
    assert "IoU with random 1.00" in w.table.native.item(0, 5).toolTip()
    assert "standard" in w.lists.legend.value and "random" in w.lists.legend.value
    assert {"random", "standard"} <= set(viewer.layers[f"{slide} proposals"].features["method"])
    assert f"compared 2 methods on {slide}" in w.message.value

    w.method.value = "adaptive"
    w.proposal_list.setCurrentRow(0)
    region = w.lists.proposal_rows[0]
    # the list jumps the camera to the region
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], [(region.y + region.h / 2) * 0.5, (region.x + region.w / 2) * 0.5])
    _click(w, "Accept region")
    labels = [lay for lay in viewer.layers if lay.name.startswith(f"{slide} labels adaptive")]
    assert len(labels) == 1
    lab = labels[0]
    assert (lab.data == 1).all()  # accepted: background until painted
    # paint a tumour stroke in the middle of the region, like a brush click
    lab.brush_size = 6
    cy, cx = lab.data.shape[0] // 2, lab.data.shape[1] // 2
    lab.paint((cy, cx), 2)
    assert (lab.data == 2).any()
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    on_disk = Session.open(w.project.folder).labels(slide)
    y0, x0, y1, x1 = w.project.label_box(region)
    np.testing.assert_array_equal(on_disk[y0:y1, x0:x1], lab.data)  # autosaved per stroke
    assert "annotated" in w.status.value

    before = prio.data.copy()
    _click(w, "Retrain", wait=False)
    assert w.runner.busy
    _wait(qtbot, w)
    assert w.project.cycle == 1, w.message.value
    assert not np.array_equal(viewer.layers[f"{slide} priority"].data, before)
    assert (w.project.folder / w.project.session.checkpoints[0]).is_file()
    feats = viewer.layers[f"{slide} proposals"].features
    assert set(feats["cycle"][feats["method"] == "adaptive"]) == {1}
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.std() > 5  # something is drawn
    from skimage.io import imsave

    imsave(artifacts_dir / "widget_loop.png", shot, check_contrast=False)

    # reopen the session in a fresh viewer: layers, regions, labels and model come back
    viewer2, w2 = _reopen(make_napari_viewer, qtbot, w.project.folder)
    assert w2.project.cycle == 1 and w2.project.trained
    names = [lay.name for lay in viewer2.layers]
    assert slide in names and f"{slide} priority" in names and f"{slide} accepted" in names
    # one labels layer for the slide's regions; selecting a region puts the painting layer over it
    np.testing.assert_array_equal(np.asarray(viewer2.layers[f"{slide} labels"].data[0])[y0:y1, x0:x1], lab.data)
    assert not [lay for lay in viewer2.layers if lay.name.startswith(f"{slide} labels adaptive")]
    w2.tabs.setCurrentIndex(3)
    w2.accepted_list.setCurrentRow(0)
    relab = viewer2.layers.selection.active
    assert relab.name.startswith(f"{slide} labels adaptive") and relab.mode == "paint"
    np.testing.assert_array_equal(relab.data, lab.data)


def test_cancel_and_close_during_retrain_change_nothing(make_napari_viewer, qtbot, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    w.region_size.value, w.unit.value, w.k.value = 4 * w.project.stride, "px", 1
    w.method.value = "random"
    _click(w, "Suggest")
    w.proposal_list.setCurrentRow(0)
    _click(w, "Accept region")
    w.project.session.update_settings(training=TrainingBudget(initial_steps=100_000, epochs=1000, patience=1000))
    _click(w, "Retrain", wait=False)
    qtbot.wait(300)
    assert w.runner.busy
    _click(w, "Cancel", wait=False)
    _wait(qtbot, w)
    assert "cancelled" in w.message.value and w.project.cycle == 0 and not w.project.trained
    # closing the viewer while a worker runs: the worker stops, the session stays as saved
    _click(w, "Retrain", wait=False)
    assert w.message.value == "retrain…"  # not the last task's "cancelled"
    qtbot.wait(300)
    folder = w.project.folder
    viewer.close()
    from napari_alregions.project import AnnotationProject

    back = AnnotationProject.open(folder)
    assert back.cycle == 0 and len(back.session.accepted) == 1
    back.close()


def test_bad_input_gives_messages_and_loses_nothing(make_napari_viewer, qtbot, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    _click(w, "Retrain")
    _wait(qtbot, w)
    assert "no labels to train on" in w.message.value
    w.method.value = "standard"
    w.region_size.value, w.unit.value = 256, "px"
    _click(w, "Suggest")
    assert "needs a priority map" in w.message.value
    # a malformed GeoJSON: an error message, nothing imported
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], ["x", 1]]]}}]}))
    w.qupath_file.value = str(bad)
    _click(w, "Import from QuPath")
    assert "bad.geojson" in w.message.value and not w.project.session.accepted
    # a checkpoint for other classes
    from napari_alregions.model import ModelSpec, save_checkpoint

    spec = ModelSpec(classes=("a", "b", "c"), patch_size=32, level=1)
    w.checkpoint.value = str(save_checkpoint(tmp_path / "other.pt", spec.build(), spec))
    _click(w, "Load checkpoint")
    assert "predicts" in w.message.value and not w.project.trained
    # painting outside the accepted region does not reach the labels
    w.method.value = "random"
    _click(w, "Suggest")
    w.proposal_list.setCurrentRow(0)
    _click(w, "Accept region")
    lab = next(lay for lay in viewer.layers if " labels " in lay.name)
    before = w.project.session.labels(slide).copy()
    lab.paint((-50, -50), 2)  # a click far outside the region's extent
    np.testing.assert_array_equal(w.project.session.labels(slide), before)
    # napari's "new label" (max + 1) is no class of the session: the brush stays on the last class
    lab.selected_label = 3
    assert lab.selected_label == 2 and "labels are 1..2" in w.message.value
    # pixels given a value that is no class (by a script) become unlabeled, the rest is saved
    lab.data[0:3, 0:3] = 7
    lab.paint((20, 20), 2)
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    assert (lab.data[0:3, 0:3] == 0).all() and "no class" in w.message.value
    assert lab.data[20, 20] == 2
    [region] = w.project.session.accepted
    np.testing.assert_array_equal(w.project.region_labels(region), lab.data)


def test_remove_accepted_region_asks_when_painted(make_napari_viewer, qtbot, tmp_path, small_pool, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_alregions.session import Session

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    first, second = _accept_random(w, 2)
    from napari.layers import Labels

    # however many regions: one labels layer for the slide, one to paint in
    assert [lay.name for lay in viewer.layers if isinstance(lay, Labels)] == [f"{slide} labels", w._labels_name(second)]
    w.tabs.setCurrentIndex(3)
    w.accepted_list.setCurrentRow(0)  # the painting layer moves to the first region
    painted = viewer.layers[w._labels_name(first)]
    assert w._labels_name(second) not in viewer.layers
    painted.paint((20, 20), 2)  # a stroke still waiting for the autosave
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a: asked.append(a[2]) or QMessageBox.StandardButton.No)
    w.tabs.setCurrentIndex(3)
    w.accepted_list.setCurrentRow(0)
    _click(w, "Remove region")
    assert len(asked) == 1 and "labels painted in it are deleted" in asked[0]
    assert len(w.project.session.accepted) == 2 and painted in viewer.layers  # "No": nothing changed

    monkeypatch.setattr(QMessageBox, "question", lambda *a: asked.append(a[2]) or QMessageBox.StandardButton.Yes)
    _click(w, "Remove region")
    assert len(asked) == 2 and w.project.session.accepted == [second]
    assert painted not in viewer.layers and viewer.layers[f"{slide} accepted"].nshapes == 1
    assert w.accepted_list.count() == 1 and "removed the random region" in w.message.value
    y0, x0, y1, x1 = w.project.label_box(first)
    on_disk = Session.open(w.project.folder)
    assert [r.uid for r in on_disk.accepted] == [second.uid] and not on_disk.labels(slide)[y0:y1, x0:x1].any()
    # a region holding only the background it was accepted with goes without asking
    w.accepted_list.setCurrentRow(0)
    _click(w, "Remove region")
    assert len(asked) == 2 and not w.project.session.accepted and not w.project.session.labels(slide).any()
    assert not [lay for lay in viewer.layers if " labels " in lay.name] and w.project.annotated_pct() == 0.0
    _click(w, "Remove region")
    assert "select an accepted region" in w.message.value


def test_undo_redo_close_and_unsignalled_edits_reach_the_session(make_napari_viewer, qtbot, tmp_path, small_pool):
    from napari.layers.labels._labels_key_bindings import redo, undo  # what Ctrl+Z / Ctrl+Shift+Z run

    from napari_alregions.session import Session

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    [region] = _accept_random(w, 1)
    lab = viewer.layers[w._labels_name(region)]
    y0, x0, y1, x1 = w.project.label_box(region)

    def saved():
        return Session.open(w.project.folder).labels(slide)[y0:y1, x0:x1]

    lab.brush_size = 6
    lab.paint((20, 20), 2)
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    stroke = lab.data.copy()
    assert (saved() == 2).any()
    undo(lab)
    assert not (lab.data == 2).any()
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    np.testing.assert_array_equal(saved(), lab.data)  # the undone stroke is not kept on disk
    redo(lab)
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    np.testing.assert_array_equal(saved(), stroke)
    # pixels changed without any event (a script, a plugin) are saved before they are read
    lab.data[:4, :4] = 2
    w.export_folder.value = str(tmp_path)
    _click(w, "Export to QuPath")
    np.testing.assert_array_equal(saved(), lab.data)
    np.testing.assert_array_equal(w.project.region_labels(region), lab.data)
    # a labels layer the user closed comes back, ready to paint, from the list of accepted regions
    overview = viewer.layers[f"{slide} labels"]
    assert not np.asarray(overview.data[0])[y0:y1, x0:x1].any()  # the painting layer draws the region
    viewer.layers.remove(lab)
    np.testing.assert_array_equal(np.asarray(overview.data[0])[y0:y1, x0:x1], lab.data)  # now the slide's layer does
    w.tabs.setCurrentIndex(3)
    w.accepted_list.setCurrentRow(0)
    back = viewer.layers[w._labels_name(region)]
    assert back is not lab and viewer.layers.selection.active is back and back.mode == "paint"
    np.testing.assert_array_equal(back.data, lab.data)
    # a renamed labels layer is still the region's: selecting the region opens no second one
    back.name = "my tumour outline"
    w.accepted_list.setCurrentRow(-1)
    w.accepted_list.setCurrentRow(0)
    assert viewer.layers.selection.active is back and [lay for lay in viewer.layers if "region" in lay.metadata] == [back]
    # closing the viewer right after a stroke (before the autosave timer) keeps the stroke
    back.paint((60, 60), 2)
    assert w.labels.unsaved
    viewer.close()
    np.testing.assert_array_equal(saved(), back.data)


def test_closing_the_viewer_keeps_a_fresh_stroke_with_the_dock_floating(make_napari_viewer, qtbot, tmp_path, small_pool):
    from qtpy.QtWidgets import QDockWidget

    from napari_alregions.session import Session

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    [dock] = [d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.widget() is w]
    dock.setFloating(True)  # a window of its own, from the first stroke on
    [region] = _accept_random(w, 1)
    lab = viewer.layers[w._labels_name(region)]
    lab.paint((30, 30), 2)
    assert w.labels.unsaved  # the autosave timer has not fired yet
    folder = w.project.folder
    viewer.close()
    y0, x0, y1, x1 = w.project.label_box(region)
    np.testing.assert_array_equal(Session.open(folder).labels(slide)[y0:y1, x0:x1], lab.data)


def test_switching_sessions_saves_and_clears_the_old_ones_layers(make_napari_viewer, qtbot, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool, name="first")
    [region] = _accept_random(w, 1, k=2)
    lab = viewer.layers[w._labels_name(region)]
    lab.paint((20, 20), 2)  # still waiting for the autosave
    painted = lab.data.copy()
    first = w.project.folder
    w.folder.value = str(tmp_path / "second")
    _click(w, "New session")
    _wait(qtbot, w)
    assert w.project.folder == tmp_path / "second" and not w.project.slides
    # the first session's layers are gone (painting in them would reach no session), its image is the user's
    assert [lay.name for lay in viewer.layers] == [slide] and w.slides.layers == {}
    assert w.labels.painting is None and w.accepted_list.count() == 0
    # ... and reopening it brings them back with the last stroke
    w.folder.value = str(first)
    _click(w, "Open session")
    _wait(qtbot, w)
    y0, x0, y1, x1 = w.project.label_box(region)
    np.testing.assert_array_equal(np.asarray(viewer.layers[f"{slide} labels"].data[0])[y0:y1, x0:x1], painted)
    assert {f"{slide} accepted", f"{slide} proposals"} <= {lay.name for lay in viewer.layers}
    assert [lay.name for lay in viewer.layers].count(slide) == 1  # the layer of its file, taken again


def test_overlapping_regions_keep_each_others_strokes(make_napari_viewer, qtbot, tmp_path, small_pool):
    from napari_alregions.geometry import Region

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    # methods side by side propose overlapping windows: accept one of each
    w.tab("annotate").accept([Region(0, 0, 256, 256, slide=slide, method="standard")], "background")
    _wait(qtbot, w)
    w.tab("annotate").accept([Region(128, 128, 256, 256, slide=slide, method="adaptive")], "background")
    _wait(qtbot, w)
    first, second = w.project.session.accepted
    w.tabs.setCurrentIndex(3)
    w.accepted_list.setCurrentRow(0)
    la = viewer.layers[w._labels_name(first)]
    la.brush_size = 4
    la.paint((100, 100), 2)  # in the overlap (label px 64..128 of the first, 0..64 of the second)
    la.paint((20, 20), 2)  # outside it
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    overview = viewer.layers[f"{slide} labels"]
    # the slide's layer leaves the region being painted to the painting layer (drawn once)
    assert not np.asarray(overview.data[0])[0:128, 0:128].any()
    w.accepted_list.setCurrentRow(1)
    lb = viewer.layers[w._labels_name(second)]
    assert lb is la  # one painting layer, moved to the second region
    assert (lb.data[35:37, 35:37] == 2).all()  # the second region shows the first one's stroke
    assert (np.asarray(overview.data[0])[19:21, 19:21] == 2).all()  # the first region is drawn by the slide's layer now
    assert not np.asarray(overview.data[0])[99:101, 99:101].any()  # (its overlap with the second by the painting layer)
    lb.brush_size = 4
    lb.paint((100, 100), 2)  # elsewhere in the second region
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    labels = w.project.session.labels(slide)
    np.testing.assert_array_equal(labels[64:192, 64:192], lb.data)
    assert (labels[99:101, 99:101] == 2).all() and (labels[163:165, 163:165] == 2).all()  # both strokes
    w.flush_labels(everything=True)  # what a retrain does first: nothing stale is written back
    assert (w.project.session.labels(slide)[99:101, 99:101] == 2).all()
    # undo after moving to another region undoes nothing of the last one's
    from napari.layers.labels._labels_key_bindings import undo

    undo(lb)
    assert (w.project.session.labels(slide)[99:101, 99:101] == 2).all()


def test_slide_without_mpp_needs_px(make_napari_viewer, qtbot, tmp_path, small_pool):
    from tests.helpers import downsample2, smooth_rgb, write_pyramid

    viewer, w, _ = _start(make_napari_viewer, tmp_path, small_pool)
    img = smooth_rgb(512, 512)
    path = tmp_path / "nompp.tif"
    write_pyramid(path, [img, downsample2(img)])
    w.slide_file.value = str(path)
    _click(w, "Add slide")
    assert w.current == "nompp.tif"
    w.method.value, w.unit.value = "random", "µm"
    _click(w, "Suggest")
    assert "no pixel size" in w.message.value
    w.unit.value = "px"
    _click(w, "Suggest")
    assert viewer.layers["nompp.tif proposals"].nshapes >= 1


def test_qupath_round_trip_through_the_widget(make_napari_viewer, qtbot, tmp_path, small_pool, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    asked = []
    answer = {"now": QMessageBox.StandardButton.No}
    monkeypatch.setattr(QMessageBox, "question", lambda *a: asked.append(a[2]) or answer["now"])
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    _accept_random(w, 2)
    lab = [lay for lay in viewer.layers if " labels " in lay.name]
    lab[0].paint((20, 20), 2)
    w.flush_labels()
    # every slide, one GeoJSON each, in the worker; a missing folder is said of the path the user gave
    slide2_file = _add_slide(w, *small_pool, 1)
    w.export_folder.value = str(tmp_path / "nope")
    _click(w, "Export to QuPath")
    assert str(tmp_path / "nope") in w.message.value and ".part" not in w.message.value, w.message.value
    (tmp_path / "qupath").mkdir()
    w.export_folder.value = str(tmp_path / "qupath")
    _click(w, "Export to QuPath", wait=False)
    assert w.runner.busy  # not on the viewer's thread
    _wait(qtbot, w)
    files = sorted((tmp_path / "qupath").glob("*.geojson"))
    assert len(files) == 2 and "exported 2 slide(s)" in w.message.value, w.message.value
    out = next(f for f in files if slide2_file.rsplit(".", 1)[0] not in f.name)
    classes = {f["properties"].get("classification", {}).get("name") for f in json.loads(out.read_text())["features"]}
    assert "Tumor" in classes and "tumour" not in classes, classes  # QuPath's class name
    viewer2, w2, slide2 = _start(make_napari_viewer, tmp_path, small_pool, name="sess2")
    w2.qupath_file.value = str(out)
    # the dry run's summary comes first (read in the worker: a large file never freezes the viewer); "No" writes nothing
    _click(w2, "Import from QuPath", wait=False)
    assert w2.runner.busy
    _wait(qtbot, w2)
    assert "Adds 2 region(s)" in asked[-1] and "Classes: by name" in asked[-1]
    assert not w2.project.session.accepted and "nothing was written" in w2.message.value
    answer["now"] = QMessageBox.StandardButton.Yes
    w2.class_map.value = "Tumor=tumour, Other="
    _click(w2, "Import from QuPath")
    assert "Other → skipped" in asked[-1]
    np.testing.assert_array_equal(w2.project.session.labels(slide2), w.project.session.labels(slide))
    np.testing.assert_array_equal(np.asarray(viewer2.layers[f"{slide2} labels"].data[0]), w.project.session.labels(slide))
    # a stroke still waiting for the autosave survives an import that redraws the layers
    w2.tabs.setCurrentIndex(3)
    w2.accepted_list.setCurrentRow(0)
    lab2 = viewer2.layers.selection.active
    lab2.paint((40, 40), 2)
    stroke = lab2.data.copy()
    region_file = tmp_path / "region.geojson"
    region_file.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[768, 768], [1024, 768], [1024, 1024], [768, 1024], [768, 768]]]},
        "properties": {"objectType": "annotation"}}]}))
    w2.qupath_file.value = str(region_file)
    _click(w2, "Import from QuPath")
    assert "imported 1 region" in w2.message.value
    np.testing.assert_array_equal(lab2.data, stroke)
    np.testing.assert_array_equal(w2.project.region_labels(lab2.metadata["region"]), stroke)


def test_correct_uncertain_patches_prefills_prediction(make_napari_viewer, qtbot, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    _compute(qtbot, w)
    w.n_uncertain.value = 4
    _click(w, "Find uncertain patches")
    assert f"{slide} prediction" in viewer.layers and w.uncertain_list.count() >= 1
    patches = viewer.layers[f"{slide} proposals"]
    # one-cell patches sit side by side: their tags are the method's letter and the rank, placed apart
    tags = viewer.layers[f"{slide} tags"]
    assert sorted(tags.features["tag"]) == sorted(f"T{r}" for r in patches.features["rank"])
    assert sorted(patches.features["rank"]) == list(range(1, w.uncertain_list.count() + 1))
    w.uncertain_list.setCurrentRow(0)
    _click(w, "Correct selected patch")
    lab = next(lay for lay in viewer.layers if lay.name.startswith(f"{slide} labels top_patches"))
    region = lab.metadata["region"]
    prob = w.project.prediction(slide)
    r, c = region.y // w.project.stride, region.x // w.project.stride
    assert (lab.data == int(np.argmax(prob[r, c])) + 1).all()  # one map cell: the model's class


def test_prototype_similarity_and_pool_diversity_in_viewer(make_napari_viewer, qtbot, tmp_path, small_pool):
    from napari_alregions.embed import embed_patches
    from napari_alregions.model import read_patches
    from napari_alregions.prototypes import PrototypeSet, save_prototypes

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    p = w.project
    _click(w, "Compute embeddings")
    _wait(qtbot, w)
    emb = p.embeddings[slide]
    r, c = np.argwhere(np.isfinite(emb).all(-1))[3]
    s = p.stride
    patch = read_patches(p.slides[slide], np.array([[(r * s + s // 2) // 2, (c * s + s // 2) // 2]]), level=1, patch_size=32)
    path = save_prototypes(tmp_path / "protos.npz", PrototypeSet({"tumour": embed_patches(patch, p.encoder())}))
    w.prototypes_file.value = str(path)
    _click(w, "Similarity map")
    _wait(qtbot, w)
    sim = viewer.layers[f"{slide} similarity"].data
    assert sim[r, c] == pytest.approx(1.0, abs=1e-4)
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "prototype", "px", s, 1
    w.options["base"].value = "standard"
    _click(w, "Suggest")
    [region] = w.project.proposals(slide, "prototype")
    assert (region.y // s, region.x // s) == (r, c)
    _click(w, "Compute priority map")
    _wait(qtbot, w)
    w.region_size.value, w.k.value = 4 * s, 2
    _click(w, "Diversity over all slides")
    assert list(viewer.layers[f"{slide} proposals"].features["method"]).count("diversity") == 2, w.message.value
    w.n_uncertain.value = 3
    _click(w, "Per slide group")
    assert w.uncertain_list.count() == 3


def test_a_failed_new_model_says_why_and_keeps_the_model(make_napari_viewer, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    before = w.project.spec
    w.level.value = 9  # the slides have 3 levels
    _click(w, "New model")
    assert "level 9 does not exist" in w.message.value, w.message.value
    assert w.project.spec == before
    w.level.value = 1
    _click(w, "New model")
    assert w.message.value.startswith("new untrained compact model")


def test_correct_selected_patch_of_a_group_list_accepts_that_patch(make_napari_viewer, qtbot, tmp_path, small_pool):
    """A row of 'Per slide group' may be on another slide: correcting it accepts that patch (it took the
    current slide's top patch of the same index)."""
    folder, manifest = small_pool
    viewer, w, first = _start(make_napari_viewer, tmp_path, small_pool)
    second = w.project.add_slide(folder / manifest["slides"][1]["image"], group="centre B")
    for name in (first, second):
        w.slide.choices = list(w.project.slides)
        w.slide.value = name
        _compute(qtbot, w)
    w.slide.value = first
    w.n_uncertain.value = 2
    _click(w, "Find uncertain patches")  # the current slide's top patches, as the layer holds them
    _click(w, "Per slide group")
    import re

    row = next(i for i in range(w.uncertain_list.count()) if second in w.uncertain_list.item(i).text())
    x, y = map(int, re.search(r"at \((\d+), (\d+)\)$", w.uncertain_list.item(row).text()).groups())
    w.uncertain_list.setCurrentRow(row)
    _click(w, "Correct selected patch")
    got = w.project.session.accepted[-1]
    assert (got.slide, got.x, got.y) == (second, x, y)  # the patch the row names


def _mouse(layer, kind: str, position, dragging: bool = False) -> None:
    """A mouse event at a world position, through napari's own mouse callbacks."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    run = {"press": mouse_press_callbacks, "move": mouse_move_callbacks, "release": mouse_release_callbacks}[kind]
    run(layer, read_only_mouse_event(type=f"mouse_{kind}", is_dragging=dragging, position=tuple(position)))


def _drag(layer, start, end) -> None:
    _mouse(layer, "press", start, True)
    _mouse(layer, "move", start, True)
    _mouse(layer, "move", (np.add(start, end)) / 2, True)
    _mouse(layer, "move", end, True)
    _mouse(layer, "release", end, True)


def _world(w, slide: str, y: float, x: float) -> np.ndarray:
    """World coordinates of a level-0 pixel of ``slide``, computed from its image layer."""
    image = w.viewer.layers[slide]
    return np.asarray(image.translate) + np.array([y, x]) * np.asarray(image.scale)


def _add_slide(w, folder, manifest, i: int) -> str:
    w.slide_file.value = str(folder / manifest["slides"][i]["image"])
    _click(w, "Add slide")
    return w.current


def test_slides_sit_side_by_side_with_their_overlays_and_the_camera_follows(make_napari_viewer, qtbot, tmp_path, small_pool):
    folder, manifest = small_pool
    viewer, w, first = _start(make_napari_viewer, tmp_path, small_pool)
    second, third = _add_slide(w, folder, manifest, 1), _add_slide(w, folder, manifest, 2)
    # 1024-px slides at 0.5 µm/px, 10 % of a slide's width between neighbours
    for i, name in enumerate((first, second, third)):
        np.testing.assert_allclose(viewer.layers[name].translate, [0, i * 512 * 1.1])
    extents = [viewer.layers[n].extent.world for n in (first, second, third)]
    assert extents[0][1, 1] < extents[1][0, 1] and extents[1][1, 1] < extents[2][0, 1]  # no slide covers another
    # the second slide's overlays move with it: priority map, proposals, accepted box, labels
    w.slide.value = second
    _compute(qtbot, w)
    s, stride, off = 0.5, w.project.stride, 512 * 1.1
    np.testing.assert_allclose(viewer.layers[f"{second} priority"].translate, [(stride - 1) / 2 * s, off + (stride - 1) / 2 * s])
    [region] = _accept_random(w, 1)
    for lname in (f"{second} proposals", f"{second} accepted"):
        np.testing.assert_allclose(viewer.layers[lname].translate, [0, off])
    lab = viewer.layers[w._labels_name(region)]
    f = w.project.label_factor(second)
    np.testing.assert_allclose(lab.translate, [region.y * s + (f - 1) / 2 * s, off + region.x * s + (f - 1) / 2 * s])
    # the region's box lies on the second slide's pixels where the region is
    box = viewer.layers[f"{second} accepted"]
    np.testing.assert_allclose(box.data_to_world(box.data[0][0]), _world(w, second, region.y, region.x))
    # choosing a slide takes the camera to it, centred
    for name in (third, first, second):
        w.slide.value = name
        np.testing.assert_allclose(viewer.scene.camera.center[-2:], _world(w, name, 512, 512), atol=1e-6)
        n_accepted = 1 if name == second else 0  # the message is the slide's, not the last one's
        assert w.message.value == f"showing {name}: 0 proposed, {n_accepted} accepted regions", w.message.value
        # the colour bar and its legend are the current slide's: none on a slide without a map
        assert w.maps.colorbar.isVisible() == (name == second) and bool(w.maps.legend.value) == (name == second)
    # after reopening, the slide the user stopped on is the current one, on screen
    viewer2, w2 = _reopen(make_napari_viewer, qtbot, w.project.folder)
    assert w2.current == second
    np.testing.assert_allclose(viewer2.scene.camera.center[-2:], _world(w2, second, 512, 512), atol=1e-6)
    # a slide gets Shapes layers once it has regions, not empty ones at each open and retrain
    names = {lay.name for lay in viewer2.layers}
    assert f"{second} accepted" in names
    assert not ({f"{n} proposals" for n in (first, second, third)} | {f"{n} accepted" for n in (first, third)}) & names, names
    assert f"{second} proposals" in {lay.name for lay in viewer.layers}  # emptied by the accept: kept
    # the slide's labels layer sits on the second slide: label px (r, c) centred on level-0 (r f + (f - 1) / 2)
    np.testing.assert_allclose(viewer2.layers[f"{second} labels"].translate, [(f - 1) / 2 * s, off + (f - 1) / 2 * s])
    np.testing.assert_allclose(viewer2.layers[f"{second} labels"].scale, [f * s, f * s])


def test_proposals_edited_on_the_canvas_reach_the_session(make_napari_viewer, qtbot, tmp_path, small_pool):
    """Issue 19, item 2: a deleted box was still accepted, a dragged one accepted at its old
    place, and clicking a box did not select its row."""
    from napari.layers.shapes._shapes_key_bindings import delete_selected_shapes

    from napari_alregions.session import Session

    folder, manifest = small_pool
    viewer, w, _ = _start(make_napari_viewer, tmp_path, small_pool)
    slide = _add_slide(w, folder, manifest, 1)  # on the second slide: canvas coordinates are offset
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, 3
    _click(w, "Suggest")
    layer = viewer.layers[f"{slide} proposals"]
    rows = w.lists.proposal_rows
    assert layer.nshapes == w.proposal_list.count() == 3
    uids = list(layer.features["uid"])

    # clicking a box selects its row; choosing a row selects its box
    layer.mode = "select"
    r = rows[2]
    centre = _world(w, slide, r.y + r.h / 2, r.x + r.w / 2)
    _mouse(layer, "press", centre)
    _mouse(layer, "release", centre)
    assert layer.selected_data == {uids.index(r.uid)} and w.proposal_list.currentRow() == 2
    w.proposal_list.setCurrentRow(1)
    assert layer.selected_data == {uids.index(rows[1].uid)}

    # dragging a box moves the proposal; it snaps to the map grid and is redrawn there
    moved = rows[0]
    dx = 100 if moved.x1 + 100 <= 1024 else -100
    start = _world(w, slide, moved.y + moved.h / 2, moved.x + moved.w / 2)
    _drag(layer, start, start + np.array([0, dx * 0.5]))
    stride = w.project.stride
    snapped_x = round((moved.x + dx) / stride) * stride
    qtbot.waitUntil(lambda: w.project.session.store.get(moved.uid).x == snapped_x, timeout=5000)
    after = w.project.session.store.get(moved.uid)
    assert (after.y, after.w, after.h) == (moved.y, moved.w, moved.h)
    qtbot.waitUntil(lambda: any(np.allclose(d.min(0), [moved.y, snapped_x]) for d in layer.data), timeout=5000)

    # deleting a box (Delete key) dismisses its proposal: gone from the list, never accepted
    deleted = rows[2]
    layer.selected_data = {list(layer.features["uid"]).index(deleted.uid)}
    delete_selected_shapes(layer)
    qtbot.waitUntil(lambda: w.project.session.store.status(deleted.uid) == "dismissed", timeout=5000)
    assert deleted.uid not in [r.uid for r in w.lists.proposal_rows] and w.proposal_list.count() == 2
    while w.proposal_list.count():
        w.proposal_list.setCurrentRow(0)
        _click(w, "Accept region")
    accepted = {r.uid: r for r in w.project.session.accepted}
    assert deleted.uid not in accepted
    assert (accepted[moved.uid].x, accepted[moved.uid].y) == (snapped_x, moved.y)  # accepted where it was dragged
    assert Session.open(w.project.folder).store.status(deleted.uid) == "dismissed"


def test_reject_button_and_a_drawn_region(make_napari_viewer, qtbot, tmp_path, small_pool):
    folder, manifest = small_pool
    viewer, w, _ = _start(make_napari_viewer, tmp_path, small_pool)
    slide = _add_slide(w, folder, manifest, 1)
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, 2
    _click(w, "Suggest")
    first = w.lists.proposal_rows[0]
    w.proposal_list.setCurrentRow(0)
    _click(w, "Reject")
    assert w.project.session.store.status(first.uid) == "dismissed" and w.proposal_list.count() == 1
    assert first.uid not in list(viewer.layers[f"{slide} proposals"].features["uid"])
    _click(w, "Accept drawn")
    assert "draw a rectangle first" in w.message.value
    # draw a rectangle on the canvas and accept it
    _click(w, "Draw region")
    draw = viewer.layers[f"{slide} draw"]
    assert viewer.layers.selection.active is draw and draw.mode == "add_rectangle"
    _drag(draw, _world(w, slide, 100, 200), _world(w, slide, 400, 650))
    assert draw.nshapes == 1
    _click(w, "Accept drawn")
    region = w.project.session.accepted[-1]
    # the shortcuts: Alt+X rejects the selected proposal, Alt+1..n pick the class to paint
    from qtpy.QtCore import Qt

    canvas = viewer.window._qt_viewer.canvas.native
    second = w.lists.proposal_rows[0]
    w.proposal_list.setCurrentRow(0)
    qtbot.keyClick(canvas, Qt.Key.Key_X, Qt.KeyboardModifier.AltModifier)
    assert w.project.session.store.status(second.uid) == "dismissed"
    viewer.layers.selection.active = viewer.layers[w._labels_name(region)]
    qtbot.keyClick(canvas, Qt.Key.Key_1, Qt.KeyboardModifier.AltModifier)
    assert viewer.layers[w._labels_name(region)].selected_label == 1
    assert "X reject" in w.shortcuts.value and "1 background" in w.shortcuts.value
    # auto-retrain starts once the accepting task has finished (it cannot run beside it)
    w.auto_retrain.value, w.auto_after.value = True, 1
    _click(w, "Draw region")
    _drag(draw, _world(w, slide, 600, 600), _world(w, slide, 800, 800))
    _click(w, "Accept drawn")
    _wait(qtbot, w)
    assert w.project.cycle == 1, w.message.value
    assert (region.slide, region.x, region.y, region.w, region.h, region.method) == (slide, 200, 100, 450, 300, "manual")
    latest = w.project.session.accepted[-1]
    assert draw.nshapes == 0 and latest.method == "manual" and w._labels_name(latest) in viewer.layers
    assert w._labels_name(region) not in viewer.layers  # one painting layer: on the latest region
    # two rectangles accepted at once: both regions, one message, the last one open to paint
    w.auto_retrain.value = False
    _click(w, "Draw region")
    _drag(draw, _world(w, slide, 850, 50), _world(w, slide, 950, 250))
    _drag(draw, _world(w, slide, 850, 300), _world(w, slide, 950, 500))
    n = len(w.project.session.accepted)
    _click(w, "Accept drawn")
    last = w.project.session.accepted[-1]
    assert len(w.project.session.accepted) == n + 2 and (last.x, last.y) == (300, 850)
    assert w.message.value == f"accepted your 2 regions: paint in layer '{w._labels_name(last)}'", w.message.value
    assert viewer.layers.selection.active is viewer.layers[w._labels_name(last)]


def test_small_things_of_issue_20(make_napari_viewer, qtbot, tmp_path, small_pool, monkeypatch):
    import shutil

    from qtpy.QtWidgets import QDockWidget

    from napari_alregions._widgets import ALRegionsWidget

    folder, manifest = small_pool
    viewer = make_napari_viewer(show=True)
    w = ALRegionsWidget(viewer)
    viewer.window.add_dock_widget(w, name="AL Regions")
    # no session yet: the message says so (it said "add a slide first")
    _click(w, "Suggest")
    assert w.message.value == "create or open a session first"
    # an empty folder field is no folder: nothing is created where napari was started
    monkeypatch.chdir(tmp_path)
    w.folder.line_edit.value = ""
    _click(w, "New session")
    assert w.project is None and "choose a session folder" in w.message.value
    assert not (tmp_path / "session.json").exists()
    w.folder.value = str(tmp_path / "sess")
    w.patch_size.value = 32
    _click(w, "New session")
    _click(w, "Add slide")  # no slide chosen yet
    slide_path = folder / manifest["slides"][0]["image"]
    w.slide_file.value = str(slide_path)
    _click(w, "Add slide")
    first = w.current
    # another file of the same name is added under a new name; the same file is not added twice
    other = tmp_path / "other" / slide_path.name
    other.parent.mkdir()
    shutil.copy(folder / manifest["slides"][1]["image"], other)
    w.slide_file.value = str(other)
    _click(w, "Add slide")
    stem, suffix = slide_path.name.rsplit(".", 1)
    assert list(w.project.slides) == [first, f"{stem}_2.{suffix}"] and w.current == f"{stem}_2.{suffix}"
    assert "is in the session already" in w.message.value
    assert w.project.session.slides[w.current].path == str(other.resolve())
    w.slide_file.value = str(slide_path)
    _click(w, "Add slide")
    assert len(w.project.slides) == 2 and f"in the session already, as {first}" in w.message.value
    # adaptive boxes are reported at their own size, not the size asked for
    w.slide.value = first
    _compute(qtbot, w)
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "adaptive", "px", 8 * w.project.stride, 3
    _click(w, "Suggest")
    regions = w.project.proposals(first, "adaptive")
    sides = {(r.w, r.h) for r in regions}
    if sides == {(8 * w.project.stride,) * 2}:
        assert f"of {8 * w.project.stride} px" in w.message.value
    else:
        assert f"of {8 * w.project.stride} px" not in w.message.value
        assert all(str(r.w) in w.message.value or str(r.h) in w.message.value for r in regions), w.message.value
    # a Cancel that comes during a task's last step: the results are kept and the message says so
    results = []

    def finishing(cancel):
        yield {"phase": "last batch"}
        w.runner.cancel()  # the user presses Cancel now; the task has nothing left to stop
        return 42

    w.task(finishing, desc="retrain", on_done=results.append)
    _wait(qtbot, w)
    assert results == [42] and "had finished before Cancel took effect" in w.message.value
    # a long status line wraps: the dock keeps its width
    [dock] = [d for d in viewer.window._qt_window.findChildren(QDockWidget) if d.widget() is w]
    qtbot.wait(50)
    width = dock.width()
    w.status.value = "cycle 3 · annotated 12.34% of tissue · 40 accepted · autosaved 12:00:00 " * 3
    w.message.value = str(tmp_path / ("a_very_long_folder_name_without_spaces" * 3))
    qtbot.wait(50)
    assert dock.width() == width


def test_class_list_names_colours_and_painting_value(make_napari_viewer, qtbot, tmp_path, small_pool, monkeypatch):
    from qtpy.QtGui import QColor
    from qtpy.QtWidgets import QColorDialog

    from napari_alregions._widgets import ALRegionsWidget
    from napari_alregions.project import AnnotationProject

    folder, manifest = small_pool
    viewer = make_napari_viewer(show=True)
    w = ALRegionsWidget(viewer)
    viewer.window.add_dock_widget(w, name="AL Regions")
    w.class_name.value = "necrosis"
    _click(w, "Add class")
    w.class_list.setCurrentRow(1)
    w.class_name.value = "carcinoma"
    _click(w, "Rename class")
    assert [w.class_list.item(i).text() for i in range(3)] == ["1  background", "2  carcinoma", "3  necrosis"]
    w.folder.value = str(tmp_path / "sess")
    w.patch_size.value = 32
    _click(w, "New session")
    assert w.project.classes == ("background", "carcinoma", "necrosis")
    w.class_name.value = "stroma"
    _click(w, "Add class")
    assert "fixed once the session exists" in w.message.value and w.class_list.count() == 3
    w.slide_file.value = str(folder / manifest["slides"][0]["image"])
    _click(w, "Add slide")
    [region] = _accept_random(w, 1)
    lab = viewer.layers[w._labels_name(region)]
    # a new colour for class 2, chosen in the colour dialog: the layer paints with it, the session keeps it
    monkeypatch.setattr(QColorDialog, "getColor", lambda *a: QColor(0, 0, 255))
    w.class_list.setCurrentRow(0)
    assert lab.selected_label == 1  # choosing a class row picks its painting value
    w.class_list.setCurrentRow(1)
    assert lab.selected_label == 2
    _click(w, "Class colour")
    np.testing.assert_allclose(lab.colormap.map(np.array([2]))[0][:3], [0, 0, 1], atol=1e-6)
    assert w.project.colors[1] == (0, 0, 255)
    folder_ = w.project.folder
    w.project.close()
    w.project = None
    back = AnnotationProject.open(folder_)
    assert back.colors[1] == (0, 0, 255)
    back.close()


def test_opening_a_session_another_process_holds_asks_and_a_killed_one_s_lock_is_taken(
        make_napari_viewer, qtbot, tmp_path, small_pool, monkeypatch):
    import os
    import subprocess

    from qtpy.QtWidgets import QMessageBox

    from tests.procs import finish, spawn

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    folder = w.project.folder
    w.project.close()
    w.project = None
    lock = folder / "session.lock"
    # a killed process's lock: taken without asking, and said
    killed = spawn("die_saving_checkpoint", folder, "cycle_001_m0.pt", 1024)
    assert killed.wait(60) == -9
    monkeypatch.setattr(QMessageBox, "exec", lambda box: pytest.fail("asked about a killed process's lock"))
    w.folder.value = str(folder)
    _click(w, "Open session")
    assert f"took over the session lock: process {killed.pid} on this host" in w.message.value
    assert json.loads(lock.read_text())["pid"] == os.getpid() and not list(folder.rglob(".*.part*"))
    w.project.close()
    w.project = None
    pressed = []

    def press(text):
        def exec_(box):
            pressed.append([b.text() for b in box.buttons()])
            next(b for b in box.buttons() if b.text().replace("&", "") == text).click()
            return 0
        return exec_

    holder = spawn("hold_session", folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "ready\n"
        # cancel: nothing opens, the other process's lock stays
        monkeypatch.setattr(QMessageBox, "exec", press("Cancel"))
        _click(w, "Open session")
        assert w.project is None and "open in another process" in w.message.value
        assert "Take over" in [t.replace("&", "") for t in pressed[-1]]
        # read-only: opens, paints nothing to disk
        monkeypatch.setattr(QMessageBox, "exec", press("Open read-only"))
        _click(w, "Open session")
        assert w.project is not None and w.project.session.read_only and "read-only" in w.message.value
        assert json.loads(lock.read_text())["pid"] == holder.pid
        # take over: this process holds the lock now
        monkeypatch.setattr(QMessageBox, "exec", press("Take over"))
        _click(w, "Open session")
        assert not w.project.session.read_only and json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        finish(holder)


def test_the_painting_layer_stays_active_when_the_plugin_adds_or_redraws_layers(make_napari_viewer, qtbot, tmp_path, small_pool):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    image = viewer.layers[slide]
    assert viewer.layers.selection.active is image and viewer.layers[-1] is image
    _compute(qtbot, w)  # a slide only looked at stays active but leaves the top to its overlays
    assert viewer.layers.selection.active is image
    assert viewer.layers.index(viewer.layers[f"{slide} priority"]) > viewer.layers.index(image)
    [region] = _accept_random(w, 1, k=3)
    painting = viewer.layers[w._labels_name(region)]
    assert viewer.layers.selection.active is painting and painting.mode == "paint"
    painting.paint((20, 20), 2)
    w.flush_labels()

    def still_painting(step):
        assert viewer.layers.selection.active is painting, (step, viewer.layers.selection.active)
        assert painting.mode == "paint", step
        assert viewer.layers[-1] is painting, step  # over the priority map, not under it

    steps = [("Compute priority map", None), ("Suggest", None), ("Compare methods", None),
             ("Reject", lambda: w.proposal_list.setCurrentRow(0)), ("Retrain", None), ("Find uncertain patches", None)]
    w.compare_methods.value = ["random", "standard"]
    for text, before in steps:
        if before is not None:
            before()
        _click(w, text)
        _wait(qtbot, w)
        still_painting(text)
    # a user who chose another layer keeps it: the plugin restores only what it took away
    viewer.layers.selection.active = image
    _click(w, "Compute priority map")
    _wait(qtbot, w)
    assert viewer.layers.selection.active is image


# -- the fast learner's live loop (the viewer's default) ---------------------------------------
def test_live_loop_refits_after_accept_and_stroke_and_deep_retrain_beside_it(make_napari_viewer, qtbot, tmp_path,
                                                                              small_pool, artifacts_dir):
    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool, learner="fast")
    assert w.live.value and w.project.session.settings.learner == "fast"
    _compute(qtbot, w)  # the untrained CNN's map, before any label
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "adaptive", "px", 256, 2
    _click(w, "Suggest")
    w.proposal_list.setCurrentRow(0)
    _click(w, "Accept region")  # the accept alone refits the head (background only: a novelty map)
    _wait(qtbot, w)
    assert w.project.cycle == 1 and w.project.fast_in_use, w.message.value
    assert "fast model (novelty)" in w.message.value
    lab = w.labels.painting
    lab.brush_size = 24
    cy, cx = lab.data.shape[0] // 2, lab.data.shape[1] // 2
    before = viewer.layers[f"{slide} priority"].data.copy()
    lab.paint((cy, cx), 2)  # a tumour stroke: saved 250 ms later, then the head refits
    qtbot.waitUntil(lambda: w.project.cycle == 2, timeout=60_000)
    _wait(qtbot, w)
    assert "fast model (blend)" in w.message.value and "refreshed" in w.message.value, w.message.value
    assert not np.array_equal(viewer.layers[f"{slide} priority"].data, before)
    feats = viewer.layers[f"{slide} proposals"].features
    assert set(feats["cycle"][feats["method"] == "adaptive"]) == {2}  # the proposals follow the new map
    assert w.project.maps[slide].cycle == 2
    viewer.reset_view()
    from skimage.io import imsave

    imsave(artifacts_dir / "widget_live_loop.png", viewer.screenshot(canvas_only=True, flash=False), check_contrast=False)

    _click(w, "Deep retrain", wait=False)
    assert w.runner.busy
    _wait(qtbot, w)
    assert w.project.cycle == 3 and w.project.trained, w.message.value
    assert "kept the fast model" in w.message.value or "replaces the fast one" in w.message.value
