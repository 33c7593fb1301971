"""Where the top priority sits on a real slide, before and after the tissue-share weighting
and mirrored borders (issue 34).

    python benchmarks/bench_priority_edges.py [--out benchmarks/.cache/priority_edges.png]

The fast learner is trained on the real H&E case of the tests (tests/data/hgsc, the train
half labeled whole: tumour nest vs. the rest) and predicts the real Aperio crop of the tests
(tests/data/cmu_small_region.svs, CMU-1-Small-Region, another tissue): least confidence
per map cell, the measure alone ("before": what the map was) and weighted by each cell's
tissue share ("after"). Printed: the share of the top 10 % priority cells that sit on a
tissue edge (a cell less than 90 % tissue) or on the image border, before and after; the PNG
shows both maps over the slide with the top 10 % outlined.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
DATA = HERE.parent / "tests" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / ".cache" / "priority_edges.png"))
    args = ap.parse_args()

    from napari_alregions.features import slide_features
    from napari_alregions.geometry import Region
    from napari_alregions.learner import predict_grid
    from napari_alregions.priority import least_confidence
    from napari_alregions.project import AnnotationProject, run
    from napari_alregions.simulate import Pool, oracle_labels
    from napari_alregions.wsi import open_slide

    stride = 64
    pool = Pool.load(DATA / "hgsc", level=1, stride=stride)
    with tempfile.TemporaryDirectory() as tmp:
        p = AnnotationProject.create(Path(tmp) / "s", stride=stride)
        name = pool.train[0]
        p.add_slide(pool.slides[name].path, name=name)
        h, w = p.slides[name].shape[:2]
        a = p.accept(Region(0, 0, w, h, slide=name))
        y0, x0, y1, x1 = p.label_box(a)
        p.write_region_labels(a, oracle_labels(pool.truth[name][y0:y1, x0:x1]))
        summary = run(p.iter_retrain(refresh=False))
        with open_slide(DATA / "cmu_small_region.svs") as s:
            tissue = s.tissue_map(stride)
            share = np.clip(s.tissue_share_map(stride), 0, 1)
            grid = slide_features(s, "texture", stride=stride, level=1, tissue=tissue)
            prob = predict_grid(p.fast, grid, cell_px=stride // 2, patch_size=p.spec.patch_size, tissue=tissue)
            before = least_confidence(prob, tissue=tissue)
            after = before * share
            thumb = np.asarray(s.levels[2])
        p.close()
    pool.close()
    border = np.zeros_like(tissue)
    border[[0, -1], :] = border[:, [0, -1]] = True
    edge = tissue & ((share < 0.9) | border)
    print(f"{summary['quality']}; CMU-1-Small-Region: {int(tissue.sum())} tissue cells, {int(edge.sum())} on an edge "
          f"({edge.sum() / tissue.sum():.0%})")
    tops = {}
    for label, prio in (("before", before), ("after", after)):
        cut = np.quantile(prio[tissue], 0.9)
        top = tissue & (prio >= cut) & (prio > 0)
        tops[label] = top
        print(f"  {label:6s}: {int(top.sum())} top-10 % cells, {(top & edge).sum() / max(1, top.sum()):.0%} of them on a tissue "
              "edge or the image border")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.transform import resize

    fig, axes = plt.subplots(1, 2, figsize=(10, 6.5))
    for ax, (label, prio) in zip(axes, (("before: the measure alone", before), ("after: weighted by tissue share", after)),
                                 strict=True):
        ax.imshow(thumb)
        over = resize(prio, thumb.shape[:2], order=0, preserve_range=True, anti_aliasing=False)
        ax.imshow(np.ma.masked_less_equal(over, 0), cmap="magma", alpha=0.55, vmin=0, vmax=1)
        top = resize(tops[label.split(":")[0]].astype(float), thumb.shape[:2], order=0, anti_aliasing=False) > 0.5
        ax.contour(top, levels=[0.5], colors="cyan", linewidths=1.2)
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle("least-confidence priority of the fast learner (trained on the HGSC case) on CMU-1-Small-Region;\n"
                 "cyan: the top 10 % of tissue cells", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
