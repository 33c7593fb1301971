"""Tissue detection by optical density against the glass (``detect_tissue``'s default,
``method="od"``), checked against masks drawn by hand on real fields and against the masks
that synthetic stain fields are rendered from, beside Otsu's (``method="otsu"``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_alregions.wsi import detect_tissue, open_slide
from tests.test_wsi import aperio_svs  # noqa: F401  (the fixture)

# skimage's bundled IHC field (512², DAB + haematoxylin) is tissue but for a lumen on the
# left and a small gap at the lower right; boxes drawn by hand on the image, (rows, cols)
IHC_GLASS = [(slice(330, 390), slice(0, 35)), (slice(405, 440), slice(438, 458))]
IHC_TISSUE = {
    "stroma between the glands": (slice(250, 300), slice(150, 250)),
    "stroma at the right edge": (slice(100, 250), slice(470, 505)),
    "stroma at the bottom": (slice(420, 500), slice(180, 250)),
    "epithelium": (slice(50, 150), slice(50, 200)),
    "lower gland": (slice(330, 420), slice(270, 360)),
}


def test_od_holds_on_an_ihc_field_that_is_nearly_all_tissue():
    from skimage import data

    mask = detect_tissue(data.immunohistochemistry(), method="od")
    for box in IHC_GLASS:
        assert not mask[box].any()
    for name, box in IHC_TISSUE.items():
        assert mask[box].mean() > 0.88, name
    assert 0.85 < mask.mean() < 0.97


def _glass_slide(light=1.0, seed=0):
    """Pale textured tissue on glass, scanned with ``light`` times the usual illumination."""
    rng = np.random.default_rng(seed)
    h, w = 400, 600
    img = np.clip(rng.normal(242, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    img[:, :40] = rng.integers(0, 25, (h, 40, 3))  # black scanner border
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = ((yy - 200) ** 2 + (xx - 250) ** 2 < 120**2) | ((yy >= 50) & (yy < 150) & (xx >= 420) & (xx < 570))
    pale = np.array([225, 185, 210]) + rng.normal(0, 10, (h, w, 3))  # pale stroma, textured
    img[tissue] = np.clip(pale[tissue], 0, 255).astype(np.uint8)
    nuclei = tissue & (rng.random((h, w)) < 0.1)
    img[nuclei] = (90, 60, 140)
    return np.round(img * light).astype(np.uint8), tissue


@pytest.mark.parametrize("light", [1.0, 0.85])  # a bright and a dim scan (glass at 242 and 206)
def test_od_on_glass_matches_the_drawn_truth(light):
    img, tissue = _glass_slide(light)
    mask = detect_tissue(img, method="od")
    assert (mask & tissue).sum() / (mask | tissue).sum() > 0.97
    assert not mask[:, :40].any()  # the black border is no tissue


def test_od_keeps_an_empty_slide_empty_and_validates():
    rng = np.random.default_rng(1)
    assert not detect_tissue(np.clip(rng.normal(240, 3, (200, 200, 3)), 0, 255).astype(np.uint8), method="od").any()
    with pytest.raises(ValueError, match="method"):
        detect_tissue(np.zeros((4, 4, 3), np.uint8), method="hsv")


@pytest.fixture(scope="session")
def he_field() -> np.ndarray:
    """stardist's H&E sample (300x500, all tissue), fetched from the package registry once."""
    from skimage import io

    cache = Path(__file__).parent / ".cache" / "stardist"
    jpg = cache / "stardist" / "data" / "images" / "histo.jpg"
    if not jpg.exists():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "stardist==0.9.2", "-d", str(cache)],
                           check=True, timeout=180, capture_output=True)
            with zipfile.ZipFile(next(cache.glob("stardist-0.9.2-*.whl"))) as zf:
                zf.extract("stardist/data/images/histo.jpg", cache)
        except (subprocess.SubprocessError, StopIteration, OSError, KeyError) as exc:
            pytest.skip(f"stardist's sample H&E image could not be fetched from the registry: {exc}")
    return io.imread(jpg)


@pytest.mark.network
def test_od_on_an_he_field_that_is_all_tissue(he_field):
    assert he_field.shape == (300, 500, 3)
    assert detect_tissue(he_field, method="od").mean() > 0.98  # by hand: tissue edge to edge


