"""Deterministic synthetic whole-slide images with ground truth, for tests and the demo.

Each slide is a tiled, JPEG-compressed pyramidal TIFF (0.5 µm/px; each level a top-level
page, the coarser ones flagged reduced-resolution, as OpenSlide's generic-TIFF driver and
so QuPath read pyramids; files written before with SubIFD levels open the same) showing
irregular tissue pieces on a white background, rendered from a Beer–Lambert H&E stain
model: lymph-node-like tissue with dense small round nuclei and stroma, and "tumour" with
larger, pleomorphic, vesicular nuclei and more cytoplasm. Tumour ranges from isolated
tumour cells to large lesions; some slides have none. Stain vectors and intensities vary
between slides and between "centres", by more than the colour difference between tumour
and normal tissue, so a classifier has to learn texture, not colour.

Every pixel is a pure function of (seed, slide, position): the generator renders level 0
tile by tile (memory bounded by one tile row of the next level on disk), builds the coarser
levels by 2x2 mean pooling, and writes the label mask (0 background, 1 tissue, 2 tumour)
as a second pyramidal TIFF whose levels are the level-0 mask subsampled by 2^l.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

from ._atomic import write_text

__all__ = [
    "BACKGROUND",
    "TISSUE",
    "TUMOUR",
    "SlideSpec",
    "make_slide_pool",
    "render_region",
    "slide_spec",
    "write_slide",
]

BACKGROUND, TISSUE, TUMOUR = 0, 1, 2
MPP = 0.5
TILE = 256
MANIFEST = "manifest.json"

_H_REF = np.array([0.65, 0.70, 0.29])
_E_REF = np.array([0.07, 0.99, 0.11])
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Blob:
    """An irregular closed shape: an ellipse whose radius is perturbed by harmonics."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    @property
    def reach(self) -> float:
        return self.radius * max(self.aspect, 1 / self.aspect) * (1 + sum(self.amplitudes))

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        q = math.sqrt(self.aspect)
        u = (c * dx + s * dy) / q
        v = (c * dy - s * dx) * q
        rho2 = u * u + v * v
        spread = sum(self.amplitudes)
        r_in, r_out = self.radius * max(0.0, 1 - spread), self.radius * (1 + spread)
        out = rho2 < r_in * r_in
        # Only the ring where the harmonics decide needs the angle: cos(kθ + φ) = Re(e^{iφ} z^k).
        ring = ~out & (rho2 < r_out * r_out)
        if ring.any():
            z = (u[ring] + 1j * v[ring]) / np.sqrt(rho2[ring])
            zk = z * z
            r = np.full(z.shape, self.radius)
            for a, p in zip(self.amplitudes, self.phases, strict=True):
                r += self.radius * a * (zk * complex(math.cos(p), math.sin(p))).real
                zk = zk * z
            out[ring] = rho2[ring] < r * r
        return out

    def bbox(self) -> tuple[float, float, float, float]:
        return (self.cx - self.reach, self.cy - self.reach, self.cx + self.reach, self.cy + self.reach)


@dataclass(frozen=True)
class SlideSpec:
    """Everything that determines one synthetic slide."""

    name: str
    seed: int
    shape: tuple[int, int]
    centre: int
    h_vector: tuple[float, float, float]
    e_vector: tuple[float, float, float]
    h_scale: float
    e_scale: float
    tissue: tuple[Blob, ...]
    tumour: tuple[Blob, ...]
    waves: tuple[tuple[float, float, float, float], ...] = field(default=())
    mimics: tuple[Blob, ...] = field(default=())  # tumour-like benign areas (germinal centres)

    @property
    def has_tumour(self) -> bool:
        return bool(self.tumour)


def _rand_blob(rng: np.random.Generator, cx: float, cy: float, radius: float, rough: float) -> Blob:
    n = 6
    amps = rough * rng.uniform(0.2, 1.0, n) / np.arange(2, 2 + n) ** 1.2
    return Blob(
        cx=float(cx),
        cy=float(cy),
        radius=float(radius),
        aspect=float(rng.uniform(0.6, 1.6)),
        angle=float(rng.uniform(0, math.pi)),
        amplitudes=tuple(float(a) for a in amps),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, n)),
    )


