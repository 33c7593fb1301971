"""Bad input of every kind the package takes in, one fast case per class: each gives a clear
error (its type and a fragment of its message) or a defined result, never silently wrong
pixels, a traceback from deep inside, or a hang (issue 22)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_alregions.wsi import SlideError, open_slide

from .helpers import smooth_rgb, write_bomb_tiff, write_pyramid

# -- slides: files that cannot be opened ------------------------------------------------------


def _bomb(path: Path) -> None:
    write_bomb_tiff(path, 10**6)  # 7.6 MB declaring 10^6 x 10^6 px (2.7 TiB)


def _sparse_bomb(path: Path) -> None:
    write_bomb_tiff(path, 10**6, sparse=True)  # the same with every tile missing (offset, count 0)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("not an image")


def _deep(path: Path) -> None:
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint16), photometric="rgb")


def _grey(path: Path) -> None:
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))


def _cut_at_open(path: Path) -> None:
    write_pyramid(path, [smooth_rgb(512, 512), smooth_rgb(256, 256)], compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        first = int(min(tif.pages[0].dataoffsets))
    os.truncate(path, first + 10)


@pytest.mark.parametrize(("make", "fragment"), [
    (_bomb, "decompression bomb"), (_sparse_bomb, "decompression bomb"), (_empty, "empty"),
    (_text, "not a readable TIFF"), (_deep, "16-bit"), (_grey, "greyscale"), (_cut_at_open, "truncated"),
])
def test_a_bad_slide_file_is_refused_at_open(tmp_path, make, fragment):
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(SlideError, match=fragment):
        open_slide(path)


# -- slides: reads that must fail, not come back black ----------------------------------------


@pytest.fixture
def slide_file(tmp_path):
    """Writes a 512² two-level slide: tiled (256²) or in strips of 64 rows."""
    def write(compression: str | None, tiled: bool = True) -> tuple[Path, np.ndarray]:
        img = smooth_rgb(512, 512)
        path = tmp_path / f"s-{compression}-{tiled}.tif"
        if tiled:
            write_pyramid(path, [img, img[::2, ::2].copy()], compression=compression)
        else:
            tifffile.imwrite(path, img, photometric="rgb", compression=compression, rowsperstrip=64)
        return path, img
    return write


def _last_segment(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        i = int(np.argmax(page.dataoffsets))
        return int(page.dataoffsets[i]), int(page.databytecounts[i])


@pytest.mark.parametrize(("compression", "tiled"), [("jpeg", True), ("zlib", True), (None, True),
                                                     ("jpeg", False), ("zlib", False)])
def test_a_slide_truncated_while_open_raises_naming_level_and_tile(slide_file, compression, tiled):
    path, _ = slide_file(compression, tiled)
    offset, count = _last_segment(path)
    with open_slide(path) as slide:
        slide.read_region(0, 0, 64, 64)  # fine before
        os.truncate(path, offset + count // 2)  # the last tile/strip cut in half
        with pytest.raises(SlideError, match="level 0.*truncated"):
            slide.read_region(448, 448, 64, 64)


def _zero_tail(data: bytearray, offset: int, count: int) -> None:
    data[offset + count // 2 : offset + count] = bytes(count - count // 2)  # a tile half written


def _flip(data: bytearray, offset: int, count: int) -> None:
    for i in range(offset + 200, offset + 208):  # 8 bytes of entropy-coded data
        data[i] ^= 0x55


@pytest.mark.parametrize(("damage", "fragment"), [(_zero_tail, "end-of-image marker"),
                                                  (_flip, "cannot decode")])
def test_a_damaged_jpeg_tile_is_an_error_naming_it(slide_file, damage, fragment):
    """What the decoder notices is raised, with the tile; a cut stream (which libjpeg decodes
    without complaint, grey below the cut) is caught by its missing end marker. Flipped
    bytes that still decode cannot be caught: JPEG has no checksum."""
    path, _ = slide_file("jpeg")
    offset, count = _last_segment(path)
    data = bytearray(path.read_bytes())
    damage(data, offset, count)
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        slide.read_region(0, 0, 64, 64)  # the other tiles read
        with pytest.raises(SlideError, match=f"level 0.*tile 3 \\(tile row 1, col 1\\).*{fragment}"):
            slide.read_region(448, 448, 64, 64)


@pytest.mark.parametrize("level", [True, -1, 1.0, 2, "0", None])
def test_a_bad_level_is_a_value_error_naming_level(slide_file, level):
    path, _ = slide_file("zlib")
    with open_slide(path) as slide:
        with pytest.raises(ValueError, match="level must be an int in 0..1"):
            slide.read_region(0, 0, 8, 8, level=level)
        with pytest.raises(ValueError, match="level must be an int"):
            slide.tiled_level(level)


def test_a_huge_read_is_refused_before_it_allocates(slide_file):
    path, img = slide_file("zlib")
    with open_slide(path) as slide:
        with pytest.raises(SlideError, match=r"1000000x1000000 px, 2.79e\+03 GiB.*bounded by 2 GiB"):
            slide.read_region(0, 0, 10**6, 10**6, fill=0)
        np.testing.assert_array_equal(slide.read_region(0, 0, 8, 8, fill=0), img[:8, :8])  # the defined result


# -- model: checkpoints written by save_checkpoint, then corrupted ---------------------------------


def _nan_weight(payload: dict) -> None:
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][key].view(-1)[3] = float("nan")


def _inf_weight(payload: dict) -> None:
    key = [k for k, v in payload["state_dict"].items() if v.is_floating_point()][-1]
    payload["state_dict"][key].view(-1)[0] = float("-inf")


def _std_zero(payload: dict) -> None:
    payload["spec"]["std"] = [0.2, 0.0, 0.2]


def _mean_nan(payload: dict) -> None:
    payload["spec"]["mean"] = [0.5, float("nan"), 0.5]


@pytest.mark.parametrize(("corrupt", "fragment"), [
    (_nan_weight, "1 weight tensors hold NaN or inf"), (_inf_weight, "1 weight tensors hold NaN or inf"),
    (_std_zero, r"invalid model spec \(std must be three finite numbers > 0"),
    (_mean_nan, r"invalid model spec \(mean must be three finite numbers"),
])
def test_a_corrupted_checkpoint_is_refused_at_load(tmp_path, corrupt, fragment):
    import torch

    from napari_alregions.model import CheckpointError, ModelSpec, load_checkpoint, save_checkpoint

    spec = ModelSpec(patch_size=32, level=0)
    path = save_checkpoint(tmp_path / "m.pt", spec.build(), spec)
    load_checkpoint(path)  # fine as written
    payload = torch.load(path, weights_only=True)
    corrupt(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=fragment):
        load_checkpoint(path)


def test_a_model_predicting_nan_is_an_error_at_predict_time(slide_file):
    import torch

    from napari_alregions.model import ModelSpec, predict_probability_map

    spec = ModelSpec(patch_size=32, level=0)
    model = spec.build()
    path, _ = slide_file("zlib")
    kw = dict(stride=64, tissue=np.ones((8, 8), bool), device="cpu", workers=1, batch_size=16, processes=0)
    with open_slide(path) as slide:
        prob = predict_probability_map(slide, model, spec, **kw)
        np.testing.assert_allclose(prob.sum(-1), 1, rtol=1e-5)  # a sane model: probabilities
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = float("nan")  # diverged in memory, past load's check
        with pytest.raises(ValueError, match=r"gave NaN or inf for 64 of 64 patches \(first at map cell \(0, 0\)\)"):
            predict_probability_map(slide, model, spec, **kw)


# -- the command line: expected failures are one line and exit status 2 ------------------------------


def _one_line_error(err: str, *fragments: str) -> None:
    """The error is the last line of stderr (progress bars may come before it), and the only one."""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("alregions: error: ") and err.count("alregions: error") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


@pytest.fixture
def priority_map(tmp_path) -> Path:
    path = tmp_path / "m.npy"
    np.save(path, np.random.default_rng(0).random((16, 16)))
    return path


@pytest.mark.parametrize(("argv", "fragment"), [
    (["simulate", "--slides", "pool", "--stride", "0"], "argument --stride: expected a positive integer, got '0'"),
    (["simulate", "--slides", "pool", "-k", "2,0"], "argument -k: expected comma-separated positive integers"),
    (["simulate", "--slides", "pool", "-l", "384,x"], "argument -l/--region-size: expected comma-separated"),
    (["embed", "s.tif", "--patch-size", "0"], "argument --patch-size: expected a positive integer, got '0'"),
    (["suggest", "MAP", "-l", "512", "-k", "-1"], "argument -k: expected a positive integer, got '-1'"),
    (["suggest", "MAP", "-l", "abc"], "argument -l/--region-size: expected a positive integer, got 'abc'"),
    (["suggest", "MAP", "-l", "512", "--seed", "-3"], "argument --seed: expected an integer >= 0"),
    (["make-demo-data", "d", "--n-slides", "0"], "argument --n-slides: expected a positive integer"),
    (["pool", "embed", "d", "--threads", "0"], "argument --threads: expected a positive integer"),
    (["qupath-import", "s", "f.geojson", "--max-region", "nan"], "argument --max-region: expected a finite number > 0"),
    (["suggest", "MAP"], "the following arguments are required: -l/--region-size"),
])
def test_a_bad_number_on_the_command_line_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, priority_map, argv,
                                                                fragment):
    from napari_alregions.cli import main

    monkeypatch.chdir(tmp_path)  # default outputs, should a command run, land here

    with pytest.raises(SystemExit) as stop:
        main([str(priority_map) if a == "MAP" else a for a in argv])
    assert stop.value.code == 2
    _one_line_error(capsys.readouterr().err, fragment)


def _suggest(priority_map: Path, out: Path) -> list[str]:
    return ["suggest", str(priority_map), "--method", "standard", "-l", "512", "-k", "2", "--stride", "256",
            "--out", str(out)]


def test_an_output_into_a_missing_folder_is_one_line(tmp_path, capsys, priority_map):
    from napari_alregions.cli import main

    out = tmp_path / "missing" / "r.geojson"
    assert main(_suggest(priority_map, out)) == 2
    _one_line_error(capsys.readouterr().err, f"{out}: No such file or directory", "output folders must exist")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user whom chmod binds (not root)")
def test_an_output_into_a_read_only_folder_is_one_line(tmp_path, capsys, priority_map):
    from napari_alregions.cli import main

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(_suggest(priority_map, folder / "r.geojson")) == 2
    finally:
        folder.chmod(0o755)
    _one_line_error(capsys.readouterr().err, "Permission denied")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(("code", "fragment"), [
    (28, "No space left on device (the disk is full"), (30, "Read-only file system (the file system is read-only"),
    (13, "Permission denied (no permission"),
])
def test_a_failing_save_is_one_line_naming_the_file_and_leaves_no_temporary(tmp_path, capsys, priority_map,
                                                                             monkeypatch, code, fragment):
    """The OS error of a save names the temporary file; the message names the file saved."""
    from napari_alregions import _atomic
    from napari_alregions.cli import main

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(src))

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    out = tmp_path / "out" / "r.geojson"
    out.parent.mkdir()
    assert main(_suggest(priority_map, out)) == 2
    _one_line_error(capsys.readouterr().err, f"{out}: {fragment}")
    assert list(out.parent.iterdir()) == []  # the temporary file is gone


@pytest.mark.parametrize("where", ["reserve", "write"])
def test_make_demo_data_onto_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, where):
    """Its memory maps are reserved on disk first (a full disk there was SIGBUS, rc 135);
    a write that fails later removes the half-written slide."""
    import errno

    from napari_alregions.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "reserve":
        monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    else:
        real = tifffile.TiffWriter.write
        calls = []

        def write(self, *args, **kwargs):  # the first slide's first level, then the disk is full
            calls.append(1)
            if len(calls) > 1:
                full()
            return real(self, *args, **kwargs)

        monkeypatch.setattr(tifffile.TiffWriter, "write", write)
    folder = tmp_path / "pool"
    assert main(["make-demo-data", str(folder), "--n-slides", "2", "--size", "512"]) == 2
    _one_line_error(capsys.readouterr().err, "No space left on device")
    left = [p.name for p in folder.rglob("*")] if folder.exists() else []
    assert not [n for n in left if n.startswith(".tmp-") or n.endswith(".part")], left


# -- leftovers of killed saves -------------------------------------------------------------------


def test_temporary_files_of_killed_saves_are_removed_at_the_next_open(tmp_path):
    """A process killed (SIGKILL) inside a checkpoint save leaves its temporary file; the
    next Session.open for writing (the only writer now) removes it at once, and leaves a
    live save's file and other files alone. A reader leaves it while a writer holds the session."""
    import subprocess
    import sys
    import time

    from napari_alregions._atomic import atomic_path, remove_stale, target_of
    from napari_alregions.session import Session

    session = Session.create(tmp_path / "s")
    ckpt = session.folder / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    code = ("import os, signal, sys\n"
            "from napari_alregions._atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(bytes(1 << 20))\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code, str(ckpt / "cycle-1.pt")], env=env, check=False)
    assert run.returncode == -9
    [left] = list(ckpt.iterdir())
    assert target_of(left) == ckpt / "cycle-1.pt" and left.stat().st_size == 1 << 20
    Session.open(session.folder, read_only=True)
    assert left.exists()
    session.close()
    old = time.time() - 60
    keep = session.folder / ".notes.part"  # not a name atomic_path makes
    keep.write_text("mine")
    with atomic_path(ckpt / "cycle-2.pt") as live:  # this process, saving now
        live.write_bytes(b"x")
        os.utime(live, (old, old))
        Session.open(session.folder).close()
        assert not left.exists() and live.exists() and keep.exists()
    assert (ckpt / "cycle-2.pt").read_bytes() == b"x"
    assert remove_stale(session.folder) == []
    with pytest.raises(ValueError, match="folder: .* is not a folder"):
        remove_stale(tmp_path / "nope")


# -- QuPath GeoJSON --------------------------------------------------------------------------------

_SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]


