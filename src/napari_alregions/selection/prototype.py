"""Prototype sampling (MICCAI 2024): standard or adaptive selection on a similarity map."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..geometry import Region
from .adaptive import adaptive
from .standard import standard

__all__ = ["prototype", "similarity_to_priority"]


def similarity_to_priority(similarity: np.ndarray) -> np.ndarray:
    """Cosine similarities in [-1, 1] as a priority map in [0, 1] (negatives count as 0)."""
    s = np.asarray(similarity, dtype=np.float64)
    if np.isinf(s).any():
        raise ValueError("similarity contains inf")
    finite = s[np.isfinite(s)]
    if finite.size and (finite.max() > 1 + 1e-6 or finite.min() < -1 - 1e-6):
        raise ValueError(f"similarity must hold cosine similarities in [-1, 1], got up to {finite.max():.4g}")
    return np.clip(np.nan_to_num(s, nan=0.0), 0.0, 1.0)


def prototype(
    similarity: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    rng: np.random.Generator | int | None = None,
    base: str = "standard",
    **options: object,
) -> list[Region]:
    """Select regions that resemble class prototypes.

    ``similarity`` is the per-patch maximum cosine similarity to the prototype embeddings
    (see ``embed``); it is clipped to [0, 1], masked to tissue, and handed to the
    ``standard`` (regions with the most prototype-like patches) or ``adaptive`` (regions
    centred on the most prototype-like patch) selector.

    Parameters
    ----------
    similarity : (H, W) float ndarray
    base : {"standard", "adaptive"}
    options
        Passed to the base selector.
    """
    if base not in ("standard", "adaptive"):
        raise ValueError(f"base must be 'standard' or 'adaptive', got {base!r}")
    prio = similarity_to_priority(similarity)
    if tissue is not None:
        if np.shape(tissue) != prio.shape:
            raise ValueError(f"tissue must have the map's shape {prio.shape}, got {np.shape(tissue)}")
        prio = np.where(np.asarray(tissue, dtype=bool), prio, 0.0)
    fn = standard if base == "standard" else adaptive
    regions = fn(prio, stride=stride, region_size=region_size, k=k, tissue=tissue, annotated=annotated, rng=rng, **options)
    return [r.with_(method=f"prototype_{base}") for r in regions]
