"""The layer the user works in stays theirs while the plugin adds layers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["kept_active", "remove_top_down"]

_VIEWING_MODES = {"pan_zoom", "transform"}  # the modes in which a layer is only looked at


@contextmanager
def kept_active(viewer: Any) -> Iterator[None]:
    """Add layers inside this block without taking the user's layer away.

    napari makes each new layer the active one: a pathologist painting in a region found
    the brush gone (and the painting layer under the new priority map) after every
    Compute, Suggest or Retrain. Afterwards the layer active before is active again, in
    the mode it was in, and a layer being drawn in (painting, a rectangle tool) stays on
    top if it was; one only looked at (a slide) leaves the top to the new overlays.
    """
    layers = viewer.layers
    active = layers.selection.active
    mode = getattr(active, "mode", None)
    on_top = active is not None and layers[-1] is active and str(mode) not in _VIEWING_MODES
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


def remove_top_down(viewer: Any, layers: Iterable[Any]) -> None:
    """Remove ``layers`` from the viewer, the topmost first, so the layers left keep their
    places: a multiscale image moved down the list by a removal under it crashed vispy's
    next draw under software OpenGL (Xvfb, llvmpipe) when a dock widget was docked."""
    present = {id(layer): layer for layer in layers if layer in viewer.layers}
    for layer in sorted(present.values(), key=viewer.layers.index, reverse=True):
        viewer.layers.remove(layer)
