from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.color import rgb2hed

from napari_alregions.synthetic import TUMOUR, make_slide_pool, render_region, slide_spec
from napari_alregions.wsi import open_labels, open_slide


def test_pool_is_deterministic_per_seed(tmp_path, small_pool):
    folder, manifest = small_pool
    again = make_slide_pool(tmp_path / "again", n_slides=3, size=1024, seed=0)
    assert again["slides"] == manifest["slides"]
    for entry in manifest["slides"]:
        for key in ("image", "mask"):
            a = tifffile.imread(folder / entry[key])
            b = tifffile.imread(tmp_path / "again" / entry[key])
            np.testing.assert_array_equal(a, b)
    other = make_slide_pool(tmp_path / "other", n_slides=1, size=1024, seed=1)
    assert not np.array_equal(
        tifffile.imread(folder / "slide_000.tif"), tifffile.imread(tmp_path / "other" / other["slides"][0]["image"])
    )


def test_manifest_and_pyramid(small_pool):
    folder, manifest = small_pool
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk == manifest
    assert {s["split"] for s in manifest["slides"]} == {"train", "test"}
    assert any(s["has_tumour"] for s in manifest["slides"] if s["split"] == "test")
    with open_slide(folder / "slide_000.tif") as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.info.tile_shape == (256, 256)
        assert [lv.shape[:2] for lv in slide.levels] == [(1024, 1024), (512, 512)]


def test_tiles_agree_across_borders():
    """Rendering a window equals the same window cut out of a larger render."""
    spec = slide_spec(0, size=2048, seed=0)
    big, big_lab = render_region(spec, 700, 900, 300, 200)
    small, small_lab = render_region(spec, 800, 950, 64, 64)
    np.testing.assert_array_equal(small_lab, big_lab[50:114, 100:164])
    # pixel noise is seeded per tile, so compare the noise-free structure: labels and
    # haematoxylin density agree closely
    h_big = rgb2hed(big[50:114, 100:164])[..., 0]
    h_small = rgb2hed(small)[..., 0]
    assert np.corrcoef(h_big.ravel(), h_small.ravel())[0, 1] > 0.95


def test_masks_match_images(small_pool):
    """Tumour in the mask is where the image shows large nuclei; tissue where tissue is."""
    folder, manifest = small_pool
    entry = next(s for s in manifest["slides"] if s["tumour_fraction_of_tissue"] > 0.02)
    rgb = tifffile.imread(folder / entry["image"])
    labels = np.asarray(open_labels(folder / entry["mask"])[0])
    hema = rgb2hed(rgb)[..., 0]
    nuclei = hema > np.percentile(hema[labels > 0], 70)
    lab, n = ndimage.label(nuclei)
    sizes = np.bincount(lab.ravel())
    centres = ndimage.center_of_mass(nuclei, lab, range(1, n + 1))
    where = np.array([labels[int(r), int(c)] for r, c in centres])
    areas = sizes[1:]
    tumour_area = np.median(areas[(where == TUMOUR) & (areas > 8)])
    normal_area = np.median(areas[(where == 1) & (areas > 8)])
    assert tumour_area > 2 * normal_area
    # background is white glass
    assert rgb[labels == 0].mean() > 230


def test_tumour_not_separable_by_mean_colour(tmp_path):
    """Between-slide stain variation exceeds the tumour/normal colour difference."""
    manifest = make_slide_pool(tmp_path, n_slides=4, size=1024, seed=3)
    means = []
    for entry in manifest["slides"]:
        rgb = tifffile.imread(tmp_path / entry["image"]).astype(float)
        labels = tifffile.imread(tmp_path / entry["mask"])
        if (labels == TUMOUR).sum() > 500:
            means.append((rgb[labels == TUMOUR].mean(0), rgb[labels == 1].mean(0)))
        else:
            means.append((None, rgb[labels == 1].mean(0)))
    within = [np.linalg.norm(t - n) for t, n in means if t is not None]
    normals = [n for _, n in means]
    between = max(np.linalg.norm(a - b) for a in normals for b in normals)
    assert within and between > min(within)


@pytest.mark.parametrize("bad", [{"n_slides": 0}, {"size": 100}])
def test_bad_arguments(tmp_path, bad):
    kwargs = {"n_slides": 1, "size": 512, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_slide_pool(tmp_path, **kwargs)


def test_old_subifd_layout_reads_as_the_new_pages(tmp_path):
    """Slides written before (levels as SubIFDs of page 0) open exactly as the pages layout written now."""
    from napari_alregions.synthetic import write_slide
    from tests.helpers import write_pyramid

    spec = slide_spec(1, size=(1100, 1300), seed=2)
    write_slide(spec, tmp_path / "new.tif", tmp_path / "mask.tif")
    with tifffile.TiffFile(tmp_path / "new.tif") as tif:
        assert len(tif.pages) == 3 and not tif.pages[0].subifds  # the new layout: one page a level
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1]
        assert len({(p.compression, p.tilewidth, p.tilelength) for p in tif.pages}) == 1
        stored = [p.asarray() for p in tif.pages]
    write_pyramid(tmp_path / "old.tif", stored, compression="zlib", mpp=0.5)
    with open_slide(tmp_path / "new.tif") as new, open_slide(tmp_path / "old.tif") as old:
        assert new.info.level_shapes == old.info.level_shapes == ((1100, 1300), (550, 650), (275, 325))
        assert new.downsamples == old.downsamples and new.mpp == old.mpp == pytest.approx(0.5)
        assert new.info.tile_shape == old.info.tile_shape == (256, 256)
        for level in range(3):
            assert (new.tiled_level(level) is None) == (old.tiled_level(level) is None) is False
            np.testing.assert_array_equal(np.asarray(new.levels[level]), stored[level])
            np.testing.assert_array_equal(np.asarray(old.levels[level]), stored[level])
        np.testing.assert_array_equal(new.read_region(300, 500, 400, 300, level=1), old.read_region(300, 500, 400, 300, level=1))
        np.testing.assert_array_equal(new.tissue_mask(), old.tissue_mask())
    labels = open_labels(tmp_path / "mask.tif")
    assert [lv.shape for lv in labels] == [(1100, 1300), (550, 650), (275, 325)]
    full = np.asarray(labels[0])
    for i, lvl in enumerate(labels):
        np.testing.assert_array_equal(np.asarray(lvl), full[:: 2**i, :: 2**i])
