"""The learners side by side (issue 34), in one run.

    python benchmarks/bench_learner.py loop  [--deep-seconds 120]
    python benchmarks/bench_learner.py cache [--sizes 4096,40960] [--tissue 0.1]
    python benchmarks/bench_learner.py real  [--repeats 3] [--cycles 4]

``loop``: on a demo-sized slide (4096² px, the demo's task), a pathologist's cycle through
:class:`~napari_alregions.project.AnnotationProject`: the last stroke is written (autosave),
the model retrains and the map and the proposals of two selectors refresh. Timed for the
fast learner (head refit on cached features) and the deep one (the CNN from its current
weights, within ``--deep-seconds``), with the ratio; the fast learner's feature cache
(once per slide) is timed apart.

``cache``: the fast learner's feature cache of a synthetic slide of each size (JPEG
pyramidal TIFF, ``--tissue`` of it tissue): wall time, Mpx/s at the working level, the
cache's size on disk and the peak memory of a process that does only that (features stream
into a chunked zarr array, so memory must not grow with the slide).

``real``: held-out AUC per cycle on the real H&E case of the tests (tests/data/hgsc), fast
vs. deep, adaptive and random, one 256-px region a cycle (``alregions simulate`` with each
``--learner``), mean and min-max over repeats, and the wall time of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
CACHE = HERE / ".cache"


def bench_loop(deep_seconds: float) -> None:
    from napari_alregions.geometry import Region
    from napari_alregions.project import AnnotationProject, run
    from napari_alregions.settings import TrainingBudget
    from napari_alregions.simulate import Pool, oracle_labels
    from napari_alregions.synthetic import make_slide_pool

    pool_dir = CACHE / "learner_pool"
    make_slide_pool(pool_dir, n_slides=2, size=4096, n_test=1, test_size=2048, lesions="sparse", seed=0)
    pool = Pool.load(pool_dir, level=1, stride=128)
    name = pool.train[0]
    rows = []
    for learner in ("fast", "deep"):
        with tempfile.TemporaryDirectory() as tmp:
            p = AnnotationProject.create(Path(tmp) / "s")  # the viewer's defaults: 64-px patches at level 1
            p.session.update_settings(learner=learner)
            p.session.update_settings(training=TrainingBudget(max_seconds=deep_seconds))  # the viewer's budget otherwise
            p.add_slide(pool.slides[name].path, name=name)
            t0 = time.perf_counter()
            if learner == "fast":
                run(p.iter_features(name))
            cache_s = time.perf_counter() - t0
            regions = p.suggest(name, "random", region_size=4 * p.stride, k=2, seed=0)
            ys, xs = np.nonzero(pool.truth[name] == 2)  # and two regions on tumour, as a pathologist starts
            f = p.label_factor(name)
            for i in (0, len(ys) // 2):
                side = 4 * p.stride
                x0 = int(max(0, min(xs[i] * f - side // 2, p.slides[name].shape[1] - side)) // p.stride * p.stride)
                y0 = int(max(0, min(ys[i] * f - side // 2, p.slides[name].shape[0] - side)) // p.stride * p.stride)
                regions.append(Region(x0, y0, side, side, slide=name, method="manual"))
            first_t0 = time.perf_counter()
            for r in regions:
                a = p.accept(r)
                y0, x0, y1, x1 = p.label_box(a)
                p.write_region_labels(a, oracle_labels(pool.truth[name][y0:y1, x0:x1]))
            run(p.iter_priority(name))
            run(p.iter_retrain())  # a first model, its map and proposals
            first_s = time.perf_counter() - first_t0
            for m in ("adaptive", "standard"):
                p.suggest(name, m, region_size=8 * p.stride, k=3)
            a = p.accept(p.proposals(name, "adaptive")[0])
            y0, x0, y1, x1 = p.label_box(a)
            t0 = time.perf_counter()  # the last stroke ...
            p.write_region_labels(a, oracle_labels(pool.truth[name][y0:y1, x0:x1]))
            summary = run(p.iter_retrain())  # ... to the refreshed map and proposals
            loop_s = time.perf_counter() - t0
            assert all(r.cycle == p.cycle for r in p.proposals(name, "standard"))
            rows.append((learner, cache_s, loop_s, first_s, summary.get("quality") or "; ".join(summary["messages"])
                         or f"validation AUC {summary['val_auc'][0]}"))
            p.close()
    pool.close()
    fast, deep = rows
    print("Last stroke -> retrained model, new map and refreshed proposals (2 selectors), 4096² slide, "
          "viewer defaults (64-px patches at level 1, stride 128), 4 accepted regions:")
    for learner, cache_s, loop_s, first_s, note in rows:
        extra = f"; feature cache, once per slide: {cache_s:.1f} s" if learner == "fast" else ""
        print(f"  {learner:5s} {loop_s:7.2f} s   (the first training on 4 regions: {first_s:.1f} s{extra})   {note}")
    print(f"  deep / fast: {deep[2] / fast[2]:.0f}x")


def _write_slide(path: Path, size: int, tissue: float, seed: int = 0) -> None:
    """A JPEG pyramidal TIFF of ``size``² px: real-looking tissue tiles on ``tissue`` of it."""
    import tifffile

    from napari_alregions.synthetic import make_slide_pool

    src = CACHE / "learner_src"
    make_slide_pool(src, n_slides=1, size=2048, n_test=0, seed=seed)
    with tifffile.TiffFile(next(src.glob("*.tif"))) as tif:
        tex = tif.pages[0].asarray()[:1024, :1024]
    rng = np.random.default_rng(seed)
    tile = 256
    n = size // tile
    on = rng.random((n, n)) < tissue
    white = np.full((tile, tile, 3), 240, np.uint8)

    def tiles(level: int):
        k = 2**level
        m = max(1, n // k)
        for ty in range(m):
            for tx in range(m):
                if on[ty * k : (ty + 1) * k, tx * k : (tx + 1) * k].any():
                    y, x = (ty * 256) % 768, (tx * 256) % 768
                    t = tex[y : y + tile, x : x + tile]
                    yield t  # (the coarser levels reuse the texture: a benchmark, not a picture)
                else:
                    yield white

    levels = [lv for lv in range(1, 12) if size >> lv >= 1024]  # down to a level a tissue mask reads whole
    with tifffile.TiffWriter(path, bigtiff=True) as w:
        w.write(tiles(0), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                photometric="rgb", subifds=len(levels), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        for level in levels:
            s = size // 2**level
            w.write(tiles(level), shape=(s, s, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                    photometric="rgb", subfiletype=1)


def _cache_child(path: str) -> None:
    """In a process of its own: the feature cache of ``path``; prints a JSON line."""
    from napari_alregions.features import TextureEncoder, store_features, sub_cells
    from napari_alregions.wsi import open_slide

    def rss_mb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    with open_slide(path) as s, tempfile.TemporaryDirectory() as tmp:
        stride = 128
        tissue = s.tissue_map(stride)
        before = rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak from here on: the features' alone
        sub = sub_cells(stride // 2)
        h, w = s.map_shape(stride)
        out = store_features(Path(tmp) / "f.zarr", (h * sub, w * sub, 120))
        t0 = time.perf_counter()
        TextureEncoder(level=1).features(s, stride=stride, tissue=tissue, out=out)
        wall = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        px = float(tissue.sum()) * (stride // 2) ** 2
        peak = rss_mb("VmHWM")
    print(json.dumps({"wall_s": wall, "mpx_per_s": px / wall / 1e6, "disk_mb": disk / 2**20, "peak_mb": peak,
                      "before_mb": before, "tissue_cells": int(tissue.sum())}))


def bench_cache(sizes: list[int], tissue: float) -> None:
    CACHE.mkdir(exist_ok=True)
    print(f"Feature cache (texture encoder, level 1, stride 128, {tissue:.0%} of the slide tissue), one process each:")
    for size in sizes:
        path = CACHE / f"learner_{size}_{int(tissue * 100)}.tif"
        if not path.is_file():
            _write_slide(path, size, tissue)
        out = subprocess.run([sys.executable, __file__, "_cache_child", str(path)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {size:6d}²: {r['wall_s']:7.1f} s, {r['mpx_per_s']:.2f} Mpx/s at level 1 ({r['tissue_cells']} tissue cells), "
              f"cache {r['disk_mb']:.0f} MB on disk; RSS {r['before_mb']:.0f} MB before (slide open, tissue mask), "
              f"peak {r['peak_mb']:.0f} MB while computing")


def bench_real(repeats: int, cycles: int) -> None:
    from napari_alregions.simulate import SimConfig, run_simulation

    case = HERE.parent / "tests" / "data" / "hgsc"
    results = {}
    for learner in ("fast", "deep"):
        cfg = SimConfig(methods=("adaptive", "random"), settings=((256, 1),), cycles=cycles, repeats=repeats,
                        learner=learner)
        t0 = time.perf_counter()
        res = run_simulation(case, cfg)
        results[learner] = (res, time.perf_counter() - t0)
    print(f"Held-out AUC (tumour cells of the test half) per cycle on the real H&E case, one 256-px region a cycle, "
          f"mean (min-max) over {repeats} repeats:")
    for learner, (res, wall) in results.items():
        print(f"  {learner} learner ({wall:.0f} s in all; full annotation AUC {res['full']['auc']:.3f}):")
        for m in ("adaptive", "random"):
            cells = []
            for c in range(cycles):
                v = [r["auc_tumour"] for r in res["rows"] if r["method"] == m and r["cycle"] == c]
                cells.append(f"{np.mean(v):.3f} ({min(v):.2f}-{max(v):.2f})")
            print(f"    {m:9s} " + "  ".join(cells))
    print(f"  time deep / fast: {results['deep'][1] / results['fast'][1]:.1f}x")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_cache_child":
        _cache_child(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("loop", "cache", "real", "all"))
    ap.add_argument("--deep-seconds", type=float, default=120.0)
    ap.add_argument("--sizes", default="4096,40960")
    ap.add_argument("--tissue", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=4)
    args = ap.parse_args()
    if args.what in ("loop", "all"):
        bench_loop(args.deep_seconds)
    if args.what in ("cache", "all"):
        bench_cache([int(s) for s in args.sizes.split(",")], args.tissue)
    if args.what in ("real", "all"):
        bench_real(args.repeats, args.cycles)


if __name__ == "__main__":
    main()
