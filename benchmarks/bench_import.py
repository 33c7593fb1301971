"""QuPath import at scale: 1k, 10k and 100k classified polygons (issue 33).

    python benchmarks/bench_import.py [--sizes 1000 10000 100000] [--reference-limit 120] [--no-session]

A QuPath-shaped GeoJSON per size on a synthetic 8192² slide (labels at level 1): half the
polygons are cells (10-vertex stars, 8-14 px across) inside ``Region*`` rectangles (512²,
1024 cells each), classified Tumor or Stroma (mapped to background); the other half are
classified 16 px tiles outside every region, side by side, as QuPath's "Create tiles" and a
classifier make them: each tile's box becomes a region of the labeled set.

Measured side by side in one run, on the same plan:

1. the regions the labeled set gains (``ImportPlan.new_regions``): the R-tree of boxes
   (``polygons.iter_uncovered``) vs the previous code, kept here as the naive reference,
   which unions every box held with shapely for every labeled polygon (quadratic);
2. painting the labels: one scanline pass per batch of polygons (``polygons.iter_spans``)
   vs the previous scanline loop per polygon, kept here too;
3. the whole ``AnnotationProject.import_qupath`` (read, plan, regions, labels, save) on a
   fresh session, with the progress it reports (the goal: 100k polygons in under 60 s),
   wall and CPU seconds (the process's: on a shared machine the wall time is the CPU time
   plus the wait for a core).

The reference runs only where its estimate (quadratic in the polygons from the largest size
it ran at) is under ``--reference-limit`` seconds; beyond, the line says "skipped
(quadratic, est. N s)". Where both ran, their regions are checked equal, and their labels equal up to pixels
whose centre lies on an edge (float rounding; a few in a million, counted at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from napari_alregions.geometry import Region
from napari_alregions.io_qupath import plan_import, rasterize_annotations

CACHE = Path(__file__).parent / ".cache"  # shared with the other benchmarks
SLIDE = 8192
CLASSES = ("background", "tumour")
CLASS_MAP = {"Stroma": "background"}
CALIBRATION = 1000  # polygons of the naive run the estimates start from, when no size is that small


# -- the file -----------------------------------------------------------------------------
def _feature(ring: list, cls: str, index: int) -> dict:
    return {"type": "Feature", "id": str(uuid.UUID(int=index, version=4)), "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [200, 0, 0]}}}


def qupath_features(n: int, seed: int = 0) -> list[dict]:
    """``n`` classified polygons (half cells in Region* rectangles, half tiles) as QuPath
    writes them (coordinates to 2 decimals)."""
    rng = np.random.default_rng(seed)
    features = []
    n_cells = n // 2
    per_region, pitch, across = 1024, 576, SLIDE // 576
    n_regions = -(-n_cells // per_region)
    for k in range(n_cells):
        region, i = divmod(k, per_region)
        rx, ry = 64 + pitch * (region % across), 64 + pitch * (region // across)
        if i == 0:
            box = [[rx, ry], [rx + 512, ry], [rx + 512, ry + 512], [rx, ry + 512], [rx, ry]]
            features.append(_feature(box, "Region*", len(features)))
        cx, cy = rx + 8 + 16 * (i % 32), ry + 8 + 16 * (i // 32)
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False) + rng.uniform(0, 0.6)
        radii = rng.uniform(4, 7, 10)
        ring = np.round(np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)]), 2).tolist()
        features.append(_feature([*ring, ring[0]], "Tumor" if i % 3 else "Stroma", len(features)))
    y0 = 64 + pitch * -(-n_regions // across)
    side = math.ceil(math.sqrt(n - n_cells))
    for k in range(n - n_cells):
        x, y = 64 + 16 * (k % side), y0 + 16 * (k // side)
        tile = [[x, y], [x + 16, y], [x + 16, y + 16], [x, y + 16], [x, y]]
        features.append(_feature(tile, "Tumor" if k % 2 else "Stroma", len(features)))
    return features


# -- the naive reference: the import's previous code, as it was ------------------------------
def naive_new_regions(plan, accepted, *, slide=None):
    """``ImportPlan.new_regions`` before issue 33: every box held unioned for every polygon."""
    accepted = list(accepted)
    new = []
    for r in plan.regions:
        if not any((a.x, a.y, a.w, a.h) == (r.x, r.y, r.w, r.h) for a in accepted + new):
            new.append(r.with_(slide=slide, method=r.method or "qupath", uid=None))
    for a in plan.labeled:
        for poly in a.polygons:
            if not _covered_by(poly, accepted + new):
                new.append(_bounding_region(poly[0]).with_(method="qupath", slide=slide))
    return new


def _bounding_region(ring) -> Region:
    xy = np.asarray(ring, dtype=np.float64)
    x0, y0 = np.floor(xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(xy.max(axis=0)).astype(int)
    return Region(int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0)))


def _covered_by(polygon, regions) -> bool:
    import shapely

    if not regions:
        return False
    shape = shapely.Polygon(polygon[0], polygon[1:])
    boxes = shapely.union_all([shapely.box(r.x, r.y, r.x1, r.y1) for r in regions])
    return shape.difference(boxes).area <= 1e-6 * max(shape.area, 1.0)


def naive_rasterize(annotations, labels, *, classes, factor=1.0, origin=(0, 0)):
    """``rasterize_annotations`` before issue 33: one scanline loop per polygon."""
    ox, oy = origin
    for ann in annotations:
        if ann.classification not in classes:
            continue
        value = list(classes).index(ann.classification) + 1
        for poly in ann.polygons:
            rings = [np.column_stack([(np.asarray(ring)[:, 0] - ox) / factor - 0.5, (np.asarray(ring)[:, 1] - oy) / factor - 0.5])
                     for ring in poly]
            pts = np.concatenate(rings)
            y0, x0 = (max(0, int(np.floor(v)) - 1) for v in pts.min(axis=0)[::-1])
            y1, x1 = (min(n, int(np.ceil(v)) + 2) for v, n in zip(pts.max(axis=0)[::-1], labels.shape, strict=True))
            if y1 <= y0 or x1 <= x0:
                continue
            inside = _fill_even_odd([r - (x0, y0) for r in rings], (y1 - y0, x1 - x0))
            labels[y0:y1, x0:x1][inside] = value


def _fill_even_odd(rings, shape):
    out = np.zeros(shape, dtype=bool)
    starts = np.concatenate([r for r in rings if len(r) > 1])
    ends = np.concatenate([np.roll(r, -1, axis=0) for r in rings if len(r) > 1])
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    keep = hi > lo
    x0, y0, x1, y1, lo, hi = x0[keep], y0[keep], x1[keep], y1[keep], lo[keep], hi[keep]
    if not len(lo):
        return out
    r_first = max(0, int(np.ceil(lo.min())))
    r_last = min(shape[0] - 1, int(np.floor(hi.max())))
    for r in range(r_first, r_last + 1):
        active = (lo <= r) & (r < hi)
        if not active.any():
            continue
        xs = np.sort(x0[active] + (r - y0[active]) * (x1[active] - x0[active]) / (y1[active] - y0[active]))
        a = np.clip(np.ceil(xs[0::2]), 0, shape[1]).astype(int)
        b = np.clip(np.ceil(xs[1::2]), 0, shape[1]).astype(int)
        row = np.zeros(shape[1] + 1, dtype=np.int32)
        np.add.at(row, a, 1)
        np.add.at(row, b, -1)
        out[r] = np.cumsum(row[:-1]) > 0
    return out


# -- timing --------------------------------------------------------------------------------
def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None else (f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s")


def ratio(a: float | None, b: float) -> str:
    return "-" if a is None else f"{a / b:.0f}x" if a / b >= 10 else f"{a / b:.1f}x"


def whole_import(features: list[dict], slide_path: Path, folder: Path) -> tuple[float, float, dict, int]:
    """Wall and CPU seconds of ``import_qupath`` (file written before) on a fresh session,
    its summary and the progress reports it gave."""
    from napari_alregions.project import AnnotationProject

    path = folder / "qupath.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=2))
    p = AnnotationProject.create(folder / "session", patch_size=64, level=1)
    try:
        name = p.add_slide(slide_path)
        reports = []
        cpu = time.process_time()
        seconds, summary = timed(lambda: p.import_qupath(path, name, class_map=CLASS_MAP, max_region=4096,
                                                         progress=reports.append))
        cpu = time.process_time() - cpu
    finally:
        p.close()
    return seconds, cpu, summary, len(reports)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--reference-limit", type=float, default=120.0, help="longest estimated run of the naive reference (s)")
    ap.add_argument("--no-session", action="store_true", help="skip the whole import into a session (no slide rendered)")
    args = ap.parse_args()

    slide_path = None
    if not args.no_session:
        from napari_alregions.synthetic import make_slide_pool

        folder = CACHE / f"io_{SLIDE}"
        m = make_slide_pool(folder, n_slides=1, size=SLIDE, seed=7)
        slide_path = folder / m["slides"][0]["image"]

    print(f"QuPath import, {SLIDE}² slide, labels at level 1; naive reference up to an estimated {args.reference_limit:.0f} s")
    reference: tuple[int, float] | None = None  # (size, seconds) of the largest naive run
    reference_paint: tuple[int, float] | None = None
    if min(args.sizes) > CALIBRATION:  # the estimates need one naive run: a small one
        plan = plan_import(qupath_features(CALIBRATION), classes=CLASSES, class_map=CLASS_MAP, max_region=4096,
                           extent=(SLIDE, SLIDE))
        reference = (CALIBRATION, timed(lambda: naive_new_regions(plan, [], slide="s"))[0])
        labels = np.zeros((SLIDE // 2, SLIDE // 2), np.uint8)
        reference_paint = (CALIBRATION, timed(lambda: naive_rasterize(plan.labeled, labels, classes=CLASSES, factor=2.0))[0])
        print(f"naive reference at {CALIBRATION} polygons (for the estimates): regions {fmt(reference[1])}, "
              f"labels {fmt(reference_paint[1])}")
    print(f"{'polygons':>9} | {'plan':>7} | {'regions: R-tree':>15} {'naive':>32} {'ratio':>6} | "
          f"{'labels: batched':>15} {'per polygon':>12} {'ratio':>6} | {'whole import: wall, CPU':>32} | new regions")
    differs = []  # labels of the two paintings that differ (pixel centres on an edge)
    for n in sorted(args.sizes):
        features = qupath_features(n)
        t_plan, plan = timed(lambda: plan_import(features, classes=CLASSES, class_map=CLASS_MAP, max_region=4096,
                                                 extent=(SLIDE, SLIDE)))
        t_new, new = timed(lambda: plan.new_regions([], slide="s"))
        labels = np.zeros((SLIDE // 2, SLIDE // 2), np.uint8)
        t_paint, _ = timed(lambda: rasterize_annotations(plan.labeled, labels, classes=CLASSES, factor=2.0))
        estimate = None if reference is None else reference[1] * (n / reference[0]) ** 2
        t_naive = t_naive_paint = None
        if estimate is None or estimate <= args.reference_limit:
            t_naive, naive = timed(lambda: naive_new_regions(plan, [], slide="s"))
            assert [(r.x, r.y, r.w, r.h) for r in naive] == [(r.x, r.y, r.w, r.h) for r in new], "regions differ"
            reference = (n, t_naive)
            naive_text = fmt(t_naive)
        else:
            naive_text = f"skipped (quadratic, est. {estimate:.0f} s)"
        estimate = None if reference_paint is None else reference_paint[1] * n / reference_paint[0]  # linear
        if estimate is None or estimate <= args.reference_limit:
            ref = np.zeros_like(labels)
            t_naive_paint, _ = timed(lambda: naive_rasterize(plan.labeled, ref, classes=CLASSES, factor=2.0))
            # a pixel centre on an edge may fall either way by float rounding (the old code
            # shifted each polygon to its box first): a handful of pixels in millions
            differ = int((ref != labels).sum())
            assert differ <= max(8, 1e-5 * int((labels > 0).sum())), f"labels differ in {differ} px"
            differs.append(f"{n}: {differ} of {int((labels > 0).sum())} px")
            reference_paint = (n, t_naive_paint)
        t_whole = "-"
        if slide_path is not None:
            with tempfile.TemporaryDirectory() as tmp:
                seconds, cpu, summary, reports = whole_import(features, slide_path, Path(tmp))
            assert summary["regions"] == len(new)
            t_whole = f"{fmt(seconds)}, CPU {fmt(cpu)} ({reports} reports)"
        print(f"{n:>9} | {fmt(t_plan):>7} | {fmt(t_new):>15} {naive_text:>32} {ratio(t_naive, t_new):>6} | "
              f"{fmt(t_paint):>15} {fmt(t_naive_paint):>12} {ratio(t_naive_paint, t_paint):>6} | {t_whole:>32} | {len(new)}",
              flush=True)
    if differs:
        print(f"labels differing between the two paintings (centres on an edge): {'; '.join(differs)}")


if __name__ == "__main__":
    main()
