"""DICOM whole-slide images through OpenSlide: the DICOM copy of the CMU-1 crop against its SVS."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from napari_alregions import wsi
from napari_alregions.wsi import SlideError, open_slide
from tests.helpers import downsample2
from tests.test_wsi import aperio_svs  # noqa: F401  (the fixture)

openslide = pytest.importorskip("openslide")

DICOM = Path(__file__).parent / "data" / "CMU-1-Small-Region"
#: SHA-256 of the four files (tests/data/README.md): the volume, label, overview and thumbnail.
DICOM_SHA256 = {
    "1.2.826.0.1.3680043.8.498.46702941076792458794464453066648511350.dcm":
        "5bae79cf6bd05f9745df03b5c73e45e433add0d0a70c617fd83d2b1d39544c7f",
    "1.2.826.0.1.3680043.8.498.58740178995208579534253317996600852419.dcm":
        "0e4042af943f4865c584258d2efab5d403479b94411cecaf7c41341568c46236",
    "1.2.826.0.1.3680043.8.498.59138772023963819382497555356965497339.dcm":
        "379c737d30463605a9298ac2e9818ff1f8ee6c46415a464bf48feeb9958673aa",
    "1.2.826.0.1.3680043.8.498.59317222794345851838438403002169487918.dcm":
        "2bbf4ec8d67631b80ecec2e67fd6c0d0d35fc9f3cd4a5ee84221a242acb4a73b",
}


@pytest.fixture(scope="module")
def dicom_folder() -> Path:
    for name, digest in DICOM_SHA256.items():
        assert hashlib.sha256((DICOM / name).read_bytes()).hexdigest() == digest, f"{name} is not the fixture"
    return DICOM


def _reencoded(svs: wsi.Slide) -> np.ndarray:
    """The SVS's level 0 as the DICOM converter stored it: each decoded 240² tile (the padding
    of the edge tiles included) encoded again as baseline JPEG, quality 90, YCbCr 4:2:0, then
    decoded. The DICOM's frames say so: JFIF headers, IJG quality-90 tables, 2x2 luma sampling."""
    tl = svs.tiled_level(0)
    h, w = svs.shape
    out = np.empty((h, w, 3), np.uint8)
    for ty in range(-(-h // tl.th)):
        for tx in range(tl.per_row):
            tile = np.ascontiguousarray(tl.tile(tl.tile_index(ty, tx), cache=False)[..., :3])
            again = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(tile, level=90, subsampling="420"))
            y0, x0 = ty * tl.th, tx * tl.tw
            out[y0 : y0 + tl.th, x0 : x0 + tl.tw] = again[: h - y0, : w - x0]
    return out


def test_dicom_is_the_svs_reencoded_as_jpeg_at_every_level(dicom_folder, aperio_svs):  # noqa: F811
    """The DICOM is no lossless copy of the SVS: its frames are the SVS's decoded tiles
    JPEG-compressed a second time (its LossyImageCompressionMethod lists ISO_10918_1 twice).
    So its pixels equal the SVS's re-encoded exactly, at level 0 and at the levels computed
    below it (the file stores one level, as the SVS does), and differ from the SVS's own
    pixels by that second JPEG's loss, bounded here by what was measured (PSNR 33.1 dB; mean
    |difference| 2.89 / 1.94 / 1.03 per level; 4:2:0 chroma at sharp colour edges gives the
    maximum of 108 at level 0)."""
    with open_slide(aperio_svs) as svs, open_slide(dicom_folder) as dcm:
        assert dcm.info.format == "openslide:dicom"
        assert dcm.info.level_shapes == svs.info.level_shapes == ((2967, 2220), (1483, 1110), (741, 555))
        assert dcm.mpp == pytest.approx(0.499) and dcm.info.tile_shape == (240, 240)
        with openslide.OpenSlide(dcm.path) as osr:
            assert osr.properties["dicom.TransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"  # JPEG baseline
            assert osr.properties["dicom.LossyImageCompression"] == "01"
        want = _reencoded(svs)
        for level in range(dcm.level_count):
            got = np.asarray(dcm.levels[level])
            np.testing.assert_array_equal(got, want, err_msg=f"level {level}")
            y, x = 720 >> level, 480 >> level  # level-0 (480, 720) on this level
            np.testing.assert_array_equal(dcm.read_region(480, 720, 300, 200, level=level), want[y : y + 200, x : x + 300])
            ref = np.asarray(svs.levels[level]).astype(np.int16)
            diff = np.abs(got.astype(np.int16) - ref)
            assert diff.mean() <= (2.9, 1.95, 1.04)[level], level
            assert diff.max() <= (108, 47, 16)[level], level
            if level == 0:
                psnr = 10 * np.log10(255**2 / np.mean(diff.astype(np.float64) ** 2))
                assert psnr >= 33.0
            want = downsample2(want)  # the next level, pooled by hand


def test_dicom_opens_by_any_of_its_files_or_by_its_folder(dicom_folder):
    shapes = set()
    for path in [dicom_folder, *sorted(dicom_folder.glob("*.dcm"))]:
        with open_slide(path) as s:
            assert s.info.format == "openslide:dicom", path
            shapes.add(s.info.level_shapes)
            np.testing.assert_array_equal(s.read_region(1200, 1500, 8, 8)[0, 0], s.read_region(1200, 1500, 1, 1)[0, 0])
    assert shapes == {((2967, 2220), (1483, 1110), (741, 555))}


def test_dicom_without_openslide_names_the_extra(dicom_folder, monkeypatch):
    monkeypatch.setattr(wsi, "_openslide_module", lambda: None)
    for path in (dicom_folder, next(dicom_folder.glob("*.dcm"))):
        with pytest.raises(SlideError, match=r"needs OpenSlide: pip install 'napari-alregions\[openslide\]'"):
            open_slide(path)


def test_dcm_files_openslide_does_not_know_are_refused(tmp_path):
    (tmp_path / "ct.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a DICOM preamble, no slide
    with pytest.raises(SlideError, match="OpenSlide does not recognise"):
        open_slide(tmp_path / "ct.dcm")
    with pytest.raises(SlideError, match="OpenSlide does not recognise"):
        open_slide(tmp_path)  # its folder
    with pytest.raises(FileNotFoundError):
        open_slide(tmp_path / "missing.dcm")


def test_cli_info_and_napari_reader_take_the_dicom_folder(dicom_folder, capsys):
    import json

    from napari_alregions._reader import get_reader
    from napari_alregions.cli import main

    assert main(["info", str(dicom_folder), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["format"] == "openslide:dicom" and (record["width"], record["height"]) == (2220, 2967)
    assert record["mpp"] == pytest.approx(0.499)
    for path in (dicom_folder, next(dicom_folder.glob("*.dcm"))):
        [(data, kwargs, kind)] = get_reader(str(path))(str(path))
        assert kind == "image" and kwargs["rgb"] and data[0].shape == (2967, 2220, 3)
