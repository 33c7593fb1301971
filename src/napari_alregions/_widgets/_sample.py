"""``File ▸ Open Sample``: the demo slide, generated and opened in a worker.

napari calls a sample command on the viewer's thread and needs a layer back: while the
slide is generated (about 20 s, once; it is cached) or opened (3-6 s on a busy machine:
its tissue mask is read), a light placeholder of the slide's size stands in, and the slide
and its tissue mask replace it when they are ready.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._sample_data import SAMPLE_SIZE
from .._sample_data import demo_slide as _demo_layers

PLACEHOLDER = "demo slide (generating…)"
_workers: set = set()  # running generations (a worker nobody holds could be collected)


def demo_slide() -> list[tuple]:
    """A placeholder layer, and a worker that generates (once) and opens the demo slide."""
    import napari
    from napari.qt.threading import create_worker

    viewer = napari.current_viewer()
    if viewer is None:  # no viewer to add the layers to later
        return _demo_layers()
    worker = create_worker(_demo_layers, _start_thread=False)
    _workers.add(worker)
    worker.returned.connect(lambda layers: _replace(viewer, layers))
    worker.finished.connect(lambda: _workers.discard(worker))
    worker.start()
    side = 64
    scale = SAMPLE_SIZE / side * 0.5  # the slide's extent (µm), so the view does not jump
    return [(np.full((side, side, 3), 235, np.uint8), {"name": PLACEHOLDER, "rgb": True, "scale": (scale, scale),
                                                         "translate": ((scale - 0.5) / 2,) * 2, "opacity": 0.5}, "image")]


def _replace(viewer: Any, layers: list[tuple]) -> None:
    """The placeholder goes and the layers come, one per event-loop turn (the slide's image
    and its tissue mask in one turn held the viewer ~1.4 s)."""
    from qtpy.QtCore import QTimer

    if not layers:
        return
    (data, kwargs, kind), rest = layers[0], layers[1:]
    try:
        if PLACEHOLDER in viewer.layers:
            viewer.layers.remove(PLACEHOLDER)
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    except RuntimeError:  # the viewer was closed meanwhile
        return
    if rest:
        QTimer.singleShot(1, lambda: _replace(viewer, rest))
