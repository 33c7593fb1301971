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
    assert back.classes == s.classes and back.params == {"region_size": 512}
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
    with pytest.raises(SessionError, match="already"):
        Session.create(tmp_path / "new")
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


def test_labels_are_stored_by_chunk_and_read_back(tmp_path):
    import zipfile

    import zarr
    from zarr.storage import ZipStore

    from napari_alregions.session import LABEL_CHUNK as C

    s = Session.create(tmp_path / "s")
    s.add_slide("a", "/data/a.tif", label_shape=(3 * C + 100, 2 * C + 7))
    lab = s.labels("a")
    lab[10:20, C - 5 : C + 5] = 2  # straddles chunks (0, 0) and (0, 1)
    s.mark_labels_changed("a", (10, C - 5, 20, C + 5))
    lab[3 * C + 50, 2 * C + 3] = 1  # the partial corner chunk, found by a scan
    s.mark_labels_changed("a")
    s.save()
    path = s.folder / "labels" / "a.zarr.zip"
    chunk_files = sorted(n for n in zipfile.ZipFile(path).namelist() if n.startswith("c/"))
    assert chunk_files == ["c/0/0", "c/0/1", "c/3/2"]  # only chunks holding labels are written
    back = Session.open(s.folder)
    np.testing.assert_array_equal(back.labels("a"), lab)
    # a chunk cleared since is dropped at the next save
    back.labels("a")[10:20, C - 5 : C] = 0
    back.mark_labels_changed("a", (10, C - 5, 20, C))
    back.save()
    assert sorted(n for n in zipfile.ZipFile(path).namelist() if n.startswith("c/")) == ["c/0/1", "c/3/2"]
    np.testing.assert_array_equal(Session.open(s.folder).labels("a"), back.labels("a"))

    # a file written whole, without the chunk list, still opens, and is rewritten by chunk
    old = np.zeros((3 * C + 100, 2 * C + 7), np.uint8)
    old[700:710, 5:9] = 2
    store = ZipStore(path, mode="w")
    z = zarr.create_array(store, shape=old.shape, chunks=(1024, 1024), dtype="uint8", fill_value=0)
    z[:] = old
    store.close()
    legacy = Session.open(s.folder)
    np.testing.assert_array_equal(legacy.labels("a"), old)
    legacy.labels("a")[0, 0] = 1
    legacy.mark_labels_changed("a", (0, 0, 1, 1))
    legacy.save()
    assert sorted(n for n in zipfile.ZipFile(path).namelist() if n.startswith("c/")) == ["c/0/0", "c/1/0"]
    old[0, 0] = 1
    np.testing.assert_array_equal(Session.open(s.folder).labels("a"), old)
