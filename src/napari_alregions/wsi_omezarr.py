"""OME-Zarr (OME-NGFF multiscales) slides read lazily through zarr.

NGFF 0.4 images are zarr v2 groups whose ``.zattrs`` hold ``multiscales``; NGFF 0.5 images
are zarr v3 groups whose ``zarr.json`` holds them under ``attributes.ome``. Each dataset of
the first multiscale is a level, finest first; its ``coordinateTransformations`` scale (times
the multiscale's own, if any) in the x axis's unit gives the pixel size, converted to µm.
Axes are found by name (``t``, ``c``, ``z``, ``y``, ``x`` in any order: ``cyx`` as the spec
orders them, ``yxc`` as some writers do); every axis but y, x and the channel axis must have
length 1. A bioformats2raw layout (the image in ``0/``) opens its first image.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .wsi import (
    MAX_COMPRESSION,
    UNIT_UM,
    Slide,
    SlideError,
    SlideInfo,
    _level_geometry,
    _LevelReader,
    _Levels,
    _plausible_mpp,
    _pyramid,
)

__all__ = ["is_ome_zarr", "open_ome_zarr"]

#: The most bytes of group metadata (``.zattrs``, ``zarr.json``) read: real ones are a few KiB.
MAX_METADATA_BYTES = 4 * 2**20
#: The most pyramid levels an image may list (a 2^64 px side halved down to one pixel).
MAX_LEVELS = 64
#: A level's size may differ by this many pixels from level 0's divided by its downsample
#: (writers round up or down).
_SHAPE_SLACK_PX = 1


def _read_json(path: Path) -> dict[str, Any] | None:
    """A metadata file's JSON object; None if absent, unreadable, too large or not an object."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_METADATA_BYTES:
            return None
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _ngff_attributes(folder: Path) -> dict[str, Any] | None:
    """The NGFF attributes of a zarr group folder (``ome`` of a v3 group, ``.zattrs`` of a
    v2 one), or None when the folder is no zarr group."""
    v3 = _read_json(folder / "zarr.json")
    if v3 is not None:
        attrs = v3.get("attributes")
        if v3.get("node_type") != "group" or not isinstance(attrs, dict):
            return None
        ome = attrs.get("ome")
        return ome if isinstance(ome, dict) else attrs
    if (folder / ".zgroup").is_file() or (folder / ".zattrs").is_file():
        return _read_json(folder / ".zattrs") or {}
    return None


