"""The fast learner: texture features on the map grid (features.py) and the head (learner.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alregions.features import FeatureGrid, TextureEncoder, pixel_features, sub_cells
from napari_alregions.learner import (
    OneClassHead,
    TrainingSet,
    centre_sub_cells,
    context_features,
    estimate_quality,
    fit_head,
    predict_grid,
    training_set,
)
from napari_alregions.metrics import roc_auc
from napari_alregions.wsi import open_slide

from .helpers import downsample2, write_pyramid


def _slide_file(tmp_path, img):
    path = tmp_path / "s.tif"
    write_pyramid(path, [img, downsample2(img), downsample2(downsample2(img))], tile=(128, 128))
    return path


def test_sub_cells_divide_the_cell_into_parts_of_8_px_or_more():
    for cell in range(1, 200):
        sub = sub_cells(cell)
        assert 1 <= sub <= 4 and cell % sub == 0
        assert sub == 1 or cell // sub >= 8
    with pytest.raises(ValueError, match="cell_px"):
        sub_cells(0)


def test_tiles_with_a_halo_give_the_features_of_the_whole_image(tmp_path):
    """Streaming tile by tile (halo 2 x the largest sigma, the image mirrored at its
    border) gives the features of one pass over the whole level, pooled per sub-cell."""
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(150, 40, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    with open_slide(_slide_file(tmp_path, img)) as s:
        grid = TextureEncoder(level=1, block=3).features(s, stride=128)  # cell 64 px at level 1, sub 4
        level1 = np.asarray(s.levels[1])
    assert grid.sub == 4 and grid.data.shape == (32, 32, 120)
    pad = 32
    whole = pixel_features(np.pad(level1, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric"))[pad:-pad, pad:-pad]
    ref = whole.reshape(32, 16, 32, 16, 120).mean(axis=(1, 3))
    # the halo holds 2 sigmas of the widest Gaussian (skimage truncates at 4): its far tail differs a little
    np.testing.assert_allclose(grid.data, ref, rtol=1e-3, atol=3e-3)
    assert np.abs(np.asarray(grid.data) - ref).mean() < 1e-5


def test_a_uniform_slide_has_the_same_features_at_its_border_as_inside(tmp_path):
    """No white padding: a uniformly stained slide reads the same in its corner cells
    (where tiles leave the image) as in the middle; white fill would add an edge there."""
    img = np.zeros((512, 512, 3), np.uint8)
    img[:] = (200, 120, 170)
    with open_slide(_slide_file(tmp_path, img)) as s:
        grid = TextureEncoder(level=1).features(s, stride=64)
    data = np.asarray(grid.data)
    np.testing.assert_allclose(data[0, 0], data[data.shape[0] // 2, data.shape[1] // 2], atol=1e-4)
    np.testing.assert_allclose(data[-1, -1], data[data.shape[0] // 2, data.shape[1] // 2], atol=1e-4)


def test_features_off_tissue_are_nan_and_cancel_stops(tmp_path):
    from napari_alregions.model import InferenceCancelled

    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(150, 40, (512, 512, 3)), 0, 255).astype(np.uint8)
    tissue = np.zeros((8, 8), bool)
    tissue[2:4, 5:7] = True
    with open_slide(_slide_file(tmp_path, img)) as s:
        grid = TextureEncoder(level=1, block=2).features(s, stride=64, tissue=tissue)
        cells = np.isfinite(grid.data).all(axis=-1).reshape(8, grid.sub, 8, grid.sub).all(axis=(1, 3))
        np.testing.assert_array_equal(cells, tissue)
        with pytest.raises(InferenceCancelled):
            TextureEncoder(level=1, block=2).features(s, stride=64, cancel=lambda: True)


def test_context_features_by_hand():
    b = np.zeros((3, 3, 1))
    b[0, 0, 0] = 9.0
    b[2, 2, 0] = np.nan  # off tissue: left out of its neighbours' means, and NaN itself
    x = context_features(b, [3])
    assert x.shape == (3, 3, 2)
    assert x[1, 1, 1] == pytest.approx(9 / 8)  # 8 finite neighbours around the centre, one of 9
    assert np.isnan(x[2, 2]).all()
    assert x[0, 0, 0] == 9.0


def test_centre_sub_cells_follow_the_patch_label_rule():
    assert centre_sub_cells(64, 4, 64) == slice(1, 3)  # the centre 32 px of a 64-px cell
    assert centre_sub_cells(32, 4, 64) == slice(0, 4)  # the centre area is the whole cell
    assert centre_sub_cells(64, 1, 64) == slice(0, 1)


def _grid(h, w, sub, truth_sub, seed=0, noise=0.3):
    """Sub-cell features: feature 0 says the class (with noise), the rest is noise."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1, (h * sub, w * sub, 4)).astype(np.float32)
    data[..., 0] = truth_sub + rng.normal(0, noise, truth_sub.shape)
    return FeatureGrid(data, sub, 64, "test")


