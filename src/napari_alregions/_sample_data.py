"""npe2 sample-data contribution: a generated synthetic slide and its tissue mask."""

from __future__ import annotations

import os
from pathlib import Path

from .layers import slide_image_layer, tissue_labels_layer
from .synthetic import make_slide_pool
from .wsi import open_slide


def cache_dir() -> Path:
    """Where generated demo data live (``ALREGIONS_CACHE`` overrides)."""
    env = os.environ.get("ALREGIONS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-alregions"


def demo_slide() -> list[tuple]:
    """Generate (once) and open a 4096² synthetic slide with its tissue mask."""
    folder = cache_dir() / "sample"
    manifest = make_slide_pool(folder, n_slides=1, size=4096, seed=0)
    slide = open_slide(folder / manifest["slides"][0]["image"])
    return [slide_image_layer(slide), tissue_labels_layer(slide)]
