"""``alregions session …`` and the QuPath script: the loop from the command line is the API's loop."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest

from napari_alregions.cli import build_parser, main
from napari_alregions.project import AnnotationProject, run
from napari_alregions.wsi import open_labels

from . import qupath_shapes as q

L = 256  # region side, level-0 px: 4 map cells of 64 px (patch 32 at level 1)


def _status(folder, capsys) -> dict:
    capsys.readouterr()
    assert main(["session", "status", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("alregions: error: ") and err.count("alregions: error") == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])
    return lines[-1]


def _tumour_file(path, truth: np.ndarray, boxes, *, extra: bool) -> int:
    """QuPath-shaped labels: a Tumor rectangle around the truth's tumour in each box
    (level-0 x, y, w, h), and with ``extra`` one more 96-px Tumor square on tumour away from
    every box (its bounding box becomes a region at import). Returns how many extra squares."""
    features = []
    for x, y, w, h in boxes:
        crop = truth[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] == 2
        if crop.any():
            ys, xs = np.nonzero(crop)
            features.append(q.feature(q.rectangle(x + 2 * int(xs.min()), y + 2 * int(ys.min()), 2 * int(xs.max() - xs.min() + 1),
                                                  2 * int(ys.max() - ys.min() + 1)), cls="Tumor"))
    if extra:
        for ty, tx in zip(*np.nonzero(truth == 2), strict=True):
            x0, y0 = int(tx) * 2 - 48, int(ty) * 2 - 48
            if x0 >= 0 and y0 >= 0 and not any(x0 < x + w and x < x0 + 96 and y0 < y + h and y < y0 + 96 for x, y, w, h in boxes):
                features.append(q.feature(q.rectangle(x0, y0, 96, 96), cls="Tumor"))
                path.write_text(q.text(features))
                return 1
    path.write_text(q.text(features))
    return 0


def _box(r) -> tuple:
    return (r["slide"], r["method"], r["x"], r["y"], r["w"], r["h"]) if isinstance(r, dict) else (r.slide, r.method, r.x, r.y, r.w, r.h)


def test_a_cycle_from_the_command_line_is_the_apis_cycle(tmp_path, small_pool, capsys):
    """new, add, propose random, accept/reject, import labels, retrain, predict, propose adaptive,
    export: the same regions, labels, maps and model as the same steps through AnnotationProject."""
    folder, manifest = small_pool
    entries = manifest["slides"][:2]
    paths = [folder / e["image"] for e in entries]
    names = [p.name for p in paths]
    truth = {p.name: np.asarray(open_labels(folder / e["mask"])[1]) for p, e in zip(paths, entries, strict=True)}
    cli, api = tmp_path / "cli", tmp_path / "api"

    # -- the command line
    assert main(["session", "new", str(cli), "--patch-size", "32"]) == 0
    assert main(["session", "add", str(cli), *map(str, paths)]) == 0
    capsys.readouterr()
    assert main(["session", "propose", str(cli), "-l", str(L), "--qupath", str(tmp_path / "p.geojson")]) == 2
    _one_line_error(capsys, "one file, 2 slides", "--slide")  # QuPath imports one file per image
    assert main(["session", "propose", str(cli), "--method", "random", "-l", str(L), "-k", "2", "--seed", "3"]) == 0
    st = _status(cli, capsys)
    assert st["cycle"] == 0 and st["model"]["quality"] == "untrained" and [s["name"] for s in st["slides"]] == names
    proposals = st["proposals"]
    assert [p["slide"] for p in proposals] == [names[0]] * 2 + [names[1]] * 2
    accept = [proposals[0]["uid"], proposals[1]["uid"][:8], proposals[2]["uid"]]  # a uid or its start
    assert main(["session", "accept", str(cli), *accept]) == 0
    assert main(["session", "reject", str(cli), proposals[3]["uid"][:6]]) == 0
    files, extra = {}, 0
    for i, n in enumerate(names):
        files[n] = tmp_path / f"labels_{i}.geojson"
        boxes = [(p["x"], p["y"], p["w"], p["h"]) for p in proposals[:3] if p["slide"] == n]  # the accepted
        extra += _tumour_file(files[n], truth[n], boxes, extra=True)
        assert main(["session", "import", str(cli), str(files[n]), "--slide", n]) == 0
    assert main(["session", "retrain", str(cli)]) == 0
    assert main(["session", "predict", str(cli)]) == 0
    assert main(["session", "propose", str(cli), "--method", "adaptive", "-l", str(L), "-k", "2"]) == 0
    assert main(["session", "export", str(cli), "--qupath", str(tmp_path / "cli_out"), "--priority"]) == 0
    st = _status(cli, capsys)

    # -- the same steps through the API
    p = AnnotationProject.create(api, patch_size=32)
    try:
        for path in paths:
            p.add_slide(path)
        random = [r for n in names for r in p.suggest(n, "random", region_size=L, k=2, seed=3)]
        for r in random[:3]:
            p.accept(r)
        p.dismiss(random[3])
        for n in names:
            p.import_qupath(files[n], n)
        summary = run(p.iter_retrain())
        for n in names:
            run(p.iter_priority(n))
        for n in names:
            run(p.iter_inputs(n, "adaptive"))
            p.suggest(n, "adaptive", region_size=L, k=2)
        api_files = p.export_qupath_all(tmp_path / "api_out", priority=True)

        back = AnnotationProject.open(cli, read_only=True)
        try:
            assert [_box(r) for r in back.session.accepted] == [_box(r) for r in p.session.accepted]
            assert extra and len(p.session.accepted) == 3 + extra  # the three accepted, a box around each extra label
            assert [_box(r) for n in names for r in back.proposals(n)] == [_box(r) for n in names for r in p.proposals(n)]
            assert [_box(r) for r in st["proposals"]] == [_box(r) for n in names for r in p.proposals(n)]
            assert [r["score"] for r in st["proposals"]] == pytest.approx([r.score for n in names for r in p.proposals(n)],
                                                                          abs=1e-6)
            for n in names:
                np.testing.assert_array_equal(back.session.labels(n), p.session.labels(n))
                np.testing.assert_allclose(back.maps[n].probabilities, p.maps[n].probabilities, atol=1e-6)
                assert back.maps[n].cycle == p.maps[n].cycle == 1
            assert back.session.history[-1]["val_auc"] == pytest.approx(summary["val_auc"], abs=1e-9)
        finally:
            back.close()
        assert st["cycle"] == p.cycle == 1 and st["annotated_pct"] == pytest.approx(p.annotated_pct(), abs=1e-4)
        assert st["model"]["quality"] == summary["quality"]
    finally:
        p.close()
    # labels are what the files say: tumour inside each Tumor rectangle, background elsewhere in a region
    for n in names:
        for f in json.loads(files[n].read_text())["features"]:
            (x0, y0), (x1, y1) = f["geometry"]["coordinates"][0][0], f["geometry"]["coordinates"][0][2]
            assert (p.session.labels(n)[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] == 2).all()
    def geometry(path):
        return sorted(json.dumps([f["geometry"], f["properties"]["objectType"],
                                  f["properties"].get("classification")]) for f in json.loads(path.read_text())["features"])

    assert sorted(f.name for f in (tmp_path / "cli_out").iterdir()) == sorted(f.name for f in api_files)
    for f in api_files:
        assert geometry(tmp_path / "cli_out" / f.name) == geometry(f)


@pytest.fixture
def session_dir(tmp_path, small_pool):
    folder, manifest = small_pool
    s = tmp_path / "s"
    assert main(["session", "new", str(s), "--patch-size", "32"]) == 0
    assert main(["session", "add", str(s), str(folder / manifest["slides"][0]["image"])]) == 0
    return s


def test_session_errors_are_one_line_with_exit_2(session_dir, small_pool, tmp_path, capsys):
    folder, manifest = small_pool
    s = str(session_dir)
    name = manifest["slides"][0]["image"]
    capsys.readouterr()
    cases = [
        (["session", "predict", s, "--slide", "nope.tif"], ["--slide: no slide 'nope.tif' in the session", name]),
        (["session", "propose", s, "-l", "100"], ["must be a multiple of the session's map stride (64 px)"]),
        (["session", "propose", s, "-l", "256", "--method", "best"], ["unknown method 'best'"]),
        (["session", "accept", s, "abcdef12"], ["no proposal 'abcdef12'"]),
        (["session", "accept", s, "ab"], ["at least 4 characters"]),
        (["session", "new", s], ["already holds a session"]),
        (["session", "add", s, str(folder / name)], [f"a slide named {name!r} is already in the session"]),
        (["session", "add", s, str(tmp_path / "missing.tif")], ["missing.tif: no such file"]),
        (["session", "export", s, "--qupath", str(tmp_path / "o"), "--priority"], ["no priority map yet", "predict first"]),
        (["session", "export", s, "--qupath", str(tmp_path / "o.geojson")], ["a folder"]),
        (["session", "retrain", s], ["no labels to train on"]),
        (["session", "status", str(tmp_path / "nowhere")], ["not a session folder"]),
        (["session", "new", str(tmp_path / "n"), "--classes", "tumour"], ["--classes"]),
        (["session", "import", s, str(tmp_path / "x.geojson"), "--slide", "nope.tif"], ["--slide: no slide 'nope.tif'"]),
    ]
    for argv, fragments in cases:
        assert main(argv) == 2, argv
        _one_line_error(capsys, *fragments)
    assert main(["session", "add", s, str(folder / name), "--exist-ok"]) == 0  # the same file: skipped
    assert "already in the session" in capsys.readouterr().out
    assert main(["session", "new", s, "--exist-ok"]) == 0
    assert main(["session", "new", str(tmp_path / "three"), "--classes", "background", "tumour,necrosis"]) == 0
    three = AnnotationProject.open(tmp_path / "three", read_only=True)
    assert three.classes == ("background", "tumour", "necrosis")
    three.close()
    # a usage error is one line too
    with pytest.raises(SystemExit) as stop:
        main(["session", "propose", s])
    assert stop.value.code == 2
    _one_line_error(capsys, "-l/--region-size")


def _lock(folder, pid: int) -> None:
    (folder / "session.lock").write_text(json.dumps({"host": platform.node(), "pid": pid, "since": "2026-01-01T00:00:00"}))


def test_session_verbs_respect_the_lock(session_dir, tmp_path, capsys):
    s = str(session_dir)
    _lock(session_dir, os.getppid())  # a live process of this host holds it
    capsys.readouterr()
    for argv in (["session", "predict", s], ["session", "accept", s, "abcd"]):
        assert main(argv) == 2
        _one_line_error(capsys, "open in another process")
    assert main(["session", "predict", s, "--read-only"]) == 2  # a verb that writes cannot
    _one_line_error(capsys, "--read-only")
    # verbs that only read take no lock: they run while the session is open elsewhere
    assert main(["session", "status", s]) == 0
    assert main(["session", "export", s, "--qupath", str(tmp_path / "ro")]) == 0
    assert (session_dir / "session.lock").is_file()  # still theirs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(session_dir, gone.pid)  # its process is gone: a stale lock, taken without asking
    capsys.readouterr()
    assert main(["session", "predict", s]) == 0
    assert "lock" in capsys.readouterr().err  # the CLI says it took a dead process's lock
    assert not (session_dir / "session.lock").exists()  # released after the command


def test_status_text_and_json_agree(session_dir, capsys):
    s = str(session_dir)
    assert main(["session", "propose", s, "--method", "random", "-l", "256", "-k", "2"]) == 0
    st = _status(session_dir, capsys)
    assert main(["session", "status", s]) == 0
    text = capsys.readouterr().out
    assert f"{len(st['slides'])} slide(s), cycle 0" in text and "untrained" in text
    for r in st["proposals"]:
        assert f"proposal {r['uid'][:8]}" in text and f"x={r['x']} y={r['y']} w={r['w']} h={r['h']}" in text


# -- the QuPath script ---------------------------------------------------------------------------------------------

def _script_commands() -> dict[str, list[str]]:
    """The command lines declared in the script's block, as Groovy lists of single-quoted strings."""
    from napari_alregions.cli_session import qupath_script

    text = qupath_script()
    block = text[text.index("def COMMANDS = ["):text.index("// ---- end of the command lines ----")]
    block = re.sub(r"//[^\n]*", "", block)
    commands = {key: re.findall(r"'([^']*)'", body) for key, body in re.findall(r"'(\w+)':\s*\[(.*?)\]", block, re.S)}
    assert set(commands) == {"new", "add", "import", "retrain", "propose", "class_map", "deep", "priority"}
    return commands


