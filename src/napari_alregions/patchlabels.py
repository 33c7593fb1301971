"""The label of a patch from a label mask (adaptive paper §2.3; SPEC §6), without torch.

Labels: 0 unlabeled, ``i + 1`` for class i. A patch centred at (y, x) is labeled when its
centre area (half-side ``half``, i.e. (d/2)² for a patch of d px with ``half = d // 4``)
is entirely labeled; its class is the positive class (1) if any centre pixel is positive
in a binary task, else the majority class of the centre. The deep learner's training
patches (:func:`napari_alregions.model.find_candidates`) follow it; the fast learner
(:mod:`napari_alregions.learner`) predicts cells by it.
"""

from __future__ import annotations

import numpy as np

from ._integral import box_sum, integral_image

__all__ = ["centre_classes"]


def centre_classes(labels: np.ndarray, ys: np.ndarray, xs: np.ndarray, half: int, n_classes: int,
                    offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (offset back to the slide) of the grid points ys x xs of ``labels`` whose
    centre area is entirely labeled, and their classes (the module's label rule)."""
    # centre-area statistics for every grid point via integral images
    labeled = _box_sums((labels > 0).astype(np.float64), ys, xs, half)
    full = labeled >= (2 * half) ** 2 - 0.5
    if n_classes <= 2:
        cls = (_box_sums((labels == 2).astype(np.float64), ys, xs, half) > 0).astype(int)
    else:
        counts = np.stack([_box_sums((labels == v).astype(np.float64), ys, xs, half) for v in range(1, n_classes + 1)], -1)
        cls = np.argmax(counts, axis=-1)
    gy, gx = np.nonzero(full)
    return np.stack([ys[gy] + offset[0], xs[gx] + offset[1]], axis=1), cls[gy, gx]


def _box_sums(a: np.ndarray, ys: np.ndarray, xs: np.ndarray, half: int) -> np.ndarray:
    """Sums of ``a`` over the boxes of half-side ``half`` centred on the grid ys x xs."""
    s = integral_image(a)
    y0 = np.clip(ys - half, 0, a.shape[0])[:, None]
    y1 = np.clip(ys + half, 0, a.shape[0])[:, None]
    x0 = np.clip(xs - half, 0, a.shape[1])[None, :]
    x1 = np.clip(xs + half, 0, a.shape[1])[None, :]
    return box_sum(s, y0, x0, y1, x1)
