from __future__ import annotations

import json

import numpy as np
import pytest

from napari_alregions.geometry import Region
from napari_alregions.session import Session, SessionError


def _filled(tmp_path):
    s = Session.create(tmp_path / "s", classes=("background", "tumour"), region_size=512)
    s.add_slide("a", "/data/a.tif", label_shape=(40, 50), label_level=1, group="centre-1")
    lab = s.labels("a")
    lab[5:10, 5:20] = 2
    lab[20:30, 0:10] = 1
    s.mark_labels_changed("a")
    proposed = s.propose([Region(0, 0, 256, 256, score=2.0, method="adaptive", slide="a", cycle=1)])
    s.accept(proposed[0])
    s.propose([Region(512, 0, 256, 256, score=1.0, method="standard", slide="a", cycle=1)])
    s.history.append({"cycle": 1, "miou": 0.5})
    s.checkpoints = ["checkpoints/cycle_001.pt"]
    s.save()
    return s


def test_round_trip_restores_identical_state(tmp_path):
    s = _filled(tmp_path)
    back = Session.open(s.folder)
    assert back.classes == s.classes and back.settings == s.settings and back.settings.extra == {"region_size": 512}
    assert back.slides == s.slides
    assert back.accepted == s.accepted and [r.uid for r in back.accepted] == [r.uid for r in s.accepted]
    assert back.regions == s.regions
    assert back.history == s.history and back.checkpoints == s.checkpoints
    np.testing.assert_array_equal(back.labels("a"), s.labels("a"))
    assert back.cycle == 1


def test_crash_mid_save_keeps_previous_session(tmp_path, monkeypatch):
    s = _filled(tmp_path)
    before = Session.open(s.folder)
    s.labels("a")[:] = 1
    s.mark_labels_changed("a")
    s.history.append({"cycle": 2})
    import napari_alregions.session as mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "_atomic_write_text", boom)  # dies before session.json
    with pytest.raises(OSError):
        s.save()
    after = Session.open(s.folder)
    assert after.history == before.history
    # labels were replaced atomically: either old or new, never half-written
    lab = after.labels("a")
    assert lab.shape == (40, 50)
    assert not list(s.folder.rglob(".*.part*"))  # no temporary file left


