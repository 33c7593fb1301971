"""Segmentation and ranking metrics on numpy arrays (pure, torch-free)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["iou_dice", "roc_auc"]


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the binary ``truth`` (Mann–Whitney U).

    Ties count one half. NaN scores are dropped with their truth.

    Parameters
    ----------
    scores : (N,) float ndarray
    truth : (N,) bool ndarray

    Returns
    -------
    float
        In [0, 1]; NaN when only one class is present.

    Examples
    --------
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    0.75
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    if scores.shape != truth.shape:
        raise ValueError(f"scores and truth must have the same size, got {scores.size} and {truth.size}")
    keep = np.isfinite(scores)
    scores, truth = scores[keep], truth[keep]
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties count one half
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def iou_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two boolean masks; both 1.0 when both are empty.

    Examples
    --------
    >>> iou_dice(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool))
    (0.3333333333333333, 0.5)
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
    inter = int((pred & truth).sum())
    union = int((pred | truth).sum())
    total = int(pred.sum() + truth.sum())
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)
