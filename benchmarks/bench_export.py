"""QuPath export of speckled labels: the polygons of a label mask, traced two ways.

    python benchmarks/bench_export.py [--regions 6] [--side 256] [--speckle 0.3] [--repeats 3]

``regions`` labeled boxes of ``side``² px, class 1 with a fraction ``speckle`` of pixels
of class 2 at random (the worst case for tracing: thousands of one-pixel blobs). Measured
side by side in one run, on the same labels:

1. ``labels_to_features`` (row runs carrying their neighbours' run ends, merged by GEOS's
   coverage union; collinear vertices dropped without topology checks);
2. the previous code: an overlay union of the row-run boxes, then the topology-preserving
   ``simplify(0)``.

Both give the same polygons (checked: equal as geometries, same area).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import shapely
import shapely.affinity

from napari_alregions.geometry import Box
from napari_alregions.io_qupath import labels_to_features, row_runs


def speckled(regions: int, side: int, speckle: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    rng = np.random.default_rng(seed)
    gap = side + side // 2
    labels = np.zeros((2 * gap, ((regions + 1) // 2) * gap), np.uint8)
    boxes = []
    for i in range(regions):
        y, x = (i % 2) * gap, (i // 2) * gap
        block = np.ones((side, side), np.uint8)
        block[rng.random((side, side)) < speckle] = 2
        labels[y : y + side, x : x + side] = block
        boxes.append(Box(y, x, y + side, x + side))
    return labels, boxes


def previous(labels: np.ndarray, boxes, value: int):
    """The tracing as it was: every row run a box, one overlay union, simplify with topology."""
    rows, starts, ends = row_runs(labels, value, boxes)  # the same runs; only their union differs
    return shapely.simplify(shapely.union_all(shapely.box(starts, rows, ends, rows + 1)), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regions", type=int, default=6)
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--speckle", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    labels, boxes = speckled(args.regions, args.side, args.speckle)
    classes = ("background", "tumour")
    new, old = [], []
    for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
        t0 = time.perf_counter()
        features = labels_to_features(labels, classes=classes, boxes=boxes)
        new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = [previous(labels, boxes, v) for v in (1, 2)]
        old.append(time.perf_counter() - t0)
    for f, ref in zip(features, reference, strict=True):
        got = shapely.geometry.shape(f["geometry"])
        assert shapely.equals(got, ref) and abs(got.area - ref.area) < 1e-6, "the two tracings differ"
    n_vertices = sum(shapely.get_num_coordinates(r) for r in reference)
    print(f"{args.regions} regions of {args.side}² px, {100 * args.speckle:.0f} % speckle: {n_vertices} vertices")
    print(f"  labels_to_features (coverage union)  median {statistics.median(new):.2f} s  {[round(t, 2) for t in new]}")
    print(f"  previous (overlay union, simplify)   median {statistics.median(old):.2f} s  {[round(t, 2) for t in old]}")
    print(f"  ratio {statistics.median(old) / statistics.median(new):.1f}x (the same polygons)")


if __name__ == "__main__":
    main()
