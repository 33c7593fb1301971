"""The OpenSlide backend: chosen by probing, same pixels as tifffile where both read."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_alregions import wsi
from napari_alregions.wsi import SlideError, open_slide
from tests.helpers import downsample2, smooth_rgb, write_pyramid
from tests.test_wsi import aperio_svs  # noqa: F401  (the fixture)

openslide = pytest.importorskip("openslide")


def _pages_pyramid(path, levels, mpp=0.5):
    """A generic tiled TIFF, levels as pages (as OpenSlide's generic-tiff wants), deflate."""
    with tifffile.TiffWriter(path) as tif:
        for i, lvl in enumerate(levels):
            tif.write(lvl, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1 if i else 0,
                      resolution=(1e4 / (mpp * 2**i), 1e4 / (mpp * 2**i)), resolutionunit="CENTIMETER")


def test_both_backends_read_the_same_pixels(tmp_path):
    img = smooth_rgb(600, 520)
    levels = [img, downsample2(img), downsample2(downsample2(img))]
    _pages_pyramid(tmp_path / "pages.tif", levels)
    with open_slide(tmp_path / "pages.tif", backend="tifffile") as a, open_slide(tmp_path / "pages.tif", backend="openslide") as b:
        assert a.info.format == "tiff" and b.info.format == "openslide:generic-tiff"
        assert a.info.level_shapes == b.info.level_shapes == ((600, 520), (300, 260), (150, 130))
        assert b.mpp == pytest.approx(0.5) and b.info.tile_shape == (128, 128)
        for i, want in enumerate(levels):
            np.testing.assert_array_equal(np.asarray(b.levels[i]), want)
            np.testing.assert_array_equal(np.asarray(a.levels[i]), want)
        np.testing.assert_array_equal(b.read_region(100, 40, 33, 77, level=1), levels[1][20:97, 50:83])
        np.testing.assert_array_equal(b.read_region(500, 580, 64, 64, fill=0)[20:, 20:], 0)  # outside: fill
        assert b.tissue_fraction() == a.tissue_fraction()


def test_auto_takes_tifffile_for_tiffs_and_openslide_for_the_rest(tmp_path, monkeypatch):
    img = smooth_rgb(300, 300)
    write_pyramid(tmp_path / "subifds.tif", [img, downsample2(img)])  # OpenSlide would see level 0 only
    with open_slide(tmp_path / "subifds.tif") as s:
        assert s.info.format == "tiff" and s.level_count == 2
    opened = []
    real = wsi._open_openslide
    monkeypatch.setattr(wsi, "_openslide_format", lambda path: "mirax")  # as for an MRXS index file
    monkeypatch.setattr(wsi, "_open_openslide", lambda path: opened.append(path) or real(tmp_path / "subifds.tif"))
    (tmp_path / "slide.mrxs").write_text("[GENERAL]\nSLIDE_VERSION = 01.02\n")
    open_slide(tmp_path / "slide.mrxs").close()
    assert opened == [tmp_path / "slide.mrxs"]


def test_without_openslide_other_formats_name_the_extra(tmp_path, monkeypatch):
    (tmp_path / "slide.mrxs").write_text("[GENERAL]\n")
    monkeypatch.setattr(wsi, "_openslide_module", lambda: None)
    with pytest.raises(SlideError, match=r"not a readable TIFF.*napari-alregions\[openslide\]"):
        open_slide(tmp_path / "slide.mrxs")
    with pytest.raises(SlideError, match=r"needs OpenSlide"):
        open_slide(tmp_path / "slide.mrxs", backend="openslide")
    with pytest.raises(ValueError, match="backend"):
        open_slide(tmp_path / "slide.mrxs", backend="bioformats")


def test_openslide_declines_what_it_does_not_know(tmp_path):
    from napari_alregions._reader import get_reader

    (tmp_path / "notes.mrxs").write_text("hello")
    assert get_reader(str(tmp_path / "notes.mrxs")) is None
    with pytest.raises(SlideError, match="not a readable TIFF"):
        open_slide(tmp_path / "notes.mrxs")
    with pytest.raises(SlideError, match="OpenSlide does not recognise"):
        open_slide(tmp_path / "notes.mrxs", backend="openslide")


def test_real_aperio_svs_same_level0_pixels_by_both_backends(aperio_svs):  # noqa: F811
    with open_slide(aperio_svs, backend="tifffile") as a, open_slide(aperio_svs, backend="openslide") as b:
        assert b.info.format == "openslide:aperio" and b.shape == a.shape == (2967, 2220)
        assert b.mpp == pytest.approx(0.499) == a.mpp
        np.testing.assert_array_equal(np.asarray(b.levels[0]), np.asarray(a.levels[0]))


def test_prediction_through_openslide_equals_tifffile(tmp_path):
    import torch

    from napari_alregions.model import ModelSpec, predict_probability_map

    img = smooth_rgb(512, 512, seed=2)
    _pages_pyramid(tmp_path / "pages.tif", [img, downsample2(img)])
    spec = ModelSpec(classes=("background", "tumour"), patch_size=32, level=1)
    torch.manual_seed(0)
    net = spec.build().eval()
    maps = []
    for backend in ("tifffile", "openslide"):
        with open_slide(tmp_path / "pages.tif", backend=backend) as s:
            maps.append(predict_probability_map(s, [net], spec, stride=64, device="cpu", workers=1))
    assert maps[0].shape == (8, 8, 2) and np.isfinite(maps[0]).any()
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-6, equal_nan=True)


def test_synthetic_slides_are_pyramids_to_openslide(tmp_path):
    """Our own slides (and their masks) as OpenSlide's generic-TIFF driver reads them: every level, same pixels."""
    from napari_alregions.synthetic import slide_spec, write_slide

    spec = slide_spec(0, size=(1300, 1100), seed=3)
    write_slide(spec, tmp_path / "s.tif", tmp_path / "m.tif")
    osr = openslide.OpenSlide(str(tmp_path / "s.tif"))
    try:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        with open_slide(tmp_path / "s.tif", backend="tifffile") as ours:
            assert osr.level_count == ours.level_count == 3
            assert tuple((h, w) for w, h in osr.level_dimensions) == ours.info.level_shapes == ((1300, 1100), (650, 550), (325, 275))
            assert osr.level_downsamples == pytest.approx(ours.downsamples)
            for level, x, y, w, h in [(0, 0, 0, 256, 256), (0, 700, 900, 300, 200), (0, 1000, 1200, 100, 100),
                                        (1, 260, 380, 200, 150), (1, 0, 0, 550, 650), (2, 40, 500, 100, 80)]:
                theirs = np.asarray(osr.read_region((x, y), level, (w, h)))
                assert (theirs[..., 3] == 255).all()
                np.testing.assert_array_equal(theirs[..., :3], ours.read_region(x, y, w, h, level=level))
    finally:
        osr.close()
    mask = openslide.OpenSlide(str(tmp_path / "m.tif"))
    try:
        assert mask.level_count == 3
    finally:
        mask.close()
