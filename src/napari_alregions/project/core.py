"""The annotation project: one session, its open slides and model, and the loop's actions."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..session import Session, SessionError, file_fingerprint
from ..wsi import Slide, open_slide
from .fast import FastLearning
from .labeling import Labeling
from .mapping import PROTOTYPES_FILE, MapMaker
from .qupath import QuPathLink
from .suggestion import Suggestion
from .training import Training

#: Default class colours (RGB) for the first classes: background grey, tumour red.
DEFAULT_COLORS = [(160, 160, 160), (220, 30, 30), (40, 160, 40), (30, 90, 220), (230, 160, 0), (150, 0, 200)]


class _Via:
    """A facade attribute served by one of the project's parts (``project.<part>.<name>``)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(getattr(obj, self.part), self.name)


class AnnotationProject:
    """A session being annotated: slides, model, maps and the active-learning loop.

    The state lives in the :class:`~napari_alregions.session.Session` (regions, labels,
    maps, settings, with their events) and in the model; the actions are those of its parts,
    each a module named for its job: :mod:`.labeling` (``labeling``), :mod:`.mapping`
    (``mapping``), :mod:`.suggestion` (``suggestion``), :mod:`.fast` and :mod:`.training`
    (``fast``, ``training``) and :mod:`.qupath` (``qupath``). This class opens and closes
    the project and serves each part's actions under one name.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.slides: dict[str, Slide] = {}
        self.fast = None  # learner.FastModel: the fast learner's fitted head (refit from the cache on open)
        #: cross-validate the fast model at each fit (the status line, fast vs. deep); the
        #: simulation, which decides nothing by it, sets this False (a third of its time)
        self.estimate_quality = True
        self.prototypes = None  # PrototypeSet
        self.models: list = []
        self.spec = None
        #: What opening found and repaired (damaged caches, labels of no region), for the user.
        self.open_messages: list[str] = []
        # accept, label writes, removals and proposals save at once; a batch caller (the
        # simulation) sets this False and calls save() when its batch is done
        self.autosave = True
        self.labeling = Labeling(self)
        self.mapping = MapMaker(self)
        self.suggestion = Suggestion(self)
        self.fast_learning = FastLearning(self)
        self.training = Training(self)
        self.qupath = QuPathLink(self)

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
        project.open_messages += [session.lock_note] if session.lock_note else []
        try:
            project._load()
        except BaseException:
            project.close()
            raise
        return project

    def _load(self) -> None:
        from ..model import CheckpointError, ModelSpec, load_checkpoint

        session = self.session
        for name, entry in session.slides.items():
            if not Path(entry.path).exists():  # a file, or a folder (OME-Zarr, a DICOM series)
                raise SessionError(f"slide {name!r}: {entry.path} is missing (moved or deleted?)")
            if entry.size is not None and file_fingerprint(entry.path, like=entry.digest) != (entry.size, entry.digest):
                raise SessionError(f"slide {name!r}: {entry.path} is not the file added to this session (its size or "
                                   "content changed: replaced by another slide?); put the original back")
            self.slides[name] = slide = open_slide(entry.path)
            if entry.label_shape is not None and (entry.label_level >= slide.level_count
                                                  or tuple(slide.levels[entry.label_level].shape[:2]) != entry.label_shape):
                raise SessionError(f"slide {name!r}: {entry.path} does not have the size it had when added "
                                   f"(labels {entry.label_shape} at level {entry.label_level}); put the original back")
            session.set_label_factor(name, slide.level_factor(entry.label_level))
        self.spec = spec = ModelSpec.from_dict(session.settings.model)
        if session.checkpoints:
            try:
                self.models = [load_checkpoint(session.folder / p, expect=spec)[0] for p in session.checkpoints]
            except (FileNotFoundError, CheckpointError) as exc:
                raise SessionError(f"{session.folder}: the session's model cannot be loaded ({exc})") from exc
        else:
            self.models = [self.training._build(i) for i in range(self.n_members)]
        for name, slide in self.slides.items():
            self.open_messages += session.maps.load(name, map_shape=slide.map_shape)
        self.labeling._drop_orphan_labels()
        if (session.folder / PROTOTYPES_FILE).is_file():
            from ..prototypes import load_prototypes

            self.prototypes = load_prototypes(session.folder / PROTOTYPES_FILE)

    def close(self) -> None:
        """Close the slides and release the session's lock."""
        for s in self.slides.values():
            s.close()
        self.session.close()

    # -- state ----------------------------------------------------------------------------
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
        from ..model import pick_device

        return str(pick_device())

    @property
    def pending_regions(self) -> int:
        """Accepted regions the model has not been trained on yet."""
        trained = set(self.session.settings.trained_on)
        return sum(r.uid not in trained for r in self.session.accepted)

    @property
    def maps(self) -> Mapping[str, Any]:
        """Each slide's :class:`~napari_alregions.maps.MapRecord` (read-only: the session's)."""
        return self.session.maps.of("priority")

    @property
    def embeddings(self) -> Mapping[str, Any]:
        """Patch embeddings (H, W, D) by slide (read-only: the session's)."""
        return self.session.maps.of("embeddings")

    @property
    def similarity(self) -> Mapping[str, Any]:
        """Prototype similarity maps by slide (read-only: the session's)."""
        return self.session.maps.of("similarity")

    @property
    def feature_grids(self) -> Mapping[str, Any]:
        """The fast learner's :class:`~napari_alregions.features.FeatureGrid` by slide."""
        return self.session.maps.of("features")

    @property
    def current_slide(self) -> str | None:
        """The slide the user works on (restored on reopen), None when there is none."""
        name = self.session.settings.current
        return name if name in self.slides else next(iter(self.slides), None)

    def set_current_slide(self, name: str) -> None:
        """Remember ``name`` as the slide the user works on (saved with the session)."""
        self._slide(name)
        if self.session.settings.current != name:
            self.session.update_settings(current=name)
            self._autosave()

    def save(self) -> None:
        """Write the session now (what :attr:`autosave` would have written after each change;
        labels: the chunks marked since the last save)."""
        self.session.save()

    def _autosave(self) -> None:
        if self.autosave and not self.session.read_only:
            self.session.save()

    # -- slides ---------------------------------------------------------------------------
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
        self.slides[name] = slide
        self.session.add_slide(name, Path(path).resolve(), label_shape=slide.levels[level].shape[:2], label_level=level,
                               group=group, label_factor=slide.level_factor(level))
        self.session.save()
        return name

    def _slide(self, name: str) -> Slide:
        if name not in self.slides:
            raise KeyError(f"no slide {name!r} in the session (slides: {', '.join(self.slides) or 'none'})")
        return self.slides[name]

    def label_factor(self, slide: str) -> float:
        return self._slide(slide).level_factor(self.label_level)

    def label_box(self, region):
        """The label pixels of a level-0 region (rounded outwards), as a :class:`~napari_alregions.geometry.Box`."""
        return self.session.label_box(region)  # (a KeyError naming the slides for a slide not open)

    # -- the parts' actions, under one name ---------------------------------------------------
    clipped = _Via("labeling")
    tissue_labels = _Via("labeling")
    annotated_pct = _Via("labeling")
    accept = _Via("labeling")
    remove_accepted = _Via("labeling")
    accepted_overlapping = _Via("labeling")
    region_view = _Via("labeling")
    labels_painted = _Via("labeling")
    labels_changed = _Via("labeling")
    region_labels = _Via("labeling")
    write_region_labels = _Via("labeling")
    region_summary = _Via("labeling")

    iter_priority = _Via("mapping")
    set_probabilities = _Via("mapping")
    prediction = _Via("mapping")
    encoder_source = _Via("mapping")
    set_encoder = _Via("mapping")
    encoder = _Via("mapping")
    iter_embed = _Via("mapping")
    set_prototypes = _Via("mapping")
    iter_similarity = _Via("mapping")
    cell_features = _Via("mapping")

    fast_in_use = _Via("fast_learning")
    set_learner = _Via("fast_learning")
    iter_features = _Via("fast_learning")
    iter_fit_fast = _Via("fast_learning")
    iter_fast_model = _Via("fast_learning")
    iter_predict = _Via("fast_learning")

    suggest = _Via("suggestion")
    iter_inputs = _Via("suggestion")
    suggest_pool_diversity = _Via("suggestion")
    uncertain_by_group = _Via("suggestion")
    proposals = _Via("suggestion")
    dismiss = _Via("suggestion")
    edit_proposal = _Via("suggestion")
    compare = _Via("suggestion")
    refresh_suggestions = _Via("suggestion")
    empty_reason = _Via("suggestion")

    new_model = _Via("training")
    load_model = _Via("training")
    save_model = _Via("training")
    set_training = _Via("training")
    candidates = _Via("training")
    train_config = _Via("training")
    iter_retrain = _Via("training")

    export_qupath = _Via("qupath")
    export_qupath_all = _Via("qupath")
    import_qupath = _Via("qupath")
