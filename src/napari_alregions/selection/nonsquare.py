"""Standard (non-square) selection: the standard method over several aspect ratios."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..geometry import Region
from ._common import greedy_windows, prepare

__all__ = ["nonsquare_shapes", "standard_nonsquare"]


def nonsquare_shapes(size: int, stride: int, width_step: int = 256) -> list[tuple[int, int]]:
    """Candidate (h, w) shapes in map pixels for region side ``size`` (map px).

    Widths run from l/2 to l in steps of ``width_step`` level-0 pixels (at least one map
    pixel), each with height ``round(l² / w)``, plus the transposed shapes; the square
    comes once. Areas stay close to l².
    """
    step = max(1, round(width_step / stride))
    widths = sorted({int(w) for w in range(-(-size // 2), size + 1, step)} | {size})
    shapes: list[tuple[int, int]] = []
    for w in widths:
        h = int(round(size * size / w))
        for shape in ((h, w), (w, h)):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def standard_nonsquare(
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    width_step: int = 256,
) -> list[Region]:
    """Select k non-overlapping regions of area ~l² and several aspect ratios.

    Like :func:`~napari_alregions.selection.standard.standard`, but the candidates are
    windows of every shape of :func:`nonsquare_shapes` at every position, in one greedy
    non-maximum suppression over all shapes; score = summed priority.

    Parameters
    ----------
    priority, stride, region_size, k, tissue, annotated, rng
        As for ``standard``.
    width_step : int
        Step between candidate widths in level-0 pixels (paper: 256).

    Returns
    -------
    list of Region
        At most k regions, best first; zero-sum windows are never proposed.
    """
    inp = prepare(priority, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated)
    if width_step <= 0:
        raise ValueError(f"width_step must be positive, got {width_step}")
    shapes = nonsquare_shapes(inp.size, inp.stride, width_step)
    picks = greedy_windows(inp.priority, shapes, inp.k, inp.annotated)
    return [inp.region(box, score=v, method="standard_nonsquare", rank=i) for i, (box, v) in enumerate(picks)]
