"""The interactive annotation loop, headless: what the napari widgets drive (SPEC §1, §2).

An :class:`AnnotationProject` is a :class:`~napari_alregions.session.Session` with its
slides opened, its model (one network or an ensemble) in memory and the current
probability/priority maps. Every user action of the plugin is one method here:

* ``add_slide`` / ``new_model`` / ``load_model``;
* ``iter_priority`` (generator: predict -> priority map);
* ``suggest`` / ``compare`` (selectors from :mod:`napari_alregions.selection`);
* ``accept`` (proposal -> labeled set, labels prefilled), ``region_labels`` /
  ``write_region_labels`` (painting happens inside accepted regions only);
* ``iter_retrain`` (generator: fine-tune every member -> checkpoint -> new maps ->
  refreshed proposals);
* ``import_qupath`` / ``export_qupath``.

Each change is saved at once (atomic writes), so a crash loses at most the action in
flight. Long steps are generators yielding progress dicts, so they run in a napari thread
worker, in a CLI loop with tqdm, or plainly via :func:`run`.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path, save_npy
from ._progress import iter_progress, relay
from .geometry import Box, Region, labeled_boxes
from .io_qupath import (
    iter_import,
    iter_rasterize,
    labels_to_features,
    priority_to_features,
    read_geojson,
    region_features,
    write_features,
)
from .priority import MEASURES
from .selection import METHODS, select
from .selection.compare import MethodSummary, compare_proposals
from .session import Session, SessionError, file_fingerprint
from .settings import SuggestPlan
from .wsi import Slide, open_slide

__all__ = ["AnnotationProject", "MapRecord", "region_size_px", "run"]

#: Default class colours (RGB) for the first classes: background grey, tumour red.
DEFAULT_COLORS = [(160, 160, 160), (220, 30, 30), (40, 160, 40), (30, 90, 220), (230, 160, 0), (150, 0, 200)]
MAPS_DIR = "maps"
EMBED_DIR = "embeddings"
FEATURES_DIR = "features"
#: feature grids up to this size are kept in memory once computed (else read from the cache)
_FEATURES_IN_MEMORY = 512 * 2**20
PROTOTYPES_FILE = "prototypes.npz"


@dataclass
class MapRecord:
    """A slide's latest prediction: probabilities and the priority map derived from them."""

    probabilities: np.ndarray  # (E, H, W, C) float32, NaN outside tissue
    priority: np.ndarray  # (H, W) float32 in [0, 1]
    measure: str
    stride: int
    cycle: int


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


