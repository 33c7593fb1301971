"""Opening builds no level until it is used; the decoded-tile cache stops keeping tiles
that a read pattern never reuses and keeps them again when it does."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_alregions import wsi
from napari_alregions.wsi import open_slide

from .helpers import downsample2, smooth_rgb, write_pyramid
from .test_wsi import _count_decodes


@pytest.fixture
def stores(monkeypatch) -> list[tuple[int, int]]:
    """(series, level) of every zarr store the slides open, in order."""
    opened: list[tuple[int, int]] = []
    real = wsi.open_level
    monkeypatch.setattr(wsi, "open_level", lambda tif, *, series, level: opened.append((series, level)) or real(
        tif, series=series, level=level))
    return opened


@pytest.mark.parametrize("layout", ["pages", "subifds"])
def test_open_builds_no_level_until_one_is_used(tmp_path, stores, layout):
    levels = [smooth_rgb(600, 700, seed=4)]
    for _ in range(2):
        levels.append(downsample2(levels[-1]))
    path = tmp_path / "p.tif"
    if layout == "subifds":
        write_pyramid(path, levels, compression="zlib", tile=(128, 128))
    else:
        with tifffile.TiffWriter(path) as tif:
            for i, lvl in enumerate(levels):
                tif.write(lvl, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=1 if i else 0,
                          metadata=None)
    with open_slide(path) as slide:
        # metadata, patch reads and the tissue mask need no level's graph
        assert slide.level_count == len(slide.levels) == 3
        assert slide.info.level_shapes == ((600, 700), (300, 350), (150, 175))
        np.testing.assert_array_equal(slide.read_region(64, 32, 100, 50, level=1), levels[1][16:66, 32:132])
        assert slide.tissue_mask().shape == (600, 700)
        assert stores == []
        lvl = slide.levels[1]
        assert isinstance(lvl, da.Array) and lvl.shape == (300, 350, 3)
        np.testing.assert_array_equal(lvl.compute(), levels[1])
        assert slide.levels[1] is lvl and slide.levels[-2] is lvl and len(stores) == 1
        for got, want in zip(slide.levels, levels, strict=True):  # iterating builds the rest
            np.testing.assert_array_equal(got.compute(), want)
        assert len(stores) == 3 and [a.shape for a in slide.levels[1:]] == [(300, 350, 3), (150, 175, 3)]
        with pytest.raises(IndexError):
            slide.levels[3]


def test_a_coarsened_level_builds_only_the_levels_above_it(tmp_path, stores):
    img = smooth_rgb(2500, 3001, seed=1)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=64)
    with open_slide(path) as slide:
        assert slide.info.level_shapes == ((2500, 3001), (1250, 1500), (625, 750)) and stores == []
        ref1 = downsample2(img)
        np.testing.assert_array_equal(slide.read_region(400, 200, 50, 40, level=1), ref1[100:140, 200:250])
        assert stores == [(0, 0)]  # level 0's store, for level 1's pooling
        np.testing.assert_array_equal(slide.levels[2].compute(), downsample2(ref1))
        assert stores == [(0, 0)]


# --- the decoded-tile cache's admission ------------------------------------------------------
@pytest.fixture
def many_tiles(tmp_path):
    """A 2048² level of 64² zlib tiles (1024 tiles) and a cache of 16 of them."""
    img = smooth_rgb(2048, 2048, seed=5)
    path = tmp_path / "tiles.tif"
    write_pyramid(path, [img], compression="zlib", tile=(64, 64))
    budget = wsi.tile_cache_size()[1]
    wsi.set_tile_cache_size(16 * 64 * 64 * 3)
    with open_slide(path) as slide:
        yield slide, img
    wsi.set_tile_cache_size(0)
    wsi.set_tile_cache_size(budget)


def _read_tile(slide, img, i):
    y, x = divmod(i, 32)
    np.testing.assert_array_equal(slide.read_region(64 * x, 64 * y, 64, 64), img[64 * y : 64 * y + 64, 64 * x : 64 * x + 64])


def test_cache_keeps_tiles_again_once_reads_repeat(many_tiles, monkeypatch):
    slide, img = many_tiles
    decoded = _count_decodes(slide, monkeypatch)
    _read_tile(slide, img, 0)
    _read_tile(slide, img, 0)
    assert decoded == [0] and wsi.tile_cache_size()[0] == 64 * 64 * 3  # before the cache has judged itself: every tile is kept
    # a random sweep: 1024 tiles against a 16-tile budget, a hit now and then
    sweep = np.random.default_rng(0).permutation(np.arange(1, 1024))[:400]
    for i in sweep:
        _read_tile(slide, img, int(i))
    unseen = [i for i in range(1, 1024) if i not in sweep]
    decoded.clear()
    for _ in range(3):
        _read_tile(slide, img, unseen[0])
    assert decoded == [unseen[0]] * 2  # no longer kept on its first decode; kept on its second
    # the same few tiles again and again: each kept on its second decode, then hit
    few = [int(i) for i in sweep[:8]]
    decoded.clear()
    for _ in range(40):
        for i in few:
            _read_tile(slide, img, i)
    assert max(decoded.count(i) for i in few) <= 2 and len(decoded) <= 16
    # and the cache, paying again, keeps a new tile on its first decode
    decoded.clear()
    _read_tile(slide, img, unseen[1])
    _read_tile(slide, img, unseen[1])
    assert decoded == [unseen[1]]


def test_cache_budget_changes_start_afresh(many_tiles, monkeypatch):
    slide, img = many_tiles
    for i in np.random.default_rng(1).permutation(1024)[:400]:
        _read_tile(slide, img, int(i))
    wsi.set_tile_cache_size(16 * 64 * 64 * 3)  # emptied and judged afresh: keeps every tile again
    decoded = _count_decodes(slide, monkeypatch)
    for _ in range(2):
        _read_tile(slide, img, 7)
    assert decoded == [7]
