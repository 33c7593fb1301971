"""Region selectors (SPEC §5): pure functions from a priority map to level-0 regions.

Every selector has the signature::

    fn(priority, *, stride, region_size, k, tissue=None, annotated=(), rng=None, **options)
        -> list[Region]

and every caller goes through :func:`select`. :data:`METHODS` lists each method with its
options and their defaults, so a UI can build its controls from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import Region
from .adaptive import adaptive
from .diversity import diversity, diversity_pool
from .focannot import focannot
from .nonsquare import standard_nonsquare
from .prototype import prototype
from .random import random
from .standard import standard
from .top_patches import top_patches

__all__ = ["METHODS", "MethodInfo", "OptionInfo", "diversity_pool", "needed_array", "select"]

_COMMON = {"priority", "similarity", "stride", "region_size", "k", "tissue", "annotated", "rng", "options"}


@dataclass(frozen=True)
class OptionInfo:
    """One method option: its default, its type and a one-line help."""

    name: str
    default: Any
    annotation: str
    help: str = ""


@dataclass(frozen=True)
class MethodInfo:
    """A registered selector."""

    name: str
    function: Callable[..., list[Region]]
    title: str
    summary: str
    needs: tuple[str, ...] = ()  # array options that must be provided (not UI controls)
    options: tuple[OptionInfo, ...] = field(default=())
    inputs: str = "a priority map"  # what the method reads, in words

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}


_HELP = {
    "min_tissue": "minimum tissue fraction of a region",
    "max_attempts": "random positions tried before giving up",
    "width_step": "step between candidate widths (level-0 px)",
    "tau_range": "percentile search interval for the threshold",
    "max_steps": "bisection steps",
    "min_side": "smallest region side (level-0 px; default l/2)",
    "max_side": "largest region side (level-0 px; default 3l/2)",
    "aggregate": "cell score: summed or mean priority",
    "max_background": "largest background fraction of a cell",
    "base": "region selection on the similarity map",
    "overlap": "overlap ρ of the patch grid",
    "n_clusters": "number of k-means clusters c",
    "lam": "weight λ of cluster uncertainty vs. diversity",
    "candidates_factor": "candidates kept per selected patch (Q/T)",
    "n_init": "k-means runs from different seeds (lowest inertia kept)",
}


def _register(name: str, fn: Callable[..., list[Region]], title: str, needs: tuple[str, ...] = (),
              inputs: str = "a priority map") -> MethodInfo:
    opts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.KEYWORD_ONLY or p.name in _COMMON or p.name in needs:
            continue
        opts.append(OptionInfo(p.name, p.default, str(p.annotation), _HELP.get(p.name, "")))
    summary = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    return MethodInfo(name, fn, title, summary, needs, tuple(opts), inputs)


#: name -> MethodInfo, in the order a UI should list them
METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        _register("random", random, "Random", inputs="nothing but an optional tissue mask (the map gives the slide's shape)"),
        _register("standard", standard, "Standard (sliding window)"),
        _register("standard_nonsquare", standard_nonsquare, "Standard, non-square"),
        _register("adaptive", adaptive, "Adaptive"),
        _register("top_patches", top_patches, "Top uncertain patches (UGA)",
                  inputs="a priority map, and a tissue mask to skip cells of mostly background"),
        _register("diversity", diversity, "Diversity (k-means)", needs=("embeddings",),
                  inputs="region embeddings (the map gives the slide's shape)"),
        _register("prototype", prototype, "Prototype similarity", inputs="a similarity map in [-1, 1] as the map"),
        _register("focannot", focannot, "FocAnnot double ranking", needs=("descriptors",),
                  inputs="a priority map and patch descriptors"),
    )
}


def select(
    method: str,
    priority: np.ndarray,
    *,
    stride: int,
    region_size: int,
    k: int,
    tissue: np.ndarray | None = None,
    annotated: Iterable[Region] = (),
    seed: int | np.random.Generator | None = None,
    slide: str | None = None,
    cycle: int | None = None,
    **options: Any,
) -> list[Region]:
    """Propose up to k regions on one slide's priority map with the named method.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    priority : (H, W) float ndarray
        Priority map (for ``prototype``: the similarity map), non-negative, stride ``stride``.
    stride : int
        Level-0 pixels per map pixel.
    region_size : int
        Region side l in level-0 pixels, a multiple of ``stride``.
    k : int
        Number of regions.
    tissue : (H, W) bool ndarray, optional
        Tissue mask at map resolution: priorities outside it count as 0, so an all-False
        mask proposes no region (random and diversity draw only from regions with tissue).
    annotated : iterable of Region
        Regions already labeled on this slide; never proposed again.
    seed : int or Generator, optional
        Randomness for random, diversity and focannot; same seed, same regions.
    slide, cycle : optional
        Recorded on every returned Region.
    options
        Method options (see ``METHODS[method].options``) and required arrays
        (``embeddings`` for diversity, ``descriptors`` for focannot).

    Returns
    -------
    list of Region
        Level-0 regions, ranked; fewer than k only when no valid region is left.

    Examples
    --------
    >>> p = np.random.default_rng(0).random((64, 64))
    >>> len(select("standard", p, stride=256, region_size=4096, k=3))
    3
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    info = METHODS[method]
    allowed = {o.name for o in info.options} | set(info.needs)
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"{method} takes no option(s) {sorted(unknown)}; it takes {sorted(allowed)}")
    regions = info.function(
        priority, stride=stride, region_size=region_size, k=k, tissue=tissue,
        annotated=tuple(annotated), rng=seed, **options,
    )
    if slide is not None or cycle is not None:
        regions = [r.with_(slide=slide if slide is not None else r.slide, cycle=cycle if cycle is not None else r.cycle) for r in regions]
    return regions


def needed_array(need: str, cell_features: np.ndarray, *, region_size: int, stride: int,
                 options: dict[str, Any] | None = None) -> np.ndarray:
    """An array a selector needs (a name in ``METHODS[method].needs``), from per-cell features.

    The one builder of these inputs, for the project, the simulation and ``alregions
    suggest``: ``"embeddings"`` (diversity) are the region embeddings of the l x l grid,
    ``"descriptors"`` (focannot) the descriptors of its patch grid (``options["overlap"]``,
    default 0.5).

    Parameters
    ----------
    need : {"embeddings", "descriptors"}
    cell_features : (H, W, D) float ndarray
        One feature vector per map cell (patch embeddings, or class probabilities); NaN
        off tissue.
    region_size, stride : int
        Region side l and map stride, level-0 px; l a multiple of the stride.
    options : dict, optional
        The method's options.

    Returns
    -------
    ndarray
        (Gh, Gw, D) region embeddings or (Gr, Gc, D) patch descriptors.

    Examples
    --------
    >>> needed_array("embeddings", np.ones((8, 8, 4)), region_size=1024, stride=256).shape
    (2, 2, 4)
    """
    from .diversity import region_embeddings
    from .focannot import focannot_descriptors

    if stride <= 0 or region_size <= 0 or region_size % stride:
        raise ValueError(f"region_size ({region_size}) must be a positive multiple of stride ({stride})")
    size = region_size // stride
    if need == "embeddings":
        return region_embeddings(cell_features, size=size)
    if need == "descriptors":
        return focannot_descriptors(cell_features, size=size, overlap=float((options or {}).get("overlap", 0.5)))
    raise ValueError(f"need must be 'embeddings' or 'descriptors', got {need!r}")
