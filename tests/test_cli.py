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
