"""Suggestion: selectors propose regions on a slide's maps (SPEC §3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import Region
from ..selection import METHODS, select
from ..selection.compare import MethodSummary, compare_proposals
from ..settings import SuggestPlan

if TYPE_CHECKING:
    from .core import AnnotationProject


class Suggestion:
    """Proposals: suggest, compare, dismiss, edit, refresh."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project

    def suggest(self, slide: str, method: str, *, region_size: int, k: int, seed: int | None = 0,
                **options: Any) -> list[Region]:
        """Propose k regions on ``slide``; replaces that method's earlier proposals there."""
        regions = self._select(slide, method, region_size=region_size, k=k, seed=seed, **options)
        return self._propose(slide, method, regions, region_size=region_size, k=k, seed=seed, options=options)

    def _select(self, slide: str, method: str, *, region_size: int, k: int, seed: int | None, **options: Any) -> list[Region]:
        """The regions ``method`` picks on ``slide`` now; changes nothing (raises what cannot run)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        s = self.p._slide(slide)
        tissue = s.tissue_map(self.p.stride)
        if method == "random":
            priority = np.zeros(tissue.shape, np.float32)
        elif method == "prototype":
            if slide not in self.p.similarity:
                raise ValueError("prototype selection needs a similarity map: load prototypes and compute it first")
            priority = self.p.similarity[slide]
        elif slide in self.p.maps:
            priority = self.p.maps[slide].priority
        else:
            raise ValueError(f"{method} needs a priority map: compute one first (or use random)")
        if region_size % self.p.stride:
            raise ValueError(f"region_size ({region_size} px) must be a multiple of the map stride ({self.p.stride} px)")
        arrays = {need: self._needed_array(slide, need, region_size, options) for need in METHODS[method].needs}
        regions = select(method, priority, stride=self.p.stride, region_size=region_size, k=k, tissue=tissue,
                         annotated=self._taken(slide), seed=seed, slide=slide, cycle=self.p.cycle,
                         **arrays, **options)
        # one name per selector in the session (prototype records its base method itself)
        return [r.with_(method=method) for r in regions]

    def empty_reason(self, slide: str, method: str, *, region_size: int) -> str:
        """Why ``method`` proposes no region of ``region_size`` (level-0 px) on ``slide`` now,
        in words for the user (the first reason that holds, most basic first)."""
        from ..geometry import region_to_map_box

        stride = self.p.stride
        tissue = self.p._slide(slide).tissue_map(stride).astype(bool)
        size, (h, w) = max(1, region_size // stride), tissue.shape
        if size > h or size > w:
            return (f"a region of {region_size} px does not fit on the slide ({w * stride} x {h * stride} px): "
                    "choose a smaller region size")
        if not tissue.any():
            return "no tissue was found on the slide"
        free = tissue.copy()
        for r in self._taken(slide):
            free[region_to_map_box(r, stride, tissue.shape).slices] = False
        if not free.any():
            return "every tissue area is annotated or dismissed already"
        priority = self.p.similarity.get(slide) if method == "prototype" else (
            self.p.maps[slide].priority if slide in self.p.maps else None)
        if method != "random" and priority is not None and not (np.nan_to_num(priority)[free] > 0).any():
            return ("the priority map is 0 on all tissue not yet annotated or dismissed (the model is sure there): "
                    "train on more labels, or use random")
        if method == "top_patches":
            return (f"no {region_size}-px cell of the grid is mostly tissue, free of annotated and dismissed areas, "
                    "with a priority above 0: try a smaller region size")
        return f"no {region_size}-px window on free tissue meets {method}'s conditions: try a smaller region size"

    def _taken(self, slide: str) -> list[Region]:
        """Where no selector proposes: the labeled set, and what the user dismissed."""
        return self.p.session.accepted_on(slide) + self.p.session.store.dismissed(slide)

    def _propose(self, slide: str, method: str, regions: list[Region], *, region_size: int, k: int, seed: int | None,
                 options: dict[str, Any]) -> list[Region]:
        """Make ``regions`` the proposals of ``method`` on ``slide`` and remember how to rerun it."""
        with self.p.session.changing() as session:  # a retrain's refresh runs this in its worker thread
            regions = session.propose(regions, slide=slide, method=method)
            plan = SuggestPlan(int(region_size), int(k), None if seed is None else int(seed), _jsonable(options))
            session.update_settings(suggest=session.settings.with_plan(slide, method, plan).suggest)
            self.p._autosave()
        return regions

    def _needed_array(self, slide: str, need: str, region_size: int, options: dict[str, Any]) -> np.ndarray:
        """Per-region embeddings (diversity) or per-patch descriptors (focannot) of a slide."""
        from ..selection import needed_array

        return needed_array(need, self.p.mapping.cell_features(slide), region_size=region_size, stride=self.p.stride,
                            options=options)

    def iter_inputs(self, slide: str, method: str, *, measure: str = "least_confidence",
                    cancel: Callable[[], bool] | None = None) -> Generator[dict, None, None]:
        """Compute what ``method`` reads on ``slide`` and does not have yet for the current
        model, so that :meth:`suggest` can run: the priority map (missing, or of an earlier
        cycle), patch embeddings (diversity, focannot, prototype) and the prototype
        similarity map. Yields the progress of each step. Changes no region.

        Raises
        ------
        ValueError
            For an unknown method, or prototype selection without a prototype set.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if method == "prototype" and self.p.prototypes is None:
            raise ValueError("prototype selection needs a prototype set: load prototypes first")
        self.p._slide(slide)
        record = self.p.maps.get(slide)
        if method not in ("random", "prototype") and (record is None or record.cycle != self.p.cycle or record.measure != measure):
            yield from self.p.mapping.iter_priority(slide, measure=measure, cancel=cancel)
        if (METHODS[method].needs or method == "prototype") and slide not in self.p.embeddings:
            yield from self.p.mapping.iter_embed(slide, cancel=cancel)
        if method == "prototype" and slide not in self.p.similarity:
            yield from self.p.mapping.iter_similarity(slide, cancel=cancel)

    def suggest_pool_diversity(self, *, region_size: int, n_per_slide: int, seed: int | None = 0) -> dict[str, list[Region]]:
        """Diversity over all slides: k-means of region embeddings into N·n clusters."""
        from ..selection import diversity_pool
        from ..selection.diversity import region_embeddings

        names = list(self.p.slides)
        if not names:
            raise ValueError("add slides first")
        size = region_size // self.p.stride
        # one kind of feature for the whole pool: embeddings when every slide has them
        cells = [self.p.embeddings[n] for n in names] if all(n in self.p.embeddings for n in names) else [self.p.mapping.prediction(n) for n in names]
        emb = [region_embeddings(c, size=size) for c in cells]
        chosen = diversity_pool(emb, stride=self.p.stride, region_size=region_size, n_per_slide=n_per_slide,
                                tissue=[self.p.slides[n].tissue_map(self.p.stride) for n in names],
                                annotated=[self.p.session.accepted_on(n) for n in names], rng=seed, slide_names=names)
        out = {}
        for n, regions in zip(names, chosen):
            regions = [r.with_(slide=n, cycle=self.p.cycle, method="diversity") for r in regions]
            out[n] = self.p.session.propose(regions) if regions else []
        self.p._autosave()
        return out

    def uncertain_by_group(self, *, n: int, region_size: int | None = None) -> dict[str, list[Region]]:
        """UGA: the n most uncertain patches of each slide group (``SlideEntry.group``)."""
        from ..selection.top_patches import top_patches_by_group

        missing = [s for s in self.p.slides if s not in self.p.maps]
        if missing:
            raise ValueError(f"compute priority maps first (missing: {', '.join(missing)})")
        return top_patches_by_group(
            {s: self.p.maps[s].priority for s in self.p.slides}, {s: e.group for s, e in self.p.session.slides.items()},
            stride=self.p.stride, region_size=region_size or self.p.stride, n=n,
            tissue={s: self.p.slides[s].tissue_map(self.p.stride) for s in self.p.slides},
            annotated={s: self.p.session.accepted_on(s) for s in self.p.slides})

    def proposals(self, slide: str, method: str | None = None) -> list[Region]:
        return self.p.session.store.proposed(slide, method)

    def dismiss(self, region: Region) -> Region:
        """Dismiss a proposal: it is no longer offered, and no selector proposes its area
        again (as if annotated); the session keeps it as dismissed.

        Raises
        ------
        ValueError
            If ``region`` (by ``uid``) is not a proposal of the session.
        """
        with self.p.session.changing() as session:
            dismissed = session.store.dismiss(region.uid)
            session.save()
        return dismissed

    def edit_proposal(self, region: Region, *, x: float, y: float, w: float, h: float) -> Region:
        """Move or resize a proposal (level-0 px): snapped to the map grid (each side to the
        nearest grid line, at least one cell) and clipped to the slide; the uid stays.

        Raises
        ------
        ValueError
            If ``region`` is not a proposal, or the box lies wholly outside the slide.
        """
        if not all(map(math.isfinite, (x, y, w, h))):
            raise ValueError(f"region box must be finite numbers, got {(x, y, w, h)}")
        old = self.p.session.store.get(region.uid)
        if old is None or self.p.session.store.status(region.uid) != "proposed":
            raise ValueError(f"region: {region.uid!r} is not a proposal of this session")
        s = self.p.stride
        height, width = self.p._slide(old.slide).shape
        x0, x1 = sorted((x, x + w))
        y0, y1 = sorted((y, y + h))
        cx0, cy0 = max(0, round(x0 / s)), max(0, round(y0 / s))
        cx1, cy1 = min(-(-width // s), round(x1 / s)), min(-(-height // s), round(y1 / s))
        if cx0 >= -(-width // s) or cy0 >= -(-height // s) or cx1 <= 0 or cy1 <= 0:
            raise ValueError(f"region box {(x, y, w, h)} lies outside the slide ({width} x {height} px)")
        cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
        edited = old.with_(x=cx0 * s, y=cy0 * s, w=(cx1 - cx0) * s, h=(cy1 - cy0) * s)
        with self.p.session.changing() as session:
            edited = session.store.edit(edited)
            session.save()
        return edited

    def compare(self, slide: str, methods: Iterable[str], *, region_size: int, k: int, seed: int | None = 0,
                options: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, list[Region]], list[MethodSummary], np.ndarray]:
        """Run several methods and summarise them side by side (see ``compare_proposals``)."""
        methods = list(methods)
        if not methods:
            raise ValueError("choose at least one method to compare")
        options = options or {}
        # every method picks before any proposal changes: one that cannot run changes nothing
        picked = {m: self._select(slide, m, region_size=region_size, k=k, seed=seed, **options.get(m, {})) for m in methods}
        out = {m: self._propose(slide, m, regions, region_size=region_size, k=k, seed=seed, options=options.get(m, {}))
               for m, regions in picked.items()}
        s = self.p._slide(slide)
        priority = self.p.maps[slide].priority if slide in self.p.maps else np.zeros(s.map_shape(self.p.stride), np.float32)
        summaries, overlap = compare_proposals(out, priority, stride=self.p.stride, tissue=s.tissue_map(self.p.stride))
        return out, summaries, overlap

    def refresh_suggestions(self, slide: str) -> tuple[dict[str, list[Region]], dict[str, str]]:
        """Re-run every method last used on ``slide`` with its parameters (new map, new cycle).

        Returns the new proposals by method, and by method why it could not run (e.g. a
        prototype selector without a similarity map): those keep their proposals, and
        the other methods are refreshed all the same.
        """
        plan = self.p.session.settings.suggest.get(slide, {})
        done, failed = {}, {}
        for m, p in list(plan.items()):
            try:
                done[m] = self.suggest(slide, m, region_size=p.region_size, k=p.k, seed=p.seed, **p.options)
            except ValueError as exc:
                failed[m] = str(exc)
        return done, failed


def region_size_px(value: float, unit: str, *, mpp: float | None, stride: int) -> int:
    """A region side in level-0 px, rounded to a multiple of ``stride`` (at least one cell).

    Examples
    --------
    >>> region_size_px(500, "µm", mpp=0.5, stride=128)
    1024
    """
    if not value > 0:
        raise ValueError(f"region size must be positive, got {value}")
    if unit in ("µm", "um"):
        if not mpp:
            raise ValueError("this slide has no pixel size (mpp); give the region size in px")
        px = value / mpp
    elif unit == "px":
        px = value
    else:
        raise ValueError(f"unit must be 'µm' or 'px', got {unit!r}")
    return max(1, round(px / stride)) * stride


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in options.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, (str, int, float, bool, list)) or v is None:
            out[k] = v
    return out
