"""Device choice, mixed precision and compilation."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "autocast", "compiled", "pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU. A CUDA device always
    carries its index (streams, events and memory queries are per device)."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} needs a CUDA GPU, and torch sees none")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """bf16 (or fp16) autocast on CUDA; nothing on the CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# (ids of module, head, mode) -> (module, head, wrapper): a model is compiled once, not once
# per slide. A few entries only: the wrapper holds its module, so a weak-keyed cache would
# never let go.
_COMPILED: OrderedDict = OrderedDict()
_COMPILED_MAX = 4


class _CompiledOrEager:
    """``torch.compile`` of ``head(module, x)`` that falls back to running it uncompiled if
    compiling fails (no C compiler, an unsupported operator): a warning, then the same
    results, slower."""

    def __init__(self, module: nn.Module, head: Callable[[nn.Module, torch.Tensor], torch.Tensor], mode: str) -> None:
        self.eager = functools.partial(head, module)
        self.compiled = torch.compile(self.eager, mode=None if mode == "default" else mode, dynamic=False)
        self.failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # inductor/dynamo errors have no common public base
                first = str(exc).splitlines()[0] if str(exc) else ""
                warnings.warn(f"torch.compile failed, running the model uncompiled: {type(exc).__name__}: {first}",
                              RuntimeWarning, stacklevel=2)
                self.failed = True
        return self.eager(x)


def compiled(module: nn.Module, mode: bool | str,
             head: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> head(module, x)`` compiled with ``torch.compile`` (``mode``: True for
    "default", or one of :data:`COMPILE_MODES`), cached per module and head. It shares the
    module's weights, so later training shows."""
    mode = "default" if mode is True else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be a bool or one of {COMPILE_MODES}, got {mode!r}")
    # a bound method is a new object on every access: key on its function and instance
    head_key = (id(getattr(head, "__self__", None)), getattr(head, "__func__", head))
    key = (id(module), head_key, mode)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is module:
        _COMPILED.move_to_end(key)
        return hit[2]
    wrapper = _CompiledOrEager(module, head, mode)
    _COMPILED[key] = (module, head, wrapper)
    while len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return wrapper
