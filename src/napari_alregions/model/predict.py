"""Streaming probability-map inference over a slide (SPEC §6).

Map pixel (r, c) (stride s level-0 px) gets the class probabilities of the patch of
``spec.patch_size`` px at ``spec.level`` centred on the cell centre ((c + ½)s, (r + ½)s).
Tissue cells stream through reader threads (CPU decode there or in read processes), a
staging thread (batches; on CUDA the copy or GPU JPEG decode on a side stream) and the
model (:mod:`._stream`); outside tissue the map is NaN.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._readpool import can_start_processes, shared_bytes, shared_memory_free
from ..wsi import Slide
from ._stream import pad_mode, stream_batches
from .batching import resolve_batch_size
from .checkpoint import ModelSpec
from .decoders import TileDecoder, check_decoder, choose_decoder
from .device import autocast, compiled, pick_device

__all__ = ["InferenceCancelled", "map_patches", "predict_probability_map"]

logger = logging.getLogger(__name__)


class InferenceCancelled(RuntimeError):
    """Raised when a cancel callback stopped inference."""


@dataclass(frozen=True)
class StreamSettings:
    """How a map's patches are read (see :func:`predict_probability_map`)."""

    workers: int  # reader threads
    decode: TileDecoder | None  # the GPU JPEG decoder; None: decoded on the CPU
    processes: int  # read processes for the CPU decode (0: in the reader threads)


def default_processes(device: torch.device, decode: TileDecoder | None) -> int:
    """Read processes when none are asked for: with a CUDA model and CPU decode, all cores
    but two (up to 16); otherwise none. A CUDA model's thread keeps the GIL busy, which
    stalls decoding reader threads (on 2 cores with a Python-busy thread: 95 patches/s in
    threads, ~1000 in processes); on the CPU the model needs the cores, and with GPU decode
    the processes only add to it (``processes=N`` to try)."""
    cores = os.cpu_count() or 1
    if device.type != "cuda" or decode is not None or cores < 4 or not can_start_processes():
        return 0
    return min(16, cores - 2)


def stream_settings(slide: Slide, level: int, device: torch.device, *, patch: int, block: int = 8,
                    workers: int | None = None, gpu_decode: bool | None = None,
                    decoder: str | TileDecoder | None = None, processes: int | None = None) -> StreamSettings:
    """Reader threads, the GPU decoder and read processes for ``patch``² patches read in
    blocks of ``block``² cells, defaults filled in (see :func:`predict_probability_map`).
    Default read processes give way to reader threads where /dev/shm cannot hold their
    slots; asked-for ones are then an error when the stream starts."""
    check_decoder(decoder)
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 0):
        raise ValueError(f"processes must be an int >= 0 or None, got {processes!r}")
    cuda = device.type == "cuda"
    if workers is None:
        workers = 2 if not cuda else max(2, min(8, (os.cpu_count() or 2) - 1))
    decode = None
    if gpu_decode is not False:
        decode = choose_decoder(slide.tiled_level(level), device, decoder) if cuda else None
        if gpu_decode and decode is None:
            raise ValueError("gpu_decode needs a CUDA device, a JPEG-tiled RGB level, and a GPU JPEG decoder "
                             f"({decoder!r} if named, else torchvision's decode_jpeg or nvImageCodec) that "
                             "decodes this level's tiles to the pixels the CPU decoder gives")
    if processes is None:
        processes = default_processes(device, decode)
        free = shared_memory_free()
        if processes and free is not None and shared_bytes(max(workers, processes), block * block, patch) > free:
            logger.warning("decoding in reader threads, not %d read processes: /dev/shm has %.0f MiB free",
                           processes, free / 2**20)
            processes = 0
    return StreamSettings(workers, decode, processes)