def _image_folder(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The folder holding the multiscales (``path``, or its ``0/`` in a bioformats2raw
    layout) and its NGFF attributes."""
    attrs = _ngff_attributes(path)
    if attrs is None:
        return None
    if "multiscales" in attrs:
        return path, attrs
    if "bioformats2raw.layout" in attrs:
        inner = _ngff_attributes(path / "0")
        if inner is not None and "multiscales" in inner:
            return path / "0", inner
    return None


def is_ome_zarr(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding an OME-Zarr multiscale image (reads its metadata only)."""
    path = Path(path)
    return path.is_dir() and _image_folder(path) is not None


def describe_zarr_folder(path: Path) -> str | None:
    """Why a zarr group folder is no OME-Zarr image we open (None when it is no zarr group)."""
    attrs = _ngff_attributes(path)
    if attrs is None:
        return None
    kinds = [k for k in ("plate", "well", "labels") if k in attrs]
    what = f"an OME-Zarr {kinds[0]}, not a multiscale image" if kinds else "a zarr group without OME-NGFF multiscales"
    return f"{path}: {what}; open the image group itself (a folder whose metadata hold 'multiscales')"


# ---------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------
def _axes(path: Path, ms: dict[str, Any], ndim: int) -> list[tuple[str, str, str | None]]:
    """(name, type, unit) of each axis; NGFF 0.1/0.2 had none (always t, c, z, y, x), 0.3 names only."""
    raw = ms.get("axes")
    if raw is None and ndim == 5:
        raw = ["t", "c", "z", "y", "x"]
    if not isinstance(raw, list) or len(raw) != ndim:
        raise SlideError(f"{path}: multiscales 'axes' must list the {ndim} axes of its arrays, got {raw!r}")
    axes = []
    for a in raw:
        if isinstance(a, str):
            a = {"name": a}
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise SlideError(f"{path}: each multiscales axis needs a 'name', got {a!r}")
        unit = a.get("unit")
        axes.append((a["name"].lower(), str(a.get("type", "")).lower(), unit if isinstance(unit, str) else None))
    names = [n for n, _, _ in axes]
    if len(set(names)) != len(names) or "y" not in names or "x" not in names:
        raise SlideError(f"{path}: the axes {names} must be distinct and include 'y' and 'x'")
    return axes


def _scale(path: Path, transforms: Any, ndim: int, where: str) -> np.ndarray | None:
    """The scale vector of a ``coordinateTransformations`` list (None if it has none we can use)."""
    if transforms is None:
        return None
    if not isinstance(transforms, list):
        raise SlideError(f"{path}: {where} 'coordinateTransformations' must be a list, got {transforms!r}")
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
            try:
                s = np.asarray(t["scale"], dtype=float)
            except (TypeError, ValueError):
                s = None
            if s is None or s.shape != (ndim,) or not np.all(np.isfinite(s)) or not np.all(s > 0):
                raise SlideError(f"{path}: {where} scale must be {ndim} positive numbers, got {t['scale']!r}")
            return s
    return None  # a scale stored in a file ('path') is not read: geometry from the shapes


def _dataset_path(path: Path, ds: Any, i: int) -> str:
    """A dataset's relative path, refused if it leaves the image folder."""
    p = ds.get("path") if isinstance(ds, dict) else None
    parts = p.replace("\\", "/").split("/") if isinstance(p, str) else []
    if not parts or any(part in ("", ".", "..") for part in parts) or ":" in p:
        raise SlideError(f"{path}: multiscales dataset {i} needs a relative 'path' inside the image, got {p!r}")
    return "/".join(parts)


# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------
def open_ome_zarr(path: str | os.PathLike[str]) -> Slide:
    """Open an OME-Zarr multiscale image (NGFF 0.1-0.5) as a lazy RGB slide.

    Parameters
    ----------
    path : str or PathLike
        The image's folder (``.zattrs`` or ``zarr.json`` with ``multiscales``), or a
        bioformats2raw layout's root.

    Returns
    -------
    Slide
        Levels are the datasets, finest first; ``mpp`` from the x axis's scale and unit
        (None without a length unit); downsamples from the scales (from the shapes when a
        level has none).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SlideError
        If it is no OME-Zarr image, or not 8-bit RGB(A), or its metadata contradict its arrays.

    Examples
    --------
    >>> with open_ome_zarr("slide.ome.zarr") as slide:  # doctest: +SKIP
    ...     print(slide.info.level_shapes, slide.mpp)
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    found = _image_folder(path) if path.is_dir() else None
    if found is None:
        why = describe_zarr_folder(path) if path.is_dir() else None
        raise SlideError(why or f"{path}: not an OME-Zarr image (no 'multiscales' in .zattrs or zarr.json)")
    folder, attrs = found
    multiscales = attrs["multiscales"]
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise SlideError(f"{path}: 'multiscales' must be a non-empty list of objects")
    ms = multiscales[0]  # the spec: the first is the default
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or len(datasets) > MAX_LEVELS:
        raise SlideError(f"{path}: multiscales 'datasets' must be a non-empty list of at most {MAX_LEVELS} levels")
    arrays = _open_arrays(path, folder, datasets)
    if not all(isinstance(a, zarr.Array) for a in arrays):
        raise SlideError(f"{path}: a multiscales dataset path names a group, not an array")

    ndim = arrays[0].ndim
    axes = _axes(path, ms, ndim)
    names = [n for n, _, _ in axes]
    channel = next((i for i, (n, t, _) in enumerate(axes) if t == "channel" or n == "c"), None)
    yx = names.index("y"), names.index("x")
    for i, a in enumerate(arrays):
        _check_level(path, i, a, axes, channel, arrays[0])
    _check_stored(path, folder / _dataset_path(path, datasets[0], 0), arrays[0])

    shapes = [(int(a.shape[yx[0]]), int(a.shape[yx[1]])) for a in arrays]
    global_scale = _scale(path, ms.get("coordinateTransformations"), ndim, "the multiscale's")
    scales = [_scale(path, ds.get("coordinateTransformations"), ndim, f"dataset {i}'s")
              for i, ds in enumerate(datasets)]
    if global_scale is not None:
        scales = [None if s is None else s * global_scale for s in scales]
    downsamples = _downsamples(path, shapes, [None if s is None else s[list(yx)] for s in scales])
    mpp = None
    unit = axes[yx[1]][2]
    if scales[0] is not None and unit is not None and unit.lower() in UNIT_UM:
        mpp = _plausible_mpp(float(scales[0][yx[1]]) * UNIT_UM[unit.lower()], path)

    levels_src = [_ZarrRGB(a, names, channel) for a in arrays]
    builders: list[Callable[[_Levels], da.Array]] = [lvl.dask for lvl in levels_src]
    readers: list[_LevelReader] = [lvl.read for lvl in levels_src]
    pyramidal = len(arrays) > 1
    levels, readers, all_shapes = _pyramid(builders, readers, shapes)
    if not pyramidal:
        shapes_t, downsamples_t = _level_geometry(all_shapes)
    else:
        shapes_t, downsamples_t = tuple(shapes), tuple(downsamples)
    chunks = arrays[0].chunks
    version = attrs.get("version", ms.get("version"))
    info = SlideInfo(path=str(path), format=f"ome-zarr {version}" if isinstance(version, str) else "ome-zarr",
                     shape=shapes_t[0], level_shapes=shapes_t, downsamples=downsamples_t, mpp=mpp,
                     tile_shape=(int(chunks[yx[0]]), int(chunks[yx[1]])), pyramidal=pyramidal)
    return Slide(path, levels, readers, info, None)


def _open_arrays(path: Path, folder: Path, datasets: list[Any]) -> list[Any]:
    """The datasets' zarr arrays. A zarr v2 array compressed with one of imagecodecs' codecs
    (``imagecodecs_jpeg2k``, ...: imagecodecs is a dependency) gets them registered with
    numcodecs and is opened again."""
    import zarr

    try:
        group = zarr.open_group(str(folder), mode="r")
        return [group[_dataset_path(path, ds, i)] for i, ds in enumerate(datasets)]
    except SlideError:
        raise
    except Exception as exc:  # zarr raises many types for missing or foreign arrays and unknown codecs
        if "imagecodecs_" in str(exc) and _register_imagecodecs():
            return _open_arrays(path, folder, datasets)
        hint = "; a codec this environment lacks: install the package that provides it" if "codec" in str(exc) else ""
        raise SlideError(f"{path}: cannot open the multiscale arrays ({type(exc).__name__}: {exc}){hint}") from exc


_IMAGECODECS_REGISTERED = False


def _register_imagecodecs() -> bool:
    """Register imagecodecs' numcodecs codecs; False if done before (or impossible)."""
    global _IMAGECODECS_REGISTERED
    if _IMAGECODECS_REGISTERED:
        return False
    _IMAGECODECS_REGISTERED = True
    try:
        from imagecodecs.numcodecs import register_codecs
    except ImportError:
        return False
    register_codecs(verbose=False)
    return True


def _check_level(path: Path, i: int, a: Any, axes: list[tuple[str, str, str | None]], channel: int | None,
                 first: Any) -> None:
    where = f"{path}: level {i}"
    if a.ndim != len(axes):
        raise SlideError(f"{where} has {a.ndim} dimensions but the multiscale names {len(axes)} axes")
    if np.dtype(a.dtype) != np.uint8:
        raise SlideError(f"{where}: {np.dtype(a.dtype).name} pixels are not supported; expected an 8-bit RGB slide")
    if any(n == 0 for n in a.shape):
        raise SlideError(f"{where}: zero-sized array (shape {tuple(a.shape)})")
    channels = 1 if channel is None else int(a.shape[channel])
    if channels not in (3, 4):
        kind = "greyscale" if channels == 1 else f"{channels}-channel"
        raise SlideError(f"{where}: {kind} image; expected an RGB (brightfield) slide")
    for k, (name, _, _) in enumerate(axes):
        if k != channel and name not in ("y", "x") and a.shape[k] != 1:
            raise SlideError(f"{where}: images with a {name!r} axis of length {a.shape[k]} are not supported")
    if i and (channel is not None and a.shape[channel] != first.shape[channel]):
        raise SlideError(f"{where} has {a.shape[channel]} channels, level 0 {first.shape[channel]}")


def _check_stored(path: Path, level0: Path, array: Any) -> None:
    """Refuse a level 0 whose declared pixels are more than :data:`~napari_alregions.wsi.MAX_COMPRESSION`
    times the bytes stored for it, as for TIFFs: chunks absent from the folder read as the fill
    value, so a few bytes of metadata could declare terapixels. Stops counting once enough is found."""
    declared = math.prod(int(n) for n in array.shape) * np.dtype(array.dtype).itemsize
    need, stored = declared / MAX_COMPRESSION, 0
    for root, _, files in os.walk(level0):
        for f in files:
            try:
                stored += os.stat(os.path.join(root, f)).st_size
            except OSError:
                continue
            if stored >= need:
                return
    raise SlideError(
        f"{path}: level 0 declares {declared / 2**30:.4g} GiB of pixels in {stored / 2**20:.4g} MiB of stored data, "
        f"more than {MAX_COMPRESSION:,}:1 (wsi.MAX_COMPRESSION): its chunks are missing or it is a decompression bomb"
    )


def _downsamples(path: Path, shapes: list[tuple[int, int]], scales: list[np.ndarray | None]) -> list[float]:
    """Each level's downsample from its (y, x) scale over level 0's (mean of the two axes),
    checked against the shapes; from the shapes where a level has no scale."""
    h0, w0 = shapes[0]
    out = []
    for i, ((h, w), s) in enumerate(zip(shapes, scales, strict=True)):
        if i and (h > shapes[i - 1][0] or w > shapes[i - 1][1]):
            raise SlideError(f"{path}: level {i} ({w}x{h} px) is larger than level {i - 1}; datasets must go from "
                             "the finest to the coarsest")
        if s is None or scales[0] is None:
            out.append(((h0 / h) + (w0 / w)) / 2)
            continue
        fy, fx = s / scales[0]
        if any(abs(n0 / f - n) > _SHAPE_SLACK_PX + 0.01 * n for n0, n, f in ((h0, h, fy), (w0, w, fx))):
            raise SlideError(f"{path}: level {i} is {w}x{h} px but its scale says level 0 ({w0}x{h0} px) shrunk "
                             f"{fx:g}x, {fy:g}x; the metadata and the arrays disagree")
        out.append(float((fy + fx) / 2))
    return out


class _ZarrRGB:
    """One level's zarr array seen as (H, W, 3) uint8: as a dask array (a :class:`_Levels`
    builder) and as a reader that slices the array directly."""

    def __init__(self, array: Any, names: list[str], channel: int | None) -> None:
        self.array = array
        index: list[int | slice] = [0] * array.ndim
        index[names.index("y")] = slice(None)
        index[names.index("x")] = slice(None)
        if channel is not None:
            index[channel] = slice(0, 3)  # RGB, dropping alpha
        self._index = index
        kept = [k for k, s in enumerate(index) if isinstance(s, slice)]  # axes left after indexing
        self._order = tuple(kept.index(k) for k in (names.index("y"), names.index("x"), channel))
        self._yx = names.index("y"), names.index("x")

    def dask(self, _levels: _Levels | None = None) -> da.Array:
        return da.from_zarr(self.array)[tuple(self._index)].transpose(self._order)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        sel = list(self._index)
        sel[self._yx[0]], sel[self._yx[1]] = slice(y0, y1), slice(x0, x1)
        out = np.asarray(self.array[tuple(sel)])
        return np.ascontiguousarray(out.transpose(self._order))
