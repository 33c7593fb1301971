"""Patch blocks decoded in read processes: the same pixels as in threads, clean stops, clear errors."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from multiprocessing import shared_memory

import numpy as np
import pytest
import torch

from napari_alregions import _readpool
from napari_alregions.model import InferenceCancelled, ModelSpec, _stream, predict_probability_map
from napari_alregions.model import predict as predict_mod
from napari_alregions.model._stream import stream_batches
from napari_alregions.wsi import SlideError, open_slide

from . import procs
from .helpers import MeanRedness, stream_only_decode, stream_threads

SPEC = ModelSpec(level=1, patch_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.fixture
def own_slide(small_pool, tmp_path):
    """A copy of a pool slide that a test may change."""
    folder, manifest = small_pool
    path = tmp_path / "slide.tif"
    shutil.copy(folder / manifest["slides"][0]["image"], path)
    with open_slide(path) as s:
        yield s


@pytest.fixture
def readers(monkeypatch):
    """The BlockReaders the stream makes, and how many blocks each read."""
    made = []

    class Counting(_readpool.BlockReader):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.reads = 0
            made.append(self)

        def read(self, *a, **kw):
            self.reads += 1
            return super().read(*a, **kw)

    monkeypatch.setattr(_stream, "BlockReader", Counting)
    return made


def _freed(reader: _readpool.BlockReader) -> bool:
    name = reader._name
    try:
        shared_memory.SharedMemory(name=name).close()
    except FileNotFoundError:
        return True
    return False


def test_block_reader_cuts_the_patches_read_region_gives(slide):
    d = 40
    # a box at level 1 that reaches off the top-left corner of the slide
    ly, lx, h, w = -10, -20, 150, 120
    origins = np.array([[0, 0], [30, 50], [110, 80], [5, 79]])
    with _readpool.BlockReader(slide, 1, d, slots=2, max_patches=len(origins), processes=2) as reader:
        got = reader.read(1, (ly, lx, h, w), None, origins)
    assert got.shape == (len(origins), d, d, 3) and got.dtype == np.uint8
    # off the slide the level is mirrored at its edge (np.pad's "symmetric"), never white
    level = np.pad(np.asarray(slide.levels[1][:200, :200]), ((10, 0), (20, 0), (0, 0)), mode="symmetric")
    for (y, x), patch in zip(origins, got):
        np.testing.assert_array_equal(patch, level[y : y + d, x : x + d])
    assert _freed(reader)


def test_map_in_processes_equals_the_map_in_threads(slide, readers):
    threads = predict_probability_map(slide, MeanRedness(), SPEC, stride=64, device="cpu", batch_size=16,
                                      block=3, processes=0)
    assert not readers
    procs_map = predict_probability_map(slide, MeanRedness(), SPEC, stride=64, device="cpu", batch_size=16,
                                        block=3, processes=2)
    np.testing.assert_array_equal(procs_map, threads)
    assert np.isfinite(threads).any()
    (reader,) = readers
    tissue = slide.tissue_map(64)
    assert reader.reads == len(_stream._blocks(tissue, 3))  # every block went through a process
    assert _freed(reader) and not stream_threads()


def test_maps_at_once_with_different_process_counts_share_the_pool(slide):
    """A second map asking for more processes grows the pool while the first still reads
    from it: both finish with the map of the threads."""
    kw = dict(stride=64, device="cpu", batch_size=8, block=2)
    ref = predict_probability_map(slide, MeanRedness(), SPEC, processes=0, **kw)
    _readpool.shutdown()
    results, errors = {}, []

    def run(p):
        try:
            results[p] = predict_probability_map(slide, MeanRedness(), SPEC, processes=p, **kw)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in (1, 3)]
    for t in threads:
        t.start()
        time.sleep(0.3)  # the first is reading when the second resizes the pool
    for t in threads:
        t.join()
    assert not errors, errors
    for p in (1, 3):
        np.testing.assert_array_equal(results[p], ref)
    assert _readpool._pool_size == 3


def test_a_corrupt_tile_in_a_process_is_a_slide_error(own_slide):
    tiles = own_slide.tiled_level(1)
    i = tiles.tile_index(1, 1)
    with open(own_slide.path, "r+b") as f:  # no JPEG left in tile (1, 1)
        f.seek(int(tiles.offsets[i]))
        f.write(b"\x00" * int(tiles.counts[i]))
    tissue = np.ones(own_slide.map_shape(64), dtype=bool)
    with pytest.raises(SlideError, match="cannot decode level 1"):
        predict_probability_map(own_slide, MeanRedness(), SPEC, stride=64, device="cpu", tissue=tissue, processes=2)
    time.sleep(0.1)
    assert not stream_threads()


def test_a_killed_read_process_is_replaced(slide):
    origins = np.array([[0, 0]])
    with _readpool.BlockReader(slide, 1, 32, slots=1, max_patches=1, processes=2) as reader:
        first = reader.read(0, (0, 0, 32, 32), None, origins)
        pool = _readpool._pool
        os.kill(next(iter(pool._processes)), signal.SIGKILL)
        time.sleep(0.5)  # the pool notices and breaks
        again = reader.read(0, (0, 0, 32, 32), None, origins)
    np.testing.assert_array_equal(again, first)
    assert _readpool._pool is not pool


def test_a_read_process_that_always_dies_is_a_clear_error(slide, monkeypatch):
    monkeypatch.setattr(_readpool, "_read_block", procs.exit_process)
    with _readpool.BlockReader(slide, 1, 32, slots=1, max_patches=1, processes=2) as reader:
        with pytest.raises(SlideError, match="read process died twice.*processes=0"):
            reader.read(0, (0, 0, 32, 32), None, np.array([[0, 0]]))


def test_a_file_changed_since_opening_is_a_clear_error(own_slide):
    with _readpool.BlockReader(own_slide, 1, 32, slots=1, max_patches=1, processes=2) as reader:
        st = os.stat(own_slide.path)
        os.utime(own_slide.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(SlideError, match="changed"):
            reader.read(0, (0, 0, 32, 32), None, np.array([[0, 0]]))


def test_cancel_mid_map_in_processes_frees_everything(slide, readers):
    polls = {"n": 0}

    def cancel():
        polls["n"] += 1
        return polls["n"] > 2

    with pytest.raises(InferenceCancelled):
        predict_probability_map(slide, MeanRedness(), SPEC, stride=64, device="cpu", batch_size=2, block=2,
                                cancel=cancel, processes=2)
    assert not stream_threads() and _freed(readers[0])


def test_processes_take_the_blocks_a_slow_gpu_decoder_leaves(slide, readers, monkeypatch):
    """With a decoder (here a slow CPU stand-in for nvJPEG) and read processes, readers
    that find the staging thread behind send their blocks to the processes: both kinds of
    block arrive, with the pixels of the all-CPU path."""
    monkeypatch.setattr(_stream, "DECODE_BATCH", 4)
    calls = {"n": 0}

    def slow_decode(streams, device):
        calls["n"] += 1
        time.sleep(0.05)
        return stream_only_decode(streams, device)

    tissue = slide.tissue_map(64)

    def patches(**kw):
        got = {}
        for b in stream_batches(slide, tissue, level=1, stride=64, patch=32, batch=8, device=torch.device("cpu"),
                                workers=2, block=2, prefetch=1, **kw):
            got.update({(int(r), int(c)): x for (r, c), x in zip(b.idx, b.x.numpy())})
        return got

    ref = patches()
    mixed = patches(decode=slow_decode, processes=2)
    assert calls["n"] > 0 and readers[0].reads > 0
    assert mixed.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(mixed[k], ref[k])


def test_default_processes(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert predict_mod.default_processes(cuda, None) == 14  # CUDA model, CPU decode: all cores but two
    assert predict_mod.default_processes(cuda, lambda s, d: s) == 0  # GPU decode
    assert predict_mod.default_processes(cpu, None) == 0  # the model needs the cores
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert predict_mod.default_processes(cuda, None) == 16
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert predict_mod.default_processes(cuda, None) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(predict_mod, "can_start_processes", lambda: False)  # e.g. a dask worker
    assert predict_mod.default_processes(cuda, None) == 0


def test_bad_process_counts_are_clear_errors(slide, monkeypatch):
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="processes"):
            predict_probability_map(slide, MeanRedness(), SPEC, stride=64, device="cpu", processes=bad)
    monkeypatch.setattr(_readpool, "can_start_processes", lambda: False)
    with pytest.raises(ValueError, match="daemonic"):
        _readpool.BlockReader(slide, 1, 32, slots=1, max_patches=1, processes=2)


def test_too_little_shared_memory(slide, readers, monkeypatch, caplog):
    """/dev/shm smaller than the slots (Docker's 64 MiB default): asked-for processes are a
    clear error; default ones give way to reader threads with a warning."""
    kw = dict(stride=64, device="cpu", batch_size=8, block=4)
    ref = predict_probability_map(slide, MeanRedness(), SPEC, processes=0, **kw)
    need = _readpool.shared_bytes(2, 16, SPEC.patch_size)
    monkeypatch.setattr(_readpool, "shared_memory_free", lambda: need - 1)
    monkeypatch.setattr(predict_mod, "shared_memory_free", lambda: need - 1)
    with pytest.raises(ValueError, match="shm-size"):
        predict_probability_map(slide, MeanRedness(), SPEC, processes=2, **kw)
    monkeypatch.setattr(predict_mod, "default_processes", lambda device, decode: 2)  # as on CUDA with CPU decode
    with caplog.at_level("WARNING", logger="napari_alregions.model.predict"):
        got = predict_probability_map(slide, MeanRedness(), SPEC, **kw)
    np.testing.assert_array_equal(got, ref)
    assert not readers and "/dev/shm" in caplog.text


def test_idle_read_processes_stop(slide, monkeypatch):
    """The pool outlives a map (the next one reuses it) but not IDLE_S without readers."""
    monkeypatch.setattr(_readpool, "IDLE_S", 0.3)
    with _readpool.BlockReader(slide, 1, 32, slots=1, max_patches=1, processes=2) as first:
        first.read(0, (0, 0, 32, 32), None, np.array([[0, 0]]))
        pool = _readpool._pool
        procs = list(pool._processes.values())
        with _readpool.BlockReader(slide, 1, 32, slots=1, max_patches=1, processes=2) as second:
            second.read(0, (0, 0, 32, 32), None, np.array([[0, 0]]))
        time.sleep(0.6)  # one reader still open: the pool stays
        assert _readpool._pool is pool
    time.sleep(0.6)
    assert _readpool._pool is None
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in procs)


def test_processes_read_a_coarsened_level_like_threads(tmp_path):
    """A non-pyramidal file: level 1 exists only as a coarsened view of level 0 (no tiles
    to pick), which the processes read whole as the threads do."""
    from .helpers import smooth_rgb, write_pyramid

    write_pyramid(tmp_path / "flat.tif", [smooth_rgb(1536, 1536, seed=4)], compression="zlib", tile=(256, 256))
    with open_slide(tmp_path / "flat.tif") as flat:
        assert flat.level_count > 1 and flat.tiled_level(1) is None
        tissue = np.zeros(flat.map_shape(64), dtype=bool)
        tissue[4:12, 6:14] = True
        kw = dict(stride=64, device="cpu", tissue=tissue, batch_size=8, block=4)
        threads = predict_probability_map(flat, MeanRedness(), SPEC, processes=0, **kw)
        procs_map = predict_probability_map(flat, MeanRedness(), SPEC, processes=2, **kw)
    np.testing.assert_array_equal(procs_map, threads)
    assert np.isfinite(threads[tissue]).all()
