"""Device choice, mixed precision and compilation."""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "autocast", "compiled", "pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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

# (module id, mode) -> (module, wrapper): a model is compiled once, not once per slide. A few
# entries only: the wrapper holds its module, so a weak-keyed cache would never let go.
_COMPILED: OrderedDict = OrderedDict()
_COMPILED_MAX = 4


class _CompiledOrEager(nn.Module):
    """``torch.compile(module)`` that falls back to the module itself if compiling fails
    (no C compiler, an unsupported operator): a warning, then the same results, slower."""

    def __init__(self, module: nn.Module, mode: str) -> None:
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed:
            try:
                return self.compiled(x)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # inductor/dynamo errors have no common public base
                warnings.warn(f"torch.compile failed, running the model uncompiled: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}", RuntimeWarning, stacklevel=2)
                self.failed = True
        return self.module(x)


def compiled(module: nn.Module, mode: bool | str = True) -> nn.Module:
    """``module`` compiled with ``torch.compile`` (``mode``: True for "default", or one of
    :data:`COMPILE_MODES`), cached per module; shares its weights, so later training shows."""
    mode = "default" if mode is True else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be a bool or one of {COMPILE_MODES}, got {mode!r}")
    key = (id(module), mode)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is module:
        _COMPILED.move_to_end(key)
        return hit[1]
    wrapper = _CompiledOrEager(module, mode)
    _COMPILED[key] = (module, wrapper)
    while len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.popitem(last=False)
    return wrapper