def _feature(geometry=None, properties=None) -> dict:
    return {"type": "Feature", "geometry": geometry or {"type": "Polygon", "coordinates": _SQUARE},
            "properties": {} if properties is None else properties}


def _polygon(*points) -> dict:
    return {"type": "Polygon", "coordinates": [[*points, points[0]]]}


@pytest.mark.parametrize(("feature", "fragment"), [
    (_feature(properties="abc"), "feature 0: properties must be an object"),
    (_feature(properties=[1, 2]), "feature 0: properties must be an object"),
    (_feature(_polygon([0, 0], [1e19, 0], [1e19, 100])), r"feature 0: Polygon coordinates out of range \(\|value\| up to 1e\+19"),
    (_feature(_polygon([0, 0], [-3e9, 0], [5, 5])), "feature 0: Polygon coordinates out of range"),
    (_feature(_polygon([0, 0], [float("nan"), 0], [5, 5])), "feature 0: Polygon.*finite coordinates"),
    (_feature(_polygon([0, 0], [float("inf"), 0], [5, 5])), "feature 0: Polygon.*finite coordinates"),
    (_feature(_polygon(["a", 0], [1, 0], [5, 5])), "feature 0: malformed Polygon coordinates"),
    (_feature(properties={"classification": 5}), "feature 0: classification must be an object or a string"),
    ("not a feature", "feature 0: not a GeoJSON object"),
])
@pytest.mark.parametrize("reader", ["read_regions", "read_labeled_regions", "plan_import"])
def test_a_malformed_qupath_feature_is_a_value_error_naming_it(tmp_path, reader, feature, fragment):
    import json

    from napari_alregions import io_qupath

    if reader == "read_regions" and (feature == "not a feature" or "classification" in str(feature)):
        pytest.skip("read_regions reads polygons and our own properties only")
    path = tmp_path / "f.geojson"
    # json writes NaN and Infinity bare, as QuPath does
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(), feature]}))
    fragment = fragment.replace("feature 0", "feature 1")
    with pytest.raises(ValueError, match=fragment):
        if reader == "plan_import":
            io_qupath.plan_import(io_qupath.read_geojson(path), classes=("background", "tumour"))
        else:
            getattr(io_qupath, reader)(path)


