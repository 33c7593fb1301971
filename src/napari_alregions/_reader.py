"""npe2 reader contribution: whole-slide images as multiscale image layers.

napari asks :func:`get_reader` about every file whose name matches the manifest's
patterns, and about every folder; it answers only for what it can open (probed: a TIFF by
its first bytes, read by tifffile; other formats by OpenSlide when it is installed; an
OME-Zarr folder by its metadata, a folder of DICOM files by OpenSlide; then opened as a
slide), so other readers get the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .layers import slide_image_layer
from .wsi import open_slide

#: Suffixes of slide formats tifffile reads (keep in step with napari.yaml's patterns).
TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".qptiff")
#: Suffixes of slide formats only OpenSlide reads (the ``openslide`` extra).
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".svslide", ".dcm")
SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES


def can_open(path: str | Path) -> bool:
    """Whether :func:`~napari_alregions.wsi.open_slide` opens the file or folder (closed again)."""
    if not (Path(path).is_dir() or (str(path).lower().endswith(SUFFIXES) and Path(path).is_file())):
        return False
    try:
        open_slide(path).close()
    except (OSError, ValueError):  # SlideError is a ValueError
        return False
    return True


def get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for slide files, or None so that other readers can try."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(can_open(p) for p in paths):
        return None
    return read_slides


def read_slides(path: str | list[str]) -> list[tuple]:
    """Open each slide lazily; raises ``SlideError`` with the reason for a bad file."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return [slide_image_layer(open_slide(p)) for p in paths]
