"""The layer the user works in stays theirs while the plugin adds layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["kept_active"]


@contextmanager
def kept_active(viewer: Any) -> Iterator[None]:
    """Add layers inside this block without taking the user's layer away.

    napari makes each new layer the active one: a pathologist painting in a region found
    the brush gone (and the painting layer under the new priority map) after every
    Compute, Suggest or Retrain. Afterwards the layer active before is active again, in
    the mode it was in, and on top if it was on top.
    """
    layers = viewer.layers
    active = layers.selection.active
    on_top = active is not None and layers[-1] is active
    mode = getattr(active, "mode", None)
    try:
        yield
    finally:
        if active is not None and active in layers:
            if on_top and layers[-1] is not active:
                layers.move(layers.index(active), len(layers))
            if layers.selection.active is not active:
                layers.selection.active = active
            if mode is not None and active.mode != mode:
                active.mode = mode
