"""Whole-slide images: lazy pyramids from TIFF files (tifffile → zarr → dask).

:func:`open_slide` reads only metadata; pixels are decoded tile by tile when a level is
sliced. Level 0 is the full resolution; coordinates given to :meth:`Slide.read_region` are
level-0 pixels ``(x, y)`` with sizes in pixels of the requested level, as in OpenSlide.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import threading
import weakref
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

from ._integral import box_sum, integral_image
from ._tiffzarr import open_level

__all__ = ["MAX_COMPRESSION", "MAX_READ_BYTES", "MPP_RANGE", "Slide", "SlideError", "SlideInfo", "TiledLevel", "detect_tissue",
           "open_labels", "open_slide", "set_tile_cache_size", "tile_cache_size"]

logger = logging.getLogger(__name__)

#: Series that vendors store beside the slide (SVS label/macro/thumbnail images).
_AUXILIARY_SERIES = {"label", "macro", "thumbnail", "overview"}
#: A non-pyramidal image is coarsened by 2 until its longer side is at most this.
_MIN_PYRAMID_SIDE = 1024
#: The tissue mask is computed on the finest level whose longer side is at most this.
_TISSUE_LEVEL_MAX_SIDE = 1024
#: The most uncompressed bytes of level 0 a TIFF may declare per byte of file. Real slides
#: reach ~100-300:1 (JPEG with blank tiles), zlib's ceiling is ~1000:1, zstd of constant
#: tiles a few 1000:1; a header declaring more is a decompression bomb or corrupt (a 7.6 MB
#: file declaring 10^6 x 10^6 px is ~400,000:1). Sparse tiles (byte count 0) count as the
#: few bytes their offsets take, so a file of empty tiles is bounded as well.
MAX_COMPRESSION = 10_000
#: The most bytes one read (:meth:`Slide.read_region`, a tissue mask's level) allocates:
#: 2 GiB, a 26,000² px RGB region. Larger regions are read piecewise.
MAX_READ_BYTES = 2**31


class SlideError(ValueError):
    """A file that cannot be used as a whole-slide image; the message names file and reason."""


@dataclass(frozen=True)
class SlideInfo:
    """What :func:`open_slide` learned from a file's metadata."""

    path: str
    format: str
    shape: tuple[int, int]
    level_shapes: tuple[tuple[int, int], ...]
    downsamples: tuple[float, ...]
    mpp: float | None
    tile_shape: tuple[int, int] | None
    pyramidal: bool


# A level reader returns the (h, w, 3) uint8 pixels of rows y0:y1, cols x0:x1 of its level.
_LevelReader = Callable[[int, int, int, int], np.ndarray]


class _Levels(Sequence):
    """The pyramid's dask arrays, each built the first time it is used.

    A level's graph (zarr store, dask array) costs milliseconds per level, 60-130 ms for the
    eight levels of a 40960² slide, against ~1.5 ms for OpenSlide's open; reads by
    :meth:`Slide.read_region` never need them. ``builders[i](levels)`` returns level i and
    may use earlier levels (a coarsened pyramid pools the one above).
    """

    def __init__(self, builders: Sequence[Callable[[_Levels], da.Array]]) -> None:
        self._builders = list(builders)
        self._arrays: list[da.Array | None] = [None] * len(self._builders)
        self._lock = threading.RLock()  # a builder may index earlier levels

    def __len__(self) -> int:
        return len(self._builders)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # negative indices; IndexError past the end
        with self._lock:
            if self._arrays[i] is None:
                self._arrays[i] = self._builders[i](self)
            return self._arrays[i]

    def __iter__(self) -> Iterator[da.Array]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        built = sum(a is not None for a in self._arrays)
        return f"<{len(self)} pyramid levels, {built} built>"


def _lazy_reader(levels: _Levels, i: int) -> _LevelReader:
    """A reader through level i's dask array (built on the first read)."""

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(levels[i][y0:y1, x0:x1].compute(scheduler="threads"))

    return read


