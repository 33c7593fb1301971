"""Patch blocks read and decoded in worker processes, handed back in shared memory.

Reader threads decode JPEG tiles through tifffile, whose codec releases the GIL but whose
Python around each tile needs it; beside a busy thread that holds it (a model thread
launching CUDA kernels, for 5 ms switch intervals) they stall. Measured on 16 cores, 8
reader threads gave 3.1k patches/s of 256² level-0 tiles. Worker processes have an
interpreter each: they open the slide themselves, read a block of patches and write the
pixels into the caller's slot of a shared-memory buffer, so only slot offsets and small
tuples cross the pipe.

Imports numpy and the slide reader only (no torch), so that workers start in a fraction
of a second; the pool is started once per interpreter, reused by the maps that follow, and
shut down after :data:`IDLE_S` seconds without a reader (each idle process holds ~80 MB).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from .wsi import Slide, SlideError, open_slide

__all__ = ["BlockReader", "can_start_processes", "read_block", "shared_bytes", "shared_memory_free", "shutdown"]

_POLL_S = 0.05  # how often a waiting caller looks at its stop flag
_SLIDES_PER_WORKER = 4  # open slides a worker keeps (opening one parses every TIFF page)

IDLE_S = 60.0  # the pool stops this long after its last reader closed

_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_readers_open = 0
_last_closed = 0.0


def can_start_processes() -> bool:
    """False in a daemonic process (a dask worker, a multiprocessing pool worker), which
    may not have children."""
    return not multiprocessing.current_process().daemon


def shared_memory_free() -> int | None:
    """Bytes free for shared memory (``/dev/shm``), None where that is unknown (not Linux).
    Containers often have little: Docker gives 64 MiB unless run with ``--shm-size``."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def shared_bytes(slots: int, max_patches: int, patch: int) -> int:
    """The shared memory a :class:`BlockReader` of these sizes takes."""
    return max(1, slots) * max(1, max_patches) * patch * patch * 3


def _process_pool(processes: int) -> ProcessPoolExecutor:
    """The interpreter's read processes, at least ``processes`` of them (spawned: forking a
    process that runs CUDA or threads is unsafe; started as jobs come). A larger count
    replaces the pool, whose queued jobs still finish; so does a broken pool."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < processes:
            old, _pool_size = _pool, max(processes, _pool_size)
            _pool = ProcessPoolExecutor(max_workers=_pool_size, mp_context=multiprocessing.get_context("spawn"))
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _forget(pool: ProcessPoolExecutor) -> None:
    """Drop a broken pool, so that the next reader starts a fresh one."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is pool:
            _pool, _pool_size = None, 0
    pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the read processes (started again when next needed)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is not None:
            _pool.shutdown(wait=True, cancel_futures=True)
        _pool, _pool_size = None, 0


def _shutdown_if_idle() -> None:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _readers_open or time.monotonic() - _last_closed < IDLE_S * 0.99:
            return
        pool, _pool, _pool_size = _pool, None, 0
    pool.shutdown(wait=False)


def _opened() -> None:
    global _readers_open
    with _pool_lock:
        _readers_open += 1


def _closed() -> None:
    global _readers_open, _last_closed
    with _pool_lock:
        _readers_open -= 1
        _last_closed = time.monotonic()
    timer = threading.Timer(IDLE_S, _shutdown_if_idle)
    timer.name, timer.daemon = "napari-alregions read pool idle", True
    timer.start()


atexit.register(shutdown)

def read_block(slide: Slide, level: int, box: tuple[int, int, int, int], need: list[tuple[int, int]] | None,
               origins: np.ndarray, patch: int, out: np.ndarray) -> None:
    """Read ``box`` (ly, lx, h, w level px; ``need``: the tiles to decode, the rest stays
    white) once and write the patch² patches at ``origins`` ((N, 2) y, x box px) into
    ``out`` (N, patch, patch, 3). Off the level, the image is mirrored at its edge, never
    white: white padding reads as an edge of glass and draws the priority to the border.
    Bypasses the tile cache: a stream sweeps the slide once. The reader threads and the
    read processes both read this way."""
    region = slide._read_mirrored(level, *box, only=need, cache=False)
    for i, (y, x) in enumerate(origins):
        out[i] = region[y : y + patch, x : x + patch]


# -- in the worker processes ----------------------------------------------------------------
_slides: OrderedDict[tuple[str, int, int], Slide] = OrderedDict()


def _open(path: str, stamp: tuple[int, int]) -> Slide:
    """The worker's open slide for ``path`` as it was at ``stamp`` (mtime ns, size): a
    file rewritten since is opened afresh."""
    key = (path, *stamp)
    slide = _slides.pop(key, None)
    if slide is None:
        st = os.stat(path)
        if (st.st_mtime_ns, st.st_size) != stamp:
            raise SlideError(f"{path}: the file changed while its patches were being read")
        slide = open_slide(path)
        while len(_slides) >= _SLIDES_PER_WORKER:
            _slides.popitem(last=False)[1].close()
    _slides[key] = slide  # most recently used last
    return slide


