"""Inference batch size tuned to the device: throughput first, memory as the bound.

On a GPU the best batch is the smallest one past which throughput stops growing, as long
as it fits in the free memory with headroom (decode buffers, other processes). The search
doubles the batch from ``start``, measures patches/s and the peak memory of each, and
stops at the first doubling that gains less than ``min_gain``, that would not fit, or
that runs out of memory.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

import torch

from .device import autocast, pick_device

__all__ = ["resolve_batch_size", "search_batch_size", "tune_batch_size"]

DEFAULT_CPU_BATCH = 128

# module -> {(device, patch, n_models): batch}: tuning costs a few forward passes, once
_TUNED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def search_batch_size(
    measure: Callable[[int], tuple[float, float]],
    *,
    start: int = 16,
    max_batch: int = 2048,
    budget: float | None = None,
    min_gain: float = 1.05,
    max_probe_s: float | None = None,
) -> int:
    """The batch size that ``measure`` says is best, found by doubling.

    Parameters
    ----------
    measure : callable
        ``measure(b) -> (patches_per_s, peak_bytes)``; may raise ``torch.OutOfMemoryError``.
    start, max_batch : int
        First and largest batch tried (``start`` is halved down to 1 while it runs out of memory).
    budget : float, optional
        Bytes a batch may use: a doubling whose projected peak (2x the current) exceeds
        it is not tried.
    min_gain : float
        A doubling is kept only if it is at least this much faster than the best so far;
        the search stops at the first that is not.
    max_probe_s : float, optional
        Stop once one measurement takes longer than this (slow models on a CPU).

    Returns
    -------
    int

    Examples
    --------
    >>> def measure(b):  # saturates at 256 patches per batch
    ...     return min(b, 256) * 10.0, b * 1e6
    >>> search_batch_size(measure, start=16, max_batch=4096)
    256
    """
    if start < 1 or max_batch < start:
        raise ValueError(f"need 1 <= start <= max_batch, got start={start}, max_batch={max_batch}")
    if min_gain < 1:
        raise ValueError(f"min_gain must be >= 1, got {min_gain}")
    def timed(b: int) -> tuple[float, float, float]:
        t = time.perf_counter()
        rate, peak = measure(b)
        return rate, peak, time.perf_counter() - t

    b = start
    while True:  # the first size that fits
        try:
            rate, peak, took = timed(b)
            break
        except torch.OutOfMemoryError:
            _free_cache()
            if b == 1:
                raise
            b //= 2
    best, best_rate = b, rate
    while b * 2 <= max_batch:
        if budget is not None and 2 * peak > budget:
            break
        if max_probe_s is not None and took > max_probe_s:
            break
        b *= 2
        try:
            rate, peak, took = timed(b)
        except torch.OutOfMemoryError:
            _free_cache()
            break
        if rate < best_rate * min_gain:
            break
        best, best_rate = b, rate
    return best


def _free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def tune_batch_size(
    forward: Callable[[torch.Tensor], object],
    *,
    patch: int,
    device: str | torch.device,
    start: int = 16,
    max_batch: int | None = None,
    memory_fraction: float = 0.5,
    min_gain: float = 1.05,
    repeats: int = 2,
    min_seconds: float = 0.05,
) -> int:
    """Measure ``forward`` on random (b, 3, patch, patch) batches and pick b.

    Parameters
    ----------
    forward : callable
        Runs the model(s) on a normalised float batch (channels-last, as the pipeline feeds).
    patch : int
        Patch side.
    device : str or torch.device
    start : int
        First batch tried.
    max_batch : int, optional
        Largest batch tried: default 4096 on a GPU, 256 on the CPU (where throughput is
        flat beyond a few dozen patches and probes are slow).
    memory_fraction : float
        Share of the device's free memory a batch may use (GPU only).
    min_gain : float
        See :func:`search_batch_size`.
    repeats : int
        Timed forward passes per batch size, after one warm-up; more while they take
        less than ``min_seconds`` in all (small batches on a GPU).
    min_seconds : float
        Shortest timing per batch size.

    Returns
    -------
    int

    Examples
    --------
    >>> from napari_alregions.model import ModelSpec
    >>> net = ModelSpec(level=1, patch_size=64).build().eval()
    >>> tune_batch_size(net, patch=64, device="cpu", max_batch=64)  # doctest: +SKIP
    32
    """
    device = pick_device(device)
    if patch < 1:
        raise ValueError(f"patch must be >= 1, got {patch}")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    cuda = device.type == "cuda"
    if max_batch is None:
        max_batch = 4096 if cuda else 256
    budget = None
    if cuda:
        free, _ = torch.cuda.mem_get_info(device)
        budget = memory_fraction * free

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def measure(b: int) -> tuple[float, float]:
        x = torch.rand(b, 3, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast(device):
            forward(x)  # warm-up: kernels, autotuning, allocator
            sync()
            base = 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            n = repeats
            while True:
                t = time.perf_counter()
                for _ in range(n):
                    forward(x)
                sync()
                dt = time.perf_counter() - t
                # a small batch on a GPU runs in microseconds: a few passes measure launch
                # jitter and clock ramp-up, not throughput, so time at least min_seconds
                if dt >= min_seconds or n >= 1000:
                    break
                n = min(1000, max(2 * n, int(n * min_seconds / max(dt, 1e-6)) + 1))
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
        return b * n / max(dt, 1e-9), float(peak)

    return search_batch_size(measure, start=min(start, max_batch), max_batch=max_batch, budget=budget,
                             min_gain=min_gain, max_probe_s=None if cuda else 1.0)


def resolve_batch_size(batch_size: int | str | None, forward: Callable[[torch.Tensor], object], *, key: object,
                       patch: int, device: torch.device, n_models: int = 1) -> int:
    """An inference call's batch size: ``batch_size`` if an int; "auto" tunes it (once per
    model, device and patch size); None is "auto" on a GPU and 128 on the CPU."""
    if batch_size is None:
        batch_size = "auto" if device.type == "cuda" else DEFAULT_CPU_BATCH
    if isinstance(batch_size, str):
        if batch_size != "auto":
            raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        try:
            cache = _TUNED.setdefault(key, {})
        except TypeError:  # not weak-referenceable: tune every call
            cache = {}
        k = (str(device), patch, n_models)
        if k not in cache:
            cache[k] = tune_batch_size(forward, patch=patch, device=device)
        return cache[k]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    return batch_size