def _fill(parts: list[str], values: dict[str, object]) -> list[str]:
    return [str(values[p[1:-1]]) if p.startswith("{") and p.endswith("}") else p for p in parts]


def test_qupath_script_is_printed_and_its_commands_parse(capsys):
    from napari_alregions.cli_session import qupath_script

    assert main(["qupath-script"]) == 0
    assert capsys.readouterr().out == qupath_script()
    commands = _script_commands()
    placeholders = {p for parts in commands.values() for p in parts if "{" in p}
    assert placeholders == {"{session}", "{image}", "{slide}", "{annotations}", "{proposals}", "{method}",
                            "{region_size}", "{k}", "{class_map}"}  # each a whole argument: filled as one
    values = {p[1:-1]: "1" for p in placeholders}
    for key in ("new", "add", "import", "retrain", "propose"):
        extra = {"import": "class_map", "retrain": "deep", "propose": "priority"}.get(key)
        argv = _fill(commands[key] + (commands[extra] if extra else []), values)
        args = build_parser().parse_args(argv)  # every option exists: no SystemExit
        assert args.command == "session" and args.verb == key
    # the header lists the same command lines as the block
    extras = {"import": "class_map", "retrain": "deep", "propose": "priority"}
    header = [line.strip(" *") for line in qupath_script().splitlines() if line.startswith(" *   alregions session ")]
    want = []
    for key in ("new", "add", "import", "retrain", "propose"):
        words = [p[1:-1].upper() if p.startswith("{") else p for p in commands[key]]
        if key in extras:
            words.append("[" + " ".join(p[1:-1].upper() if p.startswith("{") else p for p in commands[extras[key]]) + "]")
        want.append("alregions " + " ".join(words))
    assert header == want
    # the script fills exactly these values, and reads QuPath through these calls
    text = qupath_script()
    for call in ("exportObjectsToGeoJson(mine, values.annotations, 'FEATURE_COLLECTION')", "importObjectsFromFile(values.proposals)",
                 "getServer().getURIs()", "getTileObjects()", "hierarchy.removeObjects(old, true)"):
        assert call in text
    assert set(re.findall(r"(\w+): ", text[text.index("def values = ["):text.index("// a command line")])) == {
        p[1:-1] for p in placeholders}