def test_geometry_collections_and_other_geometry_are_skipped_and_counted(tmp_path, caplog):
    import json

    from napari_alregions import io_qupath

    points = {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]}]}
    mixed = {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [1, 2]},
                                                          {"type": "Polygon", "coordinates": _SQUARE}]}
    features = [_feature(), _feature(points), _feature(mixed), _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]})]
    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    plan = io_qupath.plan_import(io_qupath.read_geojson(path), classes=("background", "tumour"))
    # the collection with a polygon is that polygon; the others are counted
    assert (len(plan.regions), plan.skipped) == (2, {"not polygonal": 2})
    assert plan.message == "4 annotations: 2 regions, 0 labels; skipped 2 non-polygonal annotations"
    with caplog.at_level("WARNING", logger="napari_alregions.io_qupath"):
        assert [(r.x, r.y, r.w, r.h) for r in io_qupath.read_regions(path)] == [(0, 0, 100, 100)]
    assert "skipped 3 of 4 features that are not Polygon or MultiPolygon (GeometryCollection: 2, LineString: 1)" in caplog.text


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "not valid JSON"), (b"{not json", "not valid JSON"), (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b'{"type": "Topology"}', "not a GeoJSON FeatureCollection"), (b'{"type": "FeatureCollection", "features": 3}',
                                                                   "'features' must be a list"),
    (b"42", "not a GeoJSON FeatureCollection"),
])
def test_a_file_that_is_no_geojson_is_a_value_error_naming_it(tmp_path, data, fragment):
    from napari_alregions import io_qupath

    path = tmp_path / "bad.geojson"
    path.write_bytes(data)
    for read in (io_qupath.read_regions, io_qupath.read_labeled_regions, io_qupath.read_geojson):
        with pytest.raises(ValueError, match=f"bad.geojson: {fragment}"):
            read(path)