def _read_block(segment: str, offset: int, path: str, stamp: tuple[int, int], level: int,
                box: tuple[int, int, int, int], need: list[tuple[int, int]] | None,
                origins: np.ndarray, patch: int) -> int:
    """:func:`read_block` into ``segment`` at ``offset``. Returns the patch count."""
    slide = _open(path, stamp)
    shm = shared_memory.SharedMemory(name=segment)
    try:
        out = np.ndarray((len(origins), patch, patch, 3), dtype=np.uint8, buffer=shm.buf, offset=offset)
        read_block(slide, level, box, need, origins, patch, out)
        del out  # the buffer cannot close while an array exports it
    finally:
        shm.close()
    return len(origins)


# -- in the caller's process -------------------------------------------------------------------
def _wait(future, stop: threading.Event | None) -> int | None:
    """The future's result; None (and the job cancelled if not begun) once ``stop`` is set."""
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except FutureTimeout:
            if stop is not None and stop.is_set():
                future.cancel()
                return None


class BlockReader:
    """Reads blocks of patches of one slide level in the read processes.

    Each calling thread owns one slot of a shared-memory buffer (``slots`` of them, each
    large enough for ``max_patches`` patches), so a thread has one block in flight. Close
    it (or use it as a context manager) to free the buffer.

    Parameters
    ----------
    slide : Slide
        Opened from a file; the processes open the same file.
    level, patch : int
        The level read and the patch side in its pixels.
    slots, max_patches : int
        Calling threads, and the most patches one block holds.
    processes : int
        Read processes (the interpreter's pool is resized to this).
    """

    def __init__(self, slide: Slide, level: int, patch: int, *, slots: int, max_patches: int,
                 processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        if not can_start_processes():
            raise ValueError("processes: a daemonic process (e.g. a dask worker) cannot start read processes; "
                             "pass processes=0")
        slide._check_level(level)
        size, free = shared_bytes(slots, max_patches, patch), shared_memory_free()
        if free is not None and size > free:
            # a segment larger than /dev/shm is created, but writing past it kills the writer (SIGBUS)
            raise ValueError(
                f"processes: the read processes need {size / 2**20:.0f} MiB of shared memory ({max(1, slots)} "
                f"blocks of up to {max(1, max_patches)} patches of {patch}² px) and /dev/shm has "
                f"{free / 2**20:.0f} MiB free; enlarge it (e.g. docker run --shm-size=2g), read smaller blocks, "
                "or pass processes=0"
            )
        self._path = os.path.abspath(slide.path)
        st = os.stat(self._path)
        self._stamp = (st.st_mtime_ns, st.st_size)
        self._level, self._patch = level, patch
        self._max = max(1, max_patches)
        self._slot_bytes = self._max * patch * patch * 3
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self._name = self._shm.name
        self._slots = max(1, slots)
        self._processes = processes
        self._busy = threading.BoundedSemaphore(processes)  # jobs in flight: the pool may be larger
        _process_pool(processes)  # resized here, not by the first reader thread
        _opened()

    def read(self, slot: int, box: tuple[int, int, int, int], need: list[tuple[int, int]] | None,
             origins: np.ndarray, stop: threading.Event | None = None, out: np.ndarray | None = None) -> np.ndarray | None:
        """The (N, patch, patch, 3) uint8 patches at ``origins`` ((N, 2) y, x px of
        ``box``), read by a process into ``slot``, copied into ``out`` if given (e.g. the
        array of a pinned host tensor) or a new array; None if ``stop`` was set
        meanwhile. Errors of the read (a corrupt tile) are raised here."""
        if not 0 <= slot < self._slots:
            raise ValueError(f"slot must be in 0..{self._slots - 1}, got {slot}")
        origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
        if len(origins) > self._max:
            raise ValueError(f"a block holds at most {self._max} patches, got {len(origins)}")
        shape = (len(origins), self._patch, self._patch, 3)
        if out is not None and (out.shape != shape or out.dtype != np.uint8):
            raise ValueError(f"out must be a {shape} uint8 array, got {out.shape} {out.dtype}")
        offset = slot * self._slot_bytes
        job = (self._name, offset, self._path, self._stamp, self._level, tuple(int(v) for v in box), need,
               origins, self._patch)
        while not self._busy.acquire(timeout=_POLL_S):
            if stop is not None and stop.is_set():
                return None
        try:
            n = self._run(job, stop)
        finally:
            self._busy.release()
        if n is None:
            return None
        view = np.ndarray(shape, dtype=np.uint8, buffer=self._shm.buf, offset=offset)
        try:
            if out is None:
                return view.copy()
            np.copyto(out, view)
            return out
        finally:
            del view

    def _run(self, job: tuple, stop: threading.Event | None) -> int | None:
        """Run ``job`` in a read process; a pool whose process died (killed) is replaced once."""
        for attempt in (1, 2):
            pool = _process_pool(self._processes)
            try:
                return _wait(pool.submit(_read_block, *job), stop)
            except BrokenProcessPool as exc:
                _forget(pool)
                if attempt == 2:
                    raise SlideError(
                        f"{self._path}: a read process died twice reading level {self._level} box {job[5]} "
                        "(out of memory, killed, or unable to start: a script that starts processes needs the "
                        "'if __name__ == \"__main__\":' guard); processes=0 decodes in threads instead"
                    ) from exc
        return None

    def close(self) -> None:
        """Free the shared buffer (a process still writing to it keeps its own mapping)."""
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None
            _closed()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
