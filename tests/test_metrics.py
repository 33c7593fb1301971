from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_alregions.metrics import iou_dice, roc_auc


def _pairwise_auc(scores, truth):
    """Brute force: the share of (positive, negative) pairs ranked right, ties one half."""
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_a_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40) / 5  # many ties
    truth = rng.random(40) < 0.3
    assert roc_auc(scores, truth) == pytest.approx(_pairwise_auc(scores, truth), abs=1e-12)


def test_roc_auc_edge_cases():
    assert roc_auc(np.array([0.2, 0.9]), np.array([False, True])) == 1.0
    assert roc_auc(np.array([0.9, 0.2]), np.array([False, True])) == 0.0
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([True, True])))  # one class only
    # NaN scores are dropped with their truth
    assert roc_auc(np.array([np.nan, 0.2, 0.9]), np.array([True, False, True])) == 1.0
    with pytest.raises(ValueError, match="same size"):
        roc_auc(np.zeros(3), np.zeros(2, bool))


def test_iou_dice_by_hand():
    pred = np.array([[1, 1, 0], [0, 1, 0]], bool)
    truth = np.array([[1, 0, 0], [0, 1, 1]], bool)
    iou, dice = iou_dice(pred, truth)  # intersection 2, union 4, sizes 3 + 3
    assert iou == pytest.approx(0.5) and dice == pytest.approx(4 / 6)
    assert iou_dice(np.zeros(4, bool), np.zeros(4, bool)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        iou_dice(np.zeros(4, bool), np.zeros(5, bool))