def test_training_set_labels_sub_cells_by_their_own_pixels():
    sub = 4  # sub-cells of 8 px in cells of 32 label px
    truth_sub = np.zeros((16, 16))
    grid = _grid(4, 4, sub, truth_sub)
    labels = np.zeros((128, 128), np.uint8)
    labels[0:64, 0:64] = 1  # a labeled region, background...
    labels[0:16, 0:20] = 2  # ...with tumour: sub-cells (0..1, 0..1) wholly, (0..1, 2) half (4 px of 8)
    labels[24:26, 40:48] = 2  # sub-cell (3, 5): 16 of 64 px, a quarter
    labels[40:41, 40:48] = 2  # sub-cell (5, 5): 8 of 64 px, less than a quarter
    labels[64:68, 64:128] = 1  # a strip thinner than a sub-cell: no sub-cell is wholly labeled
    ts = training_set({"a": grid}, {"a": labels}, cell_px=32, n_classes=2)
    assert len(ts) == 64  # 8 x 8 sub-cells of the 64-px region
    assert ts.counts() == (57, 7)  # a quarter of positive pixels makes a sub-cell positive
    assert ts.x.shape[1] == 4 * 3  # own features and two neighbourhoods
    assert set(ts.groups) == {0}


def test_head_learns_separable_features_and_predicts_cells_by_the_centre_rule():
    sub = 4
    truth_sub = np.zeros((32, 32))
    truth_sub[8:20, 4:14] = 1
    grid = _grid(8, 8, sub, truth_sub)
    labels = np.zeros((256, 256), np.uint8)
    for y0, x0 in [(0, 0), (128, 0), (0, 128)]:
        crop = truth_sub[y0 // 8 : y0 // 8 + 16, x0 // 8 : x0 // 8 + 16]
        labels[y0 : y0 + 128, x0 : x0 + 128] = np.kron(crop, np.ones((8, 8))).astype(np.uint8) + 1
    boxes = {"a": [(0, 0, 128, 128), (128, 0, 256, 128), (0, 128, 128, 256)]}
    ts = training_set({"a": grid}, {"a": labels}, cell_px=32, n_classes=2, boxes=boxes)
    for head in ("blend", "forest", "logistic"):
        model = fit_head(ts, head=head, seed=0)
        assert model.quality.auc is not None and model.quality.auc > 0.95
        assert "labeled areas" in model.quality.scheme or "optimistic" in model.quality.scheme
        prob = predict_grid(model, grid, cell_px=32, patch_size=64)
        assert prob.shape == (8, 8, 2)
        np.testing.assert_allclose(prob.sum(axis=-1), 1.0, atol=1e-5)
        cells = truth_sub.reshape(8, 4, 8, 4).max(axis=(1, 3)) > 0  # any tumour sub-cell in the cell
        assert roc_auc(prob[..., 1].ravel(), cells.ravel()) > 0.95
    for head in ("blend", "forest"):  # sub-forests, in the blend each averaged with the logistic regression
        model = fit_head(ts, head=head)
        members = predict_grid(model, grid, cell_px=32, patch_size=64, members=True)
        assert members.shape == (10, 8, 8, 2)
        # per sub-cell, the members average to the head's probabilities (cells take a max over sub-cells)
        np.testing.assert_allclose(model.predict_members(ts.x).mean(axis=0), model.predict_proba(ts.x), atol=1e-5)


def test_predict_grid_is_nan_off_tissue():
    grid = _grid(4, 4, 2, np.zeros((8, 8)))
    ts = TrainingSet(np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32),
                     np.repeat([0, 1], 20), np.zeros(40, int), 2)
    tissue = np.ones((4, 4), bool)
    tissue[0] = False
    prob = predict_grid(fit_head(ts, quality=False), grid, cell_px=32, patch_size=64, tissue=tissue)
    assert np.isnan(prob[0]).all() and np.isfinite(prob[1:]).all()


def test_labels_of_one_class_give_a_novelty_map_and_no_quality_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 5))
    ts = TrainingSet(x.astype(np.float32), np.zeros(200, int), np.zeros(200, int), 2)
    model = fit_head(ts)
    assert model.head == "novelty" and model.quality.auc is None and "one class" in model.quality.reason
    near, far = np.zeros((1, 5)), np.full((1, 5), 6.0)
    p_near, p_far = model.predict_proba(near)[0], model.predict_proba(far)[0]
    assert p_far[1] > 0.9 > 0.1 > p_near[1]  # unlike every label -> probably the other class
    np.testing.assert_allclose(p_far.sum(), 1.0)
    head = OneClassHead(1, 3).fit(x)
    p = head.predict_proba(far)[0]
    assert p[1] < 0.1 and p[0] == pytest.approx(p[2])


def test_quality_is_never_estimated_on_a_one_class_split():
    # two areas, each of one class only: no grouped fold can hold both classes on each side,
    # so the estimate falls back to folds over sub-cells, and says that it is optimistic
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(2, 1, (30, 3))]).astype(np.float32)
    y = np.repeat([0, 1], 30)
    q = estimate_quality(TrainingSet(x, y, y.copy(), 2))
    assert q.auc is not None and "optimistic" in q.scheme
    q1 = estimate_quality(TrainingSet(x[:31], y[:31], np.zeros(31, int), 2))  # one sub-cell of class 1
    assert q1.auc is None and "too few" in q1.reason
    with pytest.raises(ValueError, match="no labeled"):
        fit_head(TrainingSet(np.zeros((0, 3), np.float32), np.zeros(0, int), np.zeros(0, int), 2))
    with pytest.raises(ValueError, match="head"):
        fit_head(TrainingSet(x, y, y, 2), head="svm")