def run(gen: Generator[Any, None, Any], progress: Callable[[Any], None] | None = None) -> Any:
    """Drive one of the project's generators to the end; return its result."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(item)


class AnnotationProject:
    """A session being annotated: slides, model, maps and the active-learning loop."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.slides: dict[str, Slide] = {}
        self.maps: dict[str, MapRecord] = {}
        self.embeddings: dict[str, np.ndarray] = {}  # (H, W, D) per slide, cached in embeddings/
        self.similarity: dict[str, np.ndarray] = {}  # prototype similarity maps
        self.feature_grids: dict = {}  # slide -> features.FeatureGrid of the fast learner (cached in features/)
        self.fast = None  # learner.FastModel: the fast learner's fitted head (refit from the cache on open)
        #: cross-validate the fast model at each fit (the status line, fast vs. deep); the
        #: simulation, which decides nothing by it, sets this False (a third of its time)
        self.estimate_quality = True
        self.prototypes = None  # PrototypeSet
        self.models: list = []
        self.spec = None
        self._tissue_px_cache: dict[str, int] = {}
        #: What opening found and repaired (damaged caches, labels of no region), for the user.
        self.open_messages: list[str] = []
        # accept, label writes, removals and proposals save at once; a batch caller (the
        # simulation) sets this False and calls save() when its batch is done
        self.autosave = True

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        *,
        classes: Sequence[str] = ("background", "tumour"),
        colors: Sequence[Sequence[int]] | None = None,
        arch: str = "compact",
        patch_size: int = 64,
        level: int = 1,
        stride: int | None = None,
        members: int = 1,
    ) -> AnnotationProject:
        """A new project in an empty folder, with an untrained model."""
        classes = tuple(classes)
        colors = [tuple(c) for c in (colors or DEFAULT_COLORS[: len(classes)])]
        if len(colors) != len(classes):
            raise ValueError(f"colors needs one colour per class ({len(classes)}), got {len(colors)}")
        session = Session.create(folder, classes=classes, colors=[list(c) for c in colors])
        project = cls(session)
        project.new_model(arch=arch, patch_size=patch_size, level=level, stride=stride, members=members)
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, read_only: bool = False, take_over: bool = False) -> AnnotationProject:
        """Reopen a project: slides, labels, regions, model and last maps as saved.

        ``read_only`` and ``take_over`` are those of :meth:`Session.open` (the session lock).
        """
        session = Session.open(folder, read_only=read_only, take_over=take_over)
        project = cls(session)
        try:
            project._load()
        except BaseException:
            project.close()
            raise
        return project

    def _load(self) -> None:
        from .model import CheckpointError, ModelSpec, load_checkpoint

        project, session, folder = self, self.session, self.session.folder
        for name, entry in session.slides.items():
            if not Path(entry.path).is_file():
                raise SessionError(f"slide {name!r}: {entry.path} is missing (moved or deleted?)")
            if entry.size is not None and file_fingerprint(entry.path) != (entry.size, entry.digest):
                raise SessionError(f"slide {name!r}: {entry.path} is not the file added to this session (its size or "
                                   "first bytes changed: replaced by another slide?); put the original back")
            project.slides[name] = slide = open_slide(entry.path)
            if entry.label_shape is not None and (entry.label_level >= slide.level_count
                                                  or tuple(slide.levels[entry.label_level].shape[:2]) != entry.label_shape):
                raise SessionError(f"slide {name!r}: {entry.path} does not have the size it had when added "
                                   f"(labels {entry.label_shape} at level {entry.label_level}); put the original back")
        spec = ModelSpec.from_dict(session.settings.model)
        project.spec = spec
        if session.checkpoints:
            try:
                project.models = [load_checkpoint(session.folder / p, expect=spec)[0] for p in session.checkpoints]
            except (FileNotFoundError, CheckpointError) as exc:
                raise SessionError(f"{folder}: the session's model cannot be loaded ({exc})") from exc
        else:
            project.models = [project._build(i) for i in range(project.n_members)]
        for name in project.slides:
            record = _load_map(session.folder / MAPS_DIR / f"{name}.npz")
            if record is not None and record.priority.shape == project.slides[name].map_shape(record.stride):
                project.maps[name] = record
            elif (session.folder / MAPS_DIR / f"{name}.npz").is_file():
                self.open_messages.append(f"{name}: the saved priority map is damaged; compute it again")
            emb = session.folder / EMBED_DIR / f"{name}.npy"
            if emb.is_file():
                try:
                    project.embeddings[name] = np.load(emb, allow_pickle=False)
                except (OSError, ValueError):
                    self.open_messages.append(f"{name}: the saved embeddings are damaged; compute them again")
        self._drop_orphan_labels()
        if (session.folder / PROTOTYPES_FILE).is_file():
            from .prototypes import load_prototypes

            project.prototypes = load_prototypes(session.folder / PROTOTYPES_FILE)

    def _drop_orphan_labels(self) -> None:
        """Labels outside every accepted region were never acknowledged (a save killed
        between the labels and the session file that records their region): they are cleared
        in memory, and so on disk at the next save."""
        from .labelstore import chunk_box

        for name in self.session.slides:
            chunks = self.session.label_chunks(name)
            if not chunks:
                continue
            labels = self.session.labels(name)
            boxes = [self.label_box(r) for r in self.session.accepted_on(name)]
            dropped = 0
            for k in sorted(chunks):
                rows, cols = chunk_box(k, labels.shape)
                box = (rows.start, cols.start, rows.stop, cols.stop)
                orphan = labels[rows, cols].astype(bool) & ~_covered(box, boxes)
                if orphan.any():
                    dropped += int(orphan.sum())
                    labels[rows, cols][orphan] = 0
                    self.session.mark_labels_changed(name, box)
            if dropped:
                self.open_messages.append(f"{name}: {dropped} labeled pixel(s) outside every accepted region "
                                          "(from an interrupted save) were cleared")

    # -- properties ------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        return self.session.folder

    @property
    def classes(self) -> tuple[str, ...]:
        return self.session.classes

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in (self.session.settings.colors or DEFAULT_COLORS[: len(self.classes)])]

    @property
    def stride(self) -> int:
        """Level-0 px per map pixel: as set, else one patch footprint on the first slide."""
        stride = self.session.settings.stride
        if stride:
            return int(stride)
        factor = next((s.level_factor(self.label_level) for s in self.slides.values()), 2.0**self.label_level)
        return int(round(self.spec.patch_size * factor))

    @property
    def n_members(self) -> int:
        return self.session.settings.members

    @property
    def trained(self) -> bool:
        return bool(self.session.checkpoints)

    @property
    def cycle(self) -> int:
        return self.session.cycle

    @property
    def device(self) -> str:
        from .model import pick_device

        return str(pick_device())

    @property
    def pending_regions(self) -> int:
        """Accepted regions the model has not been trained on yet."""
        trained = set(self.session.settings.trained_on)
        return sum(r.uid not in trained for r in self.session.accepted)

    def _set_trained_on(self, uids: list[str]) -> None:
        with self.session.changing() as session:
            session.settings.trained_on = list(uids)

    def save(self) -> None:
        """Write the session now (what :attr:`autosave` would have written after each change;
        labels: the chunks marked since the last save)."""
        self.session.save()

    def _autosave(self) -> None:
        if self.autosave:
            self.session.save()

    # -- model ----------------------------------------------------------------------------
    def _build(self, member: int):
        import torch

        torch.manual_seed(self._seed_base() + member)
        return self.spec.build()

    def _seed_base(self) -> int:
        """``settings.training.seed`` (default 0): offsets every seed of the model's
        initial weights and training draws (the simulation's repeats differ by it)."""
        return self.session.settings.training.seed

    def new_model(self, *, arch: str = "compact", patch_size: int = 64, level: int = 1, stride: int | None = None,
                  members: int = 1) -> None:
        """Start over with an untrained model (labels and regions are kept)."""
        from .model import ModelSpec

        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        for name, slide in self.slides.items():
            if level >= slide.level_count:
                raise ValueError(f"level {level} does not exist on slide {name!r} (levels 0..{slide.level_count - 1})")
        spec = ModelSpec(arch=arch, classes=self.classes, patch_size=patch_size, level=level)
        for name, slide in self.slides.items():
            factor = slide.level_factor(level)
            if stride and stride % factor:
                raise ValueError(f"stride ({stride}) must be a multiple of the level-{level} downsample of {name!r} ({factor:g})")
        if self.session.slides and self.spec is not None and level != self.label_level:
            raise ValueError(f"the session labels slides at level {self.label_level}; a new model must work there too")
        self.spec = spec
        settings = self.session.settings
        settings.model, settings.stride, settings.members = spec.to_dict(), int(stride) if stride else None, members
        self._set_trained_on([])
        self.session.checkpoints = []
        self.models = [self._build(i) for i in range(members)]
        self._drop_fast()
        self._drop_maps()
        self._model_changed()
        self.session.save()

    def load_model(self, path: str | os.PathLike[str]) -> None:
        """Use a checkpoint (copied into the session); its classes must be the session's."""
        import shutil

        from .model import CheckpointError, load_checkpoint

        model, spec, _ = load_checkpoint(path)
        if spec.classes != self.classes:
            raise CheckpointError(f"{path}: the checkpoint predicts {list(spec.classes)}, the session annotates {list(self.classes)}")
        if self.session.slides and spec.level != self.label_level:
            raise CheckpointError(f"{path}: the checkpoint works at level {spec.level}, the session labels level {self.label_level}")
        target = self.session.checkpoint_path(f"loaded_{Path(path).name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != target.resolve():
            shutil.copyfile(path, target)
        self.spec = spec
        settings = self.session.settings
        settings.model, settings.stride, settings.members = spec.to_dict(), None, 1
        self._set_trained_on([r.uid for r in self.session.accepted])
        self.session.checkpoints = [str(target.relative_to(self.folder))]
        self.models = [model]
        self._drop_fast()
        settings.in_use = "deep"  # the loaded model is the one in use, until a retrain
        self._drop_maps()
        self._model_changed()
        self.session.save()

    def _drop_maps(self) -> None:
        self.maps.clear()
        for f in (self.folder / MAPS_DIR).glob("*.npz"):
            f.unlink()

    # -- slides and labels ----------------------------------------------------------------
    @property
    def label_level(self) -> int:
        """Pyramid level of the label masks: the slides' (fixed once a slide is added)."""
        for entry in self.session.slides.values():
            return int(entry.label_level)
        return int(self.spec.level)

    def add_slide(self, path: str | os.PathLike[str], *, name: str | None = None, group: str | None = None) -> str:
        """Open a slide and add it to the session (labels at the model's working level)."""
        slide = open_slide(path)
        name = name or Path(path).name
        if name in self.session.slides:
            slide.close()
            raise ValueError(f"a slide named {name!r} is already in the session")
        level = self.label_level
        if level >= slide.level_count:
            slide.close()
            raise ValueError(f"{name}: the model works at level {level}, but the slide has levels 0..{slide.level_count - 1}")
        self.session.add_slide(name, Path(path).resolve(), label_shape=slide.levels[level].shape[:2], label_level=level, group=group)
        self.slides[name] = slide
        self.session.save()
        return name

    def _slide(self, name: str) -> Slide:
        if name not in self.slides:
            raise KeyError(f"no slide {name!r} in the session (slides: {', '.join(self.slides) or 'none'})")
        return self.slides[name]

    def label_factor(self, slide: str) -> float:
        return self._slide(slide).level_factor(self.label_level)

    def clipped(self, region: Region) -> Region:
        """``region`` clipped to its slide (level-0 px), the same region if inside.

        Raises
        ------
        ValueError
            If no part of the region lies on the slide.
        """
        height, width = self._slide(region.slide).shape
        x0, y0 = max(region.x, 0), max(region.y, 0)
        x1, y1 = min(region.x1, width), min(region.y1, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"region ({region.x}, {region.y}, {region.w} x {region.h} px) lies outside the slide "
                             f"{region.slide!r} ({width} x {height} px)")
        if (x0, y0, x1, y1) == (region.x, region.y, region.x1, region.y1):
            return region
        return region.with_(x=x0, y=y0, w=x1 - x0, h=y1 - y0)

    def label_box(self, region: Region) -> Box:
        """The label pixels of a level-0 region (rounded outwards), as a :class:`Box`."""
        f = self.label_factor(region.slide)
        shape = self.session.slides[region.slide].label_shape
        y0, x0 = max(0, int(region.y // f)), max(0, int(region.x // f))
        y1, x1 = min(shape[0], math.ceil(region.y1 / f)), min(shape[1], math.ceil(region.x1 / f))
        return Box(y0, x0, y1, x1)

    def _tissue_rows_cols(self, slide: str, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tissue mask and, for the label px rows and columns of ``box``, the mask's row
        and column each falls in (nearest neighbour)."""
        s = self._slide(slide)
        mask = s.tissue_mask()
        ratio = self.label_factor(slide) / s.level_factor(s.tissue_level)
        y0, x0, y1, x1 = box
        rows = np.minimum((np.arange(y0, y1) * ratio).astype(int), mask.shape[0] - 1)
        cols = np.minimum((np.arange(x0, x1) * ratio).astype(int), mask.shape[1] - 1)
        return mask, rows, cols

    def tissue_labels(self, slide: str, box: Box | None = None) -> np.ndarray:
        """The tissue mask resampled to the labeling level (nearest neighbour), in ``box``
        ``(y0, x0, y1, x1)`` (label px) or over the slide (large for a WSI)."""
        shape = self.session.slides[slide].label_shape
        mask, rows, cols = self._tissue_rows_cols(slide, box or (0, 0, *shape))
        return mask[np.ix_(rows, cols)]

    def _tissue_px(self, slide: str) -> int:
        """Label px on tissue, counted on the tissue mask (cached)."""
        if slide not in self._tissue_px_cache:
            shape = self.session.slides[slide].label_shape
            mask, rows, cols = self._tissue_rows_cols(slide, (0, 0, *shape))
            per_row = np.bincount(rows, minlength=mask.shape[0])
            per_col = np.bincount(cols, minlength=mask.shape[1])
            self._tissue_px_cache[slide] = int(per_row @ mask.astype(np.int64) @ per_col)
        return self._tissue_px_cache[slide]

    def annotated_pct(self, slide: str | None = None) -> float:
        """Labeled share of the tissue, in %, of one slide or of all slides.

        Labels lie in accepted regions only, so only those are read: the cost follows the
        labeled area, not the slide (this runs after every autosaved stroke).
        """
        names = [slide] if slide is not None else list(self.slides)
        done = total = 0
        for n in names:
            total += self._tissue_px(n)
            labels, seen = self.session.labels(n), []
            for r in self.session.accepted_on(n):
                box = self.label_box(r)
                y0, x0, y1, x1 = box
                fresh = labels[y0:y1, x0:x1] > 0
                for other in seen:  # counted with an earlier, overlapping region
                    fresh[_overlap(box, other)] = False
                done += int((fresh & self.tissue_labels(n, box)).sum())
                seen.append(box)
        return 100.0 * done / total if total else 0.0

    # -- maps -----------------------------------------------------------------------------
    def iter_priority(self, slide: str, *, measure: str = "least_confidence",
                      cancel: Callable[[], bool] | None = None) -> Generator[dict, None, MapRecord]:
        """Predict the slide and derive the priority map; yields ``{"done", "total"}``."""
        from .model import predict_probability_map

        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        fn, needs_ensemble = MEASURES[measure]
        fast = self.fast_in_use
        if needs_ensemble and self.n_members < 2 and not fast:
            raise ValueError(f"{measure} needs an ensemble: make a model with 2 or more members, or use the fast "
                             "learner's forest")
        s = self._slide(slide)
        tissue = s.tissue_map(self.stride)
        if fast:
            if needs_ensemble:
                model = yield from self.iter_fast_model(cancel=cancel)
                if not model.has_members:
                    raise ValueError(f"{measure} needs the forest's members, and the fast model is a {model.head} one "
                                     "(labels of one class only?): label both classes, or use another measure")
            prob = yield from self.iter_predict(slide, members=needs_ensemble, cancel=cancel)
            return self.set_probabilities(slide, prob, measure=measure)
        gen = iter_progress(predict_probability_map, s, self.models, self.spec, stride=self.stride, tissue=tissue, cancel=cancel)
        prob = yield from relay(gen, lambda dt: {"phase": "predict", "slide": slide, "done": dt[0], "total": dt[1]})
        return self.set_probabilities(slide, prob, measure=measure)

    # -- the fast learner ---------------------------------------------------------------------
    @property
    def fast_in_use(self) -> bool:
        """Whether the maps come from the fast learner: it is the model in use and it has
        been trained (an untrained session predicts with its untrained CNN)."""
        settings = self.session.settings
        return settings.in_use == "fast" and (self.fast is not None or bool(settings.trained_on))

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
        from .settings import HEADS, LEARNERS

        if learner is not None and learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, got {learner!r}")
        if head is not None and head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if features is not None and features not in ("texture", "classifier"):
            self._load_encoder(features)  # fails here, with its message, if unusable
        with self.session.changing() as session:
            settings = session.settings
            if features is not None and features != settings.features:
                self._drop_fast()
                settings.features = features
            if head is not None and head != settings.head:
                self.fast = None
                settings.head = head
            if learner is not None:
                settings.learner = learner
            session.save()

    def _features_folder(self, slide: str) -> Path:
        from .features import feature_key

        return self.folder / FEATURES_DIR / feature_key(self.session.settings.features) / f"{slide}.zarr"

    def _drop_fast(self) -> None:
        """Forget the fast model and the features in memory (the cache on disk is checked
        against the map grid and the encoder when read)."""
        self.fast = None
        self.feature_grids.clear()

    def _drop_features(self) -> None:
        import shutil

        self._drop_fast()
        shutil.rmtree(self.folder / FEATURES_DIR, ignore_errors=True)

    def iter_features(self, slide: str, *, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, Any]:
        """The fast learner's features of a slide (a :class:`~napari_alregions.features.FeatureGrid`),
        computed once per slide and encoder (``settings.features``) and cached in the
        session's ``features/``; yields ``{"phase": "features", "done", "total"}`` while
        computing. A retrain reads the cache, never the slide."""
        from .features import TEXTURE, TextureEncoder, commit_features, open_features, slide_features, store_features

        s = self._slide(slide)
        source, folder = self.session.settings.features, self._features_folder(slide)

        def current(grid) -> bool:
            return (grid is not None and grid.stride == self.stride and grid.encoder == source
                    and grid.map_shape == s.map_shape(self.stride))

        if current(self.feature_grids.get(slide)):
            return self.feature_grids[slide]
        grid = open_features(folder)
        if grid is not None and grid.data.nbytes <= _FEATURES_IN_MEMORY:
            try:  # a damaged chunk is recomputed, not a codec's traceback
                grid.data = np.asarray(grid.data[...])
            except Exception:
                grid = None
        if not current(grid):
            tissue = s.tissue_map(self.stride)
            out = None
            if source == TEXTURE:  # computed straight into the chunked cache: bounded memory on any slide
                from .features import sub_cells

                sub = sub_cells(self._cell_px(slide))
                h, w = s.map_shape(self.stride)
                out = store_features(folder, (h * sub, w * sub, TextureEncoder(level=self.label_level).dim))
            gen = iter_progress(slide_features, s, source, stride=self.stride, level=self.label_level, tissue=tissue,
                                spec=self.spec, model=self.models[0] if self.models else None, out=out, cancel=cancel)
            grid = yield from relay(gen, lambda dt: {"phase": "features", "slide": slide, "done": dt[0], "total": dt[1]})
            if out is None:
                out = store_features(folder, grid.data.shape)
                out[...] = grid.data
            grid = commit_features(folder, grid)
        if grid.data.nbytes <= _FEATURES_IN_MEMORY:
            grid.data = np.asarray(grid.data[...])
        self.feature_grids[slide] = grid
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
        from .learner import fit_head, training_set

        regions = list(self.session.accepted if regions is None else regions)
        names = [n for n in self.slides if any(r.slide == n for r in regions)]
        grids = {}
        for n in names:
            grids[n] = yield from self.iter_features(n, cancel=cancel)
        if not names:
            raise ValueError("no labels to train on: accept a region and paint labels in it first")
        yield {"phase": "fit", "done": 0, "total": 1}
        ts = training_set(grids, {n: self.session.labels(n) for n in names},
                          cell_px={n: self._cell_px(n) for n in names}, n_classes=len(self.classes),
                          boxes={n: [tuple(self.label_box(r)) for r in regions if r.slide == n] for n in names})
        model = fit_head(ts, head=self.session.settings.head, seed=self._seed_base() + self.cycle if seed is None else seed,
                         quality=self.estimate_quality)
        yield {"phase": "fit", "done": 1, "total": 1}
        return model

    def iter_fast_model(self, *, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, Any]:
        """The fast model in use; after a reopen, the model of the last cycle fitted again (on
        the regions it was trained on, with its seed: the same model)."""
        if self.fast is None:
            trained = set(self.session.settings.trained_on)
            self.fast = yield from self.iter_fit_fast(
                cancel=cancel, regions=[r for r in self.session.accepted if r.uid in trained],
                seed=self._seed_base() + max(0, self.cycle - 1))
        return self.fast

    def iter_predict(self, slide: str, *, members: bool = False,
                     cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Class probabilities of the fast learner on ``slide``'s map grid ((H, W, C), or
        (E, H, W, C) sub-forests with ``members``), refitting the head first when the session
        was reopened."""
        from .learner import predict_grid

        model = yield from self.iter_fast_model(cancel=cancel)
        grid = yield from self.iter_features(slide, cancel=cancel)
        return predict_grid(model, grid, cell_px=self._cell_px(slide), patch_size=self.spec.patch_size,
                            tissue=self._slide(slide).tissue_map(self.stride), members=members)

    def _cell_px(self, slide: str) -> int:
        """A map cell's side in label px on ``slide``."""
        from .features import cell_px

        return cell_px(self.stride, self.label_factor(slide))

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
        tissue = self._slide(slide).tissue_map(self.stride)
        prob = np.asarray(probabilities)
        prob = prob if prob.ndim == 4 else prob[None]
        if prob.shape[1:] != (*tissue.shape, len(self.classes)):
            raise ValueError(f"probabilities must have shape (E, {tissue.shape[0]}, {tissue.shape[1]}, "
                             f"{len(self.classes)}) or that without E, got {np.shape(probabilities)}")
        if needs_ensemble and prob.shape[0] < 2:
            raise ValueError(f"{measure} needs an ensemble: make a model with 2 or more members")
        members = prob if needs_ensemble else prob.mean(axis=0)
        # a cell half on glass (a tissue edge, a fold, debris) is half as worth labeling: the
        # uncertainty of an edge is the glass's, not the tissue's
        share = np.clip(self._slide(slide).tissue_share_map(self.stride), 0.0, 1.0)
        priority = (fn(members, tissue=tissue) * share).astype(np.float32)
        record = MapRecord(prob.astype(np.float32), priority, measure, self.stride, self.cycle)
        self.maps[slide] = record
        _save_map(self.folder / MAPS_DIR / f"{slide}.npz", record)
        return record

    def prediction(self, slide: str) -> np.ndarray:
        """Mean probability of each class over members, (H, W, C); NaN outside tissue."""
        if slide not in self.maps:
            raise ValueError(f"no prediction for {slide!r} yet: compute a priority map first")
        return self.maps[slide].probabilities.mean(axis=0)

    @property
    def encoder_source(self) -> str:
        """Where patch embeddings come from: "classifier" (default) or a source of ``load_encoder``."""
        return self.session.settings.encoder

    def set_encoder(self, source: str) -> None:
        """Embed with another encoder (e.g. the one a prototype set was made with)."""
        if source != "classifier":
            self._load_encoder(source)  # fails here, with its message, if unusable
        self.session.settings.encoder = source
        self._drop_embeddings()
        self.session.save()

    def encoder(self):
        """The patch encoder in use (see :attr:`encoder_source`)."""
        return self._load_encoder(self.encoder_source)

    def _load_encoder(self, source: str):
        from .embed import load_encoder

        if source == "classifier":  # the current classifier's penultimate layer
            return load_encoder(self.models[0], spec=self.spec)
        return load_encoder(source, spec=self.spec if source.startswith("random") else None)

    def _drop_embeddings(self) -> None:
        self.embeddings.clear()
        self.similarity.clear()
        for f in (self.folder / EMBED_DIR).glob("*.npy"):
            f.unlink()

    def _model_changed(self) -> None:
        """Maps are recomputed on demand; classifier embeddings (and the fast learner's
        features when they are the classifier's) are stale now."""
        if self.encoder_source == "classifier":
            self._drop_embeddings()
        if self.session.settings.features == "classifier":
            self._drop_features()

    def iter_embed(self, slide: str, *, encoder=None, cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Patch embeddings of a slide on the map grid (cached in the session); yields progress."""
        from .embed import embed_slide

        s = self._slide(slide)
        encoder = encoder or self.encoder()
        gen = iter_progress(embed_slide, s, encoder, stride=self.stride, tissue=s.tissue_map(self.stride), cancel=cancel)
        emb = yield from relay(gen, lambda dt: {"phase": "embed", "slide": slide, "done": dt[0], "total": dt[1]})
        self.embeddings[slide] = emb
        (self.folder / EMBED_DIR).mkdir(exist_ok=True)
        save_npy(self.folder / EMBED_DIR / f"{slide}.npy", emb)
        self.similarity.pop(slide, None)
        return emb

    def set_prototypes(self, path: str | os.PathLike[str]) -> None:
        """Use a prototype set (copied into the session as ``prototypes.npz``)."""
        import shutil

        from .prototypes import load_prototypes

        protos = load_prototypes(path)
        target = self.folder / PROTOTYPES_FILE
        if Path(path).resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
        self.prototypes = protos
        self.similarity.clear()

    def iter_similarity(self, slide: str, *, cls: str | None = None,
                        cancel: Callable[[], bool] | None = None) -> Generator[dict, None, np.ndarray]:
        """Max cosine similarity to the prototypes (embeds the slide first if needed)."""
        from .embed import similarity_map

        if self.prototypes is None:
            raise ValueError("load a prototype set first")
        if slide not in self.embeddings:
            yield from self.iter_embed(slide, cancel=cancel)
        sim = similarity_map(self.embeddings[slide], self.prototypes.of(cls))
        self.similarity[slide] = sim * self._slide(slide).tissue_map(self.stride)
        return self.similarity[slide]

    # -- proposals ------------------------------------------------------------------------
    def suggest(self, slide: str, method: str, *, region_size: int, k: int, seed: int | None = 0,
                **options: Any) -> list[Region]:
        """Propose k regions on ``slide``; replaces that method's earlier proposals there."""
        regions = self._select(slide, method, region_size=region_size, k=k, seed=seed, **options)
        return self._propose(slide, method, regions, region_size=region_size, k=k, seed=seed, options=options)

    def _select(self, slide: str, method: str, *, region_size: int, k: int, seed: int | None, **options: Any) -> list[Region]:
        """The regions ``method`` picks on ``slide`` now; changes nothing (raises what cannot run)."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        s = self._slide(slide)
        tissue = s.tissue_map(self.stride)
        if method == "random":
            priority = np.zeros(tissue.shape, np.float32)
        elif method == "prototype":
            if slide not in self.similarity:
                raise ValueError("prototype selection needs a similarity map: load prototypes and compute it first")
            priority = self.similarity[slide]
        elif slide in self.maps:
            priority = self.maps[slide].priority
        else:
            raise ValueError(f"{method} needs a priority map: compute one first (or use random)")
        if region_size % self.stride:
            raise ValueError(f"region_size ({region_size} px) must be a multiple of the map stride ({self.stride} px)")
        arrays = {need: self._needed_array(slide, need, region_size, options) for need in METHODS[method].needs}
        regions = select(method, priority, stride=self.stride, region_size=region_size, k=k, tissue=tissue,
                         annotated=self._taken(slide), seed=seed, slide=slide, cycle=self.cycle,
                         **arrays, **options)
        # one name per selector in the session (prototype records its base method itself)
        return [r.with_(method=method) for r in regions]

    def _taken(self, slide: str) -> list[Region]:
        """Where no selector proposes: the labeled set, and what the user dismissed."""
        return self.session.accepted_on(slide) + self.session.store.dismissed(slide)

    def _propose(self, slide: str, method: str, regions: list[Region], *, region_size: int, k: int, seed: int | None,
                 options: dict[str, Any]) -> list[Region]:
        """Make ``regions`` the proposals of ``method`` on ``slide`` and remember how to rerun it."""
        with self.session.changing() as session:  # a retrain's refresh runs this in its worker thread
            regions = session.propose(regions, slide=slide, method=method)
            plan = session.settings.suggest.setdefault(slide, {})
            plan[method] = SuggestPlan(int(region_size), int(k), None if seed is None else int(seed), _jsonable(options))
            self._autosave()
        return regions

    def _needed_array(self, slide: str, need: str, region_size: int, options: dict[str, Any]) -> np.ndarray:
        """Per-region embeddings (diversity) or per-patch descriptors (focannot) of a slide."""
        from .selection import needed_array

        return needed_array(need, self.cell_features(slide), region_size=region_size, stride=self.stride,
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
        if method == "prototype" and self.prototypes is None:
            raise ValueError("prototype selection needs a prototype set: load prototypes first")
        self._slide(slide)
        record = self.maps.get(slide)
        if method not in ("random", "prototype") and (record is None or record.cycle != self.cycle or record.measure != measure):
            yield from self.iter_priority(slide, measure=measure, cancel=cancel)
        if (METHODS[method].needs or method == "prototype") and slide not in self.embeddings:
            yield from self.iter_embed(slide, cancel=cancel)
        if method == "prototype" and slide not in self.similarity:
            yield from self.iter_similarity(slide, cancel=cancel)

    def cell_features(self, slide: str) -> np.ndarray:
        """(H, W, D) features per map cell: patch embeddings when computed, else the prediction."""
        if slide in self.embeddings:
            return self.embeddings[slide]
        if slide not in self.maps:
            raise ValueError("this method needs patch features: compute a priority map or embeddings first")
        return self.prediction(slide)

    def suggest_pool_diversity(self, *, region_size: int, n_per_slide: int, seed: int | None = 0) -> dict[str, list[Region]]:
        """Diversity over all slides: k-means of region embeddings into N·n clusters."""
        from .selection import diversity_pool
        from .selection.diversity import region_embeddings

        names = list(self.slides)
        if not names:
            raise ValueError("add slides first")
        size = region_size // self.stride
        # one kind of feature for the whole pool: embeddings when every slide has them
        cells = [self.embeddings[n] for n in names] if all(n in self.embeddings for n in names) else [self.prediction(n) for n in names]
        emb = [region_embeddings(c, size=size) for c in cells]
        chosen = diversity_pool(emb, stride=self.stride, region_size=region_size, n_per_slide=n_per_slide,
                                tissue=[self.slides[n].tissue_map(self.stride) for n in names],
                                annotated=[self.session.accepted_on(n) for n in names], rng=seed, slide_names=names)
        out = {}
        for n, regions in zip(names, chosen):
            regions = [r.with_(slide=n, cycle=self.cycle, method="diversity") for r in regions]
            out[n] = self.session.propose(regions) if regions else []
        self._autosave()
        return out

    def uncertain_by_group(self, *, n: int, region_size: int | None = None) -> dict[str, list[Region]]:
        """UGA: the n most uncertain patches of each slide group (``SlideEntry.group``)."""
        from .selection.top_patches import top_patches_by_group

        missing = [s for s in self.slides if s not in self.maps]
        if missing:
            raise ValueError(f"compute priority maps first (missing: {', '.join(missing)})")
        return top_patches_by_group(
            {s: self.maps[s].priority for s in self.slides}, {s: e.group for s, e in self.session.slides.items()},
            stride=self.stride, region_size=region_size or self.stride, n=n,
            tissue={s: self.slides[s].tissue_map(self.stride) for s in self.slides},
            annotated={s: self.session.accepted_on(s) for s in self.slides})

    def proposals(self, slide: str, method: str | None = None) -> list[Region]:
        return self.session.store.proposed(slide, method)

    def dismiss(self, region: Region) -> Region:
        """Dismiss a proposal: it is no longer offered, and no selector proposes its area
        again (as if annotated); the session keeps it as dismissed.

        Raises
        ------
        ValueError
            If ``region`` (by ``uid``) is not a proposal of the session.
        """
        with self.session.changing() as session:
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
        old = self.session.store.get(region.uid)
        if old is None or self.session.store.status(region.uid) != "proposed":
            raise ValueError(f"region: {region.uid!r} is not a proposal of this session")
        s = self.stride
        height, width = self._slide(old.slide).shape
        x0, x1 = sorted((x, x + w))
        y0, y1 = sorted((y, y + h))
        cx0, cy0 = max(0, round(x0 / s)), max(0, round(y0 / s))
        cx1, cy1 = min(-(-width // s), round(x1 / s)), min(-(-height // s), round(y1 / s))
        if cx0 >= -(-width // s) or cy0 >= -(-height // s) or cx1 <= 0 or cy1 <= 0:
            raise ValueError(f"region box {(x, y, w, h)} lies outside the slide ({width} x {height} px)")
        cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
        edited = old.with_(x=cx0 * s, y=cy0 * s, w=(cx1 - cx0) * s, h=(cy1 - cy0) * s)
        with self.session.changing() as session:
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
        s = self._slide(slide)
        priority = self.maps[slide].priority if slide in self.maps else np.zeros(s.map_shape(self.stride), np.float32)
        summaries, overlap = compare_proposals(out, priority, stride=self.stride, tissue=s.tissue_map(self.stride))
        return out, summaries, overlap

    # -- labeling -------------------------------------------------------------------------
    def accept(self, region: Region, *, prefill: str = "background") -> Region:
        """Move a region into the labeled set and open it for painting.

        Parameters
        ----------
        region : Region
            A proposal (by ``uid``) or a new rectangle on one of the slides.
        prefill : {"background", "prediction", "none"}
            What unlabeled pixels inside the region become: the first class (the common
            case: the pathologist paints only the tumour), the model's prediction (to
            correct uncertain patches), or left unlabeled.
        """
        if prefill not in ("background", "prediction", "none"):
            raise ValueError(f"prefill must be 'background', 'prediction' or 'none', got {prefill!r}")
        if region.slide not in self.slides:
            raise ValueError(f"region is on {region.slide!r}, which is not a slide of the session")
        if any(a.uid == region.uid for a in self.session.accepted if region.uid):
            return region
        accepted = self.session.accept(self.clipped(region))
        y0, x0, y1, x1 = self.label_box(accepted)
        labels = self.session.labels(accepted.slide)
        crop = labels[y0:y1, x0:x1]
        if prefill == "background":
            crop[crop == 0] = 1
        elif prefill == "prediction":
            crop[crop == 0] = self._predicted_labels(accepted)[crop == 0]
        self.session.mark_labels_changed(accepted.slide, (y0, x0, y1, x1))
        self._autosave()
        return accepted

    def remove_accepted(self, region: Region) -> Region:
        """Take an accepted region out of the labeled set, deleting the labels painted in it.

        Label pixels that another accepted region of the slide also covers are kept. The
        area can be proposed again; the model forgets the labels at the next retrain.

        Parameters
        ----------
        region : Region
            An accepted region (matched by ``uid``).

        Returns
        -------
        Region
            The removed region, as it was stored.

        Raises
        ------
        ValueError
            If the region is not in the labeled set.
        """
        removed = self.session.unaccept(region.uid)
        y0, x0, y1, x1 = self.label_box(removed)
        keep = _covered((y0, x0, y1, x1), [self.label_box(other) for other in self.session.accepted_on(removed.slide)])
        crop = self.session.labels(removed.slide)[y0:y1, x0:x1]
        crop[~keep] = 0
        self.session.mark_labels_changed(removed.slide, (y0, x0, y1, x1))
        self._autosave()
        return removed

    def accepted_overlapping(self, region: Region) -> list[Region]:
        """The other accepted regions of the slide whose labels share pixels with ``region``'s
        (a view of one region's labels is stale once another region's were written)."""
        box = self.label_box(region)
        out = []
        for other in self.session.accepted_on(region.slide):
            if other.uid != region.uid:
                rows, cols = _overlap(self.label_box(other), box)
                if rows.stop > rows.start and cols.stop > cols.start:
                    out.append(other)
        return out

    def _predicted_labels(self, region: Region) -> np.ndarray:
        """The model's class (label values) on the region's label pixels; background where unknown."""
        prob = self.prediction(region.slide)
        y0, x0, y1, x1 = self.label_box(region)
        f = self.label_factor(region.slide)
        rows = np.minimum((np.arange(y0, y1) * f // self.stride).astype(int), prob.shape[0] - 1)
        cols = np.minimum((np.arange(x0, x1) * f // self.stride).astype(int), prob.shape[1] - 1)
        p = prob[np.ix_(rows, cols)]
        known = np.isfinite(p).all(axis=-1)
        return np.where(known, np.argmax(np.nan_to_num(p), axis=-1) + 1, 1).astype(np.uint8)

    def _accepted(self, region: Region) -> Region:
        for a in self.session.accepted:
            if a.uid == region.uid:
                return a
        raise ValueError("labels can only be painted inside accepted regions: accept the region first")

    def region_view(self, region: Region) -> np.ndarray:
        """The session's labels inside an accepted region (labeling level), as a writable view:
        a Labels layer showing it paints into the session (then :meth:`labels_changed`), and
        the layers of overlapping regions share those pixels."""
        region = self._accepted(region)
        return self.session.label_view(region.slide, self.label_box(region))

    def labels_changed(self, region: Region, *, save: bool = True) -> int:
        """Record that the labels in ``region``'s view changed (painted, undone), and save
        (the chunks of this region only). Pixels whose value is no class (0 unlabeled,
        1..n) become unlabeled; returns how many there were."""
        region = self._accepted(region)
        box = self.label_box(region)
        view = self.session.label_view(region.slide, box)
        bad = view > len(self.classes)
        n_bad = int(bad.sum()) if bad.any() else 0
        if n_bad:
            view[bad] = 0
        self.session.mark_labels_changed(region.slide, box)
        if save:
            self.session.save()
        return n_bad

    def region_labels(self, region: Region) -> np.ndarray:
        """A copy of the labels inside an accepted region (labeling level)."""
        region = self._accepted(region)
        y0, x0, y1, x1 = self.label_box(region)
        return self.session.labels(region.slide)[y0:y1, x0:x1].copy()

    def write_region_labels(self, region: Region, data: np.ndarray) -> None:
        """Store painted labels of an accepted region and save (autosave per stroke batch)."""
        region = self._accepted(region)
        y0, x0, y1, x1 = self.label_box(region)
        data = np.asarray(data)
        if data.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"labels of this region must have shape {(y1 - y0, x1 - x0)}, got {data.shape}")
        if data.size and (data.min() < 0 or data.max() > len(self.classes)):
            raise ValueError(f"label values must be 0 (unlabeled) to {len(self.classes)}, got {data.min()}..{data.max()}")
        self.session.labels(region.slide)[y0:y1, x0:x1] = data
        self.session.mark_labels_changed(region.slide, (y0, x0, y1, x1))
        self._autosave()

    # -- training ---------------------------------------------------------------------------
    def candidates(self) -> list:
        from .model import labeled_candidates

        return labeled_candidates(self.slides, {n: self.session.labels(n) for n in self.slides}, level=self.label_level,
                                  patch_size=self.spec.patch_size)

    def train_config(self):
        """The cycle schedule (``model.CYCLE_SCHEDULE``, the simulation's too) within the
        session's budget: ``settings.training`` (a :class:`~napari_alregions.settings.TrainingBudget`)
        may set ``epochs``, ``patience``, ``patches_per_slide``, ``max_seconds`` (default 120 s;
        300 s for the first training; ``no_time_limit``: none), a step limit (``initial_steps``
        for the first training, ``fine_tune_steps`` after) and ``seed`` (added to the cycle number)."""
        from dataclasses import replace

        from .model import CYCLE_SCHEDULE

        b = self.session.settings.training
        steps = b.fine_tune_steps if self.trained else b.initial_steps
        return replace(
            CYCLE_SCHEDULE,
            epochs=b.epochs or CYCLE_SCHEDULE.epochs,
            patience=b.patience or CYCLE_SCHEDULE.patience,
            patches_per_slide=b.patches_per_slide or CYCLE_SCHEDULE.patches_per_slide,
            max_steps=steps,
            max_seconds=None if b.no_time_limit else (b.max_seconds or (120.0 if self.trained else 300.0)),
            seed=self._seed_base() + self.cycle,
        )

    def iter_retrain(self, *, deep: bool | None = None, cancel: Callable[[], bool] | None = None, refresh: bool = True,
                     measure: str | None = None) -> Generator[dict, None, dict]:
        """Retrain on all labels, then refresh the maps and proposals of every slide that has them.

        ``deep`` None: the session's learner (``settings.learner``, "fast" by default);
        False: the fast learner (:meth:`iter_fit_fast`: the head refits on cached features
        in seconds, and becomes the model in use); True: the deep learner
        (:meth:`_iter_retrain_deep`), which replaces the fast model only when it estimates
        better (in a session whose learner is "deep", as the simulation's ``--learner deep``,
        it is always the model in use).

        The summary's ``messages`` say how good the model is and why a model was or was not
        replaced.
        """
        if deep is None:
            deep = self.session.settings.learner == "deep"
        if deep:
            return (yield from self._iter_retrain_deep(cancel=cancel, refresh=refresh, measure=measure))
        trained_on = [r.uid for r in self.session.accepted]
        model = yield from self.iter_fit_fast(cancel=cancel)
        q = model.quality
        settings = self.session.settings
        self.fast = model
        status = "at chance" if q.at_chance else "new"
        messages = [f"the fast model is no better than chance on its labels ({q.describe()})"] if q.at_chance else []
        in_use = "fast"
        if settings.in_use == "deep" and self.trained:
            deep_auc = self._deep_val_auc()
            if deep_auc is not None and (q.auc is None or deep_auc > q.auc):
                in_use = "deep"
                messages.append(f"kept the deep model (validation AUC {deep_auc:.3f}) over the fast one: Deep retrain "
                                "to train it on the newest labels")
            else:
                messages.append("the fast model replaces the deep one, which estimates no better")
        summary = self._record_cycle(learner="fast", trained_on=trained_on, in_use=in_use, details={
            "train_steps": [0], "val_loss": [None], "val_auc": [_finite(q.auc)], "previous_val_loss": [None],
            "n_val": [q.n_samples], "model": [status], "messages": messages, "n_candidates": q.n_samples,
            "quality": f"fast model ({model.head}): {q.describe()}"})
        if refresh:
            yield from self._refresh(summary, measure, cancel)
        return summary

    def _record_cycle(self, *, learner: str, trained_on: list[str], in_use: str, details: dict,
                      checkpoints: list[str] | None = None) -> dict:
        """Append a cycle to the history with the model in use (and the CNN's new
        ``checkpoints``), saved at once; return its summary."""
        summary = {"cycle": self.cycle + 1, "learner": learner, "accepted_regions": len(self.session.accepted),
                   "annotated_pct": round(self.annotated_pct(), 4), **details}
        with self.session.changing() as session:  # in a worker thread, beside the viewer's autosaves
            if checkpoints is not None:
                session.checkpoints = checkpoints
            session.settings.in_use = in_use
            session.history.append(summary)
            self._set_trained_on(trained_on)
            session.save()
        return summary

    def _refresh(self, summary: dict, measure: str | None, cancel: Callable[[], bool] | None) -> Generator[dict, None, None]:
        """New maps of the slides that had one (their measure, unless ``measure``), and their proposals rerun."""
        for slide, record in list(self.maps.items()):
            yield from self.iter_priority(slide, measure=measure or record.measure, cancel=cancel)
            _, failed = self.refresh_suggestions(slide)
            summary["messages"] += [f"{slide}: {m} proposals not refreshed ({why})" for m, why in failed.items()]

    def _iter_retrain_deep(self, *, cancel: Callable[[], bool] | None = None, refresh: bool = True,
                           measure: str | None = None) -> Generator[dict, None, dict]:
        """Train every member on all labels (``model.iter_fit``: the simulation's training),
        then refresh.

        Each member trains from its current weights to convergence within the session's
        budget (:meth:`train_config`), on a validation split drawn from the labeled regions;
        a member whose current model is better on that split keeps it, and the summary's
        ``messages`` say so (and when a model is no better than chance). Yields training
        records (``phase`` "train"/"epoch" with ``member``), then the prediction progress of
        each slide that had a map. The old model stays in use until every member finished:
        a cancelled retrain changes nothing.

        Raises
        ------
        ValueError
            If no labeled patch exists (paint labels in an accepted region first).
        TrainingCancelled, InferenceCancelled
            When ``cancel()`` returned True.
        """
        from .model import iter_fit, save_checkpoint

        cands = self.candidates()
        if not cands:
            raise ValueError("no labels to train on: accept a region and paint labels in it first")
        trained_on = [r.uid for r in self.session.accepted]  # regions accepted meanwhile are still pending
        config = self.train_config()
        new_models, fits = [], []
        restart = self._deep_at_chance()
        for i, model in enumerate(self.models):
            member_config = replace(config, seed=config.seed * 100 + i)
            result = None
            # a member at chance after its last training starts again from new weights: fine-tuning
            # a model that learned nothing keeps it where it is
            fresh = restart[i] if i < len(restart) else False
            previous = model if self.trained and not fresh else None
            for rec in iter_fit(self.spec, cands, member_config, previous=previous, start=None if fresh else model,
                                cancel=cancel):
                if rec.get("done"):
                    result = rec["result"]
                else:
                    yield {**rec, "member": i, "members": len(self.models)}
            new_models.append(result.model.cpu())
            fits.append(result)
        cycle = self.cycle + 1
        who = (lambda i: f"member {i}: ") if len(fits) > 1 else (lambda i: "")
        in_use, messages = "deep", [who(i) + f.message() for i, f in enumerate(fits) if f.message()]
        messages += [who(i) + "trained from new weights: the last model was no better than chance"
                     for i, fresh in enumerate(restart[: len(fits)]) if fresh]
        if self.session.settings.learner != "deep":  # beside the fast learner: the better estimate is used
            fast = self.fast if self.fast is not None and not self.pending_regions else None
            if fast is None:
                try:
                    fast = yield from self.iter_fit_fast(cancel=cancel)
                except ValueError:  # no labeled sub-cell on tissue: nothing for the fast learner
                    fast = None
            aucs = [f.val_auc for f in fits if f.val_auc is not None and math.isfinite(f.val_auc)]
            deep_auc = float(np.mean(aucs)) if aucs else None
            fast_auc = fast.quality.auc if fast is not None else None
            if fast is None:
                messages.append("the deep model is used: the fast learner has no labeled tissue to learn from")
            elif deep_auc is not None and (fast_auc is None or deep_auc > fast_auc):
                messages.append(f"the deep model (validation AUC {deep_auc:.3f}) replaces the fast one "
                                f"({fast.quality.describe()})")
            else:
                in_use = "fast"
                deep_txt = "no validation AUC" if deep_auc is None else f"validation AUC {deep_auc:.3f}"
                messages.append(f"kept the fast model ({fast.quality.describe()}): the deep model ({deep_txt}) "
                                "does not estimate better")
        else:
            fast = self.fast
        # nothing is installed before here: a cancel or an error above leaves the session as it was
        paths = [save_checkpoint(self.session.checkpoint_path(f"cycle_{cycle:03d}_m{i}.pt"), m, self.spec, cycle=cycle)
                 for i, m in enumerate(new_models)]
        self.models = new_models
        self._model_changed()
        if self.session.settings.features != "classifier":  # (classifier features are stale now: refit later)
            self.fast = fast
        summary = self._record_cycle(learner="deep", trained_on=trained_on, in_use=in_use, details={
            "train_steps": [f.train.steps for f in fits],
            "val_loss": [_finite(f.val_loss) for f in fits],
            "val_auc": [_finite(f.val_auc) for f in fits],
            "previous_val_loss": [_finite(f.previous_val_loss) for f in fits],
            "n_val": [f.n_val for f in fits],
            "model": [f.status for f in fits],
            "messages": messages,
            "n_candidates": sum(len(c) for c in cands),
        }, checkpoints=[str(p.relative_to(self.folder)) for p in paths])
        if refresh:
            yield from self._refresh(summary, measure, cancel)
        return summary

    def _last_deep_cycle(self) -> dict:
        """The history's entry of the CNN's last training ({} when it has none; entries of
        earlier versions, without ``learner``, are the CNN's)."""
        return next((e for e in reversed(self.session.history) if e.get("learner", "deep") == "deep"), {})

    def _deep_val_auc(self) -> float | None:
        """The mean validation AUC of the CNN's last training, None when it has none."""
        aucs = [v for v in self._last_deep_cycle().get("val_auc", []) if v is not None]
        return float(np.mean(aucs)) if aucs else None

    def _deep_at_chance(self) -> list[bool]:
        """Per member: was the CNN at chance after its last deep training?"""
        return [status == "at chance" for status in self._last_deep_cycle().get("model", [])]

    def refresh_suggestions(self, slide: str) -> tuple[dict[str, list[Region]], dict[str, str]]:
        """Re-run every method last used on ``slide`` with its parameters (new map, new cycle).

        Returns the new proposals by method, and by method why it could not run (e.g. a
        prototype selector without a similarity map): those keep their proposals, and
        the other methods are refreshed all the same.
        """
        plan = self.session.settings.suggest.get(slide, {})
        done, failed = {}, {}
        for m, p in list(plan.items()):
            try:
                done[m] = self.suggest(slide, m, region_size=p.region_size, k=p.k, seed=p.seed, **p.options)
            except ValueError as exc:
                failed[m] = str(exc)
        return done, failed

    # -- QuPath -------------------------------------------------------------------------------
    def export_qupath(self, path: str | os.PathLike[str], slide: str, *, priority: bool = False) -> Path:
        """Regions (accepted and proposed) and labels of a slide as QuPath GeoJSON.

        With ``priority``, the slide's current priority map too: one QuPath tile per tissue
        cell with a ``priority`` measurement (QuPath's measurement maps colour it); an
        import skips the tiles.
        """
        s = self._slide(slide)
        if priority and slide not in self.maps:
            raise ValueError(f"{slide} has no priority map yet: compute one first")
        features = region_features(self.session.accepted_on(slide), self.proposals(slide))
        labels = self.session.labels(slide)
        features += labels_to_features(labels, classes=self.classes, colors=self.colors, factor=self.label_factor(slide),
                                       slide=slide, boxes=labeled_boxes(labels))
        if priority:
            record = self.maps[slide]
            features += priority_to_features(record.priority, stride=record.stride, mask=s.tissue_map(record.stride),
                                             metadata={"measure": record.measure, "cycle": record.cycle, "slide": slide})
        return write_features(path, features)

    def import_qupath(self, path: str | os.PathLike[str], slide: str, *, class_map: dict[str, str | None] | None = None,
                      max_region: float | None = None, dry_run: bool = False,
                      progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Read QuPath annotations: class polygons become labels, other polygons regions.

        The file is read as QuPath reads it (:func:`~napari_alregions.io_qupath.plan_import`):
        annotations only (detections, cells, tiles, TMA cores are skipped and counted);
        classes by their base name, matched case-insensitively, through synonyms
        (Tumor/Tumour) and ``class_map``; our own proposals (``Proposal: <method>``),
        unclassified outlines larger than ``max_region`` (tissue outlines) and annotations
        wholly outside the slide are skipped; those partly outside are cut to it; invalid
        polygons (bow-ties, rings traced twice) are repaired, as the message says.
        Every labeled polygon lies in an accepted region afterwards (its bounding box is
        accepted when no region holds it). When the file has no annotation of the first
        class (background), unlabeled pixels of imported regions become background, as
        with :meth:`accept`. Regions the labeled set already holds (same box) are not added
        again, so a file imported twice, or into the session that exported it, adds
        nothing twice.

        Parameters
        ----------
        path : str or PathLike
            A GeoJSON file (FeatureCollection, Feature or list of features).
        slide : str
            The session's slide the file annotates.
        class_map : dict of str to (str or None), optional
            QuPath class -> session class (None: skip that class).
        max_region : float, optional
            Largest side (level-0 px) of an unclassified outline taken as a region (larger
            ones are tissue outlines and skipped); by default 4x the largest region size
            suggested on the session (16 map cells when none was), at most half the
            slide's shorter side.
        dry_run : bool
            Only report what the import would do; nothing is written.
        progress : callable, optional
            Called with ``{"phase": "read" | "regions" | "labels", "done", "total"}`` as
            the import goes (100 000 polygons take tens of seconds).

        Returns
        -------
        dict
            ``regions`` (regions added to the labeled set), ``labeled_annotations``,
            ``skipped`` (total) and ``skipped_by`` (per reason), ``annotations`` and
            ``message`` (e.g. "12 annotations: 5 regions, 7 labels; skipped 1000
            detections").

        Raises
        ------
        ValueError
            For a malformed file or classes that match no session class (all listed);
            nothing is written then.
        """
        h, w = self._slide(slide).shape[:2]
        features = read_geojson(path)  # its errors name the file already
        try:
            plan, new = run(iter_import(features, classes=self.classes, class_map=class_map, extent=(w, h),
                                        max_region=self._max_region(slide) if max_region is None else max_region,
                                        accepted=self.session.accepted_on(slide), slide=slide), progress)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        summary = {"regions": len(new), "labeled_annotations": len(plan.labeled), "skipped": sum(plan.skipped.values()),
                   "skipped_by": dict(plan.skipped), "annotations": plan.annotations, "message": plan.message}
        if dry_run:
            return summary
        new = [self.session.accept(r) for r in new]
        labels = self.session.labels(slide)
        if not any(a.classification == self.classes[0] for a in plan.labeled):
            for r in new:
                y0, x0, y1, x1 = self.label_box(r)
                crop = labels[y0:y1, x0:x1]
                crop[crop == 0] = 1
        run(iter_rasterize(plan.labeled, labels, classes=self.classes, factor=self.label_factor(slide)), progress)
        # labels only inside accepted regions (looked for where labels are, not over the slide)
        boxes = [self.label_box(r) for r in self.session.accepted_on(slide)]
        for box in labeled_boxes(labels):
            labels[box.slices][~_covered(box, boxes)] = 0
            self.session.mark_labels_changed(slide, box)
        self.session.save()
        return summary

    def _max_region(self, slide: str) -> int:
        """Default bound on a region's side at import: 4x the largest suggested region size
        (16 map cells when none was), at most half the slide's shorter side."""
        sizes = [p.region_size for plan in self.session.settings.suggest.values() for p in plan.values()]
        return min(4 * max([int(v) for v in sizes if v] or [4 * self.stride]), min(self._slide(slide).shape[:2]) // 2)

    def close(self) -> None:
        """Close the slides and release the session's lock."""
        for s in self.slides.values():
            s.close()
        self.session.close()


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 5)


def _overlap(box: Box, other: Box) -> tuple[slice, slice]:
    """The part of ``box`` (y0, x0, y1, x1) that ``other`` covers, as slices of a crop of ``box``."""
    y0, x0, y1, x1 = box
    oy0, ox0, oy1, ox1 = other
    return (slice(max(oy0, y0) - y0, max(0, min(oy1, y1) - y0)), slice(max(ox0, x0) - x0, max(0, min(ox1, x1) - x0)))


def _covered(box: Box, others: Sequence[Box]) -> np.ndarray:
    """Which pixels of ``box`` (y0, x0, y1, x1) any of ``others`` covers, as a crop of ``box``."""
    y0, x0, y1, x1 = box
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for other in others:
        out[_overlap(box, other)] = True
    return out


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


def _save_map(path: Path, record: MapRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, probabilities=record.probabilities, priority=record.priority,
                            measure=np.array(record.measure), stride=np.array(record.stride), cycle=np.array(record.cycle))


def _load_map(path: Path) -> MapRecord | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return MapRecord(z["probabilities"], z["priority"], str(z["measure"]), int(z["stride"]), int(z["cycle"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # a damaged cache: the map is recomputed on demand
