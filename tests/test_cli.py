from __future__ import annotations

import json

import pytest

from napari_alregions.cli import main


def test_info_text_and_json(small_pool, capsys):
    folder, manifest = small_pool
    path = folder / manifest["slides"][0]["image"]
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1024 x 1024 px" in out and "mpp 0.5" in out and "level 1" in out
    assert main(["info", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["levels"][1] == {"level": 1, "width": 512, "height": 512, "downsample": 2.0}
    assert record["tissue_fraction"] == pytest.approx(manifest["slides"][0]["tissue_fraction"], abs=0.02)


def test_info_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.svs"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 2
    assert "x.svs" in capsys.readouterr().err


def test_make_demo_data(tmp_path, capsys):
    assert main(["make-demo-data", str(tmp_path / "d"), "--n-slides", "2", "--size", "512"]) == 0
    assert "wrote 2 slides" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["slides"]] == ["slide_000", "slide_001"]
    # again on the pool: nothing rendered, and it says so
    before = [(tmp_path / "d" / s["image"]).stat().st_mtime_ns for s in manifest["slides"]]
    assert main(["make-demo-data", str(tmp_path / "d"), "--n-slides", "2", "--size", "512"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 slide(s) already there" in out and "wrote" not in out
    assert [(tmp_path / "d" / s["image"]).stat().st_mtime_ns for s in manifest["slides"]] == before
    assert main(["make-demo-data", str(tmp_path / "d"), "--n-slides", "3", "--size", "512"]) == 0
    assert "kept 2 slide(s) already there with these settings, wrote 1" in capsys.readouterr().out


def test_suggest_needs_out_and_says_so_in_its_help(tmp_path, monkeypatch, capsys):
    """No silent regions.geojson in the working folder: --out is required and shown."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "m.npy", np.ones((8, 8), np.float32))
    with pytest.raises(SystemExit) as stop:
        main(["suggest", str(tmp_path / "m.npy"), "-l", "512"])
    assert stop.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "m.npy"]
    with pytest.raises(SystemExit):
        main(["suggest", "-h"])
    assert "--out OUT" in capsys.readouterr().out


def test_suggest_names_both_inputs_when_features_do_not_fit_the_map(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "map.npy", np.ones((8, 8), np.float32))
    np.save(tmp_path / "cells.npy", np.ones((2, 2, 16), np.float32))  # another slide's (or stride's) grid
    np.save(tmp_path / "emb.npy", np.ones((1, 1, 16), np.float32))  # region embeddings of another grid
    base = ["suggest", str(tmp_path / "map.npy"), "--method", "diversity", "-l", "512", "--stride", "256", "-k", "1",
            "--out", str(tmp_path / "o.geojson")]
    assert main([*base, "--cell-features", str(tmp_path / "cells.npy")]) == 2
    err = capsys.readouterr().err
    assert f"--cell-features {tmp_path / 'cells.npy'}: a grid of (2, 2) cells" in err and f"{tmp_path / 'map.npy'} has (8, 8)" in err
    assert main([*base, "--embeddings", str(tmp_path / "emb.npy")]) == 2
    err = capsys.readouterr().err
    assert f"--embeddings {tmp_path / 'emb.npy'} does not fit the priority map {tmp_path / 'map.npy'} (8 x 8 cells)" in err
    assert "embeddings must have shape (4, 4, D)" in err and not (tmp_path / "o.geojson").exists()


def test_suggest_on_saved_map_writes_qupath_geojson(tmp_path, capsys):
    import numpy as np
    import tifffile

    from napari_alregions.io_qupath import read_regions

    p = np.zeros((64, 64), np.float32)
    p[10:20, 30:44] = 1.0
    p[40:50, 5:15] = 0.5
    np.save(tmp_path / "map.npy", p)
    tifffile.imwrite(tmp_path / "map.tif", p)
    for name in ("map.npy", "map.tif"):
        out = tmp_path / f"{name}.geojson"
        assert main(["suggest", str(tmp_path / name), "--method", "standard", "-l", "2560", "-k", "2",
                     "--stride", "256", "--out", str(out), "--cycle", "1"]) == 0
        regions = read_regions(out)
        assert [(r.x, r.y, r.w, r.h) for r in regions] == [(30 * 256, 10 * 256, 2560, 2560), (5 * 256, 40 * 256, 2560, 2560)]
        assert regions[0].method == "standard" and regions[0].cycle == 1 and regions[0].slide == "map"
    # annotated regions are excluded on the next call
    out2 = tmp_path / "next.geojson"
    assert main(["suggest", str(tmp_path / "map.npy"), "--method", "standard", "-l", "2560", "-k", "1",
                 "--annotated", str(tmp_path / "map.npy.geojson"), "--out", str(out2)]) == 0
    [r] = read_regions(out2)
    assert (r.x, r.y) not in {(30 * 256, 10 * 256), (5 * 256, 40 * 256)}
    capsys.readouterr()


def test_suggest_says_when_fewer_than_k_fit(tmp_path, capsys):
    import numpy as np

    from napari_alregions.io_qupath import read_regions

    # a 4x4-cell map holds exactly four non-overlapping 2x2-cell windows
    np.save(tmp_path / "m.npy", np.ones((4, 4), np.float32))
    out = tmp_path / "r.geojson"
    assert main(["suggest", str(tmp_path / "m.npy"), "--method", "standard", "-l", "512", "-k", "10",
                 "--stride", "256", "--out", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("4 standard region(s) written") and last.endswith("(k=10 asked; only 4 fit)")
    assert sorted((r.x, r.y) for r in read_regions(out)) == [(0, 0), (0, 512), (512, 0), (512, 512)]
    assert main(["suggest", str(tmp_path / "m.npy"), "--method", "standard", "-l", "512", "-k", "4",
                 "--stride", "256", "--out", str(out)]) == 0
    assert "only" not in capsys.readouterr().out


def test_suggest_options_and_errors(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "m.npy", np.random.default_rng(0).random((32, 32)))
    assert main(["suggest", str(tmp_path / "m.npy"), "--method", "adaptive", "-l", "2048", "-k", "1",
                 "--option", "max_steps=3", "--option", "tau_range=[97, 100]", "--out", str(tmp_path / "a.geojson")]) == 0
    assert main(["suggest", str(tmp_path / "m.npy"), "--method", "nope", "-l", "2048", "--out", str(tmp_path / "b.geojson")]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["suggest", str(tmp_path / "m.npy"), "-l", "1000", "--out", str(tmp_path / "c.geojson")]) == 2
    assert "multiple of stride" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    assert main(["suggest", str(tmp_path / "obj.npy"), "-l", "2048", "--out", str(tmp_path / "d.geojson")]) == 2


def test_step_messages_keep_their_start(capsys):
    from napari_alregions._progress import progress_bar, steps_with_message

    long = "standard_nonsquare l=384 k=2 cycle 3: area 21.62%  mIoU 0.783 " + "x" * 40
    with progress_bar(2, "simulation", "cycle") as bar:
        step = steps_with_message(bar)
        step("adaptive l=384 k=2 cycle 0: area 2.83%")
        assert bar.n == 1 and bar.postfix == "adaptive l=384 k=2 cycle 0: area 2.83%"
        step(long)  # the method name stays whole; the tail is cut
        assert bar.n == 2 and bar.postfix == long[:71] + "…"
    assert "simulation" in capsys.readouterr().err


def test_suggest_lists_its_methods_with_what_they_need(capsys):
    from napari_alregions.selection import METHODS

    with pytest.raises(SystemExit) as stop:
        main(["suggest", "--method"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(METHODS)  # one line per method, in order
    by_name = dict(zip(METHODS, lines, strict=True))
    assert "needs a priority map" in by_name["standard"]
    assert "similarity map" in by_name["prototype"]
    assert "embeddings" in by_name["diversity"] and "--cell-features" in by_name["diversity"]
    assert "descriptors" in by_name["focannot"] and "--descriptors" in by_name["focannot"]
    with pytest.raises(SystemExit):
        main(["suggest", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # as wrapped to the terminal's width
    assert all(f"{m.name} {m.title}: needs {m.inputs}" in text for m in METHODS.values())


def test_suggest_list_prints_the_registry_with_options_and_defaults(capsys):
    from napari_alregions.selection import METHODS

    with pytest.raises(SystemExit) as stop:
        main(["suggest", "--list"])  # no map needed
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for m in METHODS.values():
        assert m.summary in out
        for o in m.options:
            assert f"--option {o.name}={json.dumps(o.default)}" in out
    assert "--option width_step=256" in out and "--option tau_range=[98.0, 100.0]" in out
    assert "--option max_background=0.7" in out and "--option n_init=10" in out


def test_suggest_unknown_method_names_the_choices(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "map.npy", np.ones((8, 8)))
    assert main(["suggest", str(tmp_path / "map.npy"), "--method", "best", "-l", "512", "--out", str(tmp_path / "o.geojson")]) == 2
    assert "standard_nonsquare" in capsys.readouterr().err


# -- verbs that open a session: the lock ----------------------------------------------------------


def _one_line(err: str) -> str:
    [line] = err.strip().splitlines()
    return line


def test_session_verbs_take_over_or_only_read_and_exports_need_no_lock(tmp_path, small_pool, capsys):
    import os
    import subprocess

    from napari_alregions.project import AnnotationProject
    from tests import qupath_shapes as q
    from tests.helpers import read_only_filesystem, tree_state
    from tests.procs import spawn

    pool, manifest = small_pool
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    p.add_slide(pool / manifest["slides"][0]["image"])
    p.close()
    s, lock = str(p.folder), p.folder / "session.lock"
    geo = tmp_path / "in.geojson"
    geo.write_text(q.text([q.feature(q.rectangle(0, 0, 128, 128), cls="Tumor")]))
    exported = [tmp_path / f"out{i}.geojson" for i in range(3)]
    imp = ["qupath-import", s, str(geo)]
    assert main(["qupath-export", s, str(exported[0])]) == 0
    holder = spawn("hold_session", s, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "ready\n"
        capsys.readouterr()
        # a writing verb is refused, saying how to get past
        assert main(imp) == 2
        assert _one_line(capsys.readouterr().err) == (
            f"alregions: error: {s}: the session is open in another process (process {holder.pid} on this host, since "
            f"{json.loads(lock.read_text())['since']}: that process still runs): close it there, or rerun with "
            "--take-over if that process no longer uses it")
        assert main([*imp, "--read-only"]) == 2
        assert _one_line(capsys.readouterr().err) == (
            "alregions: error: --read-only: qupath-import writes to the session; drop --read-only (and add --take-over "
            "if another process holds the session), or add --dry-run to only read it")
        # what only reads needs no lock, with or without the options
        for args in ([*imp, "--dry-run"], [*imp, "--dry-run", "--read-only"], ["qupath-export", s, str(exported[1])],
                     ["qupath-export", s, str(exported[2]), "--read-only", "--take-over"]):
            assert main(args) == 0, args
        assert "would add 1 region(s)" in capsys.readouterr().out
        assert exported[1].read_bytes() == exported[2].read_bytes() == exported[0].read_bytes()
        assert json.loads(lock.read_text())["pid"] == holder.pid
        # taking over: the import is saved, the other process can no longer save
        assert main([*imp, "--take-over"]) == 0
        assert _one_line(capsys.readouterr().err).startswith(
            f"alregions: took over the session lock as asked: process {holder.pid} on this host")
        holder.stdin.write("save\n")
        holder.stdin.flush()
        assert holder.stdout.readline().startswith("SessionLocked:")
    finally:
        holder.stdin.close()
        holder.wait(60)
    assert not lock.exists()
    # a killed writer's lock and temporary files: a plain run goes on, saying so
    killed = spawn("die_saving_checkpoint", s, "cycle_001_m0.pt", 1 << 20)
    assert killed.wait(60) == -9 and json.loads(lock.read_text())["pid"] == killed.pid
    assert main([*imp, "--dry-run"]) == 0 and json.loads(lock.read_text())["pid"] == killed.pid  # a reader leaves it
    assert main(imp) == 0
    assert _one_line(capsys.readouterr().err).startswith(f"alregions: took over the session lock: process {killed.pid} "
                                                         "on this host")
    assert not lock.exists() and not list(p.folder.rglob(".*.part*"))
    back = AnnotationProject.open(s, read_only=True)
    assert len(back.session.accepted) == 1  # imported once: the second import found its region there
    # a read-only file system: exports work and write nothing there; a writer says why not
    before = tree_state(p.folder)
    with read_only_filesystem(p.folder):
        assert main(["qupath-export", s, str(exported[1])]) == 0
        assert main(imp) == 2
    assert tree_state(p.folder) == before
    assert _one_line(capsys.readouterr().err) == (f"alregions: error: {s}: cannot take the session lock (Read-only file "
                                                  "system): open the session read-only to read it")
    assert b"Tumor" in exported[1].read_bytes() or b"tumour" in exported[1].read_bytes()
    assert os.path.getsize(exported[1]) > os.path.getsize(exported[0])


def test_open_options_of_a_verb_that_only_reads(tmp_path):
    import argparse

    from napari_alregions.cli_common import add_open_options, open_options, open_session
    from napari_alregions.session import Session

    Session.create(tmp_path / "s").close()
    parser = argparse.ArgumentParser()
    parser.add_argument("session")
    add_open_options(parser, writes=False)
    args = parser.parse_args([str(tmp_path / "s"), "--take-over"])
    assert open_options(args) == {"read_only": True, "take_over": False}
    session = open_session(args)
    assert session.read_only and not (tmp_path / "s" / "session.lock").exists()