LESIONS = ("mixed", "sparse")


def slide_spec(index: int, *, size: int | Sequence[int], seed: int, n_centres: int = 3, lesions: str = "mixed") -> SlideSpec:
    """The random layout of slide ``index`` of a pool (deterministic in ``seed``).

    ``lesions`` "mixed": tumour from isolated cells to large lesions, about one slide in
    four without. "sparse" (CAMELYON16-like, where half the positive slides have
    metastases under 1 % of the tissue): every slide has tumour, one small
    macro-metastasis (45-100 µm radius), micro-metastases and isolated tumour cells, and
    tumour-like germinal centres (larger, paler nuclei) in the normal tissue, so that a
    classifier needs labeled examples of both to tell them apart.
    """
    if lesions not in LESIONS:
        raise ValueError(f"lesions must be one of {LESIONS}, got {lesions!r}")
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    rng = np.random.default_rng([seed, index])
    side = min(h, w)
    tissue = []
    for _ in range(int(rng.integers(1, 4))):
        r = side * rng.uniform(0.16, 0.3)
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        tissue.append(_rand_blob(rng, cx, cy, r, rough=0.6))
    anchors = [t for t in tissue]

    def inside_point() -> tuple[float, float]:
        t = anchors[int(rng.integers(len(anchors)))]
        ang, rad = rng.uniform(0, 2 * math.pi), t.radius * math.sqrt(rng.uniform(0, 0.5))
        return t.cx + rad * math.cos(ang), t.cy + rad * math.sin(ang)

    tumour: list[Blob] = []
    mimics: list[Blob] = []
    if lesions == "sparse":
        tumour.append(_rand_blob(rng, *inside_point(), rng.uniform(90, 200), rough=0.8))
        for _ in range(int(rng.integers(1, 3))):
            tumour.append(_rand_blob(rng, *inside_point(), rng.uniform(40, 90), rough=0.7))
        for _ in range(int(rng.integers(2, 6))):
            tumour.append(_rand_blob(rng, *inside_point(), rng.uniform(12, 30), rough=0.3))
        for _ in range(max(1, round(rng.uniform(3, 6) * side / 4096))):
            mimics.append(_rand_blob(rng, *inside_point(), rng.uniform(60, 160), rough=0.6))
    else:
        # Roughly one slide in four has no tumour; slide 0 always has some.
        kind = "none" if (index > 0 and rng.random() < 0.25) else str(rng.choice(["large", "small", "mixed"]))
        if kind in ("large", "mixed"):
            for _ in range(int(rng.integers(1, 3))):
                tumour.append(_rand_blob(rng, *inside_point(), side * rng.uniform(0.04, 0.1), rough=0.8))
        if kind in ("small", "mixed"):
            for _ in range(int(rng.integers(2, 5))):  # micro-metastases, 50-150 µm
                tumour.append(_rand_blob(rng, *inside_point(), rng.uniform(50, 150), rough=0.7))
            for _ in range(int(rng.integers(2, 7))):  # isolated tumour cells: one to a few cells
                tumour.append(_rand_blob(rng, *inside_point(), rng.uniform(12, 30), rough=0.3))
    centre = int(index % n_centres)
    crng = np.random.default_rng([seed, 10_000 + centre])
    h_vec = _unit(_H_REF + crng.normal(0, 0.06, 3) + rng.normal(0, 0.02, 3))
    e_vec = _unit(_E_REF + crng.normal(0, 0.06, 3) + rng.normal(0, 0.02, 3))
    waves = tuple(
        (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(300, 2000)), float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.5, 1)))
        for _ in range(4)
    )
    return SlideSpec(
        name=f"slide_{index:03d}",
        seed=int(seed) * 1000 + index,
        shape=(h, w),
        centre=centre,
        h_vector=tuple(float(v) for v in h_vec),  # type: ignore[arg-type]
        e_vector=tuple(float(v) for v in e_vec),  # type: ignore[arg-type]
        h_scale=float(crng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1)),
        e_scale=float(crng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1)),
        tissue=tuple(tissue),
        tumour=tuple(tumour),
        waves=waves,
        mimics=tuple(mimics),
    )


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.01, None)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------
def _hash(keys: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uniform 64-bit values from integer keys."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, pop: int, cy: np.ndarray, cx: np.ndarray, param: int) -> np.ndarray:
    key = ((cy.astype(np.int64) + (1 << 20)) << 22) + (cx.astype(np.int64) + (1 << 20))
    key = key.astype(np.uint64) * np.uint64(64) + np.uint64(pop * 16 + param)
    key = key ^ _hash(np.array([seed], dtype=np.uint64))
    return (_hash(key) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class _Nuclei:
    pop: int
    cell: float  # lattice spacing (level-0 px)
    presence: float
    radius: tuple[float, float]  # uniform range
    aspect: tuple[float, float]
    jitter: float
    vesicular: bool


_LYMPHOCYTE = _Nuclei(pop=1, cell=12.0, presence=0.8, radius=(3.2, 4.6), aspect=(1.0, 1.25), jitter=0.6, vesicular=False)
_STROMAL = _Nuclei(pop=2, cell=28.0, presence=0.5, radius=(2.5, 3.5), aspect=(2.0, 3.5), jitter=0.8, vesicular=False)
_TUMOUR = _Nuclei(pop=3, cell=20.0, presence=0.92, radius=(5.5, 9.0), aspect=(1.0, 1.6), jitter=0.4, vesicular=True)
# germinal-centre cells: larger and paler than lymphocytes, smaller and rounder than tumour
_CENTROBLAST = _Nuclei(pop=4, cell=18.0, presence=0.85, radius=(4.8, 7.0), aspect=(1.0, 1.25), jitter=0.5, vesicular=True)


_N_SPRITES = 64


@lru_cache(maxsize=8)
def _sprites(nuc: _Nuclei, seed: int) -> np.ndarray:
    """(V, S, S) haematoxylin density of V random nuclei of one population, S odd."""
    rng = np.random.default_rng([seed, nuc.pop])
    half = int(math.ceil(nuc.radius[1] * math.sqrt(nuc.aspect[1]))) + 1
    grid = np.arange(-half, half + 1, dtype=np.float64)
    yy, xx = grid[:, None], grid[None, :]
    out = np.empty((_N_SPRITES, 2 * half + 1, 2 * half + 1), dtype=np.float32)
    for i in range(_N_SPRITES):
        r = rng.uniform(*nuc.radius)
        asp = math.sqrt(rng.uniform(*nuc.aspect))
        ang = rng.uniform(0, math.pi)
        ox, oy = rng.uniform(-0.5, 0.5, 2)  # sub-pixel position
        dx, dy = xx - ox, yy - oy
        u = (math.cos(ang) * dx + math.sin(ang) * dy) / asp
        v = (math.cos(ang) * dy - math.sin(ang) * dx) * asp
        dist = np.sqrt(u * u + v * v)
        edge = np.clip(r - dist + 0.5, 0.0, 1.0)  # soft edge over about one pixel
        d = dist / r
        if nuc.vesicular:  # pale chromatin, dark rim and a nucleolus
            profile = np.minimum(0.45 + 0.55 * d * d + 0.5 * (d < 0.18), 1.0)
        else:
            profile = 1.0 - 0.1 * d
        out[i] = edge * profile
    return out


def _nuclei(
    spec: SlideSpec, nuc: _Nuclei, box: tuple[int, int, int, int], keep: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Haematoxylin density in [0, 1] of one nucleus population over a level-0 box.

    At most one nucleus per lattice cell, its position and shape hashed from the cell
    index, so that neighbouring tiles render the same nuclei across their border.
    ``keep(x, y, u)`` may thin nuclei by position (u: a uniform number per cell).
    """
    x0, y0, x1, y1 = box
    sprites = _sprites(nuc, spec.seed)
    half = sprites.shape[1] // 2
    c = nuc.cell
    gy = np.arange(math.floor((y0 - half) / c) - 1, math.floor((y1 + half) / c) + 2)[:, None]
    gx = np.arange(math.floor((x0 - half) / c) - 1, math.floor((x1 + half) / c) + 2)[None, :]
    u = [_uniform(spec.seed, nuc.pop, gy, gx, k) for k in range(5)]
    px = (gx + 0.5 + nuc.jitter * (u[1] - 0.5)) * c
    py = (gy + 0.5 + nuc.jitter * (u[2] - 0.5)) * c
    present = u[0] < nuc.presence
    if keep is not None:
        present &= keep(px, py, u[4])
    sel = np.nonzero(present)
    left = np.floor(px[sel]).astype(np.int64) - half - x0
    top = np.floor(py[sel]).astype(np.int64) - half - y0
    variant = (u[3][sel] * _N_SPRITES).astype(np.int64)
    h, w = y1 - y0, x1 - x0
    inside = (left > -2 * half - 1) & (top > -2 * half - 1) & (left < w) & (top < h)
    left, top, variant = left[inside], top[inside], variant[inside]
    out = np.zeros((h + 4 * half + 2, w + 4 * half + 2), dtype=np.float32)
    span = np.arange(2 * half + 1)
    rows = (top + 2 * half + 1)[:, None, None] + span[None, :, None]
    cols = (left + 2 * half + 1)[:, None, None] + span[None, None, :]
    np.maximum.at(out, (rows, cols), sprites[variant])
    return out[2 * half + 1 : 2 * half + 1 + h, 2 * half + 1 : 2 * half + 1 + w]


def _waves(spec: SlideSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth field in [-1, 1]: density and stroma variation across the tissue."""
    acc = np.zeros(np.broadcast_shapes(xs.shape, ys.shape))
    norm = 0.0
    for ang, wavelength, phase, amp in spec.waves:
        acc += amp * np.sin((np.cos(ang) * xs + np.sin(ang) * ys) * (2 * math.pi / wavelength) + phase)
        norm += amp
    return acc / max(norm, 1e-9)


def _stroma(spec: SlideSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """0 where the tissue is lymphoid, 1 where it is stroma."""
    return np.clip(0.5 + 0.9 * _waves(spec, xs, ys), 0, 1)


def _union(blobs: Sequence[Blob], xs: np.ndarray, ys: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = np.zeros((ys.shape[0], xs.shape[1]), dtype=bool)
    for b in blobs:
        bx0, by0, bx1, by1 = b.bbox()
        if bx1 < x0 or by1 < y0 or bx0 > x1 or by0 > y1:
            continue
        # Evaluate only the window of the tile that the blob can reach.
        c0, c1 = max(0, int(bx0) - x0), min(out.shape[1], int(math.ceil(bx1)) - x0 + 1)
        r0, r1 = max(0, int(by0) - y0), min(out.shape[0], int(math.ceil(by1)) - y0 + 1)
        if c0 < c1 and r0 < r1:
            out[r0:r1, c0:c1] |= b.contains(xs[:, c0:c1], ys[r0:r1, :])
    return out


def render_region(spec: SlideSpec, x: int, y: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Render level-0 pixels of a synthetic slide.

    Returns
    -------
    rgb : (h, w, 3) uint8 ndarray
    labels : (h, w) uint8 ndarray
        0 background, 1 tissue, 2 tumour.
    """
    xs = np.arange(x, x + w, dtype=np.float64)[None, :] + 0.5
    ys = np.arange(y, y + h, dtype=np.float64)[:, None] + 0.5
    box = (x, y, x + w, y + h)
    H, W = spec.shape
    tissue = _union(spec.tissue, xs, ys, box) & (xs < W) & (ys < H)
    labels = tissue.astype(np.uint8)
    rng = np.random.default_rng([spec.seed, x, y])
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    bg = np.clip(rng.normal(243, 2.0, (h, w, 1)), 0, 255)
    rgb[:] = bg.astype(np.uint8)
    if not tissue.any():
        return rgb, labels
    tumour = _union(spec.tumour, xs, ys, box) & tissue
    labels[tumour] = TUMOUR
    field_ = _waves(spec, xs, ys)  # -1..1
    stroma = _stroma(spec, xs, ys)
    h_od = np.zeros((h, w))
    e_od = np.full((h, w), 0.28) * (1 + 0.25 * stroma)
    normal = tissue & ~tumour
    if normal.any():
        lym = _nuclei(spec, _LYMPHOCYTE, box, keep=lambda px, py, u: u > 0.85 * _stroma(spec, px, py))
        strom = _nuclei(spec, _STROMAL, box, keep=lambda px, py, u: u < 0.2 + 0.8 * _stroma(spec, px, py))
        nuc = np.maximum(lym, strom)
        if spec.mimics:  # germinal centres: pale nuclei in pale eosin, like tumour at a glance
            mimic = _union(spec.mimics, xs, ys, box) & normal
            if mimic.any():
                nuc = np.where(mimic, 0.9 * _nuclei(spec, _CENTROBLAST, box), nuc)
                e_od = np.where(mimic, 0.33 + 0.05 * field_, e_od)
        fibres = 0.12 * np.sin((xs * 0.7 + ys * 0.3) / 9.0 + 3 * field_)
        h_od = np.where(normal, 1.15 * nuc + 0.04, h_od)
        e_od = np.where(normal, e_od * (1 + fibres * stroma), e_od)
    if tumour.any():
        tnuc = _nuclei(spec, _TUMOUR, box)
        h_od = np.where(tumour, 0.85 * tnuc + 0.08, h_od)
        e_od = np.where(tumour, 0.36 + 0.05 * field_, e_od)
    noise = rng.normal(0, 0.03, (h, w))
    h_od = np.clip(h_od * spec.h_scale + noise, 0, None)
    e_od = np.clip(e_od * spec.e_scale + rng.normal(0, 0.02, (h, w)), 0, None)
    od = h_od[..., None] * np.asarray(spec.h_vector) + e_od[..., None] * np.asarray(spec.e_vector)
    tissue_rgb = 245.0 * np.exp(-od)
    rgb = np.where(tissue[..., None], np.clip(tissue_rgb, 0, 255), rgb).astype(np.uint8)
    return rgb, labels


# ---------------------------------------------------------------------------------------
# Writing pyramids
# ---------------------------------------------------------------------------------------
def _level_shapes(shape: tuple[int, int], min_side: int = 512) -> list[tuple[int, int]]:
    shapes = [shape]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _tiles_of(arr: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    h, w = arr.shape[:2]
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            block = arr[ty : ty + tile, tx : tx + tile]
            if block.shape[:2] != (tile, tile):
                pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])] + [(0, 0)] * (arr.ndim - 2)
                block = np.pad(block, pad, mode="edge")
            yield np.ascontiguousarray(block)


def _pool2(arr: np.ndarray) -> np.ndarray:
    """2x2 mean of an RGB array (odd edges replicate)."""
    h, w = arr.shape[:2]
    a = np.pad(arr, [(0, h % 2), (0, w % 2), (0, 0)], mode="edge").astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) // 4).astype(np.uint8)


def _disk_array(path: Path, shape: tuple[int, ...], output: Path) -> np.ndarray:
    """A new memory-mapped .npy file whose blocks are allocated now: a sparse map written
    on a full disk kills the process (SIGBUS) at the page that finds no space, leaving
    its files; here the full disk is an OSError naming ``output``, before any rendering."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):  # not on macOS and Windows
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                raise OSError(exc.errno, exc.strerror, str(output)) from exc
        finally:
            os.close(fd)
    return arr


def _pool_to_memmap(src: np.ndarray, path: Path, output: Path, band: int = 1024) -> np.ndarray:
    """2x2 mean pooling of an on-disk RGB level into a new on-disk level, band by band."""
    h, w = src.shape[:2]
    dst = _disk_array(path, ((h + 1) // 2, (w + 1) // 2, 3), output)
    for y in range(0, h, band):
        dst[y // 2 : (min(y + band, h) + 1) // 2] = _pool2(np.asarray(src[y : y + band]))
    return dst


def write_slide(spec: SlideSpec, image_path: Path, mask_path: Path, *, quality: int = 90) -> dict:
    """Render one slide and write its image and label-mask pyramids. Returns statistics.

    Memory stays bounded: level 0 streams tile by tile into the TIFF while the next level
    and the mask accumulate in temporary memory-mapped files beside the output.
    """
    shapes = _level_shapes(spec.shape)
    H, W = spec.shape
    counts = np.zeros(3, dtype=np.int64)
    opts = dict(tile=(TILE, TILE), resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER", metadata=None)
    jpeg = dict(dtype=np.uint8, photometric="rgb", compression="jpeg", compressionargs={"level": quality})
    bigtiff = H * W * 3 > 2**31
    with tempfile.TemporaryDirectory(dir=image_path.parent, prefix=".tmp-") as tmp:
        mask0 = _disk_array(Path(tmp) / "mask0.npy", (H, W), image_path)
        level1 = _disk_array(Path(tmp) / "level1.npy", (*shapes[1], 3), image_path) if len(shapes) > 1 else None

        def level0() -> Iterator[np.ndarray]:
            for ty in range(0, H, TILE):
                for tx in range(0, W, TILE):
                    rgb, lab = render_region(spec, tx, ty, TILE, TILE)
                    vh, vw = min(TILE, H - ty), min(TILE, W - tx)
                    counts[:] += np.bincount(lab[:vh, :vw].ravel(), minlength=3)[:3]
                    mask0[ty : ty + vh, tx : tx + vw] = lab[:vh, :vw]
                    if level1 is not None:
                        p = _pool2(rgb)[: (vh + 1) // 2, : (vw + 1) // 2]
                        level1[ty // 2 : ty // 2 + p.shape[0], tx // 2 : tx // 2 + p.shape[1]] = p
                    yield rgb

        part_image = image_path.with_name(image_path.name + ".part")
        part_mask = mask_path.with_name(mask_path.name + ".part")
        try:
            _write_pyramids(spec, level0, level1, mask0, shapes, part_image, part_mask, Path(tmp), image_path,
                            bigtiff=bigtiff, jpeg=jpeg, opts=opts)
            os.replace(part_image, image_path)
            os.replace(part_mask, mask_path)
        except BaseException:  # a full disk, an interrupt: no half-written files left beside the pool
            part_image.unlink(missing_ok=True)
            part_mask.unlink(missing_ok=True)
            raise
        finally:
            mask0 = level1 = None  # close the memmaps before their folder goes
    tissue = int(counts[TISSUE] + counts[TUMOUR])
    return {
        "tissue_fraction": tissue / float(H * W),
        "tumour_fraction_of_tissue": (int(counts[TUMOUR]) / tissue) if tissue else 0.0,
    }


def _write_pyramids(spec: SlideSpec, level0: Callable[[], Iterator[np.ndarray]], level1: np.ndarray | None,
                    mask0: np.ndarray, shapes: list[tuple[int, int]], part_image: Path, part_mask: Path, tmp: Path,
                    output: Path, *, bigtiff: bool, jpeg: dict, opts: dict) -> None:
    """:func:`write_slide`'s two TIFFs: the image (level 0 rendered as it streams in) and the mask.

    Levels are top-level pages, level 0 first and the others NewSubfileType 1 (reduced
    resolution), all tiled alike: the layout OpenSlide's generic-TIFF driver takes for a
    pyramid. It sees only level 0 of SubIFD levels (and tifffile reads both layouts).
    """
    H, W = shapes[0]
    with tifffile.TiffWriter(part_image, bigtiff=bigtiff) as tif:
        tif.write(
            level0(), shape=(H, W, 3),
            description=f"napari-alregions synthetic slide {spec.name}; mpp={MPP}", **jpeg, **opts,
        )
        current = level1
        for lvl in range(1, len(shapes)):
            assert current is not None
            tif.write(_tiles_of(current, TILE), shape=(*shapes[lvl], 3), subfiletype=1, **jpeg, **opts)
            if lvl + 1 < len(shapes):
                current = _pool_to_memmap(current, tmp / f"level{lvl + 1}.npy", output)
    with tifffile.TiffWriter(part_mask, bigtiff=bigtiff) as tif:
        for lvl, shape in enumerate(shapes):
            step = 2**lvl
            tif.write(
                _tiles_of(mask0[::step, ::step], TILE), shape=shape, dtype=np.uint8,
                photometric="minisblack", compression="zlib", subfiletype=1 if lvl else 0, **opts,
            )


def _sizes(size: int | Sequence[int], name: str) -> tuple[int, int]:
    sizes = (size, size) if np.isscalar(size) else tuple(size)
    if len(sizes) != 2 or min(int(s) for s in sizes) < TILE:
        raise ValueError(f"{name} must be at least {TILE} pixels per side, got {size!r}")
    return int(sizes[0]), int(sizes[1])


def make_slide_pool(
    folder: str | os.PathLike[str],
    n_slides: int = 6,
    size: int | Sequence[int] = 4096,
    seed: int = 0,
    *,
    test_fraction: float = 0.34,
    n_test: int | None = None,
    test_size: int | Sequence[int] | None = None,
    lesions: str = "mixed",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[str, bool], None] | None = None,
) -> dict:
    """Write a pool of synthetic slides, their label masks and a ``manifest.json``.

    Parameters
    ----------
    folder : path
        Output folder (created).
    n_slides : int
        Number of slides.
    size : int or (int, int)
        Level-0 size in pixels (height, width), at 0.5 µm/px.
    seed : int
        Same seed, same files (pixel for pixel).
    test_fraction : float
        Share of slides marked ``"split": "test"`` (the last ones); at least one test slide
        has tumour.
    n_test : int, optional
        Number of test slides instead of ``test_fraction``.
    test_size : int or (int, int), optional
        Level-0 size of the test slides (default ``size``): evaluation needs many test
        slides, not large ones.
    lesions : {"mixed", "sparse"}
        Tumour layout (:func:`slide_spec`).
    overwrite : bool
        Re-render slides whose files exist. By default existing files are kept, so an
        interrupted run resumes.
    progress : callable, optional
        Called as ``progress(done, total)`` after each slide.
    report : callable, optional
        Called as ``report(name, rendered)`` for each slide: ``rendered`` False when its
        files were up to date and kept.

    Returns
    -------
    dict
        The manifest.

    Examples
    --------
    >>> manifest = make_slide_pool("demo", n_slides=2, size=2048, seed=1)  # doctest: +SKIP
    """
    if n_slides < 1:
        raise ValueError(f"n_slides must be >= 1, got {n_slides}")
    sizes = _sizes(size, "size")
    tsizes = sizes if test_size is None else _sizes(test_size, "test_size")
    if n_test is None:
        n_test = max(1, round(n_slides * test_fraction)) if n_slides > 1 else 0
    elif not 0 <= n_test < n_slides:
        raise ValueError(f"n_test must be in [0, n_slides), got {n_test} of {n_slides}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test_ids = set(range(n_slides - n_test, n_slides))
    specs = [slide_spec(i, size=tsizes if i in test_ids else sizes, seed=seed, lesions=lesions) for i in range(n_slides)]
    if n_test and not any(specs[i].has_tumour for i in test_ids) and test_size is None:
        swap = next((i for i in reversed(range(n_slides)) if specs[i].has_tumour and i not in test_ids), None)
        if swap is not None:
            test_ids.discard(min(test_ids))
            test_ids.add(swap)
    old = {}
    manifest_path = folder / MANIFEST
    if manifest_path.exists() and not overwrite:
        try:
            old = {s["name"]: s for s in json.loads(manifest_path.read_text())["slides"]}
        except (ValueError, KeyError):
            old = {}
    entries = []
    for i, spec in enumerate(specs):
        image, mask = folder / f"{spec.name}.tif", folder / f"{spec.name}_mask.tif"
        prev = old.get(spec.name)
        if (prev and image.exists() and mask.exists() and tuple(prev.get("shape", ())) == spec.shape
                and prev.get("seed") == spec.seed and prev.get("lesions", "mixed") == lesions):
            stats = {k: prev[k] for k in ("tissue_fraction", "tumour_fraction_of_tissue")}
            rendered = False
        else:
            stats = write_slide(spec, image, mask)
            rendered = True
        if report is not None:
            report(spec.name, rendered)
        entries.append({
            "name": spec.name,
            "image": image.name,
            "mask": mask.name,
            "shape": list(spec.shape),
            "mpp": MPP,
            "seed": spec.seed,
            "centre": spec.centre,
            "split": "test" if i in test_ids else "train",
            "has_tumour": spec.has_tumour,
            "n_lesions": len(spec.tumour),
            "lesions": lesions,
            **stats,
        })
        if progress is not None:
            progress(i + 1, n_slides)
    manifest = {
        "format": "napari-alregions synthetic pool",
        "version": 1,
        "seed": seed,
        "labels": {"background": BACKGROUND, "tissue": TISSUE, "tumour": TUMOUR},
        "slides": entries,
    }
    write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest
