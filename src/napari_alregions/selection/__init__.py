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

__all__ = ["METHODS", "MethodInfo", "OptionInfo", "diversity_pool", "select"]

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
        Tissue mask at map resolution.
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
