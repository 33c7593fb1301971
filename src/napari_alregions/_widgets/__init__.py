"""napari widgets: the only part of the package that imports napari and Qt (SPEC §2)."""

from .main import ALRegionsWidget

__all__ = ["ALRegionsWidget"]
