"""Summed-area tables: exact box sums in O(1) per box."""

from __future__ import annotations

import numpy as np

__all__ = ["box_sum", "integral_image"]


def integral_image(a: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column: ``S[r, c] = a[:r, :c].sum()``.

    Trailing axes (e.g. feature channels) are summed independently.
    """
    a = np.asarray(a)
    s = np.zeros((a.shape[0] + 1, a.shape[1] + 1, *a.shape[2:]), dtype=np.float64)
    np.cumsum(a, axis=1, dtype=np.float64, out=s[1:, 1:])
    # Row by row: numpy's cumsum along axis 0 of a C-ordered array is several times slower.
    for r in range(2, s.shape[0]):
        np.add(s[r], s[r - 1], out=s[r])
    return s


def box_sum(s: np.ndarray, r0, c0, r1, c1) -> np.ndarray:
    """Sums of the half-open boxes ``[r0, r1) x [c0, c1)`` from a summed-area table."""
    return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]
