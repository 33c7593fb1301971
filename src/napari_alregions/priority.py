"""Priority maps from class probabilities (SPEC §4). Pure numpy.

Every measure takes probabilities of shape ``(H, W)`` (binary: probability of the positive
class) or ``(H, W, C)`` (C classes summing to 1), or an ensemble with a leading member axis
for the ensemble measures, and returns a float32 ``(H, W)`` map in ``[0, 1]``: 1 where the
model is least sure. NaN probabilities (pixels never predicted) give 0, and so does every
pixel outside ``tissue`` when a mask is given.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MEASURES",
    "ensemble_disagreement",
    "entropy",
    "least_confidence",
    "margin",
    "mutual_information",
]

_EPS = 1e-7
_SUM_TOL = 1e-2  # class probabilities stored as float16 sum to 1 within a few 1e-3


def _as_classes(p: np.ndarray, name: str = "probabilities", *, lead: int = 0) -> np.ndarray:
    """Validate and return probabilities with an explicit class axis (…, H, W, C)."""
    p = np.asarray(p)
    if p.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a numeric array, got dtype {p.dtype}")
    if p.ndim not in (2 + lead, 3 + lead):
        want = "(E, H, W) or (E, H, W, C)" if lead else "(H, W) or (H, W, C)"
        raise ValueError(f"{name} must have shape {want}, got {p.shape}")
    p = p.astype(np.float64)
    if np.isinf(p).any():
        raise ValueError(f"{name} contains inf")
    finite = p[np.isfinite(p)]
    if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{finite.min():.3g}, {finite.max():.3g}]")
    p = np.clip(p, 0.0, 1.0)
    if p.ndim == 2 + lead:
        return np.stack([1.0 - p, p], axis=-1)
    if p.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes on its last axis, got {p.shape[-1]}")
    sums = p.sum(axis=-1)
    off = np.isfinite(sums) & (np.abs(sums - 1.0) > _SUM_TOL)
    if off.any():
        where = tuple(int(i) for i in np.argwhere(off)[0])
        raise ValueError(f"{name}: the class probabilities of a pixel must sum to 1, got {sums[where]:.4g} at "
                         f"{where} ({int(off.sum())} pixel(s) off); pass softmax outputs, not scores")
    return p


def _finish(values: np.ndarray, invalid: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    out = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    out[invalid] = 0.0
    if tissue is not None:
        tissue = np.asarray(tissue)
        if tissue.shape != out.shape:
            raise ValueError(f"tissue must have the map's shape {out.shape}, got {tissue.shape}")
        out[~tissue.astype(bool)] = 0.0
    return out.astype(np.float32)


def _invalid(p: np.ndarray) -> np.ndarray:
    return ~np.isfinite(p).all(axis=-1)


def least_confidence(probabilities: np.ndarray, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """``1 - max_c p_c`` rescaled to [0, 1]; for binary maps ``1 - 2|p - 0.5|``.

    Parameters
    ----------
    probabilities : (H, W) or (H, W, C) float ndarray
    tissue : (H, W) bool ndarray, optional

    Returns
    -------
    (H, W) float32 ndarray

    Examples
    --------
    >>> least_confidence(np.array([[0.5, 0.9, 0.0]]))
    array([[1. , 0.2, 0. ]], dtype=float32)
    """
    p = _as_classes(probabilities)
    c = p.shape[-1]
    value = (1.0 - p.max(axis=-1)) * c / (c - 1)
    return _finish(value, _invalid(p), tissue)


def margin(probabilities: np.ndarray, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """``1 - (p_first - p_second)``: 1 where the two likeliest classes tie."""
    p = _as_classes(probabilities)
    top2 = np.sort(np.nan_to_num(p), axis=-1)[..., -2:]
    return _finish(1.0 - (top2[..., 1] - top2[..., 0]), _invalid(p), tissue)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1.0)
    return -(p * np.log(q)).sum(axis=-1)


def entropy(probabilities: np.ndarray, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """Shannon entropy normalised by ``log C``."""
    p = _as_classes(probabilities)
    return _finish(_entropy(p) / np.log(p.shape[-1]), _invalid(p), tissue)


def ensemble_disagreement(members: np.ndarray, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """Disagreement of ensemble members with their mean (UGA), normalised to [0, 1].

    The mean over members of the soft cross-entropy of each member against the ensemble
    mean, minus the mean's own entropy, i.e. ``mean_i KL(p̄ || p_i)``: zero when all members
    agree, whatever their confidence. Divided by ``log C`` and capped at 1 (members that
    put all mass on different classes reach the cap).

    Parameters
    ----------
    members : (E, H, W) or (E, H, W, C) float ndarray
        E >= 2 members' probabilities.
    """
    p = _as_classes(members, "members", lead=1)
    if p.shape[0] < 2:
        raise ValueError(f"members needs at least 2 ensemble members on axis 0, got {p.shape[0]}")
    invalid = _invalid(p).any(axis=0)
    mean = np.nan_to_num(p).mean(axis=0)
    cross = -(mean[None] * np.log(np.clip(np.nan_to_num(p), _EPS, 1.0))).sum(axis=-1).mean(axis=0)
    kl = cross - _entropy(mean)
    return _finish(kl / np.log(p.shape[-1]), invalid, tissue)


def mutual_information(members: np.ndarray, *, tissue: np.ndarray | None = None) -> np.ndarray:
    """BALD: entropy of the mean minus the mean entropy, normalised by ``log C``."""
    p = _as_classes(members, "members", lead=1)
    if p.shape[0] < 2:
        raise ValueError(f"members needs at least 2 ensemble members on axis 0, got {p.shape[0]}")
    invalid = _invalid(p).any(axis=0)
    q = np.nan_to_num(p)
    mi = _entropy(q.mean(axis=0)) - _entropy(q).mean(axis=0)
    return _finish(mi / np.log(p.shape[-1]), invalid, tissue)


#: name -> (function, takes an ensemble)
MEASURES = {
    "least_confidence": (least_confidence, False),
    "margin": (margin, False),
    "entropy": (entropy, False),
    "ensemble_disagreement": (ensemble_disagreement, True),
    "mutual_information": (mutual_information, True),
}