def _softmax(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(m(x).float(), dim=1)


def predict_probability_map(
    slide: Slide,
    model: nn.Module | Sequence[nn.Module],
    spec: ModelSpec,
    *,
    stride: int,
    batch_size: int | str | None = None,
    tissue: np.ndarray | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    prefetch: int = 8,
    block: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    gpu_decode: bool | None = None,
    decoder: str | TileDecoder | None = None,
    compile: bool | str = False,
    processes: int | None = None,
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
    batch_size : int or "auto", optional
        Patches per forward pass; halved and retried on CUDA out-of-memory. "auto" measures
        the model and takes the smallest batch past which throughput stops growing that
        fits in half the free GPU memory (:func:`~.batching.tune_batch_size`; once per
        model). Default: "auto" on CUDA, 128 on the CPU.
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
        Decode JPEG tiles on the GPU instead of in the reader threads. Default: on when the
        device is CUDA, the working level is JPEG-tiled RGB and a GPU decoder reads its
        tiles as the CPU decoder does (checked once per level).
    decoder : {"torchvision", "nvimgcodec"} or callable, optional
        The GPU JPEG decoder (:mod:`~napari_alregions.model.decoders`): torchvision's
        ``decode_jpeg`` (nvJPEG) or nvImageCodec, or a callable of that signature. Default:
        the first of them that imports and decodes the level right.
    processes : int, optional
        Decode on the CPU in this many worker processes (:mod:`napari_alregions._readpool`;
        started once per interpreter, so a calling script needs the
        ``if __name__ == "__main__":`` guard) instead of in the reader threads. With GPU
        decode they take the blocks the GPU decoder has no time for. Default: most of the
        cores with a CUDA model and CPU decode, where a busy model thread starves reader
        threads of the GIL; else 0. Not available in daemonic processes (dask workers).
    compile : bool or str
        Run the model through ``torch.compile`` (True, or a mode such as
        "max-autotune"); compiled once per model, every batch padded to one shape. Falls
        back to the plain model with a warning if compiling fails.

    Returns
    -------
    (H, W, C) float32 ndarray, or (E, H, W, C) for a sequence of models
        ``H, W = slide.map_shape(stride)``; NaN outside tissue.

    Examples
    --------
    >>> from napari_alregions.model import ModelSpec
    >>> spec = ModelSpec(level=1, patch_size=64)
    >>> prob = predict_probability_map(slide, spec.build(), spec, stride=128)  # doctest: +SKIP
    >>> prob.shape == (*slide.map_shape(128), 2)  # doctest: +SKIP
    True
    """
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    out = map_patches(
        slide, models, spec, head=_softmax, n_out=len(spec.classes),
        stride=stride, batch_size=batch_size, tissue=tissue, device=device, workers=workers, prefetch=prefetch,
        block=block, progress=progress, cancel=cancel, gpu_decode=gpu_decode, decoder=decoder, compile=compile,
        processes=processes,
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
    batch_size: int | str | None = None,
    tissue: np.ndarray | None = None,
    device: str | torch.device | None = None,
    workers: int | None = None,
    prefetch: int = 8,
    block: int = 8,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    gpu_decode: bool | None = None,
    decoder: str | TileDecoder | None = None,
    compile: bool | str = False,
    processes: int | None = None,
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
    if isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size < 1:
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
    cuda = dev.type == "cuda"
    how = stream_settings(slide, level, dev, patch=spec.patch_size, block=block, workers=workers,
                          gpu_decode=gpu_decode, decoder=decoder, processes=processes)
    for m in models:
        m.to(dev).eval()
    d = spec.patch_size
    # x in [0, 255] -> (x / 255 - mean) / std in one multiply-add; constants made once, on
    # the device (a per-batch host->device copy would make the CPU wait for the GPU)
    scale = (1 / (255 * torch.tensor(spec.std, dtype=torch.float32))).view(1, 3, 1, 1).to(dev)
    shift = (-torch.tensor(spec.mean, dtype=torch.float32) / torch.tensor(spec.std, dtype=torch.float32)).view(1, 3, 1, 1).to(dev)

    def forward_all(calls: Sequence[Callable], x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, d, d) normalised float -> one (B, n_out) float32 result per model."""
        with torch.no_grad(), autocast(dev):
            return [c(x).float() for c in calls]

    eager = [functools.partial(head, m) for m in models]
    batch_size = resolve_batch_size(batch_size, lambda x: forward_all(eager, x), key=models[0], patch=d,
                                    device=dev, n_models=len(models))
    calls = [compiled(m, compile, head) for m in models] if compile else eager
    run_size = batch_size  # shrinks on CUDA out-of-memory
    pending: list = []  # CUDA: (cells, pinned host results, copy-done event), oldest first

    def write(idx: np.ndarray, results: Sequence) -> None:
        for e, r in enumerate(results):
            out[e, idx[:, 0], idx[:, 1]] = r.numpy() if isinstance(r, torch.Tensor) else r

    def drain(keep: int) -> None:
        """Write finished copies; wait for the oldest while more than ``keep`` are in flight."""
        while len(pending) > keep or (pending and pending[0][2].query()):
            idx, hosts, done = pending.pop(0)
            done.synchronize()
            write(idx, hosts)

    def run(x: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The results of the first ``n`` rows of ``x``, in chunks of ``run_size``."""
        nonlocal run_size
        parts: list[list[torch.Tensor]] = [[] for _ in models]
        start = 0
        while start < n:
            chunk = x[start : start + run_size]
            try:
                xt = torch.addcmul(shift, chunk.permute(0, 3, 1, 2).float(), scale)  # channels-last
                res = forward_all(calls, xt)
            except torch.OutOfMemoryError:
                if run_size == 1:
                    raise
                torch.cuda.empty_cache()
                run_size = max(1, run_size // 2)
                continue
            for p, r in zip(parts, res):
                p.append(r[: n - start])
            start += len(chunk)
        return [p[0] if len(p) == 1 else torch.cat(p) for p in parts]

    done_cells = 0
    stream = torch.cuda.current_stream(dev) if cuda else None  # where the model and result copies run
    batches = stream_batches(slide, tissue, level=level, stride=stride, patch=d, batch=batch_size, device=dev,
                             workers=how.workers, prefetch=prefetch, block=block, decode=how.decode,
                             pad=pad_mode(compile, dev), processes=how.processes)
    # on CUDA this thread works on dev: events, streams and the allocator default to the
    # current device, which in a pool worker on a multi-GPU machine may be another GPU
    with closing(batches), (torch.cuda.device(dev) if cuda else contextlib.nullcontext()):
        for b in batches:
            if cancel is not None and cancel():
                raise InferenceCancelled("inference cancelled")
            n = len(b.idx)
            if b.ready is not None:
                stream.wait_event(b.ready)
                b.x.record_stream(stream)  # made on the staging stream, used and freed on this one
            results = run(b.x, n)
            if cuda:
                # copy back without blocking; written into the map once the copy is done
                hosts = [torch.empty(r.shape, dtype=r.dtype, pin_memory=True) for r in results]
                for hst, r in zip(hosts, results):
                    hst.copy_(r, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(stream)
                pending.append((b.idx, hosts, copied))
                drain(keep=8)
            else:
                write(b.idx, results)
            done_cells += n
            if progress is not None:
                progress(done_cells, total)
        drain(keep=0)
    _check_finite(out, tissue)
    return out


def _check_finite(out: np.ndarray, tissue: np.ndarray) -> None:
    """Raise if a model gave NaN or inf on a tissue cell: a map of NaN is no uncertainty,
    and every selector would silently find nothing in it."""
    for e, m in enumerate(out):
        bad = ~np.isfinite(m[tissue]).all(axis=-1)
        if bad.any():
            r, c = np.argwhere(tissue)[int(np.argmax(bad))]
            which = f"model {e} of the ensemble" if len(out) > 1 else "the model"
            raise ValueError(
                f"model: {which} gave NaN or inf for {int(bad.sum())} of {int(tissue.sum())} patches (first at "
                f"map cell ({r}, {c})): its weights or normalisation are broken; retrain or load another checkpoint"
            )
