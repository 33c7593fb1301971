"""The inference stream: batching and padding, batch-size tuning, torch.compile, clean stops."""

from __future__ import annotations

import functools
import shutil
import time

import numpy as np
import pytest
import torch
from torch import nn

from napari_alregions import wsi
from napari_alregions.model import (
    InferenceCancelled,
    ModelSpec,
    _stream,
    decoders,
    predict_probability_map,
)
from napari_alregions.model import device as device_mod
from napari_alregions.model._stream import padded_size, stream_batches
from napari_alregions.model.batching import (
    resolve_batch_size,
    search_batch_size,
    tune_batch_size,
)
from napari_alregions.wsi import open_slide

from .helpers import forget_decode_checks, smooth_rgb, stream_only_decode, stream_threads, write_rgb_jpeg_tiff


class TinyConv(nn.Module):
    """A small real network (conv, pooling, linear) to compile and tune."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


SPEC = ModelSpec(level=1, patch_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


# --- padding and batching ---------------------------------------------------------------

@pytest.mark.parametrize(("n", "pad", "expected"), [
    (5, None, 5), (5, "full", 16), (5, "pow2", 8), (8, "pow2", 8), (9, "pow2", 16), (1, "pow2", 1),
    (16, "full", 16), (13, "pow2", 16),
])
def test_padded_size(n, pad, expected):
    assert padded_size(n, 16, pad) == expected


def test_padded_size_rejects_unknown_mode():
    with pytest.raises(ValueError, match="pad"):
        padded_size(3, 16, "half")


@pytest.mark.parametrize("pad", [None, "pow2", "full"])
def test_stream_yields_every_tissue_cell_once_in_whole_batches(slide, pad):
    stride = 64
    tissue = slide.tissue_map(stride)
    seen = np.zeros(tissue.shape, int)
    sizes = []
    batches = stream_batches(slide, tissue, level=1, stride=stride, patch=32, batch=24, device=torch.device("cpu"),
                             workers=3, block=4, pad=pad)
    for b in batches:
        seen[b.idx[:, 0], b.idx[:, 1]] += 1
        assert b.x.dtype == torch.uint8 and b.x.shape[1:] == (32, 32, 3)
        assert len(b.x) == padded_size(len(b.idx), 24, pad)
        assert not b.x[len(b.idx):].any()  # padding rows are zeros
        sizes.append(len(b.idx))
    np.testing.assert_array_equal(seen, tissue.astype(int))
    assert all(s == 24 for s in sizes[:-1]) and 0 < sizes[-1] <= 24  # only the tail is short
    assert not stream_threads()


def test_stream_patch_content_equals_read_region(slide):
    stride = 64
    tissue = slide.tissue_map(stride)
    b = next(iter(stream_batches(slide, tissue, level=1, stride=stride, patch=32, batch=5,
                                 device=torch.device("cpu"), workers=1)))
    for (r, c), x in zip(b.idx, b.x.numpy()):
        # the patch centred on the cell centre, read independently at level 1
        want = slide.read_region(c * stride + stride // 2 - 32, r * stride + stride // 2 - 32, 32, 32, level=1, fill=255)
        np.testing.assert_array_equal(x, want)


def test_blocks_decode_only_the_tiles_their_patches_touch(slide, monkeypatch):
    """Level 0, one 256² tile per cell, tissue on a checkerboard: a block's bounding box
    holds twice the tiles its patches need; both paths decode just the needed ones."""
    stride, patch = 256, 224
    tiles = slide.tiled_level(0)
    assert (tiles.th, tiles.tw) == (stride, stride)
    h, w = slide.map_shape(stride)
    tissue = (np.add.outer(np.arange(h), np.arange(w)) % 2 == 0)
    decoded = []
    real_tile = tiles.tile
    monkeypatch.setattr(tiles, "tile", lambda i, **kw: decoded.append(i) or real_tile(i, **kw))

    def decode(streams, device):
        decoded.extend([None] * len(streams))
        return stream_only_decode(streams, device)

    for kw in ({}, {"decode": decode}):
        decoded.clear()
        got = {}
        for b in stream_batches(slide, tissue, level=0, stride=stride, patch=patch, batch=64,
                                device=torch.device("cpu"), workers=1, **kw):
            got.update({(int(r), int(c)): x for (r, c), x in zip(b.idx, b.x.numpy())})
        assert len(decoded) == tissue.sum() < tissue.size
        for (r, c), x in got.items():
            want = slide.read_region(c * stride + 16, r * stride + 16, patch, patch, level=0)
            np.testing.assert_array_equal(x, want)  # (the CPU stand-in for nvJPEG is the same decoder)
        assert got.keys() == {tuple(map(int, rc)) for rc in np.argwhere(tissue)}


@pytest.mark.parametrize(("decode_batch", "patch", "hole"), [(2, 32, False), (256, 32, True), (5, 80, False)])
def test_raw_tile_path_cuts_the_same_patches_as_the_cpu_path(slide, monkeypatch, decode_batch, patch, hole):
    """The GPU-decode path (raw JPEG tiles to the staging thread, decoded there in batches,
    patches cut from the decoded tiles) run on the CPU with a CPU JPEG decoder."""
    monkeypatch.setattr(_stream, "DECODE_BATCH", decode_batch)  # tiles gathered per decode call
    stride = 64
    tissue = slide.tissue_map(stride)
    if patch == 80:  # larger than a cell: every cell, so the border patches reach off the slide
        tissue = np.ones_like(tissue)
    tiles = slide.tiled_level(1)
    assert tiles is not None and tiles.is_jpeg
    if hole:  # a sparse file's missing tile (1, 1): both paths must read it as black
        real_raw = tiles.raw
        monkeypatch.setattr(tiles, "raw", lambda i: b"" if i == tiles.tile_index(1, 1) else real_raw(i))
        tissue = np.ones_like(tissue)

    def patches(**kw):
        got = {}
        for b in stream_batches(slide, tissue, level=1, stride=stride, patch=patch, batch=40,
                                device=torch.device("cpu"), workers=2, block=4, **kw):
            for (r, c), x in zip(b.idx, b.x.numpy()[: len(b.idx)]):
                assert (r, c) not in got
                got[(r, c)] = x
        return got

    raw = patches(decode=stream_only_decode)
    ref = patches()
    if hole:  # cell (9, 9): centre at level-1 px 304, patch 288..319, inside tile (1, 1)
        assert not ref[(9, 9)].any()
    if patch == 80:  # cell (0, 0): centre at level-1 px 16, so rows and columns -24..-1 are off the slide:
        # the slide mirrored at its edge (row -1 is row 0, ...), never white padding
        corner = ref[(0, 0)]
        np.testing.assert_array_equal(corner[:24], corner[24:48][::-1])
        np.testing.assert_array_equal(corner[:, :24], corner[:, 24:48][:, ::-1])
    assert raw.keys() == ref.keys() and len(ref) == tissue.sum()
    for k in ref:
        np.testing.assert_array_equal(raw[k], ref[k])


def test_reader_error_reaches_the_caller_and_threads_stop(slide, monkeypatch):
    calls = {"n": 0}
    tissue = slide.tissue_map(64)
    tiles = slide.tiled_level(1)
    real = tiles.raw

    def flaky(i):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk went away")
        return real(i)

    monkeypatch.setattr(tiles, "raw", flaky)
    with pytest.raises(wsi.SlideError, match="disk went away"):  # with the slide, level and box
        predict_probability_map(slide, TinyConv(), SPEC, stride=64, batch_size=4, device="cpu", block=2, tissue=tissue)
    time.sleep(0.2)
    assert not stream_threads()


def test_cancel_mid_map_stops_every_thread(slide):
    polls = {"n": 0}

    def cancel():
        polls["n"] += 1
        return polls["n"] > 2

    with pytest.raises(InferenceCancelled):
        predict_probability_map(slide, TinyConv(), SPEC, stride=64, batch_size=2, device="cpu", block=2, cancel=cancel)
    assert polls["n"] == 3
    assert not stream_threads()


# --- batch size -------------------------------------------------------------------------

def _saturating(limit: int, oom_above: int | None = None, per_patch: float = 1.0):
    tried = []

    def measure(b):
        tried.append(b)
        if oom_above is not None and b > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return float(min(b, limit)) * 100, b * per_patch

    return measure, tried


def test_search_stops_where_throughput_saturates():
    measure, tried = _saturating(256)
    assert search_batch_size(measure, start=16, max_batch=4096) == 256
    assert tried == [16, 32, 64, 128, 256, 512]  # one doubling past the knee, then stop


def test_search_backs_off_from_out_of_memory():
    measure, tried = _saturating(10_000, oom_above=100)
    assert search_batch_size(measure, start=16, max_batch=4096) == 64
    measure, tried = _saturating(10_000, oom_above=5)
    assert search_batch_size(measure, start=64, max_batch=4096) == 4  # halves until one fits
    assert tried == [64, 32, 16, 8, 4, 8]
    measure, _ = _saturating(10_000, oom_above=0)
    with pytest.raises(torch.OutOfMemoryError):
        search_batch_size(measure, start=4)


def test_search_respects_the_memory_budget_and_cap():
    measure, tried = _saturating(10_000, per_patch=1e6)  # 1 MB per patch
    assert search_batch_size(measure, start=16, max_batch=4096, budget=200e6) == 128  # 256 would need ~256 MB
    assert max(tried) == 128  # the over-budget size is never tried
    measure, _ = _saturating(10_000)
    assert search_batch_size(measure, start=16, max_batch=100) == 64
    with pytest.raises(ValueError, match="start"):
        search_batch_size(measure, start=0)
    with pytest.raises(ValueError, match="min_gain"):
        search_batch_size(measure, min_gain=0.5)


def test_tune_on_the_cpu_with_a_real_model():
    model = TinyConv().eval()
    b = tune_batch_size(model, patch=32, device="cpu", start=8, max_batch=128)
    assert b in (8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="memory_fraction"):
        tune_batch_size(model, patch=32, device="cpu", memory_fraction=0)


def test_tuner_times_fast_batches_long_enough_to_measure_throughput():
    """A forward pass that takes microseconds (a small model on a GPU) is repeated until the
    timing lasts ``min_seconds``: two passes would measure timer and launch jitter."""
    calls: dict[int, int] = {}

    def fast(x):
        calls[len(x)] = calls.get(len(x), 0) + 1
        return x

    tune_batch_size(fast, patch=4, device="cpu", start=8, max_batch=32, min_seconds=0.02)
    assert calls and all(n > 10 for n in calls.values())  # 1 warm-up + 2 passes before


def test_resolve_batch_size_defaults_and_errors():
    model = TinyConv().eval()
    cpu = torch.device("cpu")
    assert resolve_batch_size(None, model, key=model, patch=32, device=cpu) == 128
    assert resolve_batch_size(7, model, key=model, patch=32, device=cpu) == 7
    calls = {"n": 0}

    def forward(x):
        calls["n"] += 1
        return model(x)

    first = resolve_batch_size("auto", forward, key=model, patch=32, device=cpu)
    n = calls["n"]
    assert resolve_batch_size("auto", forward, key=model, patch=32, device=cpu) == first
    assert calls["n"] == n  # tuned once per model, device and patch size
    for bad in ("big", 0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            resolve_batch_size(bad, model, key=model, patch=32, device=cpu)


def test_auto_batch_gives_the_same_map(slide):
    model = TinyConv().eval()
    fixed = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu")
    auto = predict_probability_map(slide, model, SPEC, stride=64, batch_size="auto", device="cpu")
    np.testing.assert_allclose(auto, fixed, atol=1e-5, equal_nan=True)


# --- torch.compile ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_model_gives_the_same_map(slide):
    model = TinyConv().eval()
    eager = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu")
    comp = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu", compile=True)
    np.testing.assert_allclose(comp, eager, atol=1e-5, equal_nan=True)
    from napari_alregions.model.predict import _softmax

    wrapper = device_mod.compiled(model, True, _softmax)
    assert not wrapper.failed  # it ran compiled, not the fallback
    assert device_mod.compiled(model, True, _softmax) is wrapper  # compiled once per model and head


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_compiled_encoder_gives_the_same_embeddings(slide):
    """Compiling wraps head(module, x), so heads that call more than forward() still work."""
    from napari_alregions.embed import embed_slide, load_encoder

    class TinyEncoder(TinyConv):
        def forward_features(self, x):
            return torch.relu(self.conv(x)).mean(dim=(2, 3))

    enc = load_encoder(TinyEncoder().eval(), spec=SPEC)
    eager = embed_slide(slide, enc, stride=64, batch_size=16, device="cpu")
    comp = embed_slide(slide, enc, stride=64, batch_size=16, device="cpu", compile=True)
    np.testing.assert_allclose(comp, eager, atol=1e-5, equal_nan=True)


def test_compile_failure_falls_back_to_the_plain_model(slide, monkeypatch):
    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("inductor: no C compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = TinyConv().eval()
    eager = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu")
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        comp = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu", compile="max-autotune")
    # the fallback pads batches as the compiled path would: same numbers up to float rounding
    np.testing.assert_allclose(comp, eager, rtol=0, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="compile"):
        predict_probability_map(slide, model, SPEC, stride=64, device="cpu", compile="fastest")


# --- the CUDA path (runs on a GPU machine) -----------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("gpu_decode", [False, True])
@pytest.mark.parametrize("processes", [0, 2])  # CPU decode in reader threads / read processes
def test_cuda_stream_pipeline_equals_the_cpu_map(slide, gpu_decode, processes):
    model = TinyConv().eval()
    cpu = predict_probability_map(slide, model, SPEC, stride=64, batch_size=16, device="cpu")
    gpu = predict_probability_map(slide, model, SPEC, stride=64, batch_size="auto", device="cuda", gpu_decode=gpu_decode,
                                  processes=processes)
    np.testing.assert_allclose(gpu, cpu, atol=2e-2, equal_nan=True)  # bf16/fp16 autocast
    assert not stream_threads()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_map_of_an_aperio_style_level_equals_the_cpu_map(tmp_path):
    """RGB said only by the TIFF tag: nvJPEG decodes the marked stream, or the level falls
    back to the CPU decoder; either way the map is the CPU map."""
    write_rgb_jpeg_tiff(tmp_path / "rgb.tif", smooth_rgb(1024, 1024, seed=5))
    spec = ModelSpec(level=0, patch_size=32, mean=SPEC.mean, std=SPEC.std)
    model = TinyConv().eval()
    with open_slide(tmp_path / "rgb.tif") as rgb:
        tissue = np.ones(rgb.map_shape(64), dtype=bool)
        cpu = predict_probability_map(rgb, model, spec, stride=64, tissue=tissue, device="cpu")
        gpu = predict_probability_map(rgb, model, spec, stride=64, tissue=tissue, device="cuda")
        for name in decoders.DECODERS:
            decode = decoders.get_decoder(name)
            print(name, "decodes the marked RGB level like the CPU:", decode is not None and
                  decoders.decodes_like_cpu(rgb.tiled_level(0), torch.device("cuda", torch.cuda.current_device()), decode))
    np.testing.assert_allclose(gpu, cpu, atol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tuned_batch_fits_the_memory_budget():
    model = TinyConv().cuda().eval()
    b = tune_batch_size(model, patch=64, device="cuda", memory_fraction=0.5)
    assert 16 <= b <= 4096


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error(slide):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        predict_probability_map(slide, TinyConv(), SPEC, stride=64, device="cuda")


def test_gpu_decode_is_used_only_where_a_decoder_really_decodes(slide, monkeypatch):
    """torchvision may import fine yet lack nvJPEG (or fail on this GPU): the level check
    tries each decoder once, in order, and decodes on the CPU if none works."""
    import imagecodecs

    def working(data, device):
        return [torch.from_numpy(imagecodecs.jpeg8_decode(d.numpy().tobytes()).transpose(2, 0, 1).copy()) for d in data]

    def broken(data, device):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    cpu = torch.device("cpu")  # the check itself is device-agnostic
    level = slide.tiled_level(1)
    nvimgcodec = functools.partial(stream_only_decode)  # a stand-in, the second choice
    for tv, nv, expected in ((working, None, decoders.nvjpeg_decode), (broken, None, None), (None, None, None),
                             (broken, nvimgcodec, nvimgcodec), (None, nvimgcodec, nvimgcodec),
                             (working, nvimgcodec, decoders.nvjpeg_decode)):
        forget_decode_checks(monkeypatch)
        monkeypatch.setattr(decoders, "nvjpeg", lambda d=tv: d)
        monkeypatch.setattr(decoders, "_nvimgcodec_default", lambda d=nv: d)
        asked = []
        monkeypatch.setattr(decoders.NvImageCodec, "available", staticmethod(lambda d=nv: asked.append(1) or d is not None))
        assert decoders.choose_decoder(level, cpu) is expected
        assert bool(asked) == (expected is not decoders.nvjpeg_decode)  # not imported when torchvision serves
        # a named decoder is that one or none
        assert decoders.choose_decoder(level, cpu, "torchvision") is (expected if expected is decoders.nvjpeg_decode else None)
    assert decoders.choose_decoder(None, cpu) is None  # an untiled level
    calls = {"n": 0}

    def counted(data, device):
        calls["n"] += 1
        return working(data, device)

    forget_decode_checks(monkeypatch)
    monkeypatch.setattr(decoders, "nvjpeg", lambda: counted)
    assert decoders.choose_decoder(level, cpu) and decoders.choose_decoder(level, cpu)
    assert calls["n"] == 1  # tried once per level and device
    with pytest.raises(ValueError, match="decoder must be one of"):
        decoders.get_decoder("pillow")
    with pytest.raises(ValueError, match="decoder must be one of"):
        predict_probability_map(slide, TinyConv(), SPEC, stride=64, device="cpu", decoder="pillow")


def test_gpu_decode_is_checked_against_the_cpu_decoder_per_level(slide, tmp_path, monkeypatch):
    """An Aperio-style level (RGB said only by the TIFF tag) decodes right from the stream
    alone because jpeg_stream marks it; a decoder that ignores that marker, swaps colours or
    fails is caught by the per-level pixel check, so the level decodes on the CPU."""
    cpu = torch.device("cpu")
    forget_decode_checks(monkeypatch)
    assert decoders.decodes_like_cpu(slide.tiled_level(1), cpu, decode=stream_only_decode)  # YCbCr tiles

    img = smooth_rgb(512, 512, seed=4)
    write_rgb_jpeg_tiff(tmp_path / "rgb.tif", img)

    def ignores_marker(streams, device):
        return stream_only_decode([b.replace(wsi._ADOBE_RGB, b"") for b in streams], device)

    with open_slide(tmp_path / "rgb.tif") as rgb:
        tiles = rgb.tiled_level(0)
        assert tiles is not None and tiles.is_jpeg and tiles.rgb_jpeg
        assert np.abs(rgb.read_region(0, 0, 512, 512, level=0).astype(int) - img).mean() < 6  # tifffile: right (JPEG error only)
        stored = stream_only_decode([tiles.raw(0)], cpu)[0].permute(1, 2, 0).numpy()
        assert np.abs(stored.astype(int) - tiles.tile(0)).mean() > 30  # the stored stream alone reads as YCbCr
        assert decoders.decodes_like_cpu(tiles, cpu, decode=stream_only_decode)
        marked = tiles.jpeg_stream(0)
        assert marked.count(b"Adobe") == 1 and wsi._marked_rgb(marked) == marked  # one marker, idempotent
        forget_decode_checks(monkeypatch)
        assert not decoders.decodes_like_cpu(tiles, cpu, decode=ignores_marker)

        # the raw-tile (GPU) path on this level gives the CPU path's patches
        tissue = np.ones(rgb.map_shape(64), dtype=bool)

        def patches(**kw):
            return {tuple(rc): x for b in stream_batches(rgb, tissue, level=0, stride=64, patch=32, batch=16,
                                                          device=cpu, workers=1, **kw)
                    for rc, x in zip(b.idx, b.x.numpy()[: len(b.idx)])}

        raw, ref = patches(decode=stream_only_decode), patches()
        assert raw.keys() == ref.keys() and len(ref) == tissue.sum()
        for k in ref:
            np.testing.assert_array_equal(raw[k], ref[k])

    def swapped(streams, device):  # red and green swapped
        return [t[[1, 0, 2]] for t in stream_only_decode(streams, device)]

    def failing(streams, device):
        raise RuntimeError("nvjpegDecode failed")

    for decode in (swapped, failing):
        forget_decode_checks(monkeypatch)
        assert not decoders.decodes_like_cpu(slide.tiled_level(1), cpu, decode=decode)

    def off_by(k):  # another IDCT: every pixel k grey levels off (nvJPEG on an H100: up to ~2.1)
        return lambda streams, device: [(t.int() + k).clamp(0, 255).to(torch.uint8)
                                        for t in stream_only_decode(streams, device)]

    for k, ok in ((3, True), (20, False)):
        forget_decode_checks(monkeypatch)
        assert decoders.decodes_like_cpu(slide.tiled_level(1), cpu, decode=off_by(k)) is ok

    calls = {"n": 0}

    def counted(streams, device):
        calls["n"] += 1
        return stream_only_decode(streams, device)

    forget_decode_checks(monkeypatch)
    level = slide.tiled_level(1)
    assert decoders.decodes_like_cpu(level, cpu, decode=counted) and decoders.decodes_like_cpu(level, cpu, decode=counted)
    assert calls["n"] == 1  # checked once per level and device