def test_bad_folders_and_labels(tmp_path):
    with pytest.raises(SessionError, match="not a session"):
        Session.open(tmp_path)
    (tmp_path / "session.json").write_text("{broken")
    with pytest.raises(SessionError, match="unreadable"):
        Session.open(tmp_path)
    (tmp_path / "session.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(SessionError, match="not a napari-alregions"):
        Session.open(tmp_path)
    s = Session.create(tmp_path / "new")
    with pytest.raises(SessionError, match="already holds a session: open it instead") as err:
        Session.create(tmp_path / "new")
    assert "Open session" in str(err.value)  # what a viewer user does, not only the Python call
    s.add_slide("x", "x.tif", label_shape=(4, 4))
    with pytest.raises(ValueError, match="shape"):
        s.set_labels("x", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="label values"):
        s.set_labels("x", np.full((4, 4), 9))
    with pytest.raises(ValueError, match="already"):
        s.add_slide("x", "x.tif", label_shape=(4, 4))


def test_saves_from_two_threads_never_tear_the_session(tmp_path):
    """A retrain saves from its worker thread while the viewer autosaves strokes: the
    session on disk stays readable and ends up as the last state, with no write lost."""
    import threading

    s = _filled(tmp_path)
    errors, n = [], 60

    def worker():  # a retrain: new proposals and a history entry, saved
        try:
            for i in range(n):
                s.propose([Region(256 * (i % 8), 512, 256, 256, score=float(i), method="standard", slide="a", cycle=i)])
                s.history.append({"cycle": i})
                s.save()
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(n):  # the viewer: strokes and accepted regions, saved
        s.labels("a")[i % 40, :] = 2
        s.mark_labels_changed("a")
        s.accept(Region(0, 1024 + 256 * i, 256, 256, slide="a", method="manual"))
        s.save()
        Session.open(s.folder)  # readable at any moment
    thread.join()
    assert not errors, errors
    s.save()
    back = Session.open(s.folder)
    assert back.accepted == s.accepted and len(back.accepted) == n + 1
    assert back.regions == s.regions and back.history == s.history
    np.testing.assert_array_equal(back.labels("a"), s.labels("a"))
    assert not list(s.folder.rglob(".*.part*"))


def _chunk_files(path):
    return sorted(f"{p.parent.name}/{p.name}" for p in (path / "c").glob("*/*"))


def test_labels_are_stored_by_chunk_and_a_save_writes_the_marked_chunks_only(tmp_path):
    from napari_alregions.session import LABEL_CHUNK as C

    s = Session.create(tmp_path / "s")
    s.add_slide("a", "/data/a.tif", label_shape=(3 * C + 100, 2 * C + 7))
    lab = s.labels("a")
    lab[10:20, C - 5 : C + 5] = 2  # straddles chunks (0, 0) and (0, 1)
    s.mark_labels_changed("a", (10, C - 5, 20, C + 5))
    lab[3 * C + 50, 2 * C + 3] = 1  # the partial corner chunk, found by a scan
    s.mark_labels_changed("a")
    s.save()
    path = s.folder / "labels" / "a.zarr"
    assert _chunk_files(path) == ["0/0", "0/1", "3/2"]  # only chunks holding labels are written
    back = Session.open(s.folder)
    np.testing.assert_array_equal(back.labels("a"), lab)
    # a stroke in chunk (0, 1) rewrites that chunk's file only
    stamp = {f: (path / "c" / f).stat().st_mtime_ns for f in _chunk_files(path)}
    back.label_view("a", (0, C, 4, C + 4))[:] = 2
    back.mark_labels_changed("a", (0, C, 4, C + 4))
    back.save()
    assert back._store.last_written == 1
    assert [f for f in stamp if (path / "c" / f).stat().st_mtime_ns != stamp[f]] == ["0/1"]
    # a chunk cleared since is deleted at the next save
    back.labels("a")[10:20, C - 5 : C] = 0
    back.mark_labels_changed("a", (10, C - 5, 20, C))
    back.save()
    assert _chunk_files(path) == ["0/1", "3/2"]
    np.testing.assert_array_equal(Session.open(s.folder).labels("a"), back.labels("a"))
    # a chunk write killed before its rename leaves a partial file: ignored, then removed
    (path / "c" / "0" / "1.deadbeef.partial").write_bytes(b"half")
    np.testing.assert_array_equal(Session.open(s.folder).labels("a"), back.labels("a"))
    assert not list(path.rglob("*.partial"))


def test_format_1_sessions_with_zipped_labels_open_and_are_migrated(tmp_path):
    import zarr
    from zarr.storage import ZipStore

    from napari_alregions.session import LABEL_CHUNK as C

    s = Session.create(tmp_path / "s")
    s.add_slide("a", "/data/a.tif", label_shape=(2 * C + 100, 2 * C + 7))
    s.add_slide("b", "/data/b.tif", label_shape=(300, 300))
    s.save()
    meta = json.loads((s.folder / "session.json").read_text())
    meta["version"] = 1
    (s.folder / "session.json").write_text(json.dumps(meta))
    (s.folder / "labels").mkdir(exist_ok=True)
    old_a = np.zeros((2 * C + 100, 2 * C + 7), np.uint8)
    old_a[700:710, 5:9] = 2
    old_a[3, 3] = 1
    # "a": chunked with the chunk list in the attributes; "b": written whole, in other chunks
    store = ZipStore(s.folder / "labels" / "a.zarr.zip", mode="w")
    z = zarr.create_array(store, shape=old_a.shape, chunks=(C, C), dtype="uint8", fill_value=0,
                          attributes={"napari-alregions chunks": [[0, 0], [1, 0]]})
    z[:] = old_a
    store.close()
    old_b = np.zeros((300, 300), np.uint8)
    old_b[100:200, 50] = 2
    store = ZipStore(s.folder / "labels" / "b.zarr.zip", mode="w")
    z = zarr.create_array(store, shape=old_b.shape, chunks=(1024, 1024), dtype="uint8", fill_value=0)
    z[:] = old_b
    store.close()
    legacy = Session.open(s.folder)
    np.testing.assert_array_equal(legacy.labels("a"), old_a)
    np.testing.assert_array_equal(legacy.labels("b"), old_b)
    legacy.save()
    assert json.loads((s.folder / "session.json").read_text())["version"] == 2
    assert not list((s.folder / "labels").glob("*.zip"))
    assert _chunk_files(s.folder / "labels" / "a.zarr") == ["0/0", "1/0"]
    back = Session.open(s.folder)
    np.testing.assert_array_equal(back.labels("a"), old_a)
    np.testing.assert_array_equal(back.labels("b"), old_b)


def test_a_newer_session_format_is_refused(tmp_path):
    s = Session.create(tmp_path / "s")
    meta = json.loads((s.folder / "session.json").read_text())
    meta["version"] = 99
    (s.folder / "session.json").write_text(json.dumps(meta))
    with pytest.raises(SessionError, match="version 99.*newer"):
        Session.open(s.folder)
    assert json.loads((s.folder / "session.json").read_text())["version"] == 99  # not rewritten


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(slides="x"), "'slides' must be a list"),
    (lambda m: m.update(slides=["x"]), "slide 0 must be an object"),
    (lambda m: m["slides"][0].pop("path"), "slide 0 has no 'path'"),
    (lambda m: m["slides"][0].update(label_shape=[40]), "two positive integers"),
    (lambda m: m["slides"][0].update(label_level="1"), "'label_level' has the wrong type"),
    (lambda m: m.update(classes="background, tumour"), "'classes' must be a list"),
    (lambda m: m.update(classes=["tumour", "tumour"]), "distinct names"),
    (lambda m: m.update(accepted=[1, 2]), "'accepted' must list strings"),
    (lambda m: m.update(checkpoints=["../../etc/x.pt"]), "outside the session folder"),
    (lambda m: m.update(version="2"), "positive integer"),
    (lambda m: m.update(params=[]), "'params' must be a dict"),
    (lambda m: m["params"].update(members=0), "'members' must be >= 1"),
    (lambda m: m["params"].update(training={"epochs": "8"}), "'training.epochs' must be int"),
    (lambda m: m["params"].update(suggest={"a": {"random": {"k": 3}}}), "'suggest.a.random' has no 'region_size'"),
])
def test_malformed_session_fields_get_a_message_naming_the_field(tmp_path, edit, message):
    s = _filled(tmp_path)
    meta = json.loads((s.folder / "session.json").read_text())
    edit(meta)
    (s.folder / "session.json").write_text(json.dumps(meta))
    with pytest.raises(SessionError, match=message):
        Session.open(s.folder)


