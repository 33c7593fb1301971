"""OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3) slides: written here from the CMU fixture
following the NGFF specification, read back through open_slide."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_alregions.wsi import MAX_COMPRESSION, SlideError, open_slide
from napari_alregions.wsi_omezarr import is_ome_zarr
from tests.helpers import downsample2, smooth_rgb
from tests.test_wsi import aperio_svs  # noqa: F401  (the fixture)

#: Micrometres per unit, written out by hand (the reader has its own table).
PER_UM = {"micrometer": 1.0, "nanometer": 1000.0, "millimeter": 0.001}


def write_ome_zarr(path: Path, levels: list[np.ndarray], *, version: str = "0.5", axes: str = "cyx",
                   unit: str | None = "micrometer", mpp: float = 0.499, chunk: int = 256,
                   global_scale: bool = False, **extra) -> Path:
    """A minimal NGFF writer: ``levels`` are (H, W, 3) uint8, finest first, stored with
    ``axes`` (any of t, c, z, y, x); level i's y/x scale is ``mpp * 2**i`` in ``unit``
    (multiplied by a multiscale-wide scale of 2 with half the dataset scale if
    ``global_scale``). 0.4: zarr v2, '/' chunk keys, metadata in ``.zattrs``; 0.5: zarr v3,
    metadata under ``ome`` in ``zarr.json``."""
    v2 = version == "0.4"
    root = zarr.open_group(path, mode="w", zarr_format=2 if v2 else 3)
    types = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    datasets = []
    for i, img in enumerate(levels):
        have = "yxc" + "".join(a for a in axes if a in "tz")  # singleton t, z where asked
        arr = img.reshape(img.shape + (1,) * (len(have) - 3))
        arr = np.ascontiguousarray(arr.transpose([have.index(a) for a in axes]))
        chunks = tuple(chunk if a in "yx" else n for a, n in zip(axes, arr.shape))
        kw = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if v2 else {"dimension_names": list(axes)}
        root.create_array(f"s{i}", shape=arr.shape, dtype=arr.dtype, chunks=chunks, **kw)[...] = arr
        px = mpp * 2**i * (PER_UM[unit] if unit else 1.0) / (2 if global_scale else 1)
        scale = [px if a in "yx" else 1.0 for a in axes]
        datasets.append({"path": f"s{i}", "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    ms = {"name": "cmu", "axes": [{"name": a, "type": types[a], **({"unit": unit} if unit and a in "yxz" else {})}
                                  for a in axes], "datasets": datasets}
    if global_scale:
        ms["coordinateTransformations"] = [{"type": "scale", "scale": [2.0 if a in "yx" else 1.0 for a in axes]}]
    ms.update(extra)
    if v2:
        root.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.fixture(scope="module")
def cmu_levels(aperio_svs):  # noqa: F811
    with open_slide(aperio_svs) as s:
        level0 = s.read_region(0, 0, s.shape[1], s.shape[0])
    return [level0, downsample2(level0), downsample2(downsample2(level0))]


@pytest.mark.parametrize("version, axes, unit", [
    ("0.4", "cyx", "micrometer"), ("0.5", "cyx", "nanometer"), ("0.4", "tczyx", "millimeter"), ("0.5", "yxc", "micrometer"),
])
def test_ome_zarr_from_the_cmu_fixture_reads_its_levels_scale_and_pixels(tmp_path, cmu_levels, version, axes, unit):
    path = write_ome_zarr(tmp_path / "cmu.ome.zarr", cmu_levels, version=version, axes=axes, unit=unit)
    assert is_ome_zarr(path)
    with open_slide(path) as s:
        assert s.info.format == f"ome-zarr {version}" and s.info.pyramidal
        assert s.info.level_shapes == ((2967, 2220), (1483, 1110), (741, 555))
        assert s.downsamples == pytest.approx((1.0, 2.0, 4.0), abs=1e-9)  # the scales', not the shapes' 2.0003
        assert s.mpp == pytest.approx(0.499, rel=1e-9)
        assert s.info.tile_shape == (256, 256)
        for i, want in enumerate(cmu_levels):
            assert isinstance(s.levels[i], da.Array) and s.levels[i].chunksize[:2] == (256, 256)
            np.testing.assert_array_equal(np.asarray(s.levels[i]), want)
        np.testing.assert_array_equal(s.read_region(1000, 2000, 300, 200), cmu_levels[0][2000:2200, 1000:1300])
        np.testing.assert_array_equal(s.read_region(1000, 2000, 100, 90, level=2), cmu_levels[2][500:590, 250:350])
        np.testing.assert_array_equal(s.read_region(2100, 2900, 200, 100, fill=7)[67:, 120:], 7)  # past the edge


@pytest.mark.parametrize("name, version", [("cmu_crop_ngff04.ome.zarr", "0.4"), ("cmu_crop_ngff05.ome.zarr", "0.5")])
def test_ome_zarr_written_by_ome_zarr_py_opens_with_its_levels_and_scale(aperio_svs, name, version):  # noqa: F811
    """Files ome-zarr-py 0.18 wrote (scripts/make_omezarr_fixture.py): a 259x387 crop of the
    CMU fixture, its own 2x and 4x resizes, 0.499 µm, scales from the levels' true sizes."""
    path = Path(__file__).parent / "data" / name
    with open_slide(aperio_svs) as svs, open_slide(path) as s:
        assert s.info.format == f"ome-zarr {version}" and s.mpp == pytest.approx(0.499)
        assert s.info.level_shapes == ((387, 259), (193, 129), (96, 64)) and s.info.tile_shape == (128, 128)
        # ome-zarr-py writes each level's true pixel size: 387 / 193 rows, 259 / 129 columns
        assert s.downsamples == pytest.approx((1.0, (387 / 193 + 259 / 129) / 2, (387 / 96 + 259 / 64) / 2))
        np.testing.assert_array_equal(np.asarray(s.levels[0]), svs.read_region(900, 1200, 259, 387))
        group = zarr.open_group(path, mode="r")
        for i in range(3):  # the coarser levels are ome-zarr-py's resizes: as stored, channels last
            np.testing.assert_array_equal(np.asarray(s.levels[i]), np.moveaxis(group[f"s{i}"][...], 0, -1))
        np.testing.assert_array_equal(s.read_region(100, 200, 40, 30, level=1), np.moveaxis(group["s1"][:, 100:130, 50:90], 0, -1))


