from __future__ import annotations

import numpy as np
import pytest

from napari_alregions.priority import (
    ensemble_disagreement,
    entropy,
    least_confidence,
    margin,
    mutual_information,
)


def test_binary_measures_hand_computed():
    p = np.array([[0.5, 0.9, 0.0, 0.25]])
    np.testing.assert_allclose(least_confidence(p), [[1.0, 0.2, 0.0, 0.5]], atol=1e-6)
    np.testing.assert_allclose(margin(p), [[1.0, 0.2, 0.0, 0.5]], atol=1e-6)
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q)) / np.log(2)  # noqa: E731
    np.testing.assert_allclose(entropy(p), [[1.0, h(0.9), 0.0, h(0.25)]], atol=1e-5)
    assert least_confidence(p).dtype == np.float32


def test_multiclass_measures_hand_computed():
    p = np.array([[[1 / 3, 1 / 3, 1 / 3], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(least_confidence(p), [[1.0, 0.3 * 1.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(margin(p), [[1.0, 0.5, 0.0]], atol=1e-6)
    e = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)) / np.log(3)
    np.testing.assert_allclose(entropy(p), [[1.0, e, 0.0]], atol=1e-5)


def test_nan_and_tissue_give_zero():
    p = np.array([[np.nan, 0.5], [0.5, 0.5]])
    tissue = np.array([[True, True], [False, True]])
    out = least_confidence(p, tissue=tissue)
    np.testing.assert_array_equal(out, [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="tissue"):
        entropy(p, tissue=np.ones((3, 3), bool))


def test_ensemble_disagreement_zero_when_members_agree():
    rng = np.random.default_rng(0)
    member = rng.random((8, 8))
    assert np.abs(ensemble_disagreement(np.stack([member] * 5))).max() < 1e-5
    assert np.abs(mutual_information(np.stack([member] * 5))).max() < 1e-5


def test_ensemble_disagreement_high_where_members_disagree():
    agree = np.full((2, 2), 0.9)
    members = np.stack([agree.copy() for _ in range(4)])
    members[:2, 0, 0], members[2:, 0, 0] = 0.05, 0.95  # two camps on one pixel
    d = ensemble_disagreement(members)
    assert d[0, 0] > 0.5 and np.abs(d.ravel()[1:]).max() < 1e-5
    # hand-computed: mean member = 0.5; KL(0.5 || 0.05) = KL(0.5 || 0.95)
    kl = 0.5 * np.log(0.5 / 0.05) + 0.5 * np.log(0.5 / 0.95)
    assert d[0, 0] == pytest.approx(min(1.0, kl / np.log(2)), abs=1e-5)
    mi = mutual_information(members)
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    assert mi[0, 0] == pytest.approx((h(0.5) - h(0.05)) / np.log(2), abs=1e-5)


@pytest.mark.parametrize(
    ("fn", "arr", "match"),
    [
        (entropy, np.array([[1.5]]), r"\[0, 1\]"),
        (entropy, np.array([[np.inf]]), "inf"),
        (entropy, np.zeros((2, 2, 2, 2)), "shape"),
        (entropy, np.zeros((2, 2, 1)), "2 classes"),
        (ensemble_disagreement, np.zeros((1, 2, 2)), "2 ensemble members"),
        (mutual_information, np.zeros((2, 2)), "shape"),
        (margin, np.array([["a"]]), "numeric"),
    ],
)
def test_bad_input(fn, arr, match):
    with pytest.raises(ValueError, match=match):
        fn(arr)