def test_od_on_a_real_slide_keeps_the_glass(aperio_svs):  # noqa: F811
    with open_slide(aperio_svs) as slide:
        view = np.asarray(slide.levels[slide.tissue_level])  # 741x555
    otsu, od = detect_tissue(view, method="otsu"), detect_tissue(view)
    assert not od[300:700, 0:100].any() and not od[0:100, 400:555].any()  # glass, by hand
    assert (otsu & od).sum() / otsu.sum() > 0.97  # what Otsu finds on glass is found
    assert 0.3 < od.mean() < 0.45


# -- synthetic stain fields: Beer-Lambert with the Ruifrok-Johnston vectors, truth by construction
_STAINS = {k: np.array(v) / np.linalg.norm(v) for k, v in
           {"h": (0.65, 0.70, 0.29), "e": (0.07, 0.99, 0.11), "dab": (0.27, 0.57, 0.78)}.items()}
_SHAPE = (384, 512)


def _smooth(rng, sigma, lo, hi):
    f = ndi.gaussian_filter(rng.random(_SHAPE), sigma)
    return lo + (hi - lo) * (f - f.min()) / (f.max() - f.min())


def _nuclei(rng, density):
    return ndi.binary_dilation(rng.random(_SHAPE) < density, iterations=3)


def _render(rng, glass=242, **density):
    od = sum(density[k][..., None] * _STAINS[k] for k in density)
    return np.clip(np.round(glass * np.exp(-od) + rng.normal(0, 2.5, (*_SHAPE, 3))), 0, 255).astype(np.uint8)


def _pieces():
    yy, xx = np.mgrid[: _SHAPE[0], : _SHAPE[1]]
    return ((yy - 190) ** 2 + (xx - 200) ** 2 < 130**2) | ((yy > 60) & (yy < 200) & (xx > 360) & (xx < 480))


def _field(case, seed=0):
    """(image, tissue truth) for one case."""
    rng = np.random.default_rng(seed)
    if case == "all-tissue H&E":  # stroma to pale cytoplasm edge to edge, nuclei
        return _render(rng, e=_smooth(rng, 12, 0.15, 0.9), h=0.05 + 1.3 * _nuclei(rng, 0.004)), np.ones(_SHAPE, bool)
    if case == "all-tissue IHC":  # flat pale haematoxylin counterstain, DAB-positive patches, nuclei
        h = _smooth(rng, 10, 0.12, 0.35) + 0.9 * _nuclei(rng, 0.003)
        dab = np.where(_smooth(rng, 15, 0, 1) > 0.55, _smooth(rng, 5, 0.5, 1.3), 0.0)
        return _render(rng, h=h, dab=dab), np.ones(_SHAPE, bool)
    t = _pieces()
    pale = case == "pale tissue on glass"
    e = np.where(t, _smooth(rng, 12, *((0.06, 0.15) if pale else (0.3, 0.9))), 0)
    h = np.where(t, (0.02 if pale else 0.05) + (0.5 if pale else 1.3) * _nuclei(rng, 0.002 if pale else 0.004), 0)
    img = _render(rng, e=e, h=h)
    if case == "pen marks on glass":
        yy, xx = np.mgrid[: _SHAPE[0], : _SHAPE[1]]
        img[(np.abs(yy - 0.3 * xx - 300) < 6) & ~ndi.binary_dilation(t, iterations=8)] = (40, 130, 70)  # green
        img[np.abs(xx - 20 - 0.05 * yy) < 5] = (30, 60, 150)  # blue
    return img, t


# Otsu's IoU on each case (measured when the default changed), to show the case is a test of something
_OTSU_FAILS = {"all-tissue H&E": 0.2, "all-tissue IHC": 0.5, "pen marks on glass": 0.95}


@pytest.mark.parametrize("case", ["all-tissue H&E", "all-tissue IHC", "tissue on glass", "pale tissue on glass",
                                  "pen marks on glass"])
def test_default_matches_the_rendered_tissue(case):
    img, truth = _field(case)
    mask = detect_tissue(img)
    assert (mask & truth).sum() / (mask | truth).sum() > 0.98
    assert abs(mask.mean() - truth.mean()) < 0.01
    otsu = detect_tissue(img, method="otsu")
    if case in _OTSU_FAILS:
        assert (otsu & truth).sum() / (otsu | truth).sum() < _OTSU_FAILS[case]


def test_default_on_a_dim_scan_of_pale_tissue():
    img, truth = _field("pale tissue on glass", seed=4)
    mask = detect_tissue(np.round(img * 0.85).astype(np.uint8))  # glass at 206
    assert (mask & truth).sum() / (mask | truth).sum() > 0.98
