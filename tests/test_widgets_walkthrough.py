"""The defects of the pathologist's walkthrough (issue 32), each through napari's own mouse,
key and focus paths in a real viewer (under Xvfb)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from .test_widgets import _accept_random, _add_slide, _click, _drag, _start, _wait, _world

pytestmark = pytest.mark.gui


def _key(qtbot, widget, key, modifier=None, *, hold_ms: int = 0) -> None:
    """Press and release ``key`` on ``widget`` as a keyboard does (held ``hold_ms``)."""
    from qtpy.QtCore import Qt

    mod = modifier if modifier is not None else Qt.KeyboardModifier.NoModifier
    qtbot.keyPress(widget, key, mod)
    if hold_ms:
        qtbot.wait(hold_ms)
    qtbot.keyRelease(widget, key, mod)


def _activate(qtbot, viewer) -> None:
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    window.activateWindow()
    window.raise_()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)


def test_a_slide_is_bound_to_its_file_and_a_new_session_removes_the_last_ones_layers(
        make_napari_viewer, qtbot, tmp_path, small_pool):
    from napari_alregions._widgets._slides import same_file

    folder, manifest = small_pool
    viewer, w, first = _start(make_napari_viewer, tmp_path, small_pool)
    # another file of the same name, opened by the user before: not the session's slide
    other = tmp_path / "elsewhere" / first
    other.parent.mkdir()
    shutil.copy(folder / manifest["slides"][1]["image"], other)
    w.folder.value = str(tmp_path / "second")
    _click(w, "New session")
    [old] = viewer.layers  # the last session's slide: no slide's any more
    assert w.slides.layers == {}
    [opened] = viewer.open(str(folder / manifest["slides"][0]["image"]), plugin="napari-alregions")
    translate = np.array(opened.translate)
    w.slide_file.value = str(other)
    _click(w, "Add slide")
    assert w.current == first  # the same name: the file differs
    mine = w.slides.layers[first]
    assert mine is not opened and same_file(mine, other) and not same_file(opened, other)
    np.testing.assert_array_equal(opened.translate, translate)  # the user's layer is left alone
    # the map and the proposals of the session's slide lie over its own image
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, 2
    _click(w, "Suggest")
    boxes = w.regions.layers[(first, "proposals")]
    np.testing.assert_allclose(boxes.translate, mine.translate)
    # a layer opened from the slide's own file before it was added is the one taken
    [own] = viewer.open(str(folder / manifest["slides"][2]["image"]), plugin="napari-alregions")
    third = _add_slide(w, folder, manifest, 2)
    assert w.slides.layers[third] is own
    # a new session in a used viewer: the session's overlays go, its images are let go of
    w.folder.value = str(tmp_path / "third")
    _click(w, "New session")
    assert {lay.name for lay in viewer.layers} == {old.name, opened.name, mine.name, own.name}
    assert w.slides.layers == {}
    # ... and a slide of another file with the old one's name gets a layer of its own
    w.slide_file.value = str(other)
    _click(w, "Add slide")
    assert w.slides.layers[first] is mine  # the layer of its file, not the old one of its name


def test_class_keys_pick_classes_and_never_switch_the_brush_to_the_eraser(make_napari_viewer, qtbot, tmp_path, small_pool):
    from napari.settings import get_settings
    from qtpy.QtCore import Qt

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    _accept_random(w, 1)
    layer = w.labels.painting
    assert viewer.layers.selection.active is layer and layer.mode == "paint"
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    hold = int(get_settings().application.hold_button_delay * 1000) + 150
    # plain 1 and 2, as a QuPath user tries them for classes (napari's eraser and brush keys), held
    _key(qtbot, canvas, Qt.Key.Key_1, hold_ms=hold)
    assert layer.mode == "paint" and layer.selected_label == 1
    _key(qtbot, canvas, Qt.Key.Key_2, hold_ms=hold)
    assert layer.mode == "paint" and layer.selected_label == 2
    # Alt+2: its release ran napari's stale "restore the tool before 2" (the eraser)
    _key(qtbot, canvas, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier, hold_ms=hold)
    assert layer.mode == "paint" and layer.selected_label == 2 and "painting tumour" in w.message.value
    # a stroke with the mouse paints tumour
    region = layer.metadata["region"]
    layer.brush_size = 10
    _drag(layer, _world(w, slide, region.y + 40, region.x + 40), _world(w, slide, region.y + 120, region.x + 120))
    qtbot.waitUntil(lambda: not w.labels.unsaved, timeout=5000)
    assert (w.project.region_labels(region) == 2).sum() > 0


def test_shortcuts_work_with_the_dock_in_focus(make_napari_viewer, qtbot, tmp_path, small_pool):
    from qtpy.QtCore import Qt

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, 3
    _click(w, "Suggest")
    _activate(qtbot, viewer)
    w.tabs.setCurrentIndex(2)
    rows = sorted(w.project.proposals(slide, "random"), key=lambda r: r.rank)  # the list's rows
    item = w.proposal_list.item(1)
    qtbot.mouseClick(w.proposal_list.viewport(), Qt.MouseButton.LeftButton,
                     pos=w.proposal_list.visualItemRect(item).center())  # a row clicked: the list has focus
    assert w.proposal_list.hasFocus() and w.proposal_list.currentRow() == 1
    _key(qtbot, w.proposal_list, Qt.Key.Key_X, Qt.KeyboardModifier.AltModifier)
    assert w.project.session.store.status(rows[1].uid) == "dismissed", w.message.value
    w.proposal_list.setFocus()
    w.proposal_list.setCurrentRow(0)
    _key(qtbot, w.proposal_list, Qt.Key.Key_A, Qt.KeyboardModifier.AltModifier)
    _wait(qtbot, w)
    assert w.project.session.store.status(rows[0].uid) == "accepted", w.message.value


def test_tags_of_boxes_on_one_spot_do_not_overlap():
    from napari_alregions._widgets._tags import place_tags, tag
    from napari_alregions.geometry import Region

    regions = [Region(100, 100, 256, 256, method=m, rank=r) for m in ("adaptive", "standard", "random") for r in (0, 1)]
    regions.append(Region(300, 120, 256, 256, method="diversity", rank=0))  # overlapping the others' right part
    char = 10.0
    pos = place_tags(regions, char_px=char)
    boxes = [(y - 0.8 * char, x - len(tag(r)) * char / 2, y + 0.8 * char, x + len(tag(r)) * char / 2)
             for (y, x), r in zip(pos, regions)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] + 1e-9 or b[2] <= a[0] + 1e-9 or a[3] <= b[1] + 1e-9 or b[3] <= a[1] + 1e-9, (a, b)
    for (y, x), r in zip(pos[:4], regions[:4]):  # inside their boxes while corners are free
        assert r.y <= y <= r.y1 and r.x <= x <= r.x1
    assert [tag(r) for r in regions[:2]] == ["A1", "A2"]
    with pytest.raises(ValueError, match="char_px"):
        place_tags(regions, char_px=0)


def test_tags_colours_compare_table_and_legend_read_well(make_napari_viewer, qtbot, tmp_path, small_pool):
    from qtpy.QtWidgets import QLabel

    from napari_alregions.selection import METHODS

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    _click(w, "Compute priority map")
    _wait(qtbot, w)
    w.unit.value, w.region_size.value, w.k.value = "px", 256, 3
    for method in ("standard", "adaptive", "random"):
        w.method.value = method
        _click(w, "Suggest")
    tags = w.regions.layers[(slide, "tags")]
    boxes = w.regions.layers[(slide, "proposals")]
    assert sorted(tags.features["tag"]) == sorted(f"{t}{i}" for t in "SAR" for i in (1, 2, 3))
    # no two tags on one spot: at least a tag's height apart
    pos = np.asarray(tags.data)
    d = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1)) + np.eye(len(pos)) * 1e9
    assert d.min() > 0, pos
    # each method its colour
    colours = {m: tuple(np.round(c, 3)) for m, c in zip(boxes.features["method"], boxes.edge_color)}
    assert len(set(colours.values())) == 3
    # the compare table: 8 methods, every row and header readable in the dock
    w.compare_methods.value = [m for m in METHODS if m != "prototype"][:8]
    _click(w, "Compare methods")
    table = w.table.native
    n = table.rowCount()
    assert n == len(w.compare_methods.value)
    qtbot.wait(50)
    assert table.rowViewportPosition(n - 1) + table.rowHeight(n - 1) <= table.viewport().height()
    header = table.horizontalHeader()
    for j in range(table.columnCount()):
        text = table.horizontalHeaderItem(j).text()
        assert header.sectionSize(j) >= header.fontMetrics().horizontalAdvance(text), text
    # the method legend on every tab
    for i in range(w.tabs.count()):
        w.tabs.setCurrentIndex(i)
        qtbot.wait(10)
        assert w.lists.legend.native.isVisible() and "adaptive" in w.lists.legend.value
    assert isinstance(w.lists.legend.native, QLabel)
    # a method that proposed nothing is not counted, and the message says why
    empty = [m for m in w.compare_methods.value if not w.project.proposals(slide, m)]
    got = len(w.compare_methods.value) - len(empty)
    assert f"compared {got} method" in w.message.value
    for m in empty:
        assert f"{m} proposed nothing" in w.message.value


def test_region_rows_training_length_and_a_change_from_a_worker_redraws(make_napari_viewer, qtbot, tmp_path, small_pool):
    import threading

    viewer, w, slide = _start(make_napari_viewer, tmp_path, small_pool)
    [region] = _accept_random(w, 1, k=2)
    row = w.accepted_list.item(0).text()
    um2 = region.w * region.h * 0.25  # 0.5 µm/px
    assert f"{um2:,.0f} µm²" in row and f"{um2 / 1e6:.3g} mm²" in row, row
    assert "background 100%" in row and "cycle 0" in row and row.startswith("R1 random"), row
    # the training length is the session's
    w.tab("model").epochs.value = 3
    w.tab("model").max_seconds.value = 20
    assert (w.project.session.settings.training.epochs, w.project.session.settings.training.max_seconds) == (3, 20)
    # a change made in another thread (a retrain's worker) redraws on the viewer's thread
    before = w.proposal_list.count()
    other = w.lists.proposal_rows[0]
    t = threading.Thread(target=w.project.dismiss, args=(other,))
    t.start()
    t.join()
    qtbot.waitUntil(lambda: w.proposal_list.count() == before - 1, timeout=5000)
    qtbot.waitUntil(lambda: other.uid not in list(w.regions.layers[(slide, "proposals")].features["uid"]), timeout=5000)


def test_reopen_lands_where_the_user_stopped_and_the_model_saves(make_napari_viewer, qtbot, tmp_path, small_pool):
    from .test_widgets import _reopen

    folder, manifest = small_pool
    viewer, w, first = _start(make_napari_viewer, tmp_path, small_pool)
    second = _add_slide(w, folder, manifest, 1)
    _click(w, "Compute priority map")
    _wait(qtbot, w)
    w.method.value, w.unit.value, w.region_size.value, w.k.value = "random", "px", 256, 3
    _click(w, "Suggest")
    w.proposal_list.setCurrentRow(0)
    _click(w, "Accept region")
    _click(w, "Retrain")
    assert w.project.cycle == 1, w.message.value
    out = tmp_path / "model.pt"
    w.tab("model").save_file.value = str(out)
    _click(w, "Save model")
    assert out.is_file() and "saved the model" in w.message.value, w.message.value
    w.slide.value = first
    w.slide.value = second  # where the user stops
    viewer2, w2 = _reopen(make_napari_viewer, qtbot, w.project.folder)
    assert w2.current == second
    assert w2.method.value == "random" and w2.proposal_list.count() == len(w2.project.proposals(second, "random")) > 0
    assert w2.accepted_list.count() == 1 and w2.accepted_list.item(0).text().startswith("R1 random")
    assert w2.maps.colorbar.isVisible() and "map" in w2.maps.legend.value
    cy, cx = viewer2.scene.camera.center[-2:]
    extent = w2.slides.layers[second].extent.world
    assert extent[0][1] <= cx <= extent[1][1]  # the camera shows that slide
