"""``alregions demo``: the main job on built-in synthetic data.

Generates a synthetic slide pool (once), runs a short active-learning simulation that
compares the four region selectors of the adaptive-region paper with the fast learner
(``--learner deep`` for the paper's CNN protocol), and reports the table, the plot and the
regions it wrote.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ._progress import progress_bar, steps_with_message, within_step
from .simulate import SimConfig, results_table, run_simulation
from .synthetic import make_slide_pool

__all__ = ["run_demo"]


#: The demo's task: CAMELYON16-like training slides (small metastases, tumour-like germinal
#: centres) and many smaller test slides, so that mIoU is averaged over 8 slides with tumour.
DEMO_POOL = {"n_slides": 11, "size": 4096, "n_test": 8, "test_size": 2048, "lesions": "sparse", "seed": 0}
#: The demo's protocol: the adaptive paper's four selectors, l = 384 px, k = 2, 5 cycles, 2 repeats, the fast learner.
DEMO_CONFIG = SimConfig(repeats=2)
QUICK_POOL = {"n_slides": 5, "size": 2048, "n_test": 3, "test_size": 1024, "lesions": "sparse", "seed": 0}


def run_demo(out: Path, *, quick: bool = False, learner: str = "fast") -> int:
    t0 = time.perf_counter()
    pool = QUICK_POOL if quick else DEMO_POOL
    data = out / "data"
    with progress_bar(pool["n_slides"], "demo slides", "slide") as bar:
        make_slide_pool(data, **pool, progress=lambda d, t: bar.update(1))
    config = (SimConfig(cycles=2, epochs=3, patience=2, settings=((256, 2),), repeats=1, learner=learner) if quick
              else replace(DEMO_CONFIG, learner=learner))
    with progress_bar(config.n_steps, "simulation", "cycle") as bar:
        result = run_simulation(data, config, out=out / "results", progress=steps_with_message(bar),
                                detail=within_step(bar))
    n_train = pool["n_slides"] - pool["n_test"]
    full = result["full"]
    print(f"\nSynthetic pool: {data} ({n_train} training slides of {pool['size']}² px and {pool['n_test']} test slides of "
          f"{pool['test_size']}² px at 0.5 µm/px; small metastases and tumour-like germinal centres)")
    learner = ("the fast learner: texture features cached once per slide, a random forest refit on all labels each "
               "cycle" if config.learner == "fast" else "the deep learner: the patch CNN trained on all labels to "
               "convergence each cycle (early stopping on a validation split of the labeled regions)")
    print(f"Protocol: {config.repeats} repeat(s) from distinct random initial regions; {learner}; mIoU(tumour) at "
          f"threshold 0.5 over {full['n_test_slides']} test slides with tumour.")
    print(f"Full-annotation baseline: mIoU(tumour) {full['miou']:.3f} (min {full['miou_min']:.3f}, max {full['miou_max']:.3f}), "
          f"Dice {full['dice']:.3f}, AUC {full['auc']:.3f}\n")
    print(results_table(result))
    res = out / "results"
    print(f"Per-cycle results: {res / 'results.csv'} (wall times: {res / 'timings.csv'})")
    print(f"Plot (annotated area vs mIoU, mean and min-max over repeats): {res / 'area_vs_miou.png'}")
    print(f"Selected regions (QuPath GeoJSON, one file per slide and repeat): {res / 'regions'}/<method>_l<l>_k<k>/repeat<r>/<slide>.geojson")
    print(f"Done in {time.perf_counter() - t0:.0f} s.")
    return 0
