"""nvImageCodec as a tile decoder of the raw-tile stream. Its CPU backend (libjpeg-turbo)
runs the same code on machines without a GPU; the CUDA tests run on a GPU machine."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_alregions.model import ModelSpec, decoders, predict_probability_map
from napari_alregions.model._stream import stream_batches
from napari_alregions.wsi import open_slide

from .helpers import MeanRedness, forget_decode_checks, smooth_rgb, write_rgb_jpeg_tiff

pytest.importorskip("nvidia.nvimgcodec", reason="nvImageCodec is not installed")

CPU = torch.device("cpu")


@pytest.fixture
def fresh_checks(monkeypatch):
    forget_decode_checks(monkeypatch)


def _tissue_tiles(tiles, n: int = 24) -> list[int]:
    counts = np.asarray(tiles.counts)
    return [int(i) for i in np.argsort(counts)[::-1][:n] if counts[i] > 0]


@pytest.mark.parametrize("level", [0, 1])
def test_nvimgcodec_decodes_tiles_as_tifffile_does(slide, level, fresh_checks):
    tiles = slide.tiled_level(level)
    idx = _tissue_tiles(tiles)
    decode = decoders.NvImageCodec()
    imgs = decode([tiles.jpeg_stream(i) for i in idx], CPU)
    assert len(imgs) == len(idx)
    for i, img in zip(idx, imgs):
        assert img.shape == (3, tiles.th, tiles.tw) and img.dtype == torch.uint8 and img.device == CPU
        diff = np.abs(img.permute(1, 2, 0).numpy().astype(int) - tiles.tile(i)[..., :3])
        assert diff.mean() < 0.5 and diff.max() <= 8  # the same libjpeg-turbo IDCT, or one very close
    assert decoders.decodes_like_cpu(tiles, CPU, decode)


def test_nvimgcodec_reads_aperio_style_rgb_tiles_by_their_marker(tmp_path, fresh_checks):
    """RGB components said only by the TIFF tag: jpeg_stream marks them (Adobe APP14) and
    nvImageCodec honours the marker; the unmarked stored stream reads as YCbCr."""
    img = smooth_rgb(512, 512, seed=4)
    write_rgb_jpeg_tiff(tmp_path / "rgb.tif", img)
    decode = decoders.NvImageCodec()
    with open_slide(tmp_path / "rgb.tif") as rgb:
        tiles = rgb.tiled_level(0)
        want = tiles.tile(0)[..., :3].astype(int)
        [marked], [stored] = decode([tiles.jpeg_stream(0)], CPU), decode([tiles.raw(0)], CPU)
        assert np.abs(marked.permute(1, 2, 0).numpy() - want).mean() < 0.5
        assert np.abs(stored.permute(1, 2, 0).numpy() - want).mean() > 30
        assert decoders.decodes_like_cpu(tiles, CPU, decode)


@pytest.mark.parametrize("level", [0, 1])
def test_raw_tile_path_with_nvimgcodec_cuts_the_cpu_paths_patches(slide, level):
    stride, patch = (256, 224) if level == 0 else (64, 48)
    tissue = slide.tissue_map(stride)

    def patches(**kw):
        got = {}
        for b in stream_batches(slide, tissue, level=level, stride=stride, patch=patch, batch=32,
                                device=CPU, workers=2, block=4, **kw):
            got.update({(int(r), int(c)): x for (r, c), x in zip(b.idx, b.x.numpy()[: len(b.idx)])})
        return got

    raw, ref = patches(decode=decoders.NvImageCodec()), patches()
    assert raw.keys() == ref.keys() and len(ref) == tissue.sum() > 0
    for k in ref:
        assert np.abs(raw[k].astype(int) - ref[k]).mean() < 0.5


def test_one_nvimgcodec_decoder_serves_concurrent_callers(slide):
    """The pool's stagers decode at once: each call gets its own nvImageCodec decoder."""
    tiles = slide.tiled_level(0)
    idx = _tissue_tiles(tiles, 8)
    want = [tiles.tile(i)[..., :3] for i in idx]
    decode = decoders.NvImageCodec(threads=1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                for w, img in zip(want, decode([tiles.jpeg_stream(i) for i in idx], CPU)):
                    assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - w).mean() < 0.5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert 1 <= len(decode._free["cpu"]) <= 4  # decoders are reused, one per caller at most