def test_files_missing_or_replaced_beside_session_json_are_reported(tmp_path):
    import shutil

    s = _filled(tmp_path)
    labels = s.folder / "labels" / "a.zarr"
    regions = s.folder / "regions.geojson"
    # labels folder deleted: the session knows labels were saved
    shutil.move(labels, tmp_path / "kept")
    with pytest.raises(SessionError, match=r"a\.zarr: missing, though 1 labeled chunk"):
        Session.open(s.folder)
    shutil.move(tmp_path / "kept", labels)
    # labels of another shape (another slide's file)
    other = Session.create(tmp_path / "other")
    other.add_slide("a", "/data/a.tif", label_shape=(64, 64))
    other.labels("a")[0, 0] = 1
    other.mark_labels_changed("a")
    other.save()
    shutil.move(labels, tmp_path / "kept")
    shutil.copytree(other.folder / "labels" / "a.zarr", labels)
    with pytest.raises(SessionError, match=r"shape \(64, 64\), but the session says \(40, 50\)"):
        Session.open(s.folder)
    shutil.rmtree(labels)
    shutil.move(tmp_path / "kept", labels)
    # regions file deleted or replaced: the accepted regions it held are missing
    text = regions.read_text()
    regions.unlink()
    with pytest.raises(SessionError, match="1 of the 1 accepted region.*missing"):
        Session.open(s.folder)
    regions.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(SessionError, match="replaced or edited"):
        Session.open(s.folder)
    regions.write_text("{broken")
    with pytest.raises(SessionError, match="regions.geojson: unreadable"):
        Session.open(s.folder)
    regions.write_text(text)
    np.testing.assert_array_equal(Session.open(s.folder).labels("a"), s.labels("a"))


def test_a_second_writer_is_refused_and_a_stale_lock_can_be_taken_over(tmp_path):
    import subprocess
    import sys

    from napari_alregions.session import SessionLocked

    s = _filled(tmp_path)
    lock = s.folder / "session.lock"
    assert json.loads(lock.read_text())["pid"] == __import__("os").getpid()
    # another live process holds the session: a writer is refused, a reader is not
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        s.close()
        assert not lock.exists()
        lock.write_text(json.dumps({"host": __import__("platform").node(), "pid": holder.pid, "since": "then"}))
        with pytest.raises(SessionLocked, match=f"process {holder.pid}.*read-only") as info:
            Session.open(s.folder)
        assert not info.value.stale
        with pytest.raises(SessionLocked):
            Session.open(s.folder, take_over=True)  # never a live process's lock on this host
        ro = Session.open(s.folder, read_only=True)
        np.testing.assert_array_equal(ro.labels("a"), s.labels("a"))
        with pytest.raises(SessionError, match="read-only"):
            ro.save()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the lock is stale; taking it over is the user's choice
    with pytest.raises(SessionLocked, match="no longer running") as info:
        Session.open(s.folder)
    assert info.value.stale
    back = Session.open(s.folder, take_over=True)
    assert json.loads(lock.read_text())["pid"] == __import__("os").getpid()
    back.close()
    assert not lock.exists()