def test_multiscale_wide_scale_multiplies_and_no_unit_means_no_mpp(tmp_path):
    img = smooth_rgb(300, 260)
    levels = [img, downsample2(img)]
    with open_slide(write_ome_zarr(tmp_path / "g.zarr", levels, global_scale=True, mpp=0.25)) as s:
        assert s.mpp == pytest.approx(0.25) and s.downsamples == pytest.approx((1.0, 2.0))
    with open_slide(write_ome_zarr(tmp_path / "n.zarr", levels, unit=None)) as s:
        assert s.mpp is None and s.downsamples == pytest.approx((1.0, 2.0))


def test_one_level_gets_a_computed_pyramid(tmp_path):
    img = smooth_rgb(2100, 1300)
    with open_slide(write_ome_zarr(tmp_path / "one.zarr", [img], version="0.4")) as s:
        assert not s.info.pyramidal and s.info.level_shapes == ((2100, 1300), (1050, 650), (525, 325))
        np.testing.assert_array_equal(np.asarray(s.levels[2]), downsample2(downsample2(img)))


def test_bioformats2raw_layout_opens_its_first_image(tmp_path):
    img = smooth_rgb(200, 300)
    root = tmp_path / "b2r.zarr"
    write_ome_zarr(root / "0", [img], version="0.4")
    zarr.open_group(root, mode="a", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    assert is_ome_zarr(root)
    with open_slide(root) as s:
        np.testing.assert_array_equal(s.read_region(0, 0, 300, 200), img)


def test_opening_reads_metadata_only(tmp_path):
    """A damaged chunk goes unnoticed until its pixels are read, then names level and rows."""
    img = smooth_rgb(600, 600)
    path = write_ome_zarr(tmp_path / "lazy.zarr", [img, downsample2(img)], chunk=256)
    (path / "s0" / "c" / "0" / "1" / "1").write_bytes(b"not zstd")  # the chunk at rows, cols 256:512
    with open_slide(path) as s:
        assert s.info.level_shapes == ((600, 600), (300, 300))
        np.testing.assert_array_equal(s.read_region(0, 0, 256, 256), img[:256, :256])
        with pytest.raises(SlideError, match=r"cannot decode level 0 rows 256:300"):
            s.read_region(0, 256, 300, 44)


def _edit(path: Path, change) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    change(meta["attributes"]["ome"]["multiscales"][0])
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("what, change, match", [
    ("path outside", lambda ms: ms["datasets"][0].update(path="../s0"), "relative 'path' inside"),
    ("scale vs shape", lambda ms: ms["datasets"][1]["coordinateTransformations"][0].update(scale=[1, 4.0, 4.0]),
     "metadata and the arrays disagree"),
    ("bad scale", lambda ms: ms["datasets"][0]["coordinateTransformations"][0].update(scale=[1, -1, 0.5]),
     "positive numbers"),
    ("coarse first", lambda ms: ms["datasets"].reverse(), "finest to the coarsest"),
    ("no x", lambda ms: ms["axes"][2].update(name="w"), "include 'y' and 'x'"),
    ("no datasets", lambda ms: ms.update(datasets=[]), "non-empty list"),
    ("too many", lambda ms: ms.update(datasets=ms["datasets"] * 33), "at most 64 levels"),
])
def test_bad_metadata_is_refused_by_name(tmp_path, what, change, match):
    img = smooth_rgb(128, 128)
    path = write_ome_zarr(tmp_path / "bad.zarr", [img, downsample2(img)], mpp=0.5, chunk=64)
    _edit(path, change)
    with pytest.raises(SlideError, match=match):
        open_slide(path)


def test_pixels_that_are_no_rgb_slide_are_refused(tmp_path):
    root = zarr.open_group(tmp_path / "grey16.zarr", mode="w")
    root.create_array("0", shape=(1, 64, 64), dtype="uint16", chunks=(1, 64, 64))[...] = 1
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    ds = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": ds}]}
    with pytest.raises(SlideError, match="uint16 pixels are not supported"):
        open_slide(tmp_path / "grey16.zarr")
    del root["0"]
    root.create_array("0", shape=(1, 64, 64), dtype="uint8", chunks=(1, 64, 64))[...] = 1
    with pytest.raises(SlideError, match="greyscale image"):
        open_slide(tmp_path / "grey16.zarr")
    img = np.stack([smooth_rgb(64, 64)] * 2)  # two z planes
    write_ome_zarr(tmp_path / "z2.zarr", [img[0]], axes="czyx")
    zarr.open_group(tmp_path / "z2.zarr", mode="a")["s0"].resize((3, 2, 64, 64))
    with pytest.raises(SlideError, match="'z' axis of length 2"):
        open_slide(tmp_path / "z2.zarr")


def test_declared_terapixels_without_stored_chunks_are_refused(tmp_path):
    root = zarr.open_group(tmp_path / "bomb.zarr", mode="w")
    root.create_array("0", shape=(3, 200_000, 200_000), dtype="uint8", chunks=(3, 1024, 1024))  # no chunk written
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    ds = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": ds}]}
    with pytest.raises(SlideError, match=f"more than {MAX_COMPRESSION:,}:1"):
        open_slide(tmp_path / "bomb.zarr")


def test_folders_that_are_no_slide_get_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideError, match="neither an OME-Zarr image .* nor a DICOM series"):
        open_slide(tmp_path / "empty")
    zarr.open_group(tmp_path / "plate.zarr", mode="w").attrs["ome"] = {"version": "0.5", "plate": {"wells": []}}
    with pytest.raises(SlideError, match="an OME-Zarr plate, not a multiscale image"):
        open_slide(tmp_path / "plate.zarr")
    with pytest.raises(SlideError, match="not an OME-Zarr image"):
        open_slide(tmp_path / "empty", backend="zarr")
    with pytest.raises(SlideError, match="a folder, not a TIFF"):
        open_slide(tmp_path / "empty", backend="tifffile")
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "missing.zarr", backend="zarr")


