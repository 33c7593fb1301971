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
    np.testing.assert_array_equal(Session.open(s.folder, read_only=True).labels("a"), back.labels("a"))
    # a chunk write killed before its rename leaves a partial file: a reader ignores it (a
    # live writer's may be in the middle of its rename); the next writer removes it
    partial = path / "c" / "0" / "1.deadbeef.partial"
    partial.write_bytes(b"half")
    np.testing.assert_array_equal(Session.open(s.folder, read_only=True).labels("a"), back.labels("a"))
    assert partial.exists()
    s.close()
    back.close()
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


def _lock_of(folder):
    return json.loads((folder / "session.lock").read_text())


def test_a_running_writer_refuses_a_second_until_it_is_taken_over_and_then_cannot_save(tmp_path):
    import os
    import subprocess

    from napari_alregions.session import SessionLocked
    from tests.procs import spawn

    s = _filled(tmp_path)
    s.close()
    holder = spawn("hold_session", s.folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "ready\n"
        lock = _lock_of(s.folder)
        assert lock["pid"] == holder.pid and lock["folder"] == str(s.folder.resolve())
        # another process writes the session: a writer is refused, saying who and what to do
        with pytest.raises(SessionLocked, match=f"process {holder.pid} on this host.*still runs.*read-only.*take the "
                                                "lock over") as info:
            Session.open(s.folder)
        assert info.value.kind == "running" and not info.value.stale and info.value.holder["pid"] == holder.pid
        # a reader needs no lock, and cannot save
        ro = Session.open(s.folder, read_only=True)
        np.testing.assert_array_equal(ro.labels("a"), s.labels("a"))
        with pytest.raises(SessionError, match="read-only"):
            ro.save()
        assert _lock_of(s.folder)["pid"] == holder.pid
        # taking over: this process holds it; the other one's saves are refused from now on
        taken = Session.open(s.folder, take_over=True)
        assert _lock_of(s.folder)["pid"] == os.getpid()
        assert taken.lock_note.startswith(f"took over the session lock as asked: process {holder.pid} on this host")
        assert taken.lock_note.endswith("that process can no longer save it")

        def holder_saves():
            holder.stdin.write("save\n")
            holder.stdin.flush()
            return holder.stdout.readline()

        said = holder_saves()
        assert said.startswith("SessionLocked:") and f"taken over (process {os.getpid()} on this host" in said
        # closed without saving: the other process may save again (it takes the lock back)
        taken.close()
        assert holder_saves() == "saved\n" and _lock_of(s.folder)["pid"] == holder.pid
        # taken over, saved and closed: the other process's save would overwrite that
        taken = Session.open(s.folder, take_over=True)
        taken.accept(taken.propose([Region(0, 512, 256, 256, slide="a")])[0])
        taken.save()
        taken.close()
        said = holder_saves()
        assert said.startswith("SessionLocked:") and "taken over by another process, which saved it and closed" in said
        holder.stdin.close()
        assert holder.wait(60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert not (s.folder / "session.lock").exists()
    assert len(Session.open(s.folder, read_only=True).accepted) == 2


def test_a_killed_writer_s_lock_and_temporary_files_go_at_the_next_plain_open(tmp_path):
    """The kill -9 dead end: after a writer is killed (here while saving a checkpoint), a
    plain open takes its lock without asking and removes its temporary file at once."""
    import os

    from napari_alregions._atomic import target_of
    from tests.procs import spawn

    s = _filled(tmp_path)
    s.close()
    ckpt = s.folder / "checkpoints"
    for trial in range(3):
        killed = spawn("die_saving_checkpoint", s.folder, f"cycle_{trial}.pt", 1 << 20)
        if trial == 0:  # not reaped yet: a zombie, dead all the same
            os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)
            os.kill(killed.pid, 0)  # a signal still reaches it: only its state says it is dead
        else:
            assert killed.wait(60) == -9
        [left] = list(ckpt.iterdir())
        assert target_of(left) == ckpt / f"cycle_{trial}.pt" and left.stat().st_size == 1 << 20
        lock = _lock_of(s.folder)
        assert lock["pid"] == killed.pid
        if trial == 2:  # a reader removes it too (no one writes there), and leaves the lock
            Session.open(s.folder, read_only=True)
            assert list(ckpt.iterdir()) == [] and _lock_of(s.folder) == lock
        back = Session.open(s.folder)
        assert back.lock_note == (f"took over the session lock: process {killed.pid} on this host, since {lock['since']}: "
                                  "that process no longer runs")
        assert _lock_of(s.folder)["pid"] == os.getpid()
        assert list(ckpt.iterdir()) == []  # at once: no waiting for the file to age
        np.testing.assert_array_equal(back.labels("a"), s.labels("a"))
        back.close()
        assert killed.wait(60) == -9
    assert not (s.folder / "session.lock").exists() and not list(s.folder.glob(".*"))


def test_a_lock_naming_a_reused_pid_or_a_copied_folder_is_stale(tmp_path):
    import os
    import platform
    import shutil
    import subprocess
    import sys

    from napari_alregions._process import start_of
    from napari_alregions.session import SessionLocked
    from tests.procs import spawn

    s = _filled(tmp_path)
    s.close()
    lock = s.folder / "session.lock"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # unrelated, running
    try:
        held = {"host": platform.node(), "pid": other.pid, "folder": str(s.folder.resolve()), "token": "t", "since": "then"}
        # the pid runs, but started at another time than the lock's process: reused; the
        # temporary file of that dead process's save goes too, though a process has its pid
        lock.write_text(json.dumps({**held, "started": "another-boot:12"}))
        left = s.folder / "checkpoints" / f".cycle_009.{other.pid}-1.part.pt"
        left.write_bytes(b"half")
        back = Session.open(s.folder)
        assert back.lock_note.endswith(f"that process no longer runs (pid {other.pid} now belongs to another process)")
        assert not left.exists()
        back.close()
        # the same pid and start: that process holds it
        lock.write_text(json.dumps({**held, "started": start_of(other.pid)}))
        with pytest.raises(SessionLocked, match="still runs"):
            Session.open(s.folder)
        # a lock of an older version (host, pid, since) is judged by its pid alone
        lock.write_text(json.dumps({k: held[k] for k in ("host", "pid", "since")}))
        with pytest.raises(SessionLocked, match="still runs"):
            Session.open(s.folder)
        Session.open(s.folder, take_over=True).close()
    finally:
        other.kill()
        other.wait()
    # a folder copied while a running process had it open: the copy's lock names the original
    holder = spawn("hold_session", s.folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "ready\n"
        copy = tmp_path / "copy"
        shutil.copytree(s.folder, copy)
        assert _lock_of(copy)["pid"] == holder.pid
        c = Session.open(copy)
        assert f"the lock is the one of {s.folder.resolve()}: this folder is a copy of it" in c.lock_note
        c.save()
        c.close()
        assert not (copy / "session.lock").exists() and _lock_of(s.folder)["pid"] == holder.pid  # the original's stays
        # a folder copied while this process had it open, too
        mine = Session.open(copy)
        shutil.copytree(copy, tmp_path / "copy2")
        Session.open(tmp_path / "copy2").close()
        assert _lock_of(copy)["pid"] == os.getpid()
        mine.close()
    finally:
        holder.stdin.close()
        holder.wait(60)


def test_another_host_s_unreadable_and_read_only_folders_locks(tmp_path):
    import errno

    from napari_alregions.session import SessionLocked
    from napari_alregions.sessionlock import FolderNotWritable
    from tests.helpers import read_only_filesystem, tree_state

    s = _filled(tmp_path)
    s.close()
    lock = s.folder / "session.lock"
    # another host's lock cannot be checked: refused, unless taken over
    lock.write_text(json.dumps({"host": "elsewhere.example", "pid": 4711, "since": "then"}))
    with pytest.raises(SessionLocked, match="may be open on another host .process 4711 on host elsewhere.example, since "
                                            "then; whether it still runs cannot be checked from here.*read-only.*take "
                                            "the lock over once it is closed there") as info:
        Session.open(s.folder)
    assert info.value.kind == "other-host"
    back = Session.open(s.folder, take_over=True)
    assert back.lock_note.startswith("took over the session lock as asked: process 4711 on host elsewhere.example")
    back.close()
    # half a lock (a process killed while writing one), or not a lock at all
    for text in ("", '{"host": "x", "pi', "[1, 2]", '{"pid": true}', '{"pid": -1}', "x" * 100_000):
        lock.write_text(text)
        back = Session.open(s.folder)
        assert back.lock_note.startswith("took over the session lock: the lock file is unreadable"), text
        back.close()
    # a lock deleted by hand while open is made again at the next save
    back = Session.open(s.folder)
    lock.unlink()
    back.save()
    assert _lock_of(s.folder)["token"] == back._lock_file.token
    back.close()
    # a read-only folder: readers open it and write nothing; a writer is told to read
    before = tree_state(s.folder)
    with read_only_filesystem(s.folder):
        ro = Session.open(s.folder, read_only=True)
        np.testing.assert_array_equal(ro.labels("a"), s.labels("a"))
        with pytest.raises(FolderNotWritable, match=r"cannot take the session lock \(Read-only file system\): open the "
                                                "session read-only") as info:
            Session.open(s.folder)
        assert info.value.__cause__.errno == errno.EROFS
    assert tree_state(s.folder) == before


def test_of_processes_taking_over_one_stale_lock_at_once_one_gets_it(tmp_path):
    import subprocess

    from tests.procs import spawn

    s = _filled(tmp_path)
    s.close()
    (s.folder / "session.lock").write_text("")  # stale
    tries = [spawn("try_to_open", s.folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    try:
        said = sorted(p.stdout.readline().strip() for p in tries)
    finally:
        for p in tries:
            p.stdin.close()
            p.wait(60)
    assert said == ["locked", "locked", "locked", "opened"]
    assert not (s.folder / "session.lock").exists()