def test_qupath_reading_is_bounded(tmp_path):
    import json

    from napari_alregions import io_qupath

    path = tmp_path / "f.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature()] * 20}))
    assert len(io_qupath.read_regions(path)) == 20
    with pytest.raises(ValueError, match=r"larger than the 0.0 MiB read at most.*pass max_bytes="):
        io_qupath.read_regions(path, max_bytes=1000)
    assert len(io_qupath.read_geojson(path, max_bytes=path.stat().st_size)) == 20
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        io_qupath.read_geojson(path, max_bytes=0)
    path.write_text("[" * 100_000 + "]" * 100_000)  # nesting that exhausts the parser's recursion
    with pytest.raises(ValueError, match="nested too deeply"):
        io_qupath.read_geojson(path)


# -- QuPath polygons as people draw them (issue 33): a defined result, never GEOS's error ----
# A 1024² slide labeled at level 1: label pixel (r, c) has its centre at level-0 (2c + 1, 2r + 1).
@pytest.fixture
def qupath_session(tmp_path, small_pool):
    from napari_alregions.project import AnnotationProject

    folder, manifest = small_pool
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    name = p.add_slide(folder / manifest["slides"][0]["image"])
    yield p, name
    p.close()


def _import_twice(tmp_path, p, slide, *features):
    """Import ``features`` (Tumor annotations unless they have properties), then the same
    file again: the second import must add nothing and change no label."""
    import json

    path = tmp_path / "drawn.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        f if "properties" in f else {"type": "Feature", "geometry": f,
                                     "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
        for f in features]}))
    counts = p.import_qupath(path, slide)
    accepted, labels = sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted), p.session.labels(slide).copy()
    again = p.import_qupath(path, slide)
    assert again["regions"] == 0 and again["message"] == counts["message"]
    assert sorted((r.x, r.y, r.w, r.h) for r in p.session.accepted) == accepted
    np.testing.assert_array_equal(p.session.labels(slide), labels)
    return counts, accepted, labels


