"""I/O benchmark: patch reads through ``Slide.read_region`` vs. tifffile directly, and the
peak memory of opening a large slide.

    python benchmarks/bench_io.py [--size 8192] [--big 40960] [--patches 400] [--only reads|open]

1. Random 256x256 patches from a JPEG pyramid (tile-aligned, and at arbitrary positions)
   per second through ``read_region`` vs. decoding the same tiles with tifffile's own
   ``TiffPage.decode`` on bytes read straight from the file (the floor of the work), the
   decoded-tile cache off. Goal: ratio >= 0.8.
2. Training-style reads: 64² patches drawn at random inside three 384² regions of
   level 1 (what annotated regions give ``train``), with the decoded-tile cache vs without.
3. Peak RSS of a fresh process that opens a >= 40k x 40k synthetic slide, reads its
   metadata and computes the tissue mask on a low-resolution level. Goal: < 300 MB.
4. Opening a --big slide (levels as pages, so OpenSlide reads the same pyramid):
   ``open_slide`` + close vs ``openslide.OpenSlide`` + close, and each with its first
   256² read; then random 256² reads on level 0 and the same few patches read again and
   again, the decoded-tile cache on vs off. Goal: cache on never slower than off (ratio
   >= 0.95 given the noise). The slide repeats 64 textured JPEG tiles (written in seconds;
   their content does not matter for these timings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from napari_alregions.model.data import read_patches
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide, set_tile_cache_size, tile_cache_size

CACHE = Path(__file__).parent / ".cache"
PATCH = 256


def direct_reader(path: Path):
    """Decode tiles of level 0 with tifffile alone and crop the requested patch."""
    tif = tifffile.TiffFile(path)
    page = tif.pages.first
    fh = tif.filehandle
    th, tw = page.tilelength, page.tilewidth
    per_row = -(-page.imagewidth // tw)
    offsets, counts = page.dataoffsets, page.databytecounts
    tables = page.jpegtables
    decode = page.decode  # resolve first: the property itself reads from the file

    def read(x: int, y: int) -> np.ndarray:
        out = np.empty((PATCH, PATCH, 3), np.uint8)
        for ty in range(y // th, (y + PATCH - 1) // th + 1):
            for tx in range(x // tw, (x + PATCH - 1) // tw + 1):
                i = ty * per_row + tx
                fh.seek(offsets[i])
                tile = decode(fh.read(counts[i]), i, jpegtables=tables)[0][0]
                y0, x0 = ty * th, tx * tw
                ys, xs = max(y, y0), max(x, x0)
                ye, xe = min(y + PATCH, y0 + th), min(x + PATCH, x0 + tw)
                out[ys - y : ye - y, xs - x : xe - x] = tile[ys - y0 : ye - y0, xs - x0 : xe - x0]
        return out

    return read, tif


def patches_per_second(fn, positions, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for x, y in positions:
            fn(x, y)
        best = min(best, time.perf_counter() - t)
    return len(positions) / best


def bench_reads(path: Path, n: int, rng: np.random.Generator) -> None:
    budget = tile_cache_size()[1]
    set_tile_cache_size(0)  # the overhead of our reads over tifffile's decode, nothing reused
    with open_slide(path) as slide:
        h, w = slide.shape
        direct, tif = direct_reader(path)
        ours = lambda x, y: slide.read_region(x, y, PATCH, PATCH)  # noqa: E731
        # the two readers agree pixel for pixel
        for x, y in [(0, 0), (300, 517), (w - PATCH, h - PATCH)]:
            np.testing.assert_array_equal(ours(x, y), direct(x, y))
        print(f"slide {path.name}: {w}x{h} px, JPEG tiles {slide.info.tile_shape}")
        print(f"{'patches':<14}{'read_region /s':>16}{'tifffile /s':>14}{'ratio':>8}")
        for label, aligned in (("tile-aligned", True), ("arbitrary", False)):
            if aligned:
                pos = [(int(x) * PATCH, int(y) * PATCH) for x, y in zip(rng.integers(0, w // PATCH, n), rng.integers(0, h // PATCH, n), strict=True)]
            else:
                pos = [(int(x), int(y)) for x, y in zip(rng.integers(0, w - PATCH, n), rng.integers(0, h - PATCH, n), strict=True)]
            a = patches_per_second(ours, pos)
            b = patches_per_second(direct, pos)
            print(f"{label:<14}{a:>16.0f}{b:>14.0f}{a / b:>8.2f}")
        tif.close()
    set_tile_cache_size(budget)


def bench_training_reads(path: Path, n: int, rng: np.random.Generator) -> None:
    level, d, side = 1, 64, 384
    with open_slide(path) as slide:
        lh, lw = slide.levels[level].shape[:2]
        corners = np.stack([rng.integers(0, lh - side, 3), rng.integers(0, lw - side, 3)], axis=1)
        region = rng.integers(0, 3, n)
        centres = corners[region] + d // 2 + rng.integers(0, side - d, (n, 2))
        budget = tile_cache_size()[1]
        rates, ref = {}, None
        for label, size in (("cache off", 0), ("cache on", budget)):
            set_tile_cache_size(size)
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                got = read_patches(slide, centres, level=level, patch_size=d)
                best = min(best, time.perf_counter() - t)
            rates[label] = n / best
            if ref is None:
                ref = got
            np.testing.assert_array_equal(got, ref)  # the same pixels either way
        set_tile_cache_size(budget)
        print(f"training-style reads: {n} patches of {d}² at level {level} inside three {side}² regions "
              f"(cache {budget / 2**20:.0f} MiB, {tile_cache_size()[0] / 2**20:.1f} MiB held)")
        print(f"{'cache off /s':>14}{'cache on /s':>14}{'ratio':>8}")
        print(f"{rates['cache off']:>14.0f}{rates['cache on']:>14.0f}{rates['cache on'] / rates['cache off']:>8.2f}")


RSS_SCRIPT = """
import json, resource, sys

