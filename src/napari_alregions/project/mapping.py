"""Maps: predictions, priority maps, patch embeddings and prototype similarity (SPEC §4).

The maps live in the session's :class:`~napari_alregions.maps.MapStore` (``session.maps``),
which fires the session's ``maps`` event: computing one here redraws every view of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._atomic import atomic_path
from .._progress import iter_progress, relay
from ..maps import MapRecord
from ..priority import MEASURES

if TYPE_CHECKING:
    from .core import AnnotationProject

PROTOTYPES_FILE = "prototypes.npz"


class MapMaker:
    """Computes the maps of a slide into the session."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project

    def iter_priority(self, slide: str, *, measure: str = "least_confidence",
                      cancel: Callable[[], bool] | None = None) -> Generator[dict, None, MapRecord]:
        """Predict the slide and derive the priority map; yields ``{"done", "total"}``."""
        from ..model import predict_probability_map

        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        fn, needs_ensemble = MEASURES[measure]
        fast = self.p.fast_learning.fast_in_use
        if needs_ensemble and self.p.n_members < 2 and not fast:
            raise ValueError(f"{measure} needs an ensemble: make a model with 2 or more members, or use the fast "
                             "learner's forest")
        s = self.p._slide(slide)
        tissue = s.tissue_map(self.p.stride)
        if fast:
            if needs_ensemble:
                model = yield from self.p.fast_learning.iter_fast_model(cancel=cancel)
                if not model.has_members:
                    raise ValueError(f"{measure} needs the forest's members, and the fast model is a {model.head} one "
                                     "(labels of one class only?): label both classes, or use another measure")
            prob = yield from self.p.fast_learning.iter_predict(slide, members=needs_ensemble, cancel=cancel)
            return self.set_probabilities(slide, prob, measure=measure)
        gen = iter_progress(predict_probability_map, s, self.p.models, self.p.spec, stride=self.p.stride, tissue=tissue, cancel=cancel)
        prob = yield from relay(gen, lambda dt: {"phase": "predict", "slide": slide, "done": dt[0], "total": dt[1]})
        return self.set_probabilities(slide, prob, measure=measure)

    def set_probabilities(self, slide: str, probabilities: np.ndarray, *, measure: str = "least_confidence") -> MapRecord:
        """Make a prediction of the current model, made elsewhere (e.g. on a dask cluster),
        the slide's map: the priority map is derived as :meth:`iter_priority` derives it (the
        measure, weighted by the share of each cell on tissue, so that glass edges and
        debris do not draw the proposals).

        Parameters
        ----------
        probabilities : (H, W, C) or (E, H, W, C) float ndarray
            Class probabilities on the map grid (``slide.map_shape(stride)``), NaN outside tissue.
        """
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        fn, needs_ensemble = MEASURES[measure]
        tissue = self.p._slide(slide).tissue_map(self.p.stride)
        prob = np.asarray(probabilities)
        prob = prob if prob.ndim == 4 else prob[None]
        if prob.shape[1:] != (*tissue.shape, len(self.p.classes)):
            raise ValueError(f"probabilities must have shape (E, {tissue.shape[0]}, {tissue.shape[1]}, "
                             f"{len(self.p.classes)}) or that without E, got {np.shape(probabilities)}")
        if needs_ensemble and prob.shape[0] < 2:
            raise ValueError(f"{measure} needs an ensemble: make a model with 2 or more members")
        members = prob if needs_ensemble else prob.mean(axis=0)
        # a cell half on glass (a tissue edge, a fold, debris) is half as worth labeling: the
        # uncertainty of an edge is the glass's, not the tissue's
        share = np.clip(self.p._slide(slide).tissue_share_map(self.p.stride), 0.0, 1.0)
        priority = (fn(members, tissue=tissue) * share).astype(np.float32)
        record = MapRecord(prob.astype(np.float32), priority, measure, self.p.stride, self.p.cycle)
        self.p.session.maps.set(slide, "priority", record)
        return record

    def prediction(self, slide: str) -> np.ndarray:
        """Mean probability of each class over members, (H, W, C); NaN outside tissue."""
        if slide not in self.p.maps:
            raise ValueError(f"no prediction for {slide!r} yet: compute a priority map first")
        return self.p.maps[slide].probabilities.mean(axis=0)

    @property
    def encoder_source(self) -> str:
        """Where patch embeddings come from: "classifier" (default) or a source of ``load_encoder``."""
        return self.p.session.settings.encoder

    def set_encoder(self, source: str) -> None:
        """Embed with another encoder (e.g. the one a prototype set was made with)."""
        if source != "classifier":
            self._load_encoder(source)  # fails here, with its message, if unusable
        self.p.session.update_settings(encoder=source)
        self._drop_embeddings()
        self.p.session.save()

    def encoder(self):
        """The patch encoder in use (see :attr:`encoder_source`)."""
        return self._load_encoder(self.encoder_source)

    def _load_encoder(self, source: str):
        from ..embed import load_encoder

        if source == "classifier":  # the current classifier's penultimate layer
            return load_encoder(self.p.models[0], spec=self.p.spec)
        return load_encoder(source, spec=self.p.spec if source.startswith("random") else None)

    def _drop_embeddings(self) -> None:
        self.p.session.maps.drop("embeddings")
        self.p.session.maps.drop("similarity")

    def _model_changed(self) -> None:
        """Maps are recomputed on demand; classifier embeddings (and the fast learner's
        features when they are the classifier's) are stale now."""
        if self.encoder_source == "classifier":
            self._drop_embeddings()
        if self.p.session.settings.features == "classifier":
            self.p.fast_learning._drop_features()

    def iter_embed(self, slide: str, *, encoder=None, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Patch embeddings of a slide on the map grid (cached in the session); yields progress."""
        from ..embed import embed_slide

        s = self.p._slide(slide)
        encoder = encoder or self.encoder()
        gen = iter_progress(embed_slide, s, encoder, stride=self.p.stride, tissue=s.tissue_map(self.p.stride), cancel=cancel)
        emb = yield from relay(gen, lambda dt: {"phase": "embed", "slide": slide, "done": dt[0], "total": dt[1]})
        self.p.session.maps.set(slide, "embeddings", emb)
        self.p.session.maps.drop("similarity", slide)
        return emb

    def set_prototypes(self, path: str | os.PathLike[str]) -> None:
        """Use a prototype set (copied into the session as ``prototypes.npz``)."""
        import shutil

        from ..prototypes import load_prototypes

        protos = load_prototypes(path)
        target = self.p.folder / PROTOTYPES_FILE
        if Path(path).resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        self.p.prototypes = protos
        self.p.session.maps.drop("similarity")

    def iter_similarity(self, slide: str, *, cls: str | None = None,
                        cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Max cosine similarity to the prototypes (embeds the slide first if needed)."""
        from ..embed import similarity_map

        if self.p.prototypes is None:
            raise ValueError("load a prototype set first")
        if slide not in self.p.embeddings:
            yield from self.iter_embed(slide, cancel=cancel)
        sim = similarity_map(self.p.embeddings[slide], self.p.prototypes.of(cls))
        sim = sim * self.p._slide(slide).tissue_map(self.p.stride)
        self.p.session.maps.set(slide, "similarity", sim)
        return sim

    def cell_features(self, slide: str) -> np.ndarray:
        """(H, W, D) features per map cell: patch embeddings when computed, else the prediction."""
        if slide in self.p.embeddings:
            return self.p.embeddings[slide]
        if slide not in self.p.maps:
            raise ValueError("this method needs patch features: compute a priority map or embeddings first")
        return self.prediction(slide)

    def _drop_maps(self) -> None:
        self.p.session.maps.drop("priority")
