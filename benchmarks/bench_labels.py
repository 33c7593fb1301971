"""Labels at whole-slide scale: what a painted stroke and a retrain cost on a large slide.

    python benchmarks/bench_labels.py [--size 40960] [--regions 4] [--repeats 5]

A session on a synthetic ``size``² slide labels at level 1 (a (size/2)² mask: 420 M px at
the default, like level 1 of a 40x WSI). A few 2048² regions are accepted and painted.
Measured side by side in one run, same session, same labels:

0. a 10×10 stroke's save on a slide with 1, 16 and 64 labeled 512² chunks: the chunks
   marked since the last save (what a session does) vs every labeled chunk (how format-1
   sessions saved, into one zip); the first should not grow with the labeled area;
1. one stroke's autosave: the label chunks the stroke touched (what the widget does) vs
   scanning and writing the whole mask (``mark_labels_changed`` without a box);
2. the annotated share of the tissue (shown after every autosave): counted in the accepted
   regions vs over the whole mask and a whole-slide tissue mask at the labeling level;
3. the training candidates (at each retrain): in the bounding boxes of the labeled areas vs
   one box over the whole mask (the dense computation), time and peak memory of numpy's
   buffers (tracemalloc); the dense one is skipped where it would not fit in memory;
4. the QuPath export of the labels: the labeled areas' boxes vs the bounding box of all
   labels (regions far apart make it most of the slide).

The same numbers come out of both sides of each pair (checked).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from napari_alregions import geometry
from napari_alregions.geometry import Region
from napari_alregions.model import data
from napari_alregions.project import AnnotationProject
from napari_alregions.synthetic import make_slide_pool

CACHE = Path(__file__).parent / ".cache"  # shared with bench_io (same slides)


def write_whole(path: Path, labels: np.ndarray) -> None:
    """The naive save: the whole mask into a zipped zarr array (how sessions saved before)."""
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="w")
    try:
        z = zarr.create_array(store, shape=labels.shape, chunks=(1024, 1024), dtype="uint8", fill_value=0)
        z[:] = labels
    finally:
        store.close()


def read_whole(path: Path) -> np.ndarray:
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="r")
    try:
        return np.asarray(zarr.open_array(store, mode="r")[:])
    finally:
        store.close()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def peak(fn) -> tuple[float, int, object]:
    """Seconds and peak bytes allocated (numpy buffers included) while ``fn`` runs."""
    tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, top, out


def write_labeled_chunks(path: Path, labels: np.ndarray) -> None:
    """Format 1's save: every chunk that holds labels, into a new zip (written whole)."""
    import zarr
    from zarr.storage import ZipStore

    from napari_alregions.labelstore import LABEL_CHUNK as C

    store = ZipStore(path, mode="w")
    try:
        z = zarr.create_array(store, shape=labels.shape, chunks=(C, C), dtype="uint8", fill_value=0)
        for cy in range(-(-labels.shape[0] // C)):
            for cx in range(-(-labels.shape[1] // C)):
                box = np.s_[cy * C : (cy + 1) * C, cx * C : (cx + 1) * C]
                if labels[box].any():
                    z[box] = labels[box]
    finally:
        store.close()


def stroke_saves(repeats: int) -> None:
    """Item 0: a stroke's save against the labeled area, ours vs format 1."""
    from napari_alregions.labelstore import LABEL_CHUNK as C
    from napari_alregions.session import Session

    with tempfile.TemporaryDirectory() as tmp:
        ratios = []
        for n in (1, 16, 64):
            s = Session.create(Path(tmp) / f"s{n}")
            s.add_slide("a", "a.tif", label_shape=(16 * C, 16 * C))
            lab = s.labels("a")
            rng = np.random.default_rng(n)
            for k in range(n):  # labeled chunks, each a mix of background and tumour
                cy, cx = divmod(k, 16)
                lab[cy * C : (cy + 1) * C, cx * C : (cx + 1) * C] = rng.integers(1, 3, (C, C), dtype=np.uint8)
            s.mark_labels_changed("a")
            s.save()

            def stroke():
                lab[10:20, 10:20] = 2
                s.mark_labels_changed("a", (10, 10, 20, 20))
                s.save()
                return s._store.last_written

            ours, written = timed(stroke, repeats)
            old, _ = timed(lambda: write_labeled_chunks(Path(tmp) / "old.zarr.zip", lab), repeats)
            ratios.append(ours)
            print(f"10x10 stroke's save, {n:2d} labeled chunks: marked chunks {ours * 1e3:7.1f} ms ({written} chunk written) "
                  f"vs every labeled chunk {old * 1e3:7.1f} ms ({n} chunks)  ({old / ours:5.1f}x)")
            s.close()
        print(f"stroke save with 64 vs 1 labeled chunks: {ratios[-1] / ratios[0]:.2f}x (1 = independent of the labeled area)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=40960, help="slide side in level-0 px (generated once, ~5 min at 40960)")
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--strokes-only", action="store_true", help="item 0 only (no large slide)")
    args = ap.parse_args()

    stroke_saves(args.repeats)
    if args.strokes_only:
        return 0

    t = time.perf_counter()
    m = make_slide_pool(CACHE / f"io_{args.size}", n_slides=1, size=args.size, seed=7)
    print(f"slide {args.size}² ready in {time.perf_counter() - t:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        p = AnnotationProject.create(Path(tmp) / "s", patch_size=64, level=1)
        name = p.add_slide(CACHE / f"io_{args.size}" / m["slides"][0]["image"])
        shape = p.session.slides[name].label_shape
        rng = np.random.default_rng(0)
        cells = np.argwhere(p.slides[name].tissue_map(2048, min_fraction=0.9))  # regions on tissue
        regions = []
        for cy, cx in cells[rng.choice(len(cells), args.regions, replace=False)]:
            a = p.accept(Region(int(cx) * 2048, int(cy) * 2048, 2048, 2048, slide=name))
            lab = p.region_labels(a)
            yy, xx = np.mgrid[0 : lab.shape[0], 0 : lab.shape[1]]
            for cy, cx, r in rng.uniform((0, 0, 40), (lab.shape[0], lab.shape[1], 160), (6, 3)):  # tumour blobs
                lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 2
            p.write_region_labels(a, lab)
            regions.append(a)
        print(f"labels {shape[0]}x{shape[1]} ({shape[0] * shape[1] / 1e6:.0f} M px), {args.regions} regions of 2048² px "
              f"({p.annotated_pct():.3f}% of the tissue)")

        # 1. a stroke's autosave
        a = regions[0]
        y0, x0, y1, x1 = p.label_box(a)
        s = p.session

        def stroke():
            s.labels(name)[y0 + 10 : y0 + 30, x0 + 10 : x0 + 30] = 2
            s.mark_labels_changed(name, (y0, x0, y1, x1))
            s.save()

        ours, _ = timed(stroke, args.repeats)
        whole, _ = timed(lambda: write_whole(Path(tmp) / "whole.zarr.zip", s.labels(name)), args.repeats)
        assert np.array_equal(read_whole(Path(tmp) / "whole.zarr.zip"), s.labels(name))
        assert np.array_equal(type(s).open(s.folder).labels(name), s.labels(name))
        print(f"stroke autosave: touched chunks {ours * 1e3:8.1f} ms vs whole mask {whole * 1e3:8.1f} ms  ({whole / ours:6.1f}x)")

        # 2. the annotated share
        tissue = p.tissue_labels(name)  # the whole-slide reference's mask, built once (not timed)
        ours, pct = timed(lambda: p.annotated_pct(name), args.repeats)
        whole, count = timed(lambda: int(((s.labels(name) > 0) & tissue).sum()), args.repeats)
        assert abs(pct - 100.0 * count / tissue.sum()) < 1e-9, (pct, count)
        tissue = None  # free it before the candidates
        print(f"annotated share: accepted regions {ours * 1e3:8.1f} ms vs whole mask {whole * 1e3:8.1f} ms  ({whole / ours:6.1f}x)")

        # 3. training candidates
        labels, mask = s.labels(name), p.slides[name].tissue_mask()

        def candidates():
            return data.find_candidates(p.slides[name], labels, level=1, patch_size=64, tissue=mask)

        t_ours, m_ours, c_ours = peak(candidates)
        need = labels.size * 8 * 4  # float64 copies of the mask and their integral images
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        line = f"candidates ({len(c_ours)}): labeled areas {t_ours:6.2f} s, {m_ours / 2**20:8.0f} MiB peak"
        if need > 0.7 * free:
            print(f"{line} vs whole mask: skipped (would need ~{need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free)")
        else:
            saved, geometry.LABEL_BLOCK = geometry.LABEL_BLOCK, max(shape)  # one block: the whole mask in one box
            try:
                t_dense, m_dense, c_dense = peak(candidates)
            finally:
                geometry.LABEL_BLOCK = saved
            assert np.array_equal(c_ours.centres, c_dense.centres) and np.array_equal(c_ours.labels, c_dense.labels)
            print(f"{line} vs whole mask {t_dense:6.2f} s, {m_dense / 2**20:8.0f} MiB  "
                  f"({t_dense / t_ours:.1f}x time, {m_dense / m_ours:.0f}x memory)")

        # 4. QuPath export of the labels
        import shapely
        from shapely.geometry import shape as to_shape

        from napari_alregions.io_qupath import labels_to_features

        kw = {"classes": p.classes, "factor": p.label_factor(name)}
        t_ours, m_ours, f_ours = peak(lambda: labels_to_features(labels, boxes=geometry.labeled_boxes(labels), **kw))
        rows, cols = np.nonzero(labels.any(axis=1))[0], np.nonzero(labels.any(axis=0))[0]
        crop = labels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        line = f"QuPath export: labeled areas {t_ours:6.2f} s, {m_ours / 2**20:8.0f} MiB peak"
        if crop.size * 4 > 0.7 * free:
            print(f"{line} vs all labels' bounding box: skipped ({crop.shape[0]}x{crop.shape[1]} px)")
        else:
            f = kw["factor"]
            t_box, m_box, f_box = peak(lambda: labels_to_features(crop, origin=(int(cols[0] * f), int(rows[0] * f)), **kw))
            assert all(shapely.equals(to_shape(a["geometry"]), to_shape(b["geometry"])) for a, b in zip(f_ours, f_box, strict=True))
            print(f"{line} vs all labels' bounding box ({crop.shape[0]}x{crop.shape[1]} px) {t_box:6.2f} s, "
                  f"{m_box / 2**20:8.0f} MiB  ({t_box / t_ours:.1f}x time, {m_box / m_ours:.0f}x memory)")
        p.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
