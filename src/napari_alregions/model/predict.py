"""Streaming probability-map inference over a slide (SPEC §6).

Map pixel (r, c) (stride s level-0 px) gets the class probabilities of the patch of
``spec.patch_size`` px at ``spec.level`` centred on the cell centre ((c + ½)s, (r + ½)s).
Cells are read in blocks by background threads into a bounded queue (tissue blocks only),
batched, and run through the model(s); outside tissue the map is NaN.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..wsi import Slide
from .checkpoint import ModelSpec
from .data import normalise
from .device import autocast, pick_device

__all__ = ["InferenceCancelled", "map_patches", "predict_probability_map"]

_DONE = object()


class InferenceCancelled(RuntimeError):
    """Raised when a cancel callback stopped inference."""


def _nvjpeg():
    """torchvision's decode_jpeg when it can decode on a GPU, else None."""
    try:
        from torchvision.io import decode_jpeg
    except Exception:  # missing, or a wheel that does not match this torch
        return None
    return decode_jpeg


def _cat(parts: list):
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)


def _raw_tiles(tiles, ly: int, lx: int, h: int, w: int) -> list[tuple[int, int, bytes]]:
    """(tile row, tile col, JPEG stream) of the tiles that the level-pixel box touches."""
    y0, y1 = max(ly, 0), min(ly + h, tiles.height)
    x0, x1 = max(lx, 0), min(lx + w, tiles.width)
    out = []
    if y0 >= y1 or x0 >= x1:
        return out
    for ty in range(y0 // tiles.th, (y1 - 1) // tiles.th + 1):
        for tx in range(x0 // tiles.tw, (x1 - 1) // tiles.tw + 1):
            out.append((ty, tx, tiles.jpeg_stream(tiles.tile_index(ty, tx))))
    return out


def _assemble_on_gpu(items: list, tiles, step: int, d: int, dev: torch.device) -> tuple[np.ndarray, torch.Tensor]:
    """Decode the tiles of several blocks in one nvJPEG call and cut their patches on the device.

    ``items`` are reader records ``(map cells, block cells, (ly, lx, h, w), raw tiles)``.
    Returns the map cells and the (N, 3, d, d) uint8 patches, in order.
    """
    streams = [b for item in items for _, _, b in item[3] if b]
    decoded = iter(_nvjpeg()([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in streams], device=dev)) if streams else iter(())
    offs = torch.arange(d, device=dev)
    all_idx, all_patches = [], []
    for idx, cells, (ly, lx, h, w), raw in items:
        region = torch.full((3, h, w), 255, dtype=torch.uint8, device=dev)
        for ty, tx, b in raw:
            ty0, tx0 = ty * tiles.th, tx * tiles.tw
            ys, ye = max(ly, ty0), min(ly + h, ty0 + tiles.th, tiles.height)
            xs, xe = max(lx, tx0), min(lx + w, tx0 + tiles.tw, tiles.width)
            if b:
                img = next(decoded)
                region[:, ys - ly : ye - ly, xs - lx : xe - lx] = img[:3, ys - ty0 : ye - ty0, xs - tx0 : xe - tx0]
            else:  # a sparse file's missing tile reads as zeros
                region[:, ys - ly : ye - ly, xs - lx : xe - lx] = 0
        c = torch.as_tensor(cells, device=dev)
        rows = (c[:, 0:1] * step + offs)[:, :, None]  # (N, d, 1)
        cols = (c[:, 1:2] * step + offs)[:, None, :]  # (N, 1, d)
        all_idx.append(idx)
        all_patches.append(region[:, rows, cols].permute(1, 0, 2, 3))
    return np.concatenate(all_idx), torch.cat(all_patches)


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


def predict_probability_map(
    slide: Slide,
    model: nn.Module | Sequence[nn.Module],
    spec: ModelSpec,
    *,
    stride: int,
    batch_size: int = 128,
    tissue: np.ndarray | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    prefetch: int = 8,
    block: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    gpu_decode: bool | None = None,
) -> np.ndarray:
    """Class probabilities on the map grid of ``stride`` level-0 px.

    Parameters
    ----------
    slide : Slide
    model : nn.Module or sequence of nn.Module
        One model, or ensemble members sharing ``spec`` (each patch is read once).
    spec : ModelSpec
        Patch size, working level and normalisation.
    stride : int
        Level-0 px per map pixel; a multiple of the working level's downsample.
    batch_size : int
        Patches per forward pass; halved and retried on CUDA out-of-memory.
    tissue : (H, W) bool ndarray, optional
        Cells to predict (default ``slide.tissue_map(stride)``).
    device : optional
        Default: CUDA when available (autocast bf16/fp16, pinned memory), else CPU.
    workers, prefetch, block
        Reader threads (default: 2 on the CPU, which the model needs too; up to 8 with
        a GPU), queue length (blocks) and block side (cells).
    progress : callable, optional
        ``progress(done_cells, total_cells)``.
    cancel : callable, optional
        Polled between batches; True stops with :class:`InferenceCancelled`.
    gpu_decode : bool, optional
        Decode JPEG tiles on the GPU with nvJPEG (torchvision) instead of in the reader
        threads. Default: on when the device is CUDA, torchvision can decode there and the
        working level is JPEG-tiled RGB.

    Returns
    -------
    (H, W, C) float32 ndarray, or (E, H, W, C) for a sequence of models
        ``H, W = slide.map_shape(stride)``; NaN outside tissue.
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    out = map_patches(
        slide, models, spec, head=lambda m, x: torch.softmax(m(x).float(), dim=1), n_out=len(spec.classes),
        stride=stride, batch_size=batch_size, tissue=tissue, device=device, workers=workers, prefetch=prefetch,
        block=block, progress=progress, cancel=cancel, gpu_decode=gpu_decode,
    )
    return out if len(models) > 1 else out[0]


def map_patches(
    slide: Slide,
    models: Sequence[nn.Module],
    spec,
    *,
    head: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    n_out: int,
    stride: int,
    batch_size: int = 128,
    tissue: np.ndarray | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    prefetch: int = 8,
    block: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    gpu_decode: bool | None = None,
) -> np.ndarray:
    """Stream the map grid's patches through ``head(model, x)`` for every model.

    The engine behind :func:`predict_probability_map` (head: softmax of the logits) and
    :func:`napari_alregions.embed.embed_slide` (head: normalised features). ``spec`` gives
    ``level``, ``patch_size``, ``mean`` and ``std``; ``head`` returns (N, ``n_out``).
    Returns (E, H, W, n_out) float32, NaN outside tissue. Other parameters as for
    :func:`predict_probability_map`.
    """
    models = list(models)
    if not models:
        raise ValueError("model must be a module or a non-empty sequence of modules")
    level = spec.level
    if not 0 <= level < slide.level_count:
        raise ValueError(f"the model works at level {level}, but {slide.path.name} has levels 0..{slide.level_count - 1}")
    factor = slide.level_factor(level)
    if stride % factor:
        raise ValueError(f"stride ({stride}) must be a multiple of the level-{level} downsample ({factor:g})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = slide.map_shape(stride)
    out = np.full((len(models), h, w, n_out), np.nan, dtype=np.float32)
    if tissue is None:
        tissue = slide.tissue_map(stride)
    tissue = np.asarray(tissue, dtype=bool)
    if tissue.shape != (h, w):
        raise ValueError(f"tissue must have the map shape {(h, w)}, got {tissue.shape}")
    total = int(tissue.sum())
    if total == 0:
        return out
    dev = pick_device(device)
    if workers is None:
        workers = 2 if dev.type == "cpu" else max(2, min(8, (os.cpu_count() or 2) - 1))
    tiles = slide.tiled_level(level)
    if gpu_decode is None:
        gpu_decode = dev.type == "cuda" and tiles is not None and tiles.is_jpeg and _nvjpeg() is not None
    elif gpu_decode and (dev.type != "cuda" or tiles is None or not tiles.is_jpeg or _nvjpeg() is None):
        raise ValueError("gpu_decode needs a CUDA device, torchvision's decode_jpeg and a JPEG-tiled RGB level")
    for m in models:
        m.to(dev).eval()
    d = spec.patch_size
    step = int(stride // factor)  # cell pitch in working-level px

    jobs = _blocks(tissue, block)
    q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    errors: list[BaseException] = []
    next_job = iter(range(len(jobs)))
    job_lock = threading.Lock()

    def reader() -> None:
        try:
            while not stop.is_set():
                with job_lock:
                    j = next(next_job, None)
                if j is None:
                    break
                r0, c0, cells = jobs[j]
                rows, cols = int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1
                # One read per block: the union of its patches, white off the slide.
                x0 = int(c0 * stride + stride / 2 - d * factor / 2)
                y0 = int(r0 * stride + stride / 2 - d * factor / 2)
                h_r, w_r = (rows - 1) * step + d, (cols - 1) * step + d
                if gpu_decode:
                    ly, lx = int(np.floor(y0 / factor)), int(np.floor(x0 / factor))
                    q.put((cells + (r0, c0), cells, (ly, lx, h_r, w_r), _raw_tiles(tiles, ly, lx, h_r, w_r)))
                    continue
                region = slide.read_region(x0, y0, w_r, h_r, level=level, fill=255)
                patches = np.stack([region[r * step : r * step + d, c * step : c * step + d] for r, c in cells])
                q.put((cells + (r0, c0), patches))
        except BaseException as exc:  # surfaced in the consumer
            errors.append(exc)
        finally:
            q.put(_DONE)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    finished, done_cells = 0, 0
    gpu_items: list = []
    decode_batch = 256  # tiles per nvJPEG call: larger batches decode up to 1.5x faster
    pend_idx: list[np.ndarray] = []
    pend_x: list[np.ndarray] = []

    def run_batch(idx: np.ndarray, x: np.ndarray) -> None:
        nonlocal batch_size
        start = 0
        while start < len(x):
            chunk = x[start : start + batch_size]
            try:
                if isinstance(chunk, torch.Tensor):  # decoded on the device: (N, 3, d, d) uint8
                    xt = chunk.float().div_(255)
                else:
                    t = torch.from_numpy(chunk)
                    if dev.type == "cuda":
                        t = t.pin_memory()
                    xt = t.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                xt = normalise(xt, spec.mean, spec.std)
                with torch.no_grad(), autocast(dev):
                    probs = [head(m, xt).float().cpu().numpy() for m in models]
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size = max(1, batch_size // 2)
                continue
            sel = idx[start : start + len(chunk)]
            for e, p in enumerate(probs):
                out[e, sel[:, 0], sel[:, 1]] = p
            start += len(chunk)

    try:
        while finished < len(threads):
            item = q.get()
            if item is _DONE:
                finished += 1
                continue
            if cancel is not None and cancel():
                raise InferenceCancelled("inference cancelled")
            if gpu_decode:
                # gather blocks until a few hundred tiles, then decode them in one call
                gpu_items.append(item)
                if sum(len(it[3]) for it in gpu_items) < decode_batch:
                    continue
                idx, patches = _assemble_on_gpu(gpu_items, tiles, step, d, dev)
                gpu_items = []
            else:
                idx, patches = item
            pend_idx.append(idx)
            pend_x.append(patches)
            if sum(len(i) for i in pend_idx) >= batch_size:
                # run whole batches only: one input shape keeps the GPU kernels warm
                idx_all, x_all = np.concatenate(pend_idx), _cat(pend_x)
                n_full = len(idx_all) // batch_size * batch_size
                pend_idx, pend_x = [idx_all[n_full:]], [x_all[n_full:]]
                run_batch(idx_all[:n_full], x_all[:n_full])
                done_cells += n_full
                if progress is not None:
                    progress(done_cells, total)
        if errors:
            raise errors[0]
        if gpu_items:
            idx, patches = _assemble_on_gpu(gpu_items, tiles, step, d, dev)
            pend_idx.append(idx)
            pend_x.append(patches)
        if pend_idx and sum(len(i) for i in pend_idx):
            idx_all, x_all = np.concatenate(pend_idx), _cat(pend_x)
            run_batch(idx_all, x_all)
            done_cells += len(idx_all)
            if progress is not None:
                progress(done_cells, total)
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):  # unblock readers waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            for t in threads:
                t.join(timeout=0.01)
    return out
