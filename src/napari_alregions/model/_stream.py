"""The patch stream behind :func:`~napari_alregions.model.predict.map_patches`.

Three stages run at once so that neither the disk, the decoder nor the model waits on the
others:

1. reader threads take blocks of tissue cells and read them: either the decoded patches
   (CPU decode, in the thread or, with ``processes``, in a read process of
   :mod:`napari_alregions._readpool`) or the raw JPEG tile streams they touch (GPU
   decode), into a bounded queue. With GPU decode and read processes, a reader that finds
   the staging thread behind (blocks queued up, no batch waiting for the model) has its
   block decoded by a process instead, so the host's cores add to the GPU decoder;
2. one staging thread turns blocks into batches of exactly ``batch`` patches (the tail
   padded as asked) and, on CUDA, puts them on the device on a side stream: GPU JPEG
   decode (:mod:`.decoders`) + patch cutting there, or host-decoded blocks (pinned by
   their reader) copied without blocking. A CUDA event marks each batch ready;
3. the caller's thread (the consumer) waits on that event on its own stream and runs the model,
   so the copy/decode of batch i + 1 overlaps the model on batch i.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .._readpool import BlockReader, read_block
from ..wsi import Slide
from .decoders import TileDecoder

__all__ = ["Batch", "pad_mode", "padded_size", "stream_batches"]

_DONE = object()
_POLL_S = 0.05  # how often blocked threads look at the stop flag
DECODE_BATCH = 256  # tiles per decoder call: nvJPEG decodes larger calls up to 1.5x faster


@dataclass
class Batch:
    """``x[:len(idx)]`` are the patches of map cells ``idx``; rows after that are padding."""

    idx: np.ndarray  # (n, 2) int map cells
    x: torch.Tensor  # (B, d, d, 3) uint8, B >= n, on the target device
    ready: torch.cuda.Event | None = None  # recorded on the staging stream (CUDA)


def pad_mode(compile: bool | str, device: torch.device) -> str | None:
    """How batches are padded (see :func:`padded_size`): to one shape for ``torch.compile``,
    to a power of two on CUDA, not at all on the CPU."""
    if compile:
        return "full"
    return "pow2" if device.type == "cuda" else None


def padded_size(n: int, batch: int, pad: str | None) -> int:
    """Rows of a batch holding ``n`` patches: ``pad`` "full" -> ``batch`` (one input shape,
    what ``torch.compile`` wants), "pow2" -> the next power of two (a few shapes, so
    autotuned kernels are reused without much padding), None -> ``n``."""
    if pad is None or n >= batch:
        return n
    if pad == "full":
        return batch
    if pad == "pow2":
        return min(batch, 1 << (n - 1).bit_length())
    raise ValueError(f"pad must be 'full', 'pow2' or None, got {pad!r}")


def _blocks(tissue: np.ndarray, block: int) -> list[tuple[int, int, np.ndarray]]:
    """(r0, c0, cell indices) of every block of cells that holds tissue."""
    out = []
    h, w = tissue.shape
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            cells = np.argwhere(tissue[r0 : r0 + block, c0 : c0 + block])
            if cells.size:
                out.append((r0, c0, cells))
    return out


def _assemble_on_device(items: list, tiles, step: int, d: int, dev: torch.device,
                        decode: TileDecoder) -> tuple[np.ndarray, torch.Tensor]:
    """Decode the tiles of several blocks in one call and cut all their patches at once.

    ``items`` are reader records ``(map cells, block cells, (ly, lx, h, w), raw tiles)``;
    ``decode`` turns JPEG streams into (3, H, W) tensors on ``dev`` (:mod:`.decoders`).
    Each tile is decoded once per call, however many blocks touch it. The patches are one
    gather from the stacked tiles: pixel (y, x) of the level comes from tile
    (y // th, x // tw) at (y % th, x % tw); off the slide it is white, in a sparse file's
    missing tile black. A handful of kernels per call, not per block or per tile.
    Returns the map cells and their (N, d, d, 3) uint8 patches, in order.
    """
    th, tw = tiles.th, tiles.tw
    slot: dict[tuple[int, int], int] = {}  # (tile row, tile col) -> row of the stack
    streams: list[bytes] = []
    missing: set[tuple[int, int]] = set()
    for item in items:
        for ty, tx, raw in item[3]:
            if (ty, tx) in slot or (ty, tx) in missing:
                continue
            if raw:
                slot[(ty, tx)] = len(streams)
                streams.append(raw)
            else:
                missing.add((ty, tx))
    white, black = len(streams), len(streams) + 1
    for key in missing:
        slot[key] = black
    decoded = [img[:3] if img.shape[1:] == (th, tw) else _pad_tile(img[:3], th, tw) for img in decode(streams, dev)] if streams else []
    fill = [torch.full((1, 3, th, tw), 255, dtype=torch.uint8, device=dev),
            torch.zeros((1, 3, th, tw), dtype=torch.uint8, device=dev)]
    stack = torch.cat([torch.stack(decoded), *fill]) if decoded else torch.cat(fill)
    stack = stack.permute(0, 2, 3, 1)  # (tiles, th, tw, 3), a view

    # top-left level pixel of every patch, and the tile lookup table over their bounding box
    idx = np.concatenate([item[0] for item in items])
    origin = np.concatenate([item[1] * step + (item[2][0], item[2][1]) for item in items])  # (N, 2) y, x
    rows = np.array([k[0] for k in slot]) if slot else np.zeros(1, int)
    cols = np.array([k[1] for k in slot]) if slot else np.zeros(1, int)
    ty0, tx0 = int(rows.min()), int(cols.min())
    lut = np.full((int(rows.max()) - ty0 + 1, int(cols.max()) - tx0 + 1), white, dtype=np.int64)
    for (ty, tx), i in slot.items():
        lut[ty - ty0, tx - tx0] = i
    host = torch.from_numpy(np.concatenate([origin.ravel(), lut.ravel()]).astype(np.int64))
    if dev.type == "cuda":
        # one pinned, non-blocking copy: a pageable copy would make this thread wait for the
        # decode queued before it
        host = host.pin_memory()
    table = host.to(dev, non_blocking=True)
    n = len(origin)
    yx = table[: 2 * n].view(n, 2)
    lut_d = table[2 * n :].view(lut.shape)
    offs = torch.arange(d, device=dev)
    ys, xs = yx[:, 0:1] + offs, yx[:, 1:2] + offs  # (N, d) level pixels
    # off the level the image is mirrored at its edge (as the CPU reader does), never white
    ys = torch.where(ys < 0, -ys - 1, torch.where(ys >= tiles.height, 2 * tiles.height - ys - 1, ys))
    xs = torch.where(xs < 0, -xs - 1, torch.where(xs >= tiles.width, 2 * tiles.width - xs - 1, xs))
    tys, txs = torch.div(ys, th, rounding_mode="floor"), torch.div(xs, tw, rounding_mode="floor")
    inside = ((ys >= 0) & (ys < tiles.height))[:, :, None] & ((xs >= 0) & (xs < tiles.width))[:, None, :]
    tid = lut_d[(tys - ty0).clamp_(0, lut.shape[0] - 1)[:, :, None], (txs - tx0).clamp_(0, lut.shape[1] - 1)[:, None, :]]
    tid = torch.where(inside, tid, white)
    patches = stack[tid, (ys - tys * th)[:, :, None], (xs - txs * tw)[:, None, :]]  # (N, d, d, 3)
    return idx, patches


def _pad_tile(img: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """A decoded tile smaller than the tile grid's (some writers crop edge tiles), padded."""
    out = torch.full((3, th, tw), 255, dtype=torch.uint8, device=img.device)
    h, w = min(th, img.shape[1]), min(tw, img.shape[2])
    out[:, :h, :w] = img[:, :h, :w]
    return out


class _Batcher:
    """Collects (cells, patches) parts and hands out batches of exactly ``size`` rows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idx: list[np.ndarray] = []
        self.x: list[torch.Tensor] = []
        self.n = 0

    def add(self, idx: np.ndarray, x: torch.Tensor) -> None:
        if len(idx):
            self.idx.append(idx)
            self.x.append(x)
            self.n += len(idx)

    def take(self, final: bool = False) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self.n < self.size and not (final and self.n):
            return
        idx = np.concatenate(self.idx)
        x = torch.cat(self.x) if len(self.x) > 1 else self.x[0]
        n_full = len(idx) // self.size * self.size
        for s in range(0, n_full, self.size):
            yield idx[s : s + self.size], x[s : s + self.size]
        rest_idx, rest_x = idx[n_full:], x[n_full:]
        if final and len(rest_idx):
            yield rest_idx, rest_x
            rest_idx, rest_x = rest_idx[:0], rest_x[:0]
        self.idx, self.x, self.n = ([rest_idx], [rest_x], len(rest_idx)) if len(rest_idx) else ([], [], 0)


def stream_batches(
    slide: Slide,
    tissue: np.ndarray,
    *,
    level: int,
    stride: int,
    patch: int,
    batch: int,
    device: torch.device,
    workers: int,
    prefetch: int = 8,
    block: int = 8,
    decode: TileDecoder | None = None,
    pad: str | None = None,
    depth: int = 3,
    processes: int = 0,
) -> Iterator[Batch]:
    """Batches of the tissue cells' patches, in no fixed order (each cell once).

    A generator: closing it (or an exception in the consumer) stops and joins the threads.
    ``depth`` batches may wait on the device at once. Errors in the threads are raised here.
    With a ``decode`` (:mod:`.decoders`) the readers pass raw JPEG tiles and the staging
    thread decodes them with it, on the GPU (a CPU decoder lets the CPU run this path too);
    without, the readers decode. ``processes`` > 0: the CPU decode runs in that many read
    processes (one block in flight per reader thread; there are at least as many readers
    as processes), and with a ``decode`` it serves the blocks the staging thread is too
    busy for.
    """
    factor = slide.level_factor(level)
    step = int(stride // factor)  # cell pitch in working-level px
    d = patch
    cuda = device.type == "cuda"
    raw_tiles = decode is not None  # readers pass JPEG streams, the stager decodes
    tiles = slide.tiled_level(level)
    jobs = _blocks(tissue, block)
    n_readers = max(1, workers, processes)
    pool = (BlockReader(slide, level, d, slots=n_readers, max_patches=max((len(j[2]) for j in jobs), default=1),
                        processes=processes) if processes else None)
    q_blocks: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    q_batches: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    errors: list[BaseException] = []
    next_job = iter(range(len(jobs)))
    job_lock = threading.Lock()

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def stager_behind() -> bool:
        """Blocks wait for the staging thread while no batch waits for the model: the GPU
        decode, not the model or the disk, holds the stream up."""
        return q_blocks.full() and not q_batches.full()

    def reader(slot: int) -> None:
        try:
            while not stop.is_set():
                with job_lock:
                    j = next(next_job, None)
                if j is None:
                    break
                r0, c0, cells = jobs[j]
                rows, cols = int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1
                # One read per block: the bounding box of its patches, white off the slide,
                # decoding only the tiles that its patches touch (at level 0 a block's tissue
                # cells often leave a third of the box's tiles untouched).
                x0 = int(c0 * stride + stride / 2 - d * factor / 2)
                y0 = int(r0 * stride + stride / 2 - d * factor / 2)
                ly, lx = int(np.floor(y0 / factor)), int(np.floor(x0 / factor))
                h_r, w_r = (rows - 1) * step + d, (cols - 1) * step + d
                need = tiles.touched(cells * step + (ly, lx), d) if tiles is not None else None
                if raw_tiles and (pool is None or not stager_behind()):
                    raw = [(ty, tx, tiles.jpeg_stream(tiles.tile_index(ty, tx))) for ty, tx in need]
                    item = (cells + (r0, c0), cells, (ly, lx, h_r, w_r), raw)
                else:
                    # pinned on CUDA: the staging thread copies it to the device without
                    # blocking and without a second host copy
                    x = torch.empty((len(cells), d, d, 3), dtype=torch.uint8, pin_memory=cuda)
                    if pool is not None:
                        if pool.read(slot, (ly, lx, h_r, w_r), need, cells * step, stop, out=x.numpy()) is None:
                            break  # stopped
                    else:
                        read_block(slide, level, (ly, lx, h_r, w_r), need, cells * step, d, x.numpy())
                    item = (cells + (r0, c0), x)
                if not put(q_blocks, item):
                    break
        except BaseException as exc:  # surfaced in the consumer
            errors.append(exc)
            stop.set()
        finally:
            put(q_blocks, _DONE)

    def finish(idx: np.ndarray, x: torch.Tensor) -> Batch:
        rows = padded_size(len(idx), batch, pad)
        if rows > len(x):
            x = torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])
        if not cuda:
            return Batch(idx, x)
        ready = torch.cuda.Event()
        ready.record()  # on the staging stream, current in this thread
        return Batch(idx, x, ready)

    def stager() -> None:
        try:
            if cuda:
                torch.cuda.set_device(device)  # an indexed device (pick_device)
                torch.cuda.set_stream(torch.cuda.Stream(device))  # this thread's current stream
            batcher = _Batcher(batch)
            gpu_items: list = []
            gathered: set[tuple[int, int]] = set()  # distinct tiles in gpu_items
            finished = 0
            while finished < len(readers) and not stop.is_set():
                try:
                    item = q_blocks.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _DONE:
                    finished += 1
                    continue
                if len(item) == 4:
                    # raw tiles: gather blocks until a few hundred distinct tiles, then decode them in one call
                    gpu_items.append(item)
                    gathered.update((ty, tx) for ty, tx, _ in item[3])
                    if len(gathered) < DECODE_BATCH:
                        continue
                    batcher.add(*_assemble_on_device(gpu_items, tiles, step, d, device, decode))
                    gpu_items, gathered = [], set()
                else:
                    # decoded on the host: to the device now (batches are cut there)
                    batcher.add(item[0], item[1].to(device, non_blocking=True) if cuda else item[1])
                for part in batcher.take():
                    if not put(q_batches, finish(*part)):
                        return
            if stop.is_set():
                return
            if gpu_items:
                batcher.add(*_assemble_on_device(gpu_items, tiles, step, d, device, decode))
            for part in batcher.take(final=True):
                if not put(q_batches, finish(*part)):
                    return
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            put(q_batches, _DONE)

    readers = [threading.Thread(target=reader, args=(i,), daemon=True, name=f"alregions-read-{i}")
               for i in range(n_readers)]
    threads = [*readers, threading.Thread(target=stager, daemon=True, name="alregions-stage")]
    for t in threads:
        t.start()
    try:
        while True:
            try:
                item = q_batches.get(timeout=_POLL_S)
            except queue.Empty:
                if errors:
                    break
                continue
            if item is _DONE:
                break
            yield item
        if errors:
            raise errors[0]
    finally:
        stop.set()
        for t in threads:
            t.join()
        if pool is not None:
            pool.close()
