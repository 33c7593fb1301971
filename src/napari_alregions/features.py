"""Frozen features on the map grid for the fast learner (SPEC §6; issue 34).

The fast learner is ilastik's and QuPath's pixel-classifier recipe on a slide's map grid:
features computed once per slide and encoder, cached, and a head that fits in seconds
(:mod:`napari_alregions.learner`). This module computes the features.

The built-in encoder, ``"texture"``, needs no weights and learns on real H&E: scikit-image's
:func:`~skimage.feature.multiscale_basic_features` (Gaussian intensity, gradient magnitude
and the two Hessian eigenvalues at sigmas 1, 2, 4, 8 and 16 px) on six channels, the RGB
channels and the stain-separated haematoxylin, eosin and DAB channels (:func:`~skimage.color.rgb2hed`),
120 features per pixel at the working level. They are pooled (mean) per *sub-cell*: a
map cell (``stride`` level-0 px) is split into ``sub`` x ``sub`` sub-cells, so that the
head trains on finer samples than a map cell (a 256-px region gives 16 cells at stride 64,
but 64 or 256 sub-cells). The slide streams tile by tile (blocks of map cells with a halo
of 2 x the largest sigma), tissue blocks only; at the image border the halo is the image
mirrored, never white padding (white borders read as glass or as an edge and draw the
priority to the border).

Any patch encoder of :func:`napari_alregions.embed.load_encoder` (our CNN's penultimate
layer, torchvision or timm backbones, exported programs) gives features per map cell
(``sub`` = 1) through :func:`napari_alregions.embed.embed_slide`.

Features are NaN outside tissue. Each grid keeps its slide's per-feature mean and
standard deviation over tissue; the head reads features standardised per slide (stain
differs between slides: on the synthetic demo pool, whose centres stain differently, this
took the full-annotation mIoU from 0.10 to 0.46 at the same AUC). :func:`store_features` / :func:`open_features` keep them
as chunked zarr arrays in the session, so that memory stays bounded on a 40960² slide.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .wsi import Slide

__all__ = ["TEXTURE", "FeatureGrid", "TextureEncoder", "cell_px", "feature_key", "open_features", "pixel_features",
           "slide_features", "store_features", "sub_cells"]

TEXTURE = "texture"
#: written with every cache: a cache of another version (other sigmas, channels) is recomputed
FEATURES_VERSION = 1
#: sigmas (working-level px) of the built-in encoder
TEXTURE_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
#: rgb2hed's channels are optical densities: scaled so that stained tissue spans about [0, 1]
_HED_SCALE = np.array([1 / 0.2, 1 / 0.1, 1 / 0.05], np.float32)
_MIN_SUB_PX = 8  # smallest sub-cell side (working-level px)
_MAX_SUB = 4


@dataclass
class FeatureGrid:
    """Features of a slide on the map grid, refined ``sub`` times per map cell side.

    ``data[i, j]`` is the feature vector of sub-cell (i, j): map cell ``(i // sub, j // sub)``.
    ``data`` is an (H·sub, W·sub, D) float array (numpy, or zarr when opened from a cache),
    NaN outside tissue.
    """

    data: np.ndarray
    sub: int
    stride: int
    encoder: str
    #: per-feature mean and standard deviation over the slide's tissue: the head reads
    #: features standardised per slide, so that a slide stained darker or paler than the
    #: labeled ones is read alike (stain varies between centres and batches)
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    def standardised(self, rows: slice, cols: slice) -> np.ndarray:
        """``data[rows, cols]`` as float32, standardised per slide (see ``mean``)."""
        block = np.asarray(self.data[rows, cols], np.float32)
        if self.mean is None or self.scale is None:
            return block
        return (block - self.mean) / self.scale

    @property
    def map_shape(self) -> tuple[int, int]:
        return (self.data.shape[0] // self.sub, self.data.shape[1] // self.sub)

    @property
    def dim(self) -> int:
        return int(self.data.shape[2])


def cell_px(stride: int, factor: float) -> int:
    """A map cell's side (``stride`` level-0 px) in px of a level with downsample ``factor``.

    Examples
    --------
    >>> cell_px(128, 2.0)
    64
    """
    c = stride / factor
    if c != math.floor(c) or c < 1:
        raise ValueError(f"stride ({stride} px) must be a multiple of the level's downsample ({factor:g})")
    return int(c)


def sub_cells(cell_px: int) -> int:
    """Sub-cells per map cell side for a cell of ``cell_px`` working-level px: the largest
    divisor of ``cell_px`` up to 4 whose sub-cells are at least 8 px wide (1 for small cells).

    Examples
    --------
    >>> sub_cells(64), sub_cells(32), sub_cells(30), sub_cells(8)
    (4, 4, 3, 1)
    """
    if cell_px < 1:
        raise ValueError(f"cell_px must be >= 1, got {cell_px}")
    for sub in range(_MAX_SUB, 1, -1):
        if cell_px % sub == 0 and cell_px // sub >= _MIN_SUB_PX:
            return sub
    return 1


def pixel_features(rgb: np.ndarray, *, sigmas: tuple[float, ...] = TEXTURE_SIGMAS) -> np.ndarray:
    """Per-pixel features of an RGB image: intensity, gradient magnitude and the two
    Hessian eigenvalues at each sigma, on R, G, B and the H, E, D stain channels.

    Parameters
    ----------
    rgb : (h, w, 3) uint8 ndarray
    sigmas : tuple of float
        Gaussian scales in px.

    Returns
    -------
    (h, w, 6 * 4 * len(sigmas)) float32 ndarray

    Examples
    --------
    >>> pixel_features(np.full((32, 32, 3), 200, np.uint8)).shape
    (32, 32, 120)
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be an (h, w, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    if not sigmas or any(not s > 0 for s in sigmas):
        raise ValueError(f"sigmas must be positive, got {sigmas}")
    return np.concatenate(list(_channel_features(rgb, sigmas)), axis=-1)


def _channel_features(rgb: np.ndarray, sigmas: tuple[float, ...]):
    """:func:`pixel_features` one channel at a time (R, G, B, H, E, D): a caller that pools
    each part at once holds a sixth of the features."""
    from skimage.color import rgb2hed
    from skimage.feature import multiscale_basic_features

    x = rgb.astype(np.float32) / 255.0
    hed = rgb2hed(x).astype(np.float32) * _HED_SCALE
    for channel in (*np.moveaxis(x, -1, 0), *np.moveaxis(hed, -1, 0)):
        out = multiscale_basic_features(channel, intensity=True, edges=True, texture=True, sigma_min=min(sigmas),
                                        sigma_max=max(sigmas), num_sigma=len(sigmas))
        yield np.asarray(out, dtype=np.float32)


def _pool(pixels: np.ndarray, px: int) -> np.ndarray:
    """Mean over ``px`` x ``px`` blocks of an (h, w, D) array (h, w multiples of px)."""
    h, w, d = pixels.shape
    return pixels.reshape(h // px, px, w // px, px, d).mean(axis=(1, 3))


@dataclass(frozen=True)
class TextureEncoder:
    """The built-in encoder: :func:`pixel_features` at pyramid ``level``, mean per sub-cell."""

    level: int = 1
    sigmas: tuple[float, ...] = TEXTURE_SIGMAS
    block: int = 8  # map cells per tile side
    workers: int | None = None  # threads computing blocks (default: the cores, at most 4)

    @property
    def dim(self) -> int:
        return 24 * len(self.sigmas)

    def features(self, slide: Slide, *, stride: int, tissue: np.ndarray | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None,
                 out: np.ndarray | None = None) -> FeatureGrid:
        """The slide's :class:`FeatureGrid` (into ``out``, e.g. a zarr array, when given)."""
        from .model.predict import InferenceCancelled

        cell = cell_px(stride, slide.level_factor(self.level))
        sub = sub_cells(cell)
        px = cell // sub
        h, w = slide.map_shape(stride)
        tissue = np.ones((h, w), bool) if tissue is None else np.asarray(tissue, bool)
        if tissue.shape != (h, w):
            raise ValueError(f"tissue must have the map's shape {(h, w)}, got {tissue.shape}")
        shape = (h * sub, w * sub, self.dim)
        if out is None:
            out = np.full(shape, np.nan, np.float32)
        elif tuple(out.shape) != shape:
            raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
        halo = int(math.ceil(2 * max(self.sigmas)))
        stats = _Moments(self.dim)
        blocks = [(r0, c0) for r0 in range(0, h, self.block) for c0 in range(0, w, self.block)
                  if tissue[r0 : r0 + self.block, c0 : c0 + self.block].any()]
        def compute(r0: int, c0: int) -> np.ndarray:
            r1, c1 = min(r0 + self.block, h), min(c0 + self.block, w)
            rgb = slide._read_mirrored(self.level, r0 * cell - halo, c0 * cell - halo,
                                       (r1 - r0) * cell + 2 * halo, (c1 - c0) * cell + 2 * halo)
            return np.concatenate([_pool(part[halo:-halo, halo:-halo], px)
                                   for part in _channel_features(rgb, self.sigmas)], axis=-1)

        # blocks in threads (the filters release the GIL), at most 2 per thread in flight, each
        # holding one channel's pixel features at a time (26 MB for a block of 8 x 8 cells of 64 px):
        # results are written in order, so memory stays a few blocks whatever the slide
        workers = self.workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers, thread_name_prefix="alregions-features") as pool:
            pending: deque = deque()
            todo = iter(blocks)
            done = 0
            while True:
                while len(pending) < 2 * workers and (nxt := next(todo, None)) is not None:
                    pending.append((nxt, pool.submit(compute, *nxt)))
                if not pending:
                    break
                if cancel is not None and cancel():
                    for _, fut in pending:
                        fut.cancel()
                    raise InferenceCancelled("feature computation cancelled")
                (r0, c0), fut = pending.popleft()
                pooled = fut.result()
                r1, c1 = min(r0 + self.block, h), min(c0 + self.block, w)
                off = ~np.repeat(np.repeat(tissue[r0:r1, c0:c1], sub, 0), sub, 1)
                pooled[off] = np.nan
                out[r0 * sub : r1 * sub, c0 * sub : c1 * sub] = pooled
                stats.add(pooled[~off])
                done += 1
                if progress is not None:
                    progress(done, len(blocks))
        if not blocks and progress is not None:
            progress(0, 0)
        return FeatureGrid(out, sub, stride, TEXTURE, *stats.mean_scale())


def slide_features(slide: Slide, encoder: str, *, stride: int, level: int, tissue: np.ndarray | None = None,
                   spec=None, model=None, progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None, out: np.ndarray | None = None,
                   device: str | None = None) -> FeatureGrid:
    """Features of ``slide`` by ``encoder``: ``"texture"`` (built in), ``"classifier"`` (the
    penultimate layer of ``model``, with its ``spec``) or any source of
    :func:`napari_alregions.embed.load_encoder` (a checkpoint, ``torchvision:…``,
    ``timm:…``, an exported program), per map cell.
    """
    if encoder == TEXTURE:
        return TextureEncoder(level=level).features(slide, stride=stride, tissue=tissue, progress=progress,
                                                     cancel=cancel, out=out)
    from .embed import embed_slide, load_encoder

    if encoder == "classifier":
        if model is None or spec is None:
            raise ValueError("the classifier encoder needs the model and its spec")
        enc = load_encoder(model, spec=spec)
    else:
        enc = load_encoder(encoder, spec=spec if encoder.startswith("random") else None)
    emb = embed_slide(slide, enc, stride=stride, tissue=tissue, progress=progress, cancel=cancel, device=device)
    stats = _Moments(emb.shape[-1])
    stats.add(emb[np.isfinite(emb).all(axis=-1)])
    if out is not None:
        out[...] = emb
        emb = out
    return FeatureGrid(emb, 1, stride, encoder, *stats.mean_scale())


class _Moments:
    """Running per-feature mean and standard deviation (float64 sums)."""

    def __init__(self, dim: int) -> None:
        self.n, self.s1, self.s2 = 0, np.zeros(dim), np.zeros(dim)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.s1.size)
        self.n += len(x)
        self.s1 += x.sum(axis=0)
        self.s2 += (x * x).sum(axis=0)

    def mean_scale(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self.n:
            return None, None
        mean = self.s1 / self.n
        std = np.sqrt(np.maximum(self.s2 / self.n - mean**2, 0.0))
        return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def feature_key(encoder: str) -> str:
    """A folder name for an encoder's cache (``timm:hf-hub:org/x`` -> ``timm_hf-hub_org_x``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(encoder.rstrip("/\\")) if os.sep in encoder else encoder)
    return key.strip("._") or "features"


def store_features(folder: str | os.PathLike[str], shape: tuple[int, int, int], *, chunk: int = 256):
    """A new chunked float32 zarr array at ``folder`` (NaN-filled), to compute into;
    written under a temporary name: :func:`commit_features` renames it into place."""
    import zarr

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return zarr.create_array(store=str(tmp), shape=shape, chunks=(min(chunk, shape[0]) or 1, min(chunk, shape[1]) or 1, shape[2]),
                             dtype="float32", fill_value=float("nan"))


def commit_features(folder: str | os.PathLike[str], grid: FeatureGrid) -> FeatureGrid:
    """Move a finished :func:`store_features` array into place, with its geometry."""
    import zarr

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    arr = zarr.open_array(str(tmp), mode="r+")
    arr.attrs.update({"version": FEATURES_VERSION, "sub": grid.sub, "stride": grid.stride, "encoder": grid.encoder,
                      "mean": None if grid.mean is None else [float(v) for v in grid.mean],
                      "scale": None if grid.scale is None else [float(v) for v in grid.scale]})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return open_features(folder)


def open_features(folder: str | os.PathLike[str]) -> FeatureGrid | None:
    """A cached :class:`FeatureGrid` (read lazily from zarr), or None when missing or damaged."""
    import zarr

    folder = Path(folder)
    if not folder.is_dir():
        return None
    try:
        arr = zarr.open_array(str(folder), mode="r")
        a = dict(arr.attrs)
        if a.get("version") != FEATURES_VERSION:
            return None
        mean, scale = (None if a.get(k) is None else np.asarray(a[k], np.float32) for k in ("mean", "scale"))
        if mean is not None and (mean.shape != (arr.shape[2],) or scale is None or scale.shape != mean.shape):
            return None
        return FeatureGrid(arr, int(a["sub"]), int(a["stride"]), str(a["encoder"]), mean, scale)
    except Exception:  # a damaged cache is recomputed on demand
        return None