def _features(path) -> list[dict]:
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert data["type"] == "FeatureCollection"
    return data["features"]


def _check_qupath_feature(f: dict, extent: tuple[int, int]) -> None:
    """What QuPath's reader (QuPathTypeAdapters.PathObjectTypeAdapter) needs of a feature."""
    assert f["type"] == "Feature" and uuid.UUID(f["id"])
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
    assert all(0 <= x <= extent[0] and 0 <= y <= extent[1] for x, y in ring)
    props = f["properties"]
    assert props["objectType"] in ("annotation", "tile")
    if "classification" in props:
        assert isinstance(props["classification"]["name"], str) and len(props["classification"]["color"]) == 3
    assert all(isinstance(v, (int, float, str)) for v in props.get("measurements", {}).values())
    assert all(isinstance(v, str) for v in props.get("metadata", {}).values())


def test_the_qupath_scripts_commands_run_a_loop_on_qupath_files(tmp_path, capsys):
    """The script's command lines, filled as the script fills them for an image of the
    QuPath-shaped test case (tests/data/hgsc): a first run without annotations, then a run
    after the user made a proposal a Region*, drew Tumor (and Other) in it, and kept the case's Tumor
    annotation; each time the file the script imports back is valid QuPath GeoJSON."""
    from pathlib import Path

    from napari_alregions.io_qupath import plan_import

    commands = _script_commands()
    image = Path(__file__).parent / "data" / "hgsc" / "hgsc_train.tif"
    session = tmp_path / "alregions-session"
    exchange = session / "qupath"
    values = {"session": session, "image": image, "slide": image.name, "method": "adaptive", "region_size": 256,
              "k": 3, "class_map": "Stroma=background,Other=",
              "annotations": exchange / f"{image.name}.annotations.geojson",
              "proposals": exchange / f"{image.name}.proposals.geojson"}

    def script_run(annotations: list[dict] | None) -> list[dict]:
        """One run of the script: what it runs for an image with these annotations (None: none)."""
        assert main(_fill(commands["new"], values)) == 0
        assert main(_fill(commands["add"], values)) == 0
        exchange.mkdir(exist_ok=True)
        if annotations is not None:
            values["annotations"].write_text(q.text(annotations))  # exportObjectsToGeoJson(..., 'FEATURE_COLLECTION')
            assert main(_fill(commands["import"] + commands["class_map"], values)) == 0
            assert main(_fill(commands["retrain"], values)) == 0
        assert main(_fill(commands["propose"] + commands["priority"], values)) == 0
        return _features(values["proposals"])

    w, h = 1500, 750
    first = script_run(None)
    assert len(first) == 3 and all(f["properties"]["classification"]["name"] == "Proposal: random" for f in first)
    for f in first:
        _check_qupath_feature(f, (w, h))
    assert "no priority map" in capsys.readouterr().out

    # in QuPath: the proposals imported, one made a Region* with Tumor and Other drawn in it, the case's Tumor kept
    import shapely

    case = json.loads((image.with_suffix(".geojson")).read_text())["features"]
    outline = shapely.Polygon(case[0]["geometry"]["coordinates"][0])
    # a proposal with a 32-px square clear of the case's Tumor outline: the user draws Other there
    pick, (ox, oy) = next((i, (x, y)) for i, f in enumerate(first)
                          for y in range(int(f["geometry"]["coordinates"][0][0][1]), int(f["geometry"]["coordinates"][0][2][1]) - 31, 32)
                          for x in range(int(f["geometry"]["coordinates"][0][0][0]), int(f["geometry"]["coordinates"][0][2][0]) - 31, 32)
                          if not shapely.box(x, y, x + 32, y + 32).intersects(outline))
    qupath = q.reexport(first)
    region = qupath[pick]
    region["properties"]["classification"] = q.path_class("Region*", (0, 0, 180))
    x0, y0 = region["geometry"]["coordinates"][0][0]
    tx = x0 if ox - x0 >= 128 else x0 + 160  # a Tumor square beside the Other one
    tumour = q.feature(q.rectangle(tx, y0, 64, 64), cls="Tumor")
    other = q.feature(q.rectangle(ox, oy, 32, 32), cls="Other")  # skipped (--class-map Other=)
    second = script_run(qupath + [tumour, other] + case)
    out = capsys.readouterr().out
    assert "added 2 region(s)" in out and "1 region annotation(s); 1 box(es) around labels outside every region" in out
    annotations = [f for f in second if f["properties"]["objectType"] == "annotation"]
    tiles = [f for f in second if f["properties"]["objectType"] == "tile"]
    assert len(annotations) == 3 and {f["properties"]["classification"]["name"] for f in annotations} == {"Proposal: adaptive"}
    assert tiles and all(0 <= f["properties"]["measurements"]["priority"] <= 1 for f in tiles)
    for f in second:
        _check_qupath_feature(f, (w, h))
    # QuPath's next export holds these again: the import skips them (proposals, tiles)
    plan = plan_import(q.reexport(second), classes=("background", "tumour"))
    assert plan.skipped == {"proposal": 3, "tile": len(tiles)} and not plan.regions and not plan.labeled
    back = AnnotationProject.open(session, read_only=True)
    try:
        assert back.cycle == 1 and len(back.session.accepted) == 2
        # the proposal the user made a Region* is accepted as that proposal (its selector recorded)
        assert (back.session.accepted[0].uid, back.session.accepted[0].method) == (first[pick]["id"], "random")
        labels = back.session.labels(image.name)
        assert (labels[y0 // 2 : (y0 + 64) // 2, tx // 2 : (tx + 64) // 2] == 2).all()
        assert (labels[oy // 2 : (oy + 32) // 2, ox // 2 : (ox + 32) // 2] == 1).all()  # Other skipped: background
    finally:
        back.close()
    # the script run again on the same annotations adds nothing twice
    script_run(qupath + [tumour, other] + case)
    assert "added 0 region(s)" in capsys.readouterr().out


def _groovy_env() -> dict[str, str] | None:
    """The environment to run ``groovy`` in (JAVA_HOME set from the ``java`` found), or None
    when no ``groovy`` is installed."""
    import shutil
    from pathlib import Path

    groovy, java = shutil.which("groovy"), shutil.which("java")
    if groovy is None or java is None:
        return None
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", str(Path(java).resolve().parent.parent))
    return env


def _with_settings(script: str, **values: str) -> str:
    """The script with its settings lines (``def NAME = ...``) set to ``values`` (Groovy literals)."""
    for name, value in values.items():
        script, n = re.subn(rf"^def {name} = [^/\n]*?(?=\s*(//|$))", f"def {name} = {value}", script, count=1, flags=re.M)
        assert n == 1, name
    return script


@pytest.mark.slow
@pytest.mark.skipif(_groovy_env() is None, reason="needs a groovy command (scripts/install-sysdeps.sh installs Debian's) and java")
def test_the_qupath_script_runs_under_groovy_with_qupaths_calls_stood_in_for(tmp_path):
    """The script itself, run by Groovy (not QuPath: tests/qupath_stub.groovy stands in for the
    QP calls it makes) with the real alregions command: three runs on the QuPath-shaped case,
    the hierarchy kept between them as QuPath would keep it."""
    from pathlib import Path

    from napari_alregions.cli_session import qupath_script

    here = Path(__file__).parent
    image = here / "data" / "hgsc" / "hgsc_train.tif"
    wrapper = tmp_path / "alregions"
    wrapper.write_text(f"#!/bin/sh\nexec '{sys.executable}' -m napari_alregions.cli \"$@\"\n")
    wrapper.chmod(0o755)
    session = tmp_path / "session"
    script = tmp_path / "alregions.groovy"
    script.write_text(_with_settings(qupath_script(), ALREGIONS=f"'{wrapper}'", SESSION=f"'{session}'", REGION_SIZE="256",
                                     K="3", CLASS_MAP="'Other='"))
    env = _groovy_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(here.parent / "src"), env.get("PYTHONPATH")) if p)

    def qupath(objects: list[dict]) -> tuple[list[dict], str]:
        (tmp_path / "in.geojson").write_text(q.text(objects))
        done = subprocess.run(["groovy", str(here / "qupath_stub.groovy"), str(script), str(image), str(tmp_path / "in.geojson"),
                               str(tmp_path / "out.geojson")], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((tmp_path / "out.geojson").read_text())["features"], done.stdout

    def kind(objects, object_type, cls=None):
        return [f for f in objects if f["properties"]["objectType"] == object_type
                and (cls is None or (f["properties"].get("classification") or {}).get("name") == cls)]

    objects, log = qupath([])
    assert "> " + str(wrapper) + " session new " + str(session) in log
    assert len(kind(objects, "annotation", "Proposal: random")) == 3 and not kind(objects, "tile")
    region = objects[0]
    region["properties"]["classification"] = q.path_class("Region*", (0, 0, 180))
    x0, y0 = region["geometry"]["coordinates"][0][0]
    case = json.loads(image.with_suffix(".geojson").read_text())["features"]
    objects += [q.feature(q.rectangle(x0 + 32, y0 + 32, 64, 64), cls="Tumor"),
                q.feature(q.rectangle(x0, y0, 16, 16), cls="Other")] + case
    objects, log = qupath(objects)
    assert "added 2 region(s)" in log and "cycle 1: fast learner" in log
    proposals, tiles = kind(objects, "annotation", "Proposal: adaptive"), kind(objects, "tile")
    # the last run's proposals are gone (the one made a Region* is the user's now), the new ones and the map came
    assert len(proposals) == 3 and not kind(objects, "annotation", "Proposal: random")
    assert kind(objects, "annotation", "Region*") == [region] and tiles
    objects, log = qupath(objects)  # again: the tiles and proposals are replaced, not added
    assert len(kind(objects, "tile")) == len(tiles) and len(kind(objects, "annotation", "Proposal: adaptive")) == 3
    assert "added 0 region(s)" in log and "cycle 2" in log