def test_cli_info_and_napari_reader_take_the_folder(tmp_path, capsys):
    from napari_alregions._reader import get_reader
    from napari_alregions.cli import main

    img = smooth_rgb(1500, 1100)
    path = write_ome_zarr(tmp_path / "s.ome.zarr", [img, downsample2(img)], unit="nanometer", mpp=0.5)
    assert main(["info", str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["format"] == "ome-zarr 0.5" and record["mpp"] == pytest.approx(0.5)
    assert [lvl["width"] for lvl in record["levels"]] == [1100, 550]
    reader = get_reader(str(path))
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "image" and kwargs["rgb"] and [d.shape for d in data] == [(1500, 1100, 3), (750, 550, 3)]
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))
    (tmp_path / "other").mkdir()
    assert get_reader(str(tmp_path / "other")) is None  # not ours: other readers get it


def test_imagecodecs_compressed_arrays_open(tmp_path, monkeypatch):
    """Writers that compress with imagecodecs' codecs (zarr v2): registered on demand."""
    import numcodecs
    from imagecodecs.numcodecs import Deflate

    from napari_alregions import wsi_omezarr

    img = smooth_rgb(96, 80)
    path = write_ome_zarr(tmp_path / "deflate.zarr", [img], version="0.4", chunk=32)
    meta = json.loads((path / "s0" / ".zarray").read_text())
    root = zarr.open_group(path, mode="a", zarr_format=2)
    del root["s0"]
    arr = root.create_array("s0", shape=meta["shape"], dtype="uint8", chunks=meta["chunks"], compressors=[Deflate()],
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[...] = np.moveaxis(img, -1, 0)
    assert json.loads((path / "s0" / ".zarray").read_text())["compressor"]["id"] == "imagecodecs_deflate"
    for key in [k for k in numcodecs.registry.codec_registry if k.startswith("imagecodecs_")]:
        monkeypatch.delitem(numcodecs.registry.codec_registry, key)
    monkeypatch.setattr(wsi_omezarr, "_IMAGECODECS_REGISTERED", False)
    with open_slide(path) as s:
        np.testing.assert_array_equal(s.read_region(0, 0, 80, 96), img)
    monkeypatch.setattr(wsi_omezarr, "_register_imagecodecs", lambda: False)  # as without imagecodecs
    for key in [k for k in numcodecs.registry.codec_registry if k.startswith("imagecodecs_")]:
        monkeypatch.delitem(numcodecs.registry.codec_registry, key)
    with pytest.raises(SlideError, match="imagecodecs_deflate.*a codec this environment lacks"):
        open_slide(path)


def test_a_session_with_an_ome_zarr_slide_reopens(tmp_path, cmu_levels):
    """An OME-Zarr slide is a folder: the session adds it, labels it and opens it again."""
    from napari_alregions.geometry import Region
    from napari_alregions.project import AnnotationProject

    path = write_ome_zarr(tmp_path / "cmu.ome.zarr", cmu_levels, version="0.5")
    p = AnnotationProject.create(tmp_path / "s", patch_size=32, level=1)
    name = p.add_slide(path)
    a = p.accept(Region(0, 0, 2 * p.stride, 2 * p.stride, slide=name, method="drawn"))
    lab = p.region_labels(a)
    lab[:3, :3] = 2
    p.write_region_labels(a, lab)
    p.close()
    q = AnnotationProject.open(tmp_path / "s")
    try:
        assert list(q.slides) == [name] and q.slides[name].mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(q.region_labels(a), lab)
    finally:
        q.close()