def _centres(shape):
    r, c = np.mgrid[: shape[0], : shape[1]]
    return 2 * c + 1.0, 2 * r + 1.0  # level-0 x, y of each label pixel's centre


def test_a_bow_tie_polygon_is_its_two_triangles_and_imports_once(tmp_path, qupath_session):
    p, slide = qupath_session
    # crossing at (100, 50); no pixel centre lies on an edge (centres are odd, the edges' y = x / 2 or 100 - x / 2)
    bow_tie = {"type": "Polygon", "coordinates": [[[0, 0], [200, 100], [200, 0], [0, 100], [0, 0]]]}
    counts, accepted, labels = _import_twice(tmp_path, p, slide, bow_tie)
    assert counts["message"] == "1 annotation: 0 regions, 1 label; repaired 1 invalid polygon annotation (feature 0)"
    assert accepted == [(0, 0, 100, 100), (100, 0, 100, 100)]  # each triangle's box
    x, y = _centres(labels.shape)
    inside = ((y - x / 2) * (y - (100 - x / 2)) < 0) & (x < 200) & (y < 100)  # between the diagonals, left or right
    want = np.where(inside, 2, np.where((x < 200) & (y < 100), 1, 0))  # the new regions' rest is background
    np.testing.assert_array_equal(labels, want)