def peak_kb():
    # VmHWM is this process's own peak; Linux's ru_maxrss also counts the parent's RSS at fork
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

from napari_alregions.wsi import open_slide
base = peak_kb()
slide = open_slide(sys.argv[1])
opened = peak_kb()
fraction = slide.tissue_fraction()
after = peak_kb()
print(json.dumps({"imports_kb": base, "open_kb": opened, "tissue_kb": after,
                  "shape": slide.shape, "levels": slide.level_count, "tissue_level": slide.tissue_level,
                  "tissue_fraction": fraction}))
"""


def bench_rss(path: Path) -> None:
    res = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path)], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout)
    mb = lambda kb: kb / 1024  # noqa: E731  (Linux reports ru_maxrss in KiB)
    h, w = r["shape"]
    print(f"slide {path.name}: {w}x{h} px, {r['levels']} levels, tissue on level {r['tissue_level']} = {100 * r['tissue_fraction']:.1f}%")
    print(f"peak RSS after imports {mb(r['imports_kb']):.0f} MB, after open_slide {mb(r['open_kb']):.0f} MB, "
          f"after tissue mask {mb(r['tissue_kb']):.0f} MB (goal < 300 MB)")


def repeating_pyramid(path: Path, side: int, tile: int = 256, distinct: int = 64) -> Path:
    """A side² JPEG pyramid of pre-encoded textured tiles, levels as pages (fast to write)."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:tile, :tile]
    tiles = []
    for i in range(distinct):
        img = np.stack([128 + 100 * np.sin(xx / (7 + i) + c) * np.cos(yy / (5 + i % 7)) for c in range(3)], -1)
        tiles.append(imagecodecs.jpeg_encode(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8), level=90))
    shapes = [(side, side)]
    while max(shapes[-1]) > 512:
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(part, bigtiff=True) as tif:
        for i, (h, w) in enumerate(shapes):
            n = -(-h // tile) * -(-w // tile)
            tif.write((tiles[k % distinct] for k in range(n)), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                      compression="jpeg", photometric="rgb", subfiletype=1 if i else 0, metadata=None)
    part.replace(path)
    return path


def bench_open(path: Path, rounds: int = 15) -> None:
    try:
        import openslide
    except (ImportError, OSError):
        print("open: openslide not installed, ours only")
        openslide = None

    def ours(read: bool) -> float:
        t = time.perf_counter()
        with open_slide(path) as s:
            if read:
                s.read_region(1000, 1000, PATCH, PATCH)
        return time.perf_counter() - t

    def theirs(read: bool) -> float:
        t = time.perf_counter()
        o = openslide.OpenSlide(str(path))
        if read:
            np.asarray(o.read_region((1000, 1000), 0, (PATCH, PATCH)))
        o.close()
        return time.perf_counter() - t

    with open_slide(path) as s:
        print(f"slide {path.name}: {s.shape[1]}x{s.shape[0]} px, {s.level_count} levels")
    print(f"{'(median of %d, ms)' % rounds:<24}{'ours':>10}{'openslide':>11}{'ratio':>8}")
    for label, read in (("open + close", False), ("open + first read", True)):
        a, b = [], []
        for _ in range(rounds):  # interleaved, so both see the same load
            a.append(ours(read))
            if openslide is not None:
                b.append(theirs(read))
        ma = 1e3 * float(np.median(a))
        mb = 1e3 * float(np.median(b)) if b else float("nan")
        print(f"{label:<24}{ma:>10.2f}{mb:>11.2f}{ma / mb:>8.1f}")


def bench_cache(path: Path, n: int, rng: np.random.Generator, rounds: int = 3) -> None:
    budget = tile_cache_size()[1]
    with open_slide(path) as slide:
        h, w = slide.shape

        def rate(pos: list[tuple[int, int]], size: int, passes: int = 1) -> float:
            set_tile_cache_size(0)
            set_tile_cache_size(size)  # emptied, then this budget
            t = time.perf_counter()
            for _ in range(passes):
                for x, y in pos:
                    slide.read_region(x, y, PATCH, PATCH)
            return passes * len(pos) / (time.perf_counter() - t)

        def positions(k: int) -> list[tuple[int, int]]:
            return [(int(x), int(y)) for x, y in zip(rng.integers(0, w - PATCH, k), rng.integers(0, h - PATCH, k), strict=True)]

        print(f"{'256² reads on level 0':<34}{'cache off /s':>13}{'cache on /s':>12}{'ratio':>8}")
        # random: enough reads that the cache's first window (where it keeps every tile) is a small part
        for label, k, passes in (("random (new positions each)", max(n, 1000), 1), ("the same 40, read 10 times", 40, 10)):
            off, on = [], []
            for r in range(2 * rounds):  # alternate which goes first; fresh positions for random reads
                pos_a, pos_b = positions(k), positions(k)
                if r % 2:
                    on.append(rate(pos_a, budget, passes))
                    off.append(rate(pos_b, 0, passes))
                else:
                    off.append(rate(pos_a, 0, passes))
                    on.append(rate(pos_b, budget, passes))
            print(f"{label:<34}{max(off):>13.0f}{max(on):>12.0f}{max(on) / max(off):>8.2f}")
    set_tile_cache_size(budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192, help="side of the read benchmark slide")
    ap.add_argument("--big", type=int, default=40960, help="side of the RSS benchmark slide")
    ap.add_argument("--patches", type=int, default=400)
    ap.add_argument("--only", choices=("reads", "open"), help="run only the read benchmarks (1-3) or only 4")
    args = ap.parse_args()
    if args.only == "open":
        big = repeating_pyramid(CACHE / f"repeating_{args.big}.tif", args.big)
        bench_open(big)
        bench_cache(big, args.patches, np.random.default_rng(0))
        return
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    m = make_slide_pool(CACHE / f"io_{args.size}", n_slides=1, size=args.size, seed=7)
    print(f"(slide ready in {time.perf_counter() - t:.1f} s)")
    bench_reads(CACHE / f"io_{args.size}" / m["slides"][0]["image"], args.patches, rng)
    bench_training_reads(CACHE / f"io_{args.size}" / m["slides"][0]["image"], 4 * args.patches, rng)
    t = time.perf_counter()
    m = make_slide_pool(CACHE / f"io_{args.big}", n_slides=1, size=args.big, seed=7)
    print(f"(big slide ready in {time.perf_counter() - t:.1f} s)")
    bench_rss(CACHE / f"io_{args.big}" / m["slides"][0]["image"])
    if args.only is None:
        big = repeating_pyramid(CACHE / f"repeating_{args.big}.tif", args.big)
        bench_open(big)
        bench_cache(big, args.patches, rng)


if __name__ == "__main__":
    main()
