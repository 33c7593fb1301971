"""The demo slide (a generated synthetic slide and its tissue mask), without napari.

``File ▸ Open Sample`` goes through :mod:`napari_alregions._widgets._sample`, which
generates the slide in a worker the first time (19 s on the viewer's thread before).
"""

from __future__ import annotations

import os
from pathlib import Path

from .layers import slide_image_layer, tissue_labels_layer
from .synthetic import MANIFEST, make_slide_pool
from .wsi import open_slide

#: Side of the demo slide (level-0 px, 0.5 µm/px).
SAMPLE_SIZE = 4096


def cache_dir() -> Path:
    """Where generated demo data live (``ALREGIONS_CACHE`` overrides)."""
    env = os.environ.get("ALREGIONS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-alregions"


def sample_ready() -> bool:
    """Whether the demo slide has been generated (opening it is then quick)."""
    folder = cache_dir() / "sample"
    return (folder / MANIFEST).is_file() and any(folder.glob("*_mask.tif"))


def demo_slide() -> list[tuple]:
    """Generate (once) and open a 4096² synthetic slide: its image and tissue mask layers."""
    folder = cache_dir() / "sample"
    manifest = make_slide_pool(folder, n_slides=1, size=SAMPLE_SIZE, seed=0)
    slide = open_slide(folder / manifest["slides"][0]["image"]).close_with_levels()  # napari closes no file
    return [slide_image_layer(slide), tissue_labels_layer(slide)]