def test_a_ring_traced_twice_paints_its_whole_square(tmp_path, qupath_session):
    p, slide = qupath_session
    square = [[0, 0], [200, 0], [200, 200], [0, 200]]
    region = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]},
              "properties": {"objectType": "annotation"}}
    twice = {"type": "Polygon", "coordinates": [square + square + square[:1]]}
    counts, accepted, labels = _import_twice(tmp_path, p, slide, region, twice)
    assert "repaired 1 invalid polygon annotation (feature 1)" in counts["message"]
    assert accepted == [(0, 0, 256, 256)]
    want = np.zeros_like(labels)
    want[:128, :128] = 1
    want[:100, :100] = 2
    np.testing.assert_array_equal(labels, want)


def test_a_hole_crossing_its_outer_ring_is_cut_out_of_it(tmp_path, qupath_session):
    p, slide = qupath_session
    outer, hole = [[0, 0], [200, 0], [200, 200], [0, 200], [0, 0]], [[100, 50], [300, 50], [300, 150], [100, 150], [100, 50]]
    counts, accepted, labels = _import_twice(tmp_path, p, slide, {"type": "Polygon", "coordinates": [outer, hole]})
    assert counts["message"].endswith("repaired 1 invalid polygon annotation (feature 0)")
    assert accepted == [(0, 0, 200, 200)]
    want = np.zeros_like(labels)
    want[:100, :100] = 2
    want[25:75, 50:100] = 1  # the hole's part inside the square: background, as the rest of the new region
    np.testing.assert_array_equal(labels, want)


def test_rings_of_two_points_have_no_area(tmp_path, qupath_session):
    p, slide = qupath_session
    line = {"type": "Polygon", "coordinates": [[[10, 10], [300, 300], [10, 10]]]}
    with_line_hole = {"type": "Polygon", "coordinates": [[[400, 0], [600, 0], [600, 200], [400, 200], [400, 0]],
                                                         [[450, 50], [550, 150]]]}
    counts, accepted, labels = _import_twice(tmp_path, p, slide, line, with_line_hole)
    assert counts["message"] == "2 annotations: 0 regions, 1 label; skipped 1 annotation without area"
    assert accepted == [(400, 0, 200, 200)]
    want = np.zeros_like(labels)
    want[:100, 200:300] = 2  # the whole square: the hole has no area
    np.testing.assert_array_equal(labels, want)


def test_annotations_partly_outside_the_slide_are_cut_to_it(tmp_path, qupath_session):
    p, slide = qupath_session
    region = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[900, 0], [3000, 0], [3000, 64], [900, 64], [900, 0]]]},
              "properties": {"objectType": "annotation", "classification": {"name": "Region*", "color": [0, 0, 180]}}}
    tumour = {"type": "Polygon", "coordinates": [[[1000, 500], [1500, 500], [1500, 600], [1000, 600], [1000, 500]]]}
    # its bounding box meets the slide, the triangle does not (x + y >= 2050 > 1024 + 1024)
    corner = {"type": "Polygon", "coordinates": [[[1010, 1040], [1040, 1010], [1040, 1040], [1010, 1040]]]}
    counts, accepted, labels = _import_twice(tmp_path, p, slide, region, tumour, corner)
    assert counts["message"] == ("3 annotations: 1 region, 1 label; skipped 1 annotation outside the slide; "
                                 "cut 2 annotations to the slide (features 0, 1)")
    assert accepted == [(900, 0, 124, 64), (1000, 500, 24, 100)]
    want = np.zeros_like(labels)
    want[:32, 450:] = 1
    want[250:300, 500:] = 2
    np.testing.assert_array_equal(labels, want)
