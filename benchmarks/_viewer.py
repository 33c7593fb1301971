"""A real napari viewer with the AL Regions widget on the demo slide, for scripts.

Used by ``bench_ui.py`` and ``docs/make_screenshots.py``. Starts Xvfb (pyvirtualdisplay,
installed with pytest-xvfb) when there is no display.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def ensure_display():
    """A virtual X display when none is set (napari needs OpenGL; offscreen Qt cannot draw)."""
    if os.environ.get("DISPLAY"):
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1600, 1000))
    display.start()
    return display


def demo_viewer(session: Path, *, patch_size: int = 64, size: int = 4096, training: dict | None = None, n_slides: int = 1):
    """A shown viewer, the widget docked, a new session in ``session`` and ``n_slides`` demo
    slides added (the first one current)."""
    import napari

    from napari_alregions._sample_data import cache_dir
    from napari_alregions._widgets import ALRegionsWidget
    from napari_alregions.synthetic import make_slide_pool

    folder = cache_dir() / (f"bench-{size}" if n_slides == 1 else f"bench-{size}x{n_slides}")
    manifest = make_slide_pool(folder, n_slides=n_slides, size=size, seed=0)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    w = ALRegionsWidget(viewer)
    viewer.window.add_dock_widget(w, name="AL Regions", area="right")
    w.folder.value = str(session)
    w.patch_size.value = patch_size
    click(w, "New session")
    wait_idle(w)
    if training:
        from napari_alregions.settings import TrainingBudget

        w.project.session.update_settings(training=TrainingBudget(**training))
    for entry in manifest["slides"][:n_slides]:
        w.slide_file.value = str(folder / entry["image"])
        click(w, "Add slide")
    w.slide.value = list(w.project.slides)[0]
    return viewer, w, folder, manifest


def click(widget, text: str, *, wait: bool = True) -> None:
    """Click a button; ``wait``: until what it started (a worker, a redraw) is done."""
    from qtpy.QtWidgets import QPushButton

    [button] = [b for b in widget.findChildren(QPushButton) if b.text() == text]
    button.click()
    if wait:
        wait_idle(widget)


def wait_idle(widget, timeout: float = 900.0) -> None:
    """Process events until the widget's task finished."""
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.005)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("task did not finish")
    for _ in range(5):
        QApplication.processEvents()


def paint_truth(widget, folder: Path, manifest: dict, layer) -> None:
    """Paint an accepted region's layer like the oracle: tumour where the ground truth is."""
    import numpy as np

    from napari_alregions.wsi import open_labels

    region = layer.metadata["region"]
    p = widget.project
    image = Path(p.session.slides[region.slide].path).name  # the region's slide, by its file
    [entry] = [e for e in manifest["slides"] if Path(e["image"]).name == image]
    truth = np.asarray(open_labels(folder / entry["mask"])[p.label_level])
    y0, x0, y1, x1 = p.label_box(region)
    data = layer.data.copy()
    data[truth[y0:y1, x0:x1] == 2] = 2
    layer.data = data
    p.write_region_labels(region, layer.data)
