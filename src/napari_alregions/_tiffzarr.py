"""The one adapter between tifffile's and zarr's changing APIs.

tifffile up to 2026.3 (the last release for Python 3.11) exposes pyramid levels as zarr
stores through ``aszarr``; from 2026.5 on it deprecates that for ``return_as='zarr'`` and
needs zarr >= 3.2. Everything else in the package goes through :func:`open_level`.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import tifffile
import zarr

__all__ = ["open_level"]

_HAS_RETURN_AS = "return_as" in inspect.signature(tifffile.imread).parameters


def open_level(tif: tifffile.TiffFile, *, series: int, level: int) -> zarr.Array:
    """Return one pyramid level of one series of an open TIFF as a read-only zarr array.

    Reading it decodes only the tiles that a slice touches.
    """
    if _HAS_RETURN_AS:
        obj: Any = tifffile.imread(
            tif.filehandle, return_as="zarr", series=series, level=level
        )
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            obj = tif.aszarr(series=series, level=level)
    if isinstance(obj, zarr.Array):
        return obj
    node = zarr.open(obj, mode="r")
    if isinstance(node, zarr.Array):
        return node
    # A multiscale group: the store was opened for every level; pick ours.
    keys = sorted(node.array_keys(), key=lambda k: int(k) if k.isdigit() else k)
    return node[keys[level]]