def test_nvimgcodec_bad_input(slide, fresh_checks):
    decode = decoders.NvImageCodec()
    good = slide.tiled_level(1).jpeg_stream(_tissue_tiles(slide.tiled_level(1), 1)[0])
    with pytest.raises(RuntimeError, match="could not decode 1 of 2"):
        decode([good, b"\xff\xd8 not a JPEG"], CPU)
    assert decode([], CPU) == []
    with pytest.raises(ValueError, match="backend kinds"):
        decoders.NvImageCodec(["nvjpeg"])
    with pytest.raises(ValueError, match="load hints"):
        decoders.NvImageCodec({"hw_gpu_only": 1.5})
    with pytest.raises(ValueError, match="threads"):
        decoders.NvImageCodec(threads=-1)

    class Level:  # a level whose largest tile nvImageCodec cannot parse: decode on the CPU
        counts = [10]
        is_jpeg = True

        def jpeg_stream(self, i):
            return b"\xff\xd8 truncated"

    assert decoders.choose_decoder(Level(), CPU, decode) is None


# --- on a GPU ---------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("backends", [None, ["hw_gpu_only"], ["hybrid_cpu_gpu"], {"hw_gpu_only": 0.5, "hybrid_cpu_gpu": 0.5}])
def test_cuda_nvimgcodec_decodes_like_the_cpu(slide, backends, fresh_checks):
    dev = torch.device("cuda", torch.cuda.current_device())
    decode = decoders.NvImageCodec(backends)
    tiles = slide.tiled_level(0)
    idx = _tissue_tiles(tiles, 64)
    try:
        imgs = decode([tiles.jpeg_stream(i) for i in idx], dev)
    except RuntimeError as exc:  # e.g. no hardware JPEG decoder on this GPU
        pytest.skip(f"nvImageCodec backends {backends}: {exc}")
    torch.cuda.current_stream(dev).synchronize()
    diffs = [float(np.abs(img.permute(1, 2, 0).cpu().numpy().astype(int) - tiles.tile(i)[..., :3]).mean())
             for i, img in zip(idx, imgs)]
    print(f"nvImageCodec {backends} on {torch.cuda.get_device_name(dev)}: mean |diff| max {max(diffs):.2f}")
    assert all(img.device == dev and img.shape == (3, tiles.th, tiles.tw) for img in imgs)
    assert max(diffs) < decoders.MAX_MEAN_ABS_DIFF


@needs_cuda
def test_cuda_map_with_nvimgcodec_equals_the_cpu_map(slide, tmp_path):
    spec = ModelSpec(level=1, patch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    model = MeanRedness()
    cpu = predict_probability_map(slide, model, spec, stride=64, device="cpu", batch_size=16)
    gpu = predict_probability_map(slide, model, spec, stride=64, device="cuda", gpu_decode=True,
                                  decoder="nvimgcodec", batch_size=16)
    np.testing.assert_allclose(gpu, cpu, atol=5e-3, equal_nan=True)
    write_rgb_jpeg_tiff(tmp_path / "rgb.tif", smooth_rgb(1024, 1024, seed=5))
    spec0 = ModelSpec(level=0, patch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    with open_slide(tmp_path / "rgb.tif") as rgb:
        tissue = np.ones(rgb.map_shape(64), dtype=bool)
        cpu = predict_probability_map(rgb, model, spec0, stride=64, tissue=tissue, device="cpu")
        gpu = predict_probability_map(rgb, model, spec0, stride=64, tissue=tissue, device="cuda", decoder="nvimgcodec")
    np.testing.assert_allclose(gpu, cpu, atol=5e-3)
