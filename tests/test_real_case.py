"""The real annotated H&E case (tests/data/hgsc/, tests/data/README.md) loads as a pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_alregions.simulate import TISSUE, TUMOUR, Pool

HGSC = Path(__file__).parent / "data" / "hgsc"


@pytest.fixture(scope="module")
def hgsc_pool():
    pool = Pool.load(HGSC, level=1, stride=64)
    yield pool
    pool.close()


def test_hgsc_pool_loads_with_tumour_and_stroma(hgsc_pool):
    pool = hgsc_pool
    assert pool.train == ["hgsc_train"] and pool.test == ["hgsc_test"]
    for name, slide in pool.slides.items():
        assert slide.shape[:2] == (750, 1500) and slide.level_count >= 2
        truth = pool.truth[name]
        assert truth.shape == slide.levels[1].shape[:2]
        share = (truth == TUMOUR).mean()  # a nest, not scattered nuclei nor the whole field
        assert 0.15 < share < 0.5, (name, share)
        # the tissue mask (the truth's non-tumour tissue) covers the tumour and most of the field
        assert (truth != 0).mean() > 0.85, name
        tissue = pool.tissue[name]
        cells = pool.truth_cells(name)
        assert cells.shape == tissue.shape
        assert tissue.mean() > 0.9 and tissue[cells].all(), name
    cells = pool.truth_cells("hgsc_test")
    tissue = pool.tissue["hgsc_test"]
    assert cells.sum() >= 20 and (tissue & ~cells).sum() >= 20  # both classes on the held-out slide
    assert (pool.truth["hgsc_test"] == TISSUE).any()
    assert np.isin(np.unique(pool.truth["hgsc_train"]), [0, TISSUE, TUMOUR]).all()


@pytest.mark.slow
def test_fast_learner_gets_better_with_labels_on_real_tissue(tmp_path):
    """The fast learner on the real H&E case, as the simulation runs it (one 256-px region
    a cycle, 3 repeats from distinct random initial regions): a good model from the first
    region in every repeat, a mean AUC that does not fall as labels come, near the
    full-annotation ceiling at the end."""
    from napari_alregions.simulate import SimConfig, run_simulation

    config = SimConfig(methods=("adaptive", "random"), settings=((256, 1),), cycles=4, repeats=3, learner="fast")
    result = run_simulation(HGSC, config, out=tmp_path / "out")
    rows = result["rows"]
    assert {r["learner"] for r in rows} == {"fast"}
    full_auc = result["full"]["auc"]
    assert full_auc > 0.93
    for method in ("adaptive", "random"):
        mine = [r for r in rows if r["method"] == method]
        assert all(r["auc_tumour"] >= 0.9 for r in mine if r["cycle"] == 0), method
        mean = [np.mean([r["auc_tumour"] for r in mine if r["cycle"] == c]) for c in range(4)]
        assert all(b >= a - 0.02 for a, b in zip(mean, mean[1:])), (method, mean)
        assert mean[-1] >= mean[0] and mean[-1] > full_auc - 0.05, (method, mean, full_auc)
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert "learner" in header.split(",")
