"""npe2 reader contribution: whole-slide images as multiscale image layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .layers import slide_image_layer
from .wsi import open_slide

SUFFIXES = (".tif", ".tiff", ".svs")


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for slide files, or None so that other readers can try."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(str(p).lower().endswith(SUFFIXES) and Path(p).is_file() for p in paths):
        return None
    return read_slides


def read_slides(path: str | list[str]) -> list[tuple]:
    """Open each slide lazily; raises ``SlideError`` with the reason for a bad file."""
    paths = [path] if isinstance(path, str) else list(path)
    return [slide_image_layer(open_slide(p)) for p in paths]
