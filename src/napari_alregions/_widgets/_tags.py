"""Short method tags for region boxes ("A2": adaptive, rank 2), placed so they do not overlap."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Region

__all__ = ["METHOD_TAGS", "place_tags", "tag"]

#: One letter per method (the boxes' labels and the list rows).
METHOD_TAGS = {"random": "R", "standard": "S", "standard_nonsquare": "N", "adaptive": "A", "top_patches": "T",
               "diversity": "D", "prototype": "P", "focannot": "F", "manual": "M"}


def tag(region: Region) -> str:
    """``"A2"``: the method's letter and the rank (1 first)."""
    return f"{METHOD_TAGS.get(region.method or 'manual', '?')}{region.rank + 1}"


def _free(box: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]]) -> bool:
    y0, x0, y1, x1 = box
    return all(y1 <= b[0] or b[2] <= y0 or x1 <= b[1] or b[3] <= x0 for b in taken)


def place_tags(regions: Sequence[Region], *, char_px: float) -> np.ndarray:
    """Where each region's tag sits (its centre, level-0 ``(row, col)``), so no two tags overlap.

    A tag is ``len(tag) * char_px`` wide and ``1.6 * char_px`` high (level-0 px). It goes
    inside a corner of its box (upper left first, then upper right, lower left, lower right);
    where all four are taken (boxes of several methods on one spot), it stacks below the
    last tag placed at its upper-left corner.

    Returns
    -------
    (N, 2) float ndarray
    """
    if char_px <= 0:
        raise ValueError(f"char_px must be > 0, got {char_px}")
    taken: list[tuple[float, float, float, float]] = []
    out = np.zeros((len(regions), 2))
    for i, r in enumerate(regions):
        h, w = 1.6 * char_px, len(tag(r)) * char_px
        corners = [(r.y, r.x), (r.y, r.x1 - w), (r.y1 - h, r.x), (r.y1 - h, r.x1 - w)]
        box = next(((y, x, y + h, x + w) for y, x in corners if _free((y, x, y + h, x + w), taken)), None)
        if box is None:
            y = r.y
            while not _free((y, r.x, y + h, r.x + w), taken):
                y += h
            box = (y, r.x, y + h, r.x + w)
        taken.append(box)
        out[i] = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    return out