class Slide:
    """A whole-slide image opened lazily; create with :func:`open_slide`.

    Attributes
    ----------
    path : Path
        The file.
    levels : sequence of (H_i, W_i, 3) uint8 dask arrays
        The pyramid, level 0 (full resolution) first; each level's dask array is built the
        first time it is used (:attr:`info` has every level's shape without building).
    shape : tuple of int
        Level-0 ``(height, width)``.
    downsamples : tuple of float
        Level-0 pixels per pixel of each level.
    mpp : float or None
        Level-0 micrometres per pixel, None if the file does not say.
    """

    def __init__(
        self,
        path: Path,
        levels: Sequence[da.Array],
        readers: list[_LevelReader],
        info: SlideInfo,
        tif: tifffile.TiffFile | Any | None,  # the open file (an OpenSlide handle with that backend)
    ) -> None:
        self.path = path
        self.levels = levels
        self._readers = readers
        self.info = info
        self._tif = tif
        self._tissue_cache: dict[int, np.ndarray] = {}
        self._tiled: list[TiledLevel | None] = [None] * len(levels)

    # -- metadata -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.info.shape

    @property
    def downsamples(self) -> tuple[float, ...]:
        return self.info.downsamples

    @property
    def mpp(self) -> float | None:
        return self.info.mpp

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def __repr__(self) -> str:
        h, w = self.shape
        return f"Slide({str(self.path)!r}, {w}x{h} px, {self.level_count} levels, mpp={self.mpp})"

    def best_level_for_downsample(self, downsample: float) -> int:
        """Return the coarsest level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, d in enumerate(self.downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def level_factor(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` for mapping coordinates.

        Pyramids store rounded level sizes (2967 -> 1483 px), so the reported downsample
        is slightly off the factor the levels were made with; within 1 % of an integer,
        the integer is used.
        """
        ds = self.downsamples[level]
        nearest = round(ds)
        return float(nearest) if nearest >= 1 and abs(ds - nearest) <= 0.01 * nearest else ds

    def _check_level(self, level: int) -> None:
        # bool is an int: True would read level 1
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < self.level_count:
            raise SlideError(
                f"{self.path}: level {level!r} does not exist; "
                f"level must be an int in 0..{self.level_count - 1}"
            )

    def _check_read_size(self, level: int, h: int, w: int, where: str) -> None:
        nbytes = h * w * 3
        if nbytes > MAX_READ_BYTES:
            raise SlideError(
                f"{self.path}: {where} at level {level} is {w}x{h} px, {nbytes / 2**30:.3g} GiB of RGB; one read is "
                f"bounded by {MAX_READ_BYTES / 2**30:g} GiB (wsi.MAX_READ_BYTES): read it in pieces or at a "
                "coarser level"
            )

    # -- pixels ---------------------------------------------------------------------------
    def read_region(
        self, x: int, y: int, w: int, h: int, level: int = 0, *, fill: int | None = None
    ) -> np.ndarray:
        """Read a rectangle of pixels.

        Parameters
        ----------
        x, y : int
            Top-left corner in level-0 pixels.
        w, h : int
            Width and height in pixels of ``level``.
        level : int
            Pyramid level to read from.
        fill : int, optional
            Value for pixels outside the image. By default a region that is not entirely
            inside the image raises :class:`SlideError`.

        Returns
        -------
        (h, w, 3) uint8 ndarray

        Examples
        --------
        >>> patch = slide.read_region(1024, 2048, 256, 256, level=0)  # doctest: +SKIP
        """
        self._check_level(level)
        for name, v in zip("xywh", (x, y, w, h), strict=True):
            if not isinstance(v, (int, np.integer, float, np.floating)) or not math.isfinite(v):
                raise SlideError(f"{self.path}: read_region: {name} must be a finite number, got {v!r}")
        x, y, w, h = (int(v) for v in (x, y, w, h))
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: region size must be positive, got w={w}, h={h}")
        ds = self.level_factor(level)
        return self._read_box(level, int(math.floor(y / ds)), int(math.floor(x / ds)), h, w, fill,
                              where=f"region x={x}, y={y}, w={w}, h={h}")

    def _read_box(self, level: int, ly: int, lx: int, h: int, w: int, fill: int | None, *,
                  only: Collection[tuple[int, int]] | None = None, cache: bool = True,
                  where: str = "") -> np.ndarray:
        """:meth:`read_region` in ``level`` px; ``only``: decode just these (tile row, tile
        col) of a tiled level, the rest of the box reads as ``fill`` (default white): for
        patch reads that need a few of the tiles under their bounding box. ``cache``: keep
        and reuse decoded tiles (:func:`set_tile_cache_size`); a one-pass sweep over the
        slide (the inference stream) passes False and leaves the cache to random reads."""
        lh, lw = self.info.level_shapes[level]
        where = where or f"box y={ly}, x={lx}, h={h}, w={w}"
        self._check_read_size(level, h, w, where)  # before anything is allocated
        inside = 0 <= lx and 0 <= ly and lx + w <= lw and ly + h <= lh
        if fill is None and not inside:
            raise SlideError(
                f"{self.path}: {where} at level {level} "
                f"({lw}x{lh} px) is not inside the image; pass fill= to pad"
            )
        fill = 255 if fill is None else fill
        if inside:
            return self._read(level, ly, ly + h, lx, lx + w, only=only, fill=fill, cache=cache)
        out = np.full((h, w, 3), fill, dtype=np.uint8)
        y0, y1 = max(ly, 0), min(ly + h, lh)
        x0, x1 = max(lx, 0), min(lx + w, lw)
        if y0 < y1 and x0 < x1:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read(level, y0, y1, x0, x1, only=only, fill=fill,
                                                                    cache=cache)
        return out

    def _read_mirrored(self, level: int, ly: int, lx: int, h: int, w: int, *,
                       only: Collection[tuple[int, int]] | None = None, cache: bool = True) -> np.ndarray:
        """:meth:`_read_box` with the image mirrored at its edge where the box leaves the level
        (never white: white padding reads as glass and draws the priority to the border).
        A box wholly off the level reads white."""
        lh, lw = self.info.level_shapes[level]
        y0, x0, y1, x1 = max(ly, 0), max(lx, 0), min(ly + h, lh), min(lx + w, lw)
        if (y0, x0, y1, x1) == (ly, lx, ly + h, lx + w) or y1 <= y0 or x1 <= x0:
            return self._read_box(level, ly, lx, h, w, 255, only=only, cache=cache)
        inner = self._read_box(level, y0, x0, y1 - y0, x1 - x0, 255, only=only, cache=cache)
        return np.pad(inner, ((y0 - ly, ly + h - y1), (x0 - lx, lx + w - x1), (0, 0)), mode="symmetric")

    def _read(self, level: int, y0: int, y1: int, x0: int, x1: int, *,
              only: Collection[tuple[int, int]] | None = None, fill: int = 255, cache: bool = True) -> np.ndarray:
        try:
            if self._tiled[level] is not None:
                return self._tiled[level].read(y0, y1, x0, x1, only=only, fill=fill, cache=cache)
            return self._readers[level](y0, y1, x0, x1)
        except Exception as exc:  # decoding errors from codecs come in many types
            raise SlideError(
                f"{self.path}: cannot decode level {level} rows {y0}:{y1} cols {x0}:{x1} "
                f"(corrupt or truncated tile data?): {exc}"
            ) from exc

    def tiled_level(self, level: int) -> TiledLevel | None:
        """Direct tile access for ``level`` (None for coarsened or non-tiled levels)."""
        self._check_level(level)
        return self._tiled[level]

    def tissue_mask(self, level: int | None = None) -> np.ndarray:
        """Boolean tissue mask of one level (default: a low-resolution level).

        Optical density against the glass (:func:`detect_tissue`'s default); glass, black
        (out-of-scan) areas and pen ink are excluded. The result is cached per level.
        """
        if level is None:
            level = self.tissue_level
        self._check_level(level)
        if level not in self._tissue_cache:
            lh, lw = self.info.level_shapes[level]
            self._check_read_size(level, lh, lw, "the tissue mask's level")
            self._tissue_cache[level] = detect_tissue(self._read(level, 0, lh, 0, lw, cache=False))
        return self._tissue_cache[level]

    @property
    def tissue_level(self) -> int:
        """The level :meth:`tissue_mask` uses by default."""
        for i, shape in enumerate(self.info.level_shapes):
            if max(shape) <= _TISSUE_LEVEL_MAX_SIDE:
                return i
        return self.level_count - 1

    def map_shape(self, stride: int) -> tuple[int, int]:
        """Shape of a map with ``stride`` level-0 px per pixel (whole cells only)."""
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        return (self.shape[0] // stride, self.shape[1] // stride)

    def tissue_map(self, stride: int, *, min_fraction: float = 0.01) -> np.ndarray:
        """Boolean tissue mask at map resolution: cells with at least ``min_fraction`` tissue.

        Map pixel (r, c) covers level-0 ``[c*s, (c+1)*s) x [r*s, (r+1)*s)``.
        """
        return self.tissue_share_map(stride) >= min_fraction

    def tissue_share_map(self, stride: int) -> np.ndarray:
        """The share of each map cell (``stride`` level-0 px) that the tissue mask covers, in [0, 1]."""
        mask = self.tissue_mask()
        f = self.level_factor(self.tissue_level)
        h, w = self.map_shape(stride)
        # cell edges in mask pixels; each cell keeps at least one mask pixel
        ys = np.minimum((np.arange(h + 1) * stride / f).astype(np.int64), mask.shape[0])
        xs = np.minimum((np.arange(w + 1) * stride / f).astype(np.int64), mask.shape[1])
        ye = np.maximum(ys[1:], np.minimum(ys[:-1] + 1, mask.shape[0]))
        xe = np.maximum(xs[1:], np.minimum(xs[:-1] + 1, mask.shape[1]))
        y0, x0 = ys[:-1, None], xs[None, :-1]
        y1, x1 = ye[:, None], xe[None, :]
        area = np.maximum((y1 - y0) * (x1 - x0), 1)
        return box_sum(integral_image(mask), y0, x0, y1, x1) / area

    def tissue_fraction(self) -> float:
        """Fraction of the slide area covered by tissue."""
        return float(self.tissue_mask().mean())

    # -- lifetime -------------------------------------------------------------------------
    def close_with_levels(self) -> Slide:
        """Have the file close when this slide and its level arrays are garbage: for a slide
        whose arrays are handed on with no one to call :meth:`close` (the napari layers of
        the reader and of the sample data). Returns the slide."""
        if isinstance(self._tif, tifffile.TiffFile):  # (OpenSlide's handle is no Python file: it closes itself)
            weakref.finalize(self._tif, self._tif.filehandle.close)  # (a method of the tif would keep it alive)
        return self

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
        for tiled in self._tiled:
            if tiled is not None:
                _TILE_CACHE.drop(tiled.token)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Tissue detection (pure numpy / scikit-image)
# ---------------------------------------------------------------------------------------
def detect_tissue(
    rgb: np.ndarray, *, min_saturation: float = 0.07, black_value: float = 0.15, method: str = "od"
) -> np.ndarray:
    """Tissue mask of an RGB image.

    ``method="od"`` (the default): optical density against the glass. Glass is what is as
    clear as the flat, grey parts of the view (glass is neutral; pale counterstain is as flat
    but tinted); tissue is denser than it by a margin, median-filtered so that no halo grows
    around tissue. Pale but textured tissue (stroma, IHC counterstain) stays tissue, and a
    view without glass (a field that is all tissue) is tissue wherever its optical density is
    above an absolute floor. Ink that passes green more than red (green, blue, cyan pens;
    no stain of H&E or DAB does) is no tissue, nor is its rim.
    ``method="otsu"``: Otsu's threshold on saturation. It assumes glass and tissue in the
    view; on a field that is all tissue it splits tissue (nuclei from stroma) instead, and
    pen marks are tissue to it.

    Parameters
    ----------
    rgb : (M, N, 3) uint8 ndarray
        A low-resolution view of the slide.
    min_saturation : float
        ``"otsu"``: pixels below this saturation are never tissue, whatever Otsu says; it
        keeps an empty (all-background) slide empty.
    black_value : float
        Pixels whose brightest channel is below this fraction of full scale are treated as
        out-of-scan black areas, not tissue.
    method : {"od", "otsu"}

    Returns
    -------
    (M, N) bool ndarray

    Examples
    --------
    >>> img = np.full((64, 64, 3), 240, np.uint8); img[16:48, 16:48] = (200, 120, 170)
    >>> round(float(detect_tissue(img).mean()), 2), float(detect_tissue(img, method="otsu").mean())
    (0.25, 0.25)
    """
    from skimage import filters

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (M, N, 3), got {rgb.shape}")
    if method not in ("otsu", "od"):
        raise ValueError(f"method must be 'otsu' or 'od', got {method!r}")
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    sat, val = _saturation_value(rgb)
    candidate = val > black_value
    if not candidate.any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    if method == "od":
        return _clean(candidate & _denser_than_glass(rgb, sat, candidate))
    values = sat[candidate]
    threshold = min_saturation
    if values.max() - values.min() > 1e-3:
        threshold = max(threshold, float(filters.threshold_otsu(values)))
    return _clean(candidate & (sat > threshold))


def _saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV's saturation and value (floats in [0, 1])."""
    from skimage.util import img_as_float

    # HSV's saturation and value need only each pixel's largest and smallest channel: the
    # same numbers as skimage.color.rgb2hsv without its hue, taken elementwise over the
    # planes (a reduction along the length-3 axis is ~10x slower). Once per slide in a pool.
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    val = img_as_float(np.maximum(np.maximum(r, g), b))
    delta = val - img_as_float(np.minimum(np.minimum(r, g), b))
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = delta / val
    sat[delta == 0] = 0.0
    return sat, val


#: ``method="od"``: neighbourhood radius (px of the view), the local grey-level spread below
#: which the view is flat, the OD above the glass's that is tissue, and the floor without glass.
_OD_RADIUS, _OD_FLAT_STD, _OD_MARGIN, _OD_MIN = 3, 0.015, 0.12, 0.25
_OD_SCALE = 255 / 4.0  # optical density (summed over channels, 0..4) as uint8 for the rank filter
#: Glass is grey: its channels' local means differ by less than this fraction of the brightest
#: (real glass: 0-3 levels of 255). Pale counterstain is as flat but tinted (haematoxylin at a
#: density 0.12: 0.046), so a field of it is not taken for glass.
_GLASS_CHROMA = 0.03
#: Red optical density above green by this much is ink (green, blue, cyan, black-blue markers):
#: haematoxylin, eosin and DAB all absorb green at least as much as red.
_INK_RED_OVER_GREEN = 0.2


def _denser_than_glass(rgb: np.ndarray, sat: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage.filters import rank
    from skimage.morphology import disk

    f = rgb.astype(np.float32) / 255
    od_rgb = -np.log(np.maximum(f, 1 / 255))
    od = od_rgb.sum(axis=-1)
    od_u8 = np.clip(np.round(od * _OD_SCALE), 0, 255).astype(np.uint8)
    od_med = rank.median(od_u8, disk(_OD_RADIUS)).astype(np.float32) / _OD_SCALE
    size = 2 * _OD_RADIUS + 1
    local = np.stack([ndi.uniform_filter(f[..., c], size) for c in range(3)], axis=-1)  # noise averaged out
    grey = local.mean(axis=-1)
    spread = np.sqrt(np.maximum(ndi.uniform_filter(f.mean(axis=-1) ** 2, size) - grey * grey, 0))
    bright = np.maximum(local.max(axis=-1), 1e-6)
    chroma = (local.max(axis=-1) - local.min(axis=-1)) / bright
    glass = candidate & (spread < _OD_FLAT_STD) & (chroma < _GLASS_CHROMA)
    threshold = float(np.median(od_med[glass])) + _OD_MARGIN if glass.sum() > 0.01 * glass.size else _OD_MIN
    od_local = -np.log(np.maximum(local, 1 / 255))
    # with its rim, where the neighbourhood mixes ink and glass
    ink = ndi.binary_dilation(od_local[..., 0] - od_local[..., 1] > _INK_RED_OVER_GREEN, disk(_OD_RADIUS))
    return (od_med > threshold) & ~ink


def _clean(mask: np.ndarray) -> np.ndarray:
    """Remove specks (JPEG noise, dust) and fill small holes (nuclei-free lumen)."""
    from skimage import morphology

    min_size = max(4, mask.size // 20000)
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    return morphology.remove_small_holes(mask, max_size=min_size)


# ---------------------------------------------------------------------------------------
# Opening files
# ---------------------------------------------------------------------------------------
def open_slide(path: str | os.PathLike[str], *, backend: str = "auto") -> Slide:
    """Open a whole-slide image lazily.

    Supports tiled pyramidal TIFF and OME-TIFF (levels as SubIFDs or as series), Aperio
    SVS, NDPI, SCN, BIF and generic TIFF through tifffile; a non-pyramidal image gets a
    lazily coarsened pyramid. OME-Zarr (NGFF 0.4/0.5 multiscales; a folder) opens through
    zarr (:mod:`napari_alregions.wsi_omezarr`). Files that are no TIFF (DICOM, MRXS, VMS,
    ...) open through OpenSlide when it is installed (``pip install
    'napari-alregions[openslide]'``); a DICOM slide by any of its ``.dcm`` files or by
    their folder (one series per folder). Only metadata are read here.

    Parameters
    ----------
    path : str or PathLike
        The slide file, or an OME-Zarr's or a DICOM series' folder.
    backend : {"auto", "tifffile", "openslide", "zarr"}
        ``"auto"`` probes the file: tifffile for a TIFF (its first bytes), OpenSlide for
        anything else it recognises; a folder: zarr for an OME-Zarr, OpenSlide for DICOM.

    Returns
    -------
    Slide

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    SlideError
        If the file is not a readable 8-bit RGB TIFF (the message says why).

    Examples
    --------
    >>> with open_slide("slide.svs") as slide:  # doctest: +SKIP
    ...     print(slide.shape, slide.downsamples, slide.mpp)
    """
    if backend not in ("auto", "tifffile", "openslide", "zarr"):
        raise ValueError(f"backend must be 'auto', 'tifffile', 'openslide' or 'zarr', got {backend!r}")
    path = Path(path)
    if backend == "zarr" or path.is_dir():
        return _open_folder(path, backend)
    if path.suffix.lower() == ".dcm" and backend == "auto":
        return _open_openslide(path)  # not found or no OpenSlide: the message names the extra
    if backend == "openslide" or (backend == "auto" and _is_file(path) and not _is_tiff(path)
                                  and _openslide_format(path) is not None):
        return _open_openslide(path)
    tif = _tiff_file(path)
    try:
        return _open_tiff(path, tif)
    except Exception as exc:
        tif.close()
        if isinstance(exc, SlideError):
            raise
        raise SlideError(f"{path}: cannot read as a slide ({type(exc).__name__}: {exc})") from exc


def _is_file(path: Path) -> bool:
    """A non-empty file; else the error saying what it is (missing, a folder, empty)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise SlideError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty")
    return True


#: The first bytes of a TIFF and a BigTIFF, little- and big-endian.
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path: Path) -> bool:
    """Whether the file starts like a TIFF (classic or BigTIFF)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in TIFF_MAGIC
    except OSError:
        return False


def _tiff_file(path: Path) -> tifffile.TiffFile:
    """Open a TIFF's metadata, with clear errors for missing, empty and non-TIFF files."""
    _is_file(path)
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:
        hint = "" if _is_tiff(path) or _openslide_module() is not None else (
            "; formats other than TIFF (MRXS, VMS, DICOM, ...) need OpenSlide: pip install 'napari-alregions[openslide]'")
        raise SlideError(f"{path}: not a readable TIFF file ({exc}){hint}") from exc


# ---------------------------------------------------------------------------------------
# OpenSlide backend (optional): what tifffile cannot read
# ---------------------------------------------------------------------------------------
def _openslide_module():
    """The ``openslide`` module, or None when openslide-python (or its library) is missing."""
    try:
        import openslide
    except (ImportError, OSError):  # OSError: the package without the OpenSlide library
        return None
    return openslide


def _openslide_format(path: Path) -> str | None:
    """OpenSlide's name for the file's format (``"mirax"``, ``"aperio"``, ...), or None."""
    openslide = _openslide_module()
    if openslide is None:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # a file OpenSlide chokes on is no slide of its
        return None


class _RegionArray:
    """A level as an array-like for ``dask.array.from_array``: slices read through a reader."""

    def __init__(self, reader: _LevelReader, shape: tuple[int, int]) -> None:
        self.reader = reader
        self.shape = (*shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: tuple) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key[:2], self.shape[:2], strict=True))
        return self.reader(y0, max(y0, y1), x0, max(x0, x1))[:, :, key[2]]


def _openslide_reader(osr, level: int, downsample: float) -> _LevelReader:
    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        # OpenSlide takes the top-left corner in level-0 px and gives RGBA (not premultiplied)
        rgba = np.asarray(osr.read_region((round(x0 * downsample), round(y0 * downsample)), level, (x1 - x0, y1 - y0)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        # transparent pixels (outside the scanned area) become white, as in our fill
        return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)

    return read


def _open_openslide(path: Path) -> Slide:
    """A slide through OpenSlide."""
    _is_file(path)
    openslide = _openslide_module()
    if openslide is None:
        raise SlideError(f"{path}: opening this format needs OpenSlide: pip install 'napari-alregions[openslide]'")
    fmt = _openslide_format(path)
    if fmt is None:
        raise SlideError(f"{path}: OpenSlide does not recognise this file as a slide")
    try:
        osr = openslide.OpenSlide(str(path))
    except Exception as exc:
        raise SlideError(f"{path}: OpenSlide cannot open it ({type(exc).__name__}: {exc})") from exc
    props = osr.properties
    shapes = tuple((int(h), int(w)) for w, h in osr.level_dimensions)
    downsamples = tuple(float(d) for d in osr.level_downsamples)
    tile = (props.get("openslide.level[0].tile-height"), props.get("openslide.level[0].tile-width"))
    tile_shape = (int(tile[0]), int(tile[1])) if all(tile) else None
    chunk = max(512, 4 * (tile_shape[0] if tile_shape else 256))
    readers = [_openslide_reader(osr, i, d) for i, d in enumerate(downsamples)]

    def builder(i: int, reader: _LevelReader, shape: tuple[int, int]) -> Callable[[_Levels], da.Array]:
        return lambda _: da.from_array(_RegionArray(reader, shape), chunks=(chunk, chunk, 3), asarray=False,
                                       meta=np.empty((0, 0, 3), np.uint8), name=f"openslide-{path.name}-{i}-{next(_LEVEL_TOKENS)}")

    builders = [builder(i, r, shp) for i, (r, shp) in enumerate(zip(readers, shapes, strict=True))]
    mpp = None
    try:
        mpp = _plausible_mpp(float(props.get(openslide.PROPERTY_NAME_MPP_X, "nan")), path)
    except ValueError:
        pass
    pyramidal = len(builders) > 1
    levels, readers, all_shapes = _pyramid(builders, readers, list(shapes))
    if not pyramidal:
        shapes, downsamples = _level_geometry(all_shapes)
    info = SlideInfo(path=str(path), format=f"openslide:{fmt}", shape=shapes[0], level_shapes=shapes,
                     downsamples=downsamples, mpp=mpp, tile_shape=tile_shape, pyramidal=pyramidal)
    return Slide(path, levels, readers, info, osr)


def _open_folder(path: Path, backend: str) -> Slide:
    """A slide stored as a folder: an OME-Zarr image (zarr) or a DICOM series (OpenSlide)."""
    from .wsi_omezarr import describe_zarr_folder, is_ome_zarr, open_ome_zarr

    if backend == "tifffile":
        raise SlideError(f"{path}: a folder, not a TIFF file")
    if backend == "zarr" or (backend == "auto" and is_ome_zarr(path)):
        return open_ome_zarr(path)
    dicom = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm" and p.is_file())
    if dicom:  # OpenSlide gathers the series' other files from the folder of any one of them
        return _open_openslide(dicom[0])
    if backend == "openslide":
        raise SlideError(f"{path}: a folder without .dcm files; OpenSlide opens a folder only as a DICOM series")
    raise SlideError(describe_zarr_folder(path) or f"{path}: a folder that is neither an OME-Zarr image (no "
                     "'multiscales' in .zattrs or zarr.json) nor a DICOM series (no .dcm files)")


def _open_tiff(path: Path, tif: tifffile.TiffFile) -> Slide:
    # Reader threads (inference, dask) share one file handle: seek+read must be atomic.
    tif.filehandle.set_lock(True)
    if not tif.series:
        raise SlideError(f"{path}: the TIFF holds no image")
    main = _main_series(path, tif)
    series = tif.series[main]
    axes = series.axes
    _check_pixels(path, series.shape, axes, series.dtype)
    _check_colour_space(path, series.keyframe)

    # (series index, level index) of each pyramid level, finest first
    level_refs = [(main, i) for i in range(len(series.levels))]
    if len(level_refs) == 1:
        level_refs += _pyramid_from_series(tif, main)
    file_size = path.stat().st_size
    _check_plausible_size(path, tif.series[main].levels[0], file_size)  # before any dask graph is built
    for s, i in level_refs:
        _check_not_truncated(path, tif.series[s].levels[i], file_size)

    # Only metadata here: a level's zarr store and dask array are made when first used
    # (_Levels); tiled levels are read through TiledLevel, which needs neither.
    builders: list[Callable[[_Levels], da.Array]] = []
    readers: list[_LevelReader] = []
    tiled: list[TiledLevel | None] = []
    shapes: list[tuple[int, int]] = []
    tile_shape = None
    for s, i in level_refs:
        lvl = tif.series[s].levels[i]
        zarr_level = _ZarrLevel(tif, s, i, lvl.axes)
        builders.append(zarr_level.dask)
        shapes.append(_yx(lvl.shape, lvl.axes))
        tl = TiledLevel.create(tif, lvl)
        if tl is not None:
            tl.name = f"level {len(tiled)}"
        tiled.append(tl)
        readers.append(tl.read if tl is not None else zarr_level.read)
        if tile_shape is None and lvl.keyframe.is_tiled:
            tile_shape = (int(lvl.keyframe.tilelength), int(lvl.keyframe.tilewidth))

    pyramidal = len(builders) > 1
    base = None
    if not pyramidal and len(lvl.axes) == len(lvl.shape):
        # coarsened from a copy of level 0 in large chunks: rechunking the tile-sized
        # chunks (the display's) built a graph of every tile, 4 s at 100k² px
        big = tuple(_COARSEN_CHUNK if a in "YX" else n for a, n in zip(lvl.axes, lvl.shape, strict=True))
        base = lambda: zarr_level.dask(chunks=big)  # noqa: E731
    levels, readers, shapes = _pyramid(builders, readers, shapes, base=base)
    shapes, downsamples = _level_geometry(shapes)
    h0, w0 = shapes[0]
    info = SlideInfo(
        path=str(path),
        format=_format_name(tif),
        shape=(int(h0), int(w0)),
        level_shapes=shapes,
        downsamples=downsamples,
        mpp=_read_mpp(tif),
        tile_shape=tile_shape,
        pyramidal=pyramidal,
    )
    slide = Slide(path, levels, readers, info, tif)
    slide._tiled = tiled + [None] * (len(levels) - len(tiled))
    return slide


def _level_geometry(level_shapes: Sequence[tuple[int, int]]) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
    """Each level's (height, width) and its downsample (mean of the two axes' ratios)."""
    shapes = tuple((int(h), int(w)) for h, w in level_shapes)
    h0, w0 = shapes[0]
    return shapes, tuple(((h0 / h) + (w0 / w)) / 2 for h, w in shapes)


def _main_series(path: Path, tif: tifffile.TiffFile) -> int:
    """The largest series that is not a label/macro/thumbnail image."""
    best, best_area = None, -1
    for i, s in enumerate(tif.series):
        if (s.name or "").strip().lower() in _AUXILIARY_SERIES:
            continue
        yx = [n for a, n in zip(s.axes, s.shape, strict=True) if a in "YX"]
        area = math.prod(yx) if len(yx) == 2 else 0
        if area > best_area:
            best, best_area = i, area
    if best is None:
        raise SlideError(f"{path}: no image series besides label/macro/thumbnail")
    return best


def _check_pixels(path: Path, shape: tuple[int, ...], axes: str, dtype: np.dtype) -> None:
    if "Y" not in axes or "X" not in axes:
        raise SlideError(f"{path}: not a 2-D image (axes {axes!r})")
    if any(n == 0 for n in shape):
        raise SlideError(f"{path}: zero-sized image (shape {tuple(shape)})")
    if np.dtype(dtype) != np.uint8:
        bits = np.dtype(dtype).itemsize * 8
        raise SlideError(
            f"{path}: {bits}-bit {np.dtype(dtype).name} pixels are not supported; "
            "expected an 8-bit RGB slide"
        )
    channels = 1
    for a, n in zip(axes, shape, strict=True):
        if a in "SC":
            channels *= n
        elif a not in "YX" and n != 1:
            raise SlideError(
                f"{path}: images with a {a!r} dimension of length {n} are not supported"
            )
    if channels not in (3, 4):
        kind = "greyscale" if channels == 1 else f"{channels}-channel"
        raise SlideError(f"{path}: {kind} image; expected an RGB (brightfield) slide")


#: Photometric interpretations whose channels are not red, green and blue: read as RGB they
#: would be silently wrong colours (a CMYK slide's mean error was 232 of 255), and converting
#: them faithfully needs the scanner's colour profile, so they are refused.
_NOT_RGB = {"SEPARATED": "CMYK (photometric 'separated')", "CIELAB": "CIE L*a*b*", "ICCLAB": "ICC L*a*b*",
            "ITULAB": "ITU L*a*b*", "LOGLUV": "LogLuv", "PALETTE": "palette"}


def _check_colour_space(path: Path, page: Any) -> None:
    name = getattr(page.photometric, "name", str(page.photometric))
    if name in _NOT_RGB:
        raise SlideError(f"{path}: {_NOT_RGB[name]} colour, not RGB; convert the slide to RGB first (e.g. "
                         "`vips icc_transform` or an image editor), its colours would be wrong read as RGB")


def _pyramid_from_series(tif: tifffile.TiffFile, main: int) -> list[tuple[int, int]]:
    """Levels stored as separate series: same channels, each ~2^n smaller, same aspect."""
    base = tif.series[main]
    bh, bw = _yx(base.shape, base.axes)
    found = []
    for i, s in enumerate(tif.series):
        if i == main or len(s.levels) != 1 or s.dtype != base.dtype:
            continue
        if (s.name or "").strip().lower() in _AUXILIARY_SERIES:
            continue
        if len(s.shape) != len(base.shape) or s.axes != base.axes:
            continue
        h, w = _yx(s.shape, s.axes)
        if h >= bh or w >= bw:
            continue
        # Same aspect ratio up to the rounding of each dimension.
        if abs(bh / h - bw / w) > max(bh / h, bw / w) * (2 / min(h, w) + 0.01):
            continue
        found.append((h * w, i))
    return [(i, 0) for _, i in sorted(found, reverse=True)]


def _yx(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    return shape[axes.index("Y")], shape[axes.index("X")]


def _check_plausible_size(path: Path, level: tifffile.TiffPageSeries, file_size: int) -> None:
    """Refuse a level whose declared pixels are more than :data:`MAX_COMPRESSION` times the
    file: a decompression bomb would otherwise build dask graphs of millions of chunks at
    open (minutes, GBs) and decode for hours."""
    declared = math.prod(int(n) for n in level.shape) * np.dtype(level.dtype).itemsize
    # a multi-file OME-TIFF keeps its pixels in the files its pages come from
    files = {getattr(getattr(p, "parent", None), "filehandle", None) for p in level.pages if p is not None}
    paths = {fh.path for fh in files if fh is not None and getattr(fh, "path", None)}
    if len(paths) > 1:
        file_size = sum(os.path.getsize(f) for f in paths if os.path.isfile(f))
    if declared > MAX_COMPRESSION * max(file_size, 1):
        h, w = _yx(level.shape, level.axes)
        raise SlideError(
            f"{path}: declares {w}x{h} px ({declared / 2**30:.4g} GiB uncompressed) in a file of "
            f"{file_size / 2**20:.4g} MiB, {declared / max(file_size, 1):,.0f}:1; more than "
            f"{MAX_COMPRESSION:,}:1 (wsi.MAX_COMPRESSION) is no plausible slide: a corrupt header or a "
            "decompression bomb"
        )


def _check_not_truncated(path: Path, level: tifffile.TiffPageSeries, file_size: int) -> None:
    """Tile offsets past the end of the file mean a truncated download or copy."""
    for page in level.pages:
        if page is None:
            continue
        offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        counts = np.asarray(page.databytecounts, dtype=np.int64)
        if offsets.size and int((offsets + counts).max()) > file_size:
            raise SlideError(
                f"{path}: truncated file: image data extend to byte "
                f"{int((offsets + counts).max())} but the file has {file_size} bytes"
            )


def _normalise_axes(axes: str) -> tuple[tuple[int | slice, ...], tuple[int, ...] | None]:
    """Index that drops singleton axes and alpha, and the transpose to (Y, X, C)."""
    index: list[int | slice] = []
    kept = []
    for a in axes:
        if a in "YX":
            index.append(slice(None))
            kept.append(a)
        elif a in "SC":
            index.append(slice(0, 3))  # RGB, dropping alpha
            kept.append("S")
        else:
            index.append(0)
    order = tuple(kept.index(a) for a in "YXS")
    return tuple(index), (None if order == (0, 1, 2) else order)


def _data_end(level: tifffile.TiffPageSeries) -> int:
    """The byte after the level's last strip or tile."""
    ends = [int((np.asarray(p.dataoffsets, np.int64) + np.asarray(p.databytecounts, np.int64)).max())
            for p in level.pages if p is not None and len(p.dataoffsets)]
    return max(ends, default=0)


class _ZarrLevel:
    """One TIFF level through tifffile's zarr store, opened on first use: as a dask array
    (:meth:`dask`, a :class:`_Levels` builder) and as a reader (:meth:`read`)."""

    def __init__(self, tif: tifffile.TiffFile, series: int, level: int, axes: str) -> None:
        self._tif, self._series, self._level = tif, series, level
        self._index, self._transpose = _normalise_axes(axes)
        self._z: object | None = None
        self._end: int | None = None  # the byte after the level's data (read on first use)
        self._lock = threading.Lock()

    def store(self) -> object:
        with self._lock:
            if self._z is None:
                self._z = open_level(self._tif, series=self._series, level=self._level)
            return self._z

    def dask(self, _levels: _Levels | None = None, *, chunks: tuple[int, ...] | None = None) -> da.Array:
        z = self.store()
        arr = (da.from_zarr(z) if chunks is None else da.from_zarr(z, chunks=chunks))[self._index]
        return arr.transpose(self._transpose) if self._transpose else arr

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        # tifffile hands short reads of a file truncated since open to the codec, and libjpeg
        # decodes a cut stream without an error; a truncation is caught here instead
        if self._end is None:
            self._end = _data_end(self._tif.series[self._series].levels[self._level])
        size = Path(self._tif.filehandle.path).stat().st_size
        if size < self._end:
            raise SlideError(f"the file was truncated while open: the level's data extend to byte {self._end}, "
                             f"the file now has {size} bytes")
        yx = [i for i, s in enumerate(self._index) if isinstance(s, slice) and s.stop is None]
        sel = list(self._index)
        sel[yx[0]], sel[yx[1]] = slice(y0, y1), slice(x0, x1)
        out = np.asarray(self.store()[tuple(sel)])  # type: ignore[index]
        return np.ascontiguousarray(out.transpose(self._transpose)) if self._transpose else out


# APP14 "Adobe", version 100, no flags, transform 0: the components are RGB, not YCbCr
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def _marked_rgb(stream: bytes) -> bytes:
    """A JPEG stream with its colour-space markers (JFIF, Adobe) replaced by an Adobe
    marker that says RGB. The header segments before the scan are walked, never the
    entropy-coded data."""
    out = [stream[:2], _ADOBE_RGB]
    pos = 2
    while pos + 4 <= len(stream) and stream[pos] == 0xFF:
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            break
        end = pos + 2 + int.from_bytes(stream[pos + 2 : pos + 4], "big")
        tag = stream[pos + 4 : pos + 9]
        if not ((marker == 0xE0 and tag == b"JFIF\x00") or (marker == 0xEE and tag == b"Adobe")):
            out.append(stream[pos:end])
        pos = end
    out.append(stream[pos:])
    return b"".join(out)


#: The tile cache judges itself over windows of this many lookups: when fewer than
#: _CACHE_MIN_HIT_RATE of a window's lookups hit (or would have hit, had the tile been kept),
#: it stops keeping tiles on their first decode. Keeping one costs ~20 % of a decode on a
#: random sweep of a 40960² slide (a fresh 192 KiB allocation, page faults, an eviction;
#: benchmarks/bench_io.py) and a random sweep never reads it again.
_CACHE_WINDOW, _CACHE_MIN_HIT_RATE = 256, 0.1


class _TileCache:
    """Decoded tiles of every open slide, least recently used dropped first, within a byte
    budget (as OpenSlide's tile cache). Training draws its patches again and again from a
    few annotated regions: 32 distinct tiles were decoded 4827 times in one run.

    Every decoded tile is kept while the cache pays. When a window of lookups mostly
    misses (random reads over a slide far larger than the budget), a tile is kept only on
    its second decode among the last tiles not kept: a read pattern that turns
    repetitive fills the cache again and the next window says so. Those keys are as many
    as the budget holds tiles: a second decode among them would have been a hit of a cache
    that kept everything, and counts as one. Lookups stay cheap either way (a dict under a
    lock).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._lookups = self._hits = 0
        self._selective = False  # keep a tile only on its second decode
        self._ghosts: OrderedDict[tuple[int, int], None] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
                self._hits += 1
            self._lookups += 1
            if self._lookups >= _CACHE_WINDOW:
                self._selective = self._hits < _CACHE_MIN_HIT_RATE * self._lookups
                self._lookups = self._hits = 0
            return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        if tile.nbytes > self.capacity:
            return
        with self._lock:
            if self._ghosts.pop(key, 0) is None:  # decoded before and not kept: it is reused
                self._hits += 1  # it would have hit
            elif self._selective:
                self._ghosts[key] = None
                if len(self._ghosts) > self.capacity // max(tile.nbytes, 1):
                    self._ghosts.popitem(last=False)
                return
            tile.flags.writeable = False  # shared by every later read
            old = self._tiles.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            self._evict()

    def drop(self, token: int) -> None:
        """Forget the tiles of one level (its slide was closed)."""
        with self._lock:
            for key in [k for k in self._tiles if k[0] == token]:
                self._bytes -= self._tiles.pop(key).nbytes

    def resize(self, capacity: int) -> None:
        with self._lock:
            self.capacity = capacity
            self._evict()
            self._reset_stats()  # a new budget judges itself afresh

    def _evict(self) -> None:
        while self._bytes > self.capacity and self._tiles:
            self._bytes -= self._tiles.popitem(last=False)[1].nbytes


_TILE_CACHE = _TileCache(128 * 2**20)
_LEVEL_TOKENS = itertools.count()


def set_tile_cache_size(nbytes: int) -> None:
    """Set the budget of the decoded-tile cache shared by all slides (default 128 MiB;
    0 turns it off). Reads through :meth:`Slide.read_region` keep the tiles they decode
    there; inference's one-pass sweeps do not.

    Examples
    --------
    >>> set_tile_cache_size(512 * 2**20)  # doctest: +SKIP
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    _TILE_CACHE.resize(int(nbytes))


def tile_cache_size() -> tuple[int, int]:
    """(bytes held, budget) of the decoded-tile cache."""
    return _TILE_CACHE.nbytes, _TILE_CACHE.capacity


class TiledLevel:
    """Direct access to the tiles of one interleaved, tiled pyramid level.

    Patch reads dominate training and inference; going through the zarr store costs about
    three times the decoding itself (benchmarks/bench_io.py), so regions are read here:
    raw tile bytes by ``os.pread`` (no shared file position), decoded with tifffile's own
    codec pipeline. :meth:`jpeg_stream` gives self-contained JPEG streams for decoders
    outside tifffile (nvJPEG on a GPU).
    """

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage) -> None:
        self.fh = tif.filehandle
        self.th, self.tw = int(page.tilelength), int(page.tilewidth)
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self.per_row = -(-self.width // self.tw)
        self.token = next(_LEVEL_TOKENS)  # this level's key in the tile cache
        self.offsets, self.counts = page.dataoffsets, page.databytecounts
        self.tables = page.jpegtables
        self.decode = page.decode  # resolve once: the property reads from the file
        self.samples = int(page.samplesperpixel)
        self.is_jpeg = int(page.compression) == 7 and self.samples == 3
        self._jpeg_any = int(page.compression) == 7  # tiles must end with their EOI marker
        self.name = ""  # "level <i>" in error messages, set by open_slide
        # RGB components that only the TIFF tag declares (Aperio's SVS): jpeg_stream marks them
        self.rgb_jpeg = self.is_jpeg and int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
        try:
            self.fd = self.fh.filehandle.fileno() if getattr(self.fh, "_offset", None) == 0 else None
        except (AttributeError, OSError, ValueError):
            self.fd = None

    @classmethod
    def create(cls, tif: tifffile.TiffFile, level: tifffile.TiffPageSeries) -> TiledLevel | None:
        page = level.pages[0] if len(level.pages) == 1 else None
        if (
            page is None
            or not isinstance(page, tifffile.TiffPage)
            or not page.is_tiled
            or level.axes != "YXS"
            or page.planarconfig != tifffile.PLANARCONFIG.CONTIG
            or page.tiledepth != 1
        ):
            return None
        return cls(tif, page)

    def tile_index(self, ty: int, tx: int) -> int:
        return ty * self.per_row + tx

    def raw(self, i: int) -> bytes:
        """The stored bytes of tile i (empty for a sparse file's missing tile).

        Raises
        ------
        SlideError
            A short read (the file was truncated, or changed while open) or a JPEG tile
            without its end-of-image marker: libjpeg decodes a cut stream without an error,
            greying the rest of the tile.
        """
        count, offset = int(self.counts[i]), int(self.offsets[i])
        if not count:
            return b""
        if self.fd is not None:
            data = os.pread(self.fd, count, offset)
        else:
            with self.fh.lock:
                self.fh.seek(offset)
                data = self.fh.read(count)
        if len(data) != count:
            raise SlideError(f"{self._tile_name(i)}: read {len(data)} of its {count} bytes at offset {offset}: "
                             "the file is truncated or was changed while open")
        if self._jpeg_any and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise SlideError(f"{self._tile_name(i)}: the JPEG stream ends without its end-of-image marker "
                             "(truncated or corrupt tile data)")
        return data

    def _tile_name(self, i: int) -> str:
        return f"{self.name + ' ' if self.name else ''}tile {i} (tile row {i // self.per_row}, col {i % self.per_row})"

    def jpeg_stream(self, i: int) -> bytes:
        """Tile i as a self-contained JPEG stream: shared JPEGTables spliced in after SOI
        and, for a level the TIFF calls RGB, an Adobe marker saying so. Without it a
        decoder that sees only the stream takes three components for YCbCr."""
        data = self.raw(i)
        if not data:
            return data
        if self.tables is not None and len(self.tables) > 4:
            data = data[:2] + self.tables[2:-2] + data[2:]
        return _marked_rgb(data) if self.rgb_jpeg else data

    def tile(self, i: int, *, cache: bool = True) -> np.ndarray:
        """Tile i decoded, (th, tw, samples) uint8; read-only if ``cache`` (it may be the
        cache's copy, shared with other reads)."""
        if cache:
            tile = _TILE_CACHE.get((self.token, i))
            if tile is not None:
                return tile
        data = self.raw(i)
        if not data:  # missing tiles read as zeros, as in tifffile
            return np.zeros((self.th, self.tw, self.samples), dtype=np.uint8)
        try:
            decoded = self.decode(data, i, jpegtables=self.tables)[0]
            if decoded is None:
                raise ValueError("the decoder returned no pixels")
            tile = decoded.reshape(self.th, self.tw, self.samples)
        except SlideError:
            raise
        except Exception as exc:  # codec errors come in many types
            raise SlideError(f"{self._tile_name(i)}: cannot decode ({type(exc).__name__}: {exc})") from exc
        if cache:
            _TILE_CACHE.put((self.token, i), tile)  # kept unless larger than the budget (0: off)
        return tile

    def touched(self, origins: np.ndarray, size: int) -> list[tuple[int, int]]:
        """(tile row, tile col) of every tile that a size² patch at ``origins`` ((N, 2) y, x
        level px; may reach off the level) overlaps, in raster order."""
        o = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
        y0, y1 = np.maximum(o[:, 0], 0), np.minimum(o[:, 0] + size, self.height)
        x0, x1 = np.maximum(o[:, 1], 0), np.minimum(o[:, 1] + size, self.width)
        keep = (y0 < y1) & (x0 < x1)
        if not keep.any():
            return []
        t = [a[keep] for a in (y0 // self.th, (y1 - 1) // self.th, x0 // self.tw, (x1 - 1) // self.tw)]
        r0, c0 = int(t[0].min()), int(t[2].min())
        grid = np.zeros((int(t[1].max()) - r0 + 1, int(t[3].max()) - c0 + 1), dtype=bool)
        for a, b, c, d in zip(*t):
            grid[a - r0 : b - r0 + 1, c - c0 : d - c0 + 1] = True
        return [(int(r) + r0, int(c) + c0) for r, c in np.argwhere(grid)]

    def read(self, y0: int, y1: int, x0: int, x1: int, *, only: Collection[tuple[int, int]] | None = None,
             fill: int = 255, cache: bool = True) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of the level (inside it), a new array. ``only``: decode
        just these (tile row, tile col); the rest of the box reads as ``fill``. ``cache``:
        through the decoded-tile cache."""
        th, tw = self.th, self.tw
        box = [(ty, tx) for ty in range(y0 // th, (y1 - 1) // th + 1) for tx in range(x0 // tw, (x1 - 1) // tw + 1)]
        wanted = None if only is None else set(only)
        keys = box if wanted is None else [k for k in box if k in wanted]
        if len(box) == 1 == len(keys):  # one tile: no assembly
            ty0, tx0 = box[0][0] * th, box[0][1] * tw
            t = self.tile(self.tile_index(*box[0]), cache=cache)[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0, :3]
            return np.ascontiguousarray(t) if t.flags.writeable else t.copy()  # never the cache's own array
        if len(keys) == len(box):
            out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        else:
            out = np.full((y1 - y0, x1 - x0, 3), fill, dtype=np.uint8)
        for ty, tx in keys:
            t = self.tile(self.tile_index(ty, tx), cache=cache)
            ty0, tx0 = ty * th, tx * tw
            ys, ye = max(y0, ty0), min(y1, ty0 + th)
            xs, xe = max(x0, tx0), min(x1, tx0 + tw)
            out[ys - y0 : ye - y0, xs - x0 : xe - x0] = t[ys - ty0 : ye - ty0, xs - tx0 : xe - tx0, :3]
        return out


#: Chunk side of the level-0 copy a non-pyramidal file's coarser levels are pooled from.
_COARSEN_CHUNK = 2 * _MIN_PYRAMID_SIDE


def _pyramid(
    builders: list[Callable[[_Levels], da.Array]], readers: list[_LevelReader], shapes: list[tuple[int, int]],
    *, base: Callable[[], da.Array] | None = None,
) -> tuple[_Levels, list[_LevelReader], list[tuple[int, int]]]:
    """The stored levels, and for a file that stores only full resolution lazy 2x
    mean-pooled levels below it (odd last rows and columns dropped) until the longer side
    is at most ``_MIN_PYRAMID_SIDE``, each read through its dask array; the first pooled
    from ``base()`` (level 0 in chunks of :data:`_COARSEN_CHUNK`) when given."""
    builders, shapes = list(builders), list(shapes)
    if len(builders) == 1:
        while max(shapes[-1]) > _MIN_PYRAMID_SIDE:
            h, w = shapes[-1]
            shapes.append((h // 2, w // 2))
            if len(builders) == 1 and base is not None:
                builders.append(lambda levels: _pooled(base()))
            else:
                builders.append(lambda levels, i=len(builders): _pooled(levels[i - 1]))
    levels = _Levels(builders)
    return levels, readers + [_lazy_reader(levels, i) for i in range(len(readers), len(builders))], shapes


def _pooled(current: da.Array) -> da.Array:
    h, w = current.shape[:2]
    chunk = _COARSEN_CHUNK
    trimmed = current[: h - h % 2, : w - w % 2]
    # pooling needs even chunks; chunks that pooling halved are merged again
    if max(trimmed.chunksize[:2]) < chunk or any(c % 2 for c in trimmed.chunks[0] + trimmed.chunks[1]):
        trimmed = trimmed.rechunk((chunk, chunk, 3))
    return da.coarsen(np.mean, trimmed, {0: 2, 1: 2}).round().astype(np.uint8)


def _format_name(tif: tifffile.TiffFile) -> str:
    for flag in ("svs", "ome", "ndpi", "scn", "bif", "philips"):
        if getattr(tif, f"is_{flag}", False):
            return flag
    return "tiff"


def _read_mpp(tif: tifffile.TiffFile) -> float | None:
    """Level-0 µm per pixel from SVS, OME or TIFF resolution metadata."""
    page = tif.pages.first
    try:
        if tif.is_svs:
            m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
            if m:
                return _plausible_mpp(float(m.group(1)), tif.filehandle.path)
        if tif.is_ome and tif.ome_metadata:
            return _ome_mpp(tif.ome_metadata, tif.filehandle.path)
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            if num > 0 and den > 0:
                per_unit = num / den  # pixels per unit
                um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
                if um_per_unit is not None and per_unit > 1:
                    return _plausible_mpp(um_per_unit / per_unit, tif.filehandle.path)
    except (ValueError, KeyError, TypeError, ET.ParseError) as exc:
        logger.debug("unreadable resolution metadata in %s: %s", tif.filename, exc)
    return None


def _ome_mpp(xml: str, where: str | os.PathLike[str]) -> float | None:
    root = ET.fromstring(xml)
    for el in root.iter():
        if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
            value = float(el.attrib["PhysicalSizeX"])
            unit = el.attrib.get("PhysicalSizeXUnit", "µm")
            return _plausible_mpp(value * UNIT_UM.get(unit.lower(), 1.0), where)
    return None


#: Micrometres per unit, for the length units a slide may use: NGFF's (UDUNITS-2) names and OME-XML's symbols.
UNIT_UM = {
    "angstrom": 1e-4, "picometer": 1e-6, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3,
    "centimeter": 1e4, "decimeter": 1e5, "meter": 1e6, "inch": 25400.0, "foot": 304800.0,
    "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6,
}
#: Level-0 µm per pixel a microscope slide can have (a 100x objective is ~0.1, a 1.25x scan
#: ~8); outside, a file's pixel size is a default or an error (72 dpi is 353 µm/px).
MPP_RANGE = (0.05, 50.0)


def _plausible_mpp(mpp: float, where: str | os.PathLike[str]) -> float | None:
    """``mpp`` where it is in :data:`MPP_RANGE`, else None (logged, naming the file ``where``):
    the slide's pixel size is unknown and sizes are given in px."""
    if MPP_RANGE[0] <= mpp <= MPP_RANGE[1]:
        return mpp
    if math.isfinite(mpp):
        logger.warning("%s: pixel size %.4g µm/px in its metadata is outside %g-%g µm/px: ignored (the slide's "
                       "pixel size is unknown; give sizes in px)", where, mpp, *MPP_RANGE)
    return None


def open_labels(path: str | os.PathLike[str]) -> list[da.Array]:
    """Open a pyramidal label mask (2-D integer TIFF) lazily, level 0 first.

    Used for ground-truth masks such as those written by :mod:`napari_alregions.synthetic`.
    The arrays own the open file: it is closed when the last of them is garbage
    (``np.asarray(open_labels(path)[1])`` reads level 1 and closes the file).

    Raises
    ------
    FileNotFoundError, SlideError
    """
    path = Path(path)
    tif = _tiff_file(path)
    weakref.finalize(tif, tif.filehandle.close)  # (not a method of tif: that would keep it alive)
    try:
        main = _main_series(path, tif)
        series = tif.series[main]
        if np.dtype(series.dtype).kind not in "ub" or any(
            a not in "YX" and n != 1 for a, n in zip(series.axes, series.shape, strict=True)
        ):
            raise SlideError(f"{path}: not a 2-D integer label image ({series.axes} {series.dtype})")
        refs = [(main, i) for i in range(len(series.levels))]
        if len(refs) == 1:
            refs += _pyramid_from_series(tif, main)
        levels = []
        _check_plausible_size(path, series.levels[0], path.stat().st_size)
        for s, i in refs:
            _check_not_truncated(path, tif.series[s].levels[i], path.stat().st_size)
            z = open_level(tif, series=s, level=i)
            index = tuple(slice(None) if a in "YX" else 0 for a in tif.series[s].levels[i].axes)
            levels.append(da.from_zarr(z)[index])
        return levels
    except Exception:
        tif.close()
        raise
