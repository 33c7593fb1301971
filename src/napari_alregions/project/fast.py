"""The fast learner of a project: cached features, a head refitted in seconds (SPEC §6)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._progress import iter_progress, relay
from ..geometry import Region

if TYPE_CHECKING:
    from .core import AnnotationProject

FEATURES_DIR = "features"
#: feature grids up to this size are kept in memory once computed (else read from the cache)
_FEATURES_IN_MEMORY = 512 * 2**20


class FastLearning:
    """The fast learner's features and head."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project

    @property
    def fast_in_use(self) -> bool:
        """Whether the maps come from the fast learner: it is the model in use and it has
        been trained (an untrained session predicts with its untrained CNN)."""
        settings = self.p.session.settings
        return settings.in_use == "fast" and (self.p.fast is not None or bool(settings.trained_on))

    def set_learner(self, *, learner: str | None = None, head: str | None = None, features: str | None = None) -> None:
        """Choose what Retrain trains (``learner``: "fast" or "deep"), the fast learner's
        ``head`` ("blend", "forest", "logistic") and its ``features``: "texture" (built in),
        "classifier" (the session CNN's penultimate layer) or any source of
        :func:`napari_alregions.embed.load_encoder` (a checkpoint, ``torchvision:<arch>:<weights>``,
        an exported program). New features are computed on the next retrain; the fast
        model refits then.

        Raises
        ------
        ValueError
            For an unknown learner or head, or features that cannot be loaded (its message).
        """
        from ..settings import HEADS, LEARNERS

        if learner is not None and learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, got {learner!r}")
        if head is not None and head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if features is not None and features not in ("texture", "classifier"):
            self.p.mapping._load_encoder(features)  # fails here, with its message, if unusable
        with self.p.session.changing() as session:
            settings = session.settings
            if features is not None and features != settings.features:
                self._drop_fast()
            if head is not None and head != settings.head:
                self.p.fast = None
            session.update_settings(learner=learner or settings.learner, head=head or settings.head,
                                    features=features or settings.features)
            session.save()

    def _features_folder(self, slide: str) -> Path:
        from ..features import feature_key

        return self.p.folder / FEATURES_DIR / feature_key(self.p.session.settings.features) / f"{slide}.zarr"

    def _drop_fast(self) -> None:
        """Forget the fast model and the features in memory (the cache on disk is checked
        against the map grid and the encoder when read)."""
        self.p.fast = None
        self.p.session.maps.drop("features")

    def _drop_features(self) -> None:
        import shutil

        self._drop_fast()
        shutil.rmtree(self.p.folder / FEATURES_DIR, ignore_errors=True)

    def iter_features(self, slide: str, *, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, Any]:
        """The fast learner's features of a slide (a :class:`~napari_alregions.features.FeatureGrid`),
        computed once per slide and encoder (``settings.features``) and cached in the
        session's ``features/``; yields ``{"phase": "features", "done", "total"}`` while
        computing. A retrain reads the cache, never the slide."""
        from ..features import TEXTURE, TextureEncoder, commit_features, open_features, slide_features, store_features

        s = self.p._slide(slide)
        source, folder = self.p.session.settings.features, self._features_folder(slide)

        def current(grid) -> bool:
            return (grid is not None and grid.stride == self.p.stride and grid.encoder == source
                    and grid.map_shape == s.map_shape(self.p.stride))

        if current(self.p.feature_grids.get(slide)):
            return self.p.feature_grids[slide]
        grid = open_features(folder)
        if grid is not None and grid.data.nbytes <= _FEATURES_IN_MEMORY:
            try:  # a damaged chunk is recomputed, not a codec's traceback
                grid.data = np.asarray(grid.data[...])
            except Exception:
                grid = None
        if not current(grid):
            tissue = s.tissue_map(self.p.stride)
            out = None
            if source == TEXTURE:  # computed straight into the chunked cache: bounded memory on any slide
                from ..features import sub_cells

                sub = sub_cells(self._cell_px(slide))
                h, w = s.map_shape(self.p.stride)
                out = store_features(folder, (h * sub, w * sub, TextureEncoder(level=self.p.label_level).dim))
            gen = iter_progress(slide_features, s, source, stride=self.p.stride, level=self.p.label_level, tissue=tissue,
                                spec=self.p.spec, model=self.p.models[0] if self.p.models else None, out=out, cancel=cancel)
            grid = yield from relay(gen, lambda dt: {"phase": "features", "slide": slide, "done": dt[0], "total": dt[1]})
            if out is None:
                out = store_features(folder, grid.data.shape)
                out[...] = grid.data
            grid = commit_features(folder, grid)
        if grid.data.nbytes <= _FEATURES_IN_MEMORY:
            grid.data = np.asarray(grid.data[...])
        self.p.session.maps.set(slide, "features", grid)
        return grid

    def iter_fit_fast(self, *, cancel: Callable[[], bool] | None = None, regions: Sequence[Region] | None = None,
                      seed: int | None = None) -> Generator[dict, None, Any]:
        """Fit the fast learner's head on the labels of ``regions`` (default: every accepted
        region; features of each labeled slide first) with ``seed`` (default: the next
        cycle's); returns the :class:`~napari_alregions.learner.FastModel` without installing it.

        Raises
        ------
        ValueError
            If no labeled window lies on tissue.
        """
        from ..learner import fit_head, training_set

        regions = list(self.p.session.accepted if regions is None else regions)
        names = [n for n in self.p.slides if any(r.slide == n for r in regions)]
        grids = {}
        for n in names:
            grids[n] = yield from self.iter_features(n, cancel=cancel)
        if not names:
            raise ValueError("no labels to train on: accept a region and paint labels in it first")
        yield {"phase": "fit", "done": 0, "total": 1}
        ts = training_set(grids, {n: self.p.session.labels(n) for n in names},
                          cell_px={n: self._cell_px(n) for n in names}, n_classes=len(self.p.classes),
                          boxes={n: [tuple(self.p.label_box(r)) for r in regions if r.slide == n] for n in names})
        model = fit_head(ts, head=self.p.session.settings.head, seed=self.p.training._seed_base() + self.p.cycle if seed is None else seed,
                         quality=self.p.estimate_quality)
        yield {"phase": "fit", "done": 1, "total": 1}
        return model

    def iter_fast_model(self, *, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, Any]:
        """The fast model in use; after a reopen, the model of the last cycle fitted again (on
        the regions it was trained on, with its seed: the same model)."""
        if self.p.fast is None:
            trained = set(self.p.session.settings.trained_on)
            self.p.fast = yield from self.iter_fit_fast(
                cancel=cancel, regions=[r for r in self.p.session.accepted if r.uid in trained],
                seed=self.p.training._seed_base() + max(0, self.p.cycle - 1))
        return self.p.fast

    def iter_predict(self, slide: str, *, members: bool = False,
                     cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Class probabilities of the fast learner on ``slide``'s map grid ((H, W, C), or
        (E, H, W, C) sub-forests with ``members``), refitting the head first when the session
        was reopened."""
        from ..learner import predict_grid

        model = yield from self.iter_fast_model(cancel=cancel)
        grid = yield from self.iter_features(slide, cancel=cancel)
        return predict_grid(model, grid, cell_px=self._cell_px(slide), patch_size=self.p.spec.patch_size,
                            tissue=self.p._slide(slide).tissue_map(self.p.stride), members=members)

    def _cell_px(self, slide: str) -> int:
        """A map cell's side in label px on ``slide``."""
        from ..features import cell_px

        return cell_px(self.p.stride, self.p.label_factor(slide))
