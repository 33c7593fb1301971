"""The ceilings shared by the throughput benchmarks: the model alone (a forward function on
random tensors already on the device, batch after batch, in channels-last: the layout the
pipeline feeds) and the patch stream alone (read, decode, batch, to the device; no model)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from napari_alregions.model._stream import stream_batches
from napari_alregions.model.device import autocast, compiled
from napari_alregions.model.predict import _softmax


def ceiling(forward: Callable[[torch.Tensor], torch.Tensor], *, batch: int, patch: int, n_patches: int,
            device: torch.device) -> float:
    """Patches/s of ``forward`` on random (batch, 3, patch, patch) inputs."""
    x = torch.rand(batch, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device):
        for _ in range(3):
            forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n = max(1, n_patches // batch)
        t = time.perf_counter()
        for _ in range(n):
            forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t)


def stream_only(slide, tissue, *, level: int, stride: int, patch: int, batch: int, device: torch.device,
                workers: int, decode=None, pad: str | None = None, processes: int = 0) -> float:
    """Patches/s of the stream that feeds the model, the model left out."""
    n = 0
    t = time.perf_counter()
    for b in stream_batches(slide, tissue, level=level, stride=stride, patch=patch, batch=batch, device=device,
                            workers=workers, decode=decode, pad=pad, processes=processes):
        n += len(b.idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t)


def softmax_forward(model: torch.nn.Module, compile: bool | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the pipeline runs per batch for a probability map: softmax of the logits,
    through the same compiled wrapper as ``predict_probability_map(compile=...)``."""
    return compiled(model, compile, _softmax) if compile else (lambda x: _softmax(model, x))
