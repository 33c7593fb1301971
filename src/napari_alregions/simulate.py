"""Simulated region-based active learning with a ground-truth oracle (SPEC §8).

The simulation drives the viewer's engine, :class:`~napari_alregions.project.AnnotationProject`,
with the ground truth as the annotator, so it measures the code a user runs. The protocol
of the adaptive-region paper (§2.1, §3): every training slide starts with k random regions
(>= 10 % tissue; the same initial set for every method); each cycle the project retrains on
*all* labels (``iter_retrain``: :func:`model.iter_fit` on a stable validation split drawn
from the labeled regions, to convergence, the best validation epoch kept, and the previous
model kept when it is better on that split), predicts least-confidence priority maps,
``suggest`` proposes k new regions per slide with the method under test, and every
proposal is accepted and labeled with the ground truth inside it. After every training
the model is scored on the held-out test slides: mIoU(tumour) at threshold 0.5 averaged
over the test slides with tumour, Dice, and the AUC of the tumour probability over all
test cells in tissue. ``repeats`` runs everything again from distinct initial sets and
seeds; the outputs give the mean and min/max over repeats, as the paper's Fig. 4."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Region
from .io_qupath import write_regions
from .metrics import iou_dice, roc_auc
from .priority import MEASURES
from .settings import TrainingBudget
from .wsi import Slide, open_labels, open_slide

__all__ = ["Pool", "SimConfig", "oracle_labels", "run_simulation", "write_outputs"]

logger = logging.getLogger(__name__)

TUMOUR, TISSUE = 2, 1


@dataclass(frozen=True)
class SimConfig:
    """Simulation settings; ``settings`` lists the (l, k) pairs (l in level-0 px).

    ``epochs``, ``patience`` and ``patches_per_slide`` override the cycle schedule
    (``model.CYCLE_SCHEDULE``, the viewer's too) when set.
    """

    methods: tuple[str, ...] = ("random", "standard", "standard_nonsquare", "adaptive")
    learner: str = "fast"  # "fast": features + head (the viewer's default); "deep": the CNN, the paper's protocol
    head: str = "blend"  # the fast learner's head: "blend" (forest + logistic), "forest" or "logistic"
    settings: tuple[tuple[int, int], ...] = ((384, 2),)
    cycles: int = 5
    seed: int = 0
    repeats: int = 1
    stride: int = 64
    level: int = 1
    patch_size: int = 64
    measure: str = "least_confidence"
    epochs: int | None = None
    patience: int | None = None
    patches_per_slide: int | None = None
    target: float = 0.95
    full_baseline: bool = True
    initial: tuple[str, ...] = ("random",)  # initial labeled set: random, diversity, prototype
    prototypes: str | None = None  # .npz prototype set (prototype initial set or method)
    encoder: str = "random"  # patch encoder for diversity/focannot/prototype (see embed.load_encoder)
    scheduler: str | None = None  # per-slide prediction on this dask scheduler ...
    local_cluster: int = 0  # ... or on a LocalCluster of N workers (0: in this process)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the setting that cannot run (before any work)."""
        from .selection import METHODS
        from .settings import HEADS, LEARNERS

        if not self.methods:
            raise ValueError("methods: name at least one selector")
        if self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {', '.join(LEARNERS)}, got {self.learner!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        for init in self.initial:
            if init not in INITIAL:
                raise ValueError(f"unknown initial strategy {init!r}; choose from {', '.join(INITIAL)}")
        if ("prototype" in self.methods or "prototype" in self.initial) and not self.prototypes:
            raise ValueError("prototype selection needs a prototype set (--prototypes FILE.npz)")
        if self.measure not in MEASURES or MEASURES[self.measure][1]:
            raise ValueError(f"measure must be a single-model measure, got {self.measure!r}")
        for name in ("cycles", "repeats", "stride", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "patience", "patches_per_slide"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or unset for the cycle schedule's), got {getattr(self, name)}")
        if self.level < 0:
            raise ValueError(f"level must be >= 0, got {self.level}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target must be in (0, 1] (a share of full-annotation mIoU), got {self.target}")
        if not self.settings:
            raise ValueError("settings: give at least one (region size, k) pair")
        for l_, k_ in self.settings:
            if l_ <= 0 or l_ % self.stride:
                raise ValueError(f"region size {l_} must be a positive multiple of the stride {self.stride}")
            if k_ < 1:
                raise ValueError(f"k (regions per slide and cycle) must be >= 1, got {k_}")

    @property
    def n_steps(self) -> int:
        """Progress messages a run sends: one per cycle of each method, and one per baseline."""
        per_repeat = len(self.methods) * len(self.initial) * len(self.settings) * self.cycles + int(self.full_baseline)
        return self.repeats * per_repeat

    def training(self, seed: int) -> TrainingBudget:
        """The project's training settings (``settings.training``) for one repeat: the
        viewer's cycle schedule (``model.CYCLE_SCHEDULE``) with this config's overrides, no
        time budget (so that the numbers repeat), seeds offset by ``seed``."""
        overrides = {k: getattr(self, k) for k in ("epochs", "patience", "patches_per_slide") if getattr(self, k) is not None}
        return TrainingBudget(**overrides, no_time_limit=True, seed=100 * seed)


@dataclass
class Pool:
    """A slide pool with ground truth at the working level.

    The pool's ``manifest.json`` lists slides with a ``split`` ("train" or "test") and their
    truth: ``mask``, a label TIFF (0 glass, 1 tissue, 2 tumour; as ``make-demo-data``
    writes), or ``annotations``, a QuPath GeoJSON whose tumour polygons (classification
    tumour or tumor, any case) are the truth and whose "Tissue" polygons, when present,
    outline the tissue (else the slide's tissue mask is used).
    """

    folder: Path
    train: list[str]
    test: list[str]
    slides: dict[str, Slide]
    truth: dict[str, np.ndarray]  # (H_l, W_l) uint8: 0 glass, 1 tissue, 2 tumour
    tissue: dict[str, np.ndarray]  # (H_map, W_map) bool
    level: int
    stride: int
    patch_size: int = 64  # at the working level: sets the truth rule of a map cell

    @classmethod
    def load(cls, folder: str | Path, *, level: int, stride: int, patch_size: int = 64) -> Pool:
        folder = Path(folder)
        path = folder / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no manifest.json (make one with `alregions make-demo-data`)")
        manifest = json.loads(path.read_text())
        slides, truth, tissue, train, test = {}, {}, {}, [], []
        for entry in manifest["slides"]:
            name = entry["name"]
            slide = open_slide(folder / entry["image"])
            if level >= slide.level_count:
                raise ValueError(f"{name}: working level {level} does not exist ({slide.level_count} levels)")
            if entry.get("mask"):
                # local threads: a distributed Client in this process must not receive file handles
                gt = np.asarray(open_labels(folder / entry["mask"])[level].compute(scheduler="threads"))
            elif entry.get("annotations"):
                gt = truth_from_geojson(slide, folder / entry["annotations"], level=level)
            else:
                raise ValueError(f"{path}: slide {name!r} has neither a 'mask' nor 'annotations' (its ground truth)")
            slides[name], truth[name] = slide, gt
            tissue[name] = slide.tissue_map(stride)
            (test if entry.get("split") == "test" else train).append(name)
        if not train or not test:
            raise ValueError(f"{folder}: the pool needs training and test slides (split in manifest.json)")
        return cls(folder, train, test, slides, truth, tissue, level, stride, patch_size)

    def truth_cells(self, name: str) -> np.ndarray:
        """Tumour at map resolution by the rule the model's patches are labeled with (the
        paper's): a cell is tumour when the centre area, (d/2)², of the patch predicted for
        it holds a tumour pixel; so the map and the truth describe the same cells."""
        from ._integral import box_sum, integral_image

        gt = self.truth[name]
        f = self.slides[name].level_factor(self.level)
        h, w = self.tissue[name].shape
        cell = self.stride / f  # working-level px per map cell
        side = self.patch_size // 2  # the centre area, as model.find_candidates labels it
        if side <= cell and cell == int(cell):
            c, off = int(cell), int(cell - side) // 2
            g = gt[: h * c, : w * c].reshape(h, c, w, c)
            return (g[:, off : off + side, :, off : off + side] == TUMOUR).any(axis=(1, 3))
        out = np.zeros((h, w), bool)  # windows wider than a cell: sums in the tumour's bounding box
        ys, xs = np.nonzero(gt == TUMOUR)
        if ys.size:
            cy = ((np.arange(h) + 0.5) * cell).astype(np.int64)[:, None]
            cx = ((np.arange(w) + 0.5) * cell).astype(np.int64)[None, :]
            oy, ox = ys.min(), xs.min()
            sub = integral_image(gt[oy : ys.max() + 1, ox : xs.max() + 1] == TUMOUR)
            half = side // 2
            y0, y1 = np.clip(cy - half - oy, 0, sub.shape[0] - 1), np.clip(cy + half - oy, 0, sub.shape[0] - 1)
            x0, x1 = np.clip(cx - half - ox, 0, sub.shape[1] - 1), np.clip(cx + half - ox, 0, sub.shape[1] - 1)
            out = box_sum(sub, y0, x0, y1, x1) > 0
        return out

    def close(self) -> None:
        for s in self.slides.values():
            s.close()


def truth_from_geojson(slide: Slide, path: str | Path, *, level: int) -> np.ndarray:
    """Ground truth (0 glass, 1 tissue, 2 tumour) at ``level`` from a QuPath GeoJSON.

    Read as a QuPath import reads (``io_qupath.plan_import``: annotations only, classes
    by base name with synonyms, so Tumor/Tumour/tumor are tumour): tumour polygons are 2,
    "Tissue" polygons are the tissue when present, else the slide's tissue mask is; other
    classes count as tissue, and a file without tumour is a negative slide. Holes are
    respected.
    """
    from skimage.transform import resize

    from .io_qupath import class_names, match_class, plan_import, qupath_objects, rasterize_annotations, read_features

    classes = ("tissue", "tumour")
    features = read_features(path)
    others = {}  # classes that are neither: tissue, not an error
    for _, _, f in qupath_objects(features):
        names = class_names((f.get("properties") or {}).get("classification"))
        if names and not match_class(names, classes)[0]:
            others[names[0]] = None
    plan = plan_import(features, classes=classes, class_map=others, extent=(slide.shape[1], slide.shape[0]))
    lh, lw = slide.levels[level].shape[:2]
    f = slide.level_factor(level)
    truth = np.zeros((lh, lw), np.uint8)
    tissue = [a for a in plan.labeled if a.classification == "tissue"]
    if tissue:
        rasterize_annotations(tissue, truth, classes=classes, factor=f)
    else:
        mask = slide.tissue_mask()
        truth[resize(mask, (lh, lw), order=0, preserve_range=True, anti_aliasing=False).astype(bool)] = TISSUE
    rasterize_annotations([a for a in plan.labeled if a.classification == "tumour"], truth, classes=classes, factor=f)
    return truth


def oracle_labels(truth: np.ndarray) -> np.ndarray:
    """The labels the oracle paints for a crop of ground truth (0 glass, 1 tissue, 2 tumour):
    the tumour class (label 2) where the truth is tumour, background (label 1) elsewhere,
    glass included (a pathologist's labeled region has no holes)."""
    return np.where(np.asarray(truth) == TUMOUR, 2, 1).astype(np.uint8)


INITIAL = ("random", "diversity", "prototype")


class _Oracle:
    """Drives :class:`~napari_alregions.project.AnnotationProject`, the viewer's engine,
    with the ground truth as the annotator: one project per repeat and method, copied from
    a template that holds the training slides, the encoder and the prototypes."""

    def __init__(self, pool: Pool, config: SimConfig, folder: Path, client=None,
                 detail: Callable[[str], None] | None = None) -> None:
        from .project import AnnotationProject, run

        self.pool, self.config, self.folder, self.client = pool, config, folder, client
        self.doing = ""  # the step under way, for the progress details
        self._detail = detail
        self._run = lambda gen: run(gen, self._report if detail is not None else None)
        self._test_features: dict = {}
        self.template = folder / "template"
        project = AnnotationProject.create(self.template, patch_size=config.patch_size, level=config.level,
                                           stride=config.stride)
        try:
            for n in pool.train:
                project.add_slide(pool.slides[n].path, name=n)
                shape = tuple(project.session.slides[n].label_shape)
                if pool.truth[n].shape != shape:
                    raise ValueError(f"{n}: its ground truth at level {config.level} is {pool.truth[n].shape}, "
                                     f"the slide's level is {shape}")
            if config.learner == "fast":  # features once, copied with the template into every project
                for n in pool.train:
                    run(project.iter_features(n))
            needs = set(config.methods) | set(config.initial)
            if needs & _EMBEDDING_METHODS:
                project.set_encoder(config.encoder)
                if config.prototypes:
                    project.set_prototypes(config.prototypes)
                if project.encoder_source != "classifier":  # an encoder that never changes: embed once
                    for n in pool.train:
                        run(project.iter_embed(n))
        finally:
            project.close()

    def _report(self, rec: dict) -> None:
        """A progress record of a long step as a line beside the bar."""
        phase = rec.get("phase")
        if phase == "epoch":
            what = f"training epoch {rec.get('epoch', '?')}"
        elif phase in ("predict", "features", "embed") and rec.get("total"):
            what = f"{phase} {rec.get('slide', '')} {100 * rec['done'] // max(1, rec['total'])} %"
        elif phase == "fit":
            what = "fitting the head"
        else:
            return
        self._detail(f"{self.doing}: {what}" if self.doing else what)

    def project(self, name: str, *, source: Path | None = None, seed: int | None = None):
        """A copy of ``source`` (default: the template) as ``name``; with ``seed``, a new
        untrained model seeded by it and the schedule of this config without time budget."""
        import shutil

        from .project import AnnotationProject

        folder = self.folder / name
        shutil.copytree(source or self.template, folder)
        project = AnnotationProject.open(folder)
        project.autosave = False  # saved once per cycle: the simulation has no viewer to lose work for
        project.estimate_quality = False  # the fast model is installed whatever its estimate: none is made
        if seed is not None:
            project.session.update_settings(training=self.config.training(seed), learner=self.config.learner,
                                            in_use=self.config.learner, head=self.config.head)
            spec = project.spec
            project.new_model(arch=spec.arch, patch_size=spec.patch_size, level=spec.level, stride=self.config.stride)
        return project

    def test_features(self, name: str):
        """The fast learner's features of a test slide (computed once per run: they depend on
        the slide and the encoder, never on the model)."""
        from .features import slide_features

        if name not in self._test_features:
            s = self.pool.slides[name]
            self._test_features[name] = slide_features(s, "texture", stride=self.config.stride, level=self.config.level,
                                                       tissue=self.pool.tissue[name])
        return self._test_features[name]

    def label(self, project, regions: Sequence[Region]) -> None:
        """Accept regions and paint the truth into them, as a pathologist ends in the viewer."""
        for r in regions:
            accepted = project.accept(r)
            y0, x0, y1, x1 = project.label_box(accepted)
            project.write_region_labels(accepted, oracle_labels(self.pool.truth[accepted.slide][y0:y1, x0:x1]))

    def inputs(self, project, method: str) -> None:
        """What ``method`` reads on every training slide, for the current model."""
        measure = self.config.measure
        if self.client is not None and method not in ("random", "prototype") and not project.fast_in_use:  # on the cluster
            stale = [n for n in self.pool.train if n not in project.maps or project.maps[n].cycle != project.cycle]
            for n, prob in _predict(project, {n: project.slides[n] for n in stale}, self.client).items():
                project.set_probabilities(n, prob, measure=measure)
        for n in self.pool.train:
            self._run(project.iter_inputs(n, method, measure=measure))

    def initial(self, project, strategy: str, l_: int, k_: int, seed: int) -> None:
        """Label the initial regions of every training slide (cycle 0)."""
        if strategy == "diversity":
            chosen = project.suggest_pool_diversity(region_size=l_, n_per_slide=k_, seed=seed)
            self.label(project, [r for n in self.pool.train for r in chosen[n]])
            return
        for i, n in enumerate(self.pool.train):
            self._run(project.iter_inputs(n, strategy))
            self.label(project, project.suggest(n, strategy, region_size=l_, k=k_, seed=seed * 1000 + i))

    def cycle(self, project, method: str, l_: int, k_: int, seed: int) -> None:
        """One cycle of the viewer's loop: proposals on every slide, all accepted and labeled."""
        self.inputs(project, method)
        new = []
        for i, n in enumerate(self.pool.train):
            new += project.suggest(n, method, region_size=l_, k=k_, seed=seed * 1000 + 97 * project.cycle + i)
        self.label(project, new)

    def retrain(self, project) -> tuple[dict[str, Any], dict[str, float]]:
        """The viewer's retrain (without its refresh), then the model scored on the test slides."""
        summary = self._run(project.iter_retrain(refresh=False))
        project.save()
        return summary, _evaluate(project, self.pool, self.client, self)

    def full_baseline(self, seed: int) -> dict[str, float]:
        """Every training slide labeled whole, trained as a cycle."""
        self.doing = "full annotation baseline"
        project = self.project(f"full_{seed}", seed=seed)
        try:
            for n in self.pool.train:
                h, w = project.slides[n].shape[:2]
                self.label(project, [Region(0, 0, w, h, method="full annotation", slide=n, cycle=0)])
            return self.retrain(project)[1]
        finally:
            self.discard(project)

    @staticmethod
    def discard(project) -> None:
        import shutil

        project.close()
        shutil.rmtree(project.folder, ignore_errors=True)


_EMBEDDING_METHODS = {"diversity", "focannot", "prototype"}


def _predict(project, slides: dict[str, Slide], client=None) -> dict[str, np.ndarray]:
    """Class probabilities (H, W, C) of slides by the project's model, on the cluster when
    there is a client."""
    from .model import predict_probability_map

    (model,) = project.models  # the simulation's model has one member
    if client is None:
        return {n: predict_probability_map(s, model, project.spec, stride=project.stride,
                                           tissue=s.tissue_map(project.stride)) for n, s in slides.items()}
    import tempfile

    from .distributed import PoolJob, run_pool, slide_name

    if not slides:
        return {}
    with tempfile.TemporaryDirectory(prefix="alregions-sim-") as tmp:
        files = run_pool([s.path for s in slides.values()], model, project.spec,
                         PoolJob("predict", stride=project.stride), tmp, client=client)
        return {n: np.load(files[slide_name(s.path)]) for n, s in slides.items()}


def _evaluate(project, pool: Pool, client=None, oracle: _Oracle | None = None) -> dict[str, float]:
    """mIoU and Dice (tumour) over the test slides with tumour; AUC over all test cells in tissue."""
    if oracle is not None and oracle._detail is not None:
        oracle._detail(f"{oracle.doing}: scoring the {len(pool.test)} test slides")
    if project.fast_in_use and oracle is not None:
        from .features import cell_px
        from .learner import predict_grid

        if project.fast is None:  # a reopened copy: the head of its last cycle refits from the cached features
            oracle._run(project.iter_fast_model())
        cfg = oracle.config
        probs = {n: predict_grid(project.fast, oracle.test_features(n), tissue=pool.tissue[n], patch_size=cfg.patch_size,
                                 cell_px=cell_px(cfg.stride, pool.slides[n].level_factor(cfg.level))) for n in pool.test}
    else:
        probs = _predict(project, {n: pool.slides[n] for n in pool.test}, client)
    ious, dices, scores, truths = [], [], [], []
    for n in pool.test:
        cells = pool.truth_cells(n)
        prob = np.nan_to_num(probs[n][..., 1], nan=0.0)
        tissue = pool.tissue[n]
        scores.append(prob[tissue])
        truths.append(cells[tissue])
        if cells.any():
            iou, dice = iou_dice(prob >= 0.5, cells)
            ious.append(iou)
            dices.append(dice)
    return {
        "miou": float(np.mean(ious)) if ious else math.nan,
        "dice": float(np.mean(dices)) if dices else math.nan,
        "auc": roc_auc(np.concatenate(scores), np.concatenate(truths)),
        "n_test": len(ious),
    }


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Same command, same numbers: deterministic torch algorithms while the simulation runs."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _r(v: float | None, digits: int = 6) -> float:
    return round(float(v), digits) if v is not None and math.isfinite(v) else math.nan


def run_simulation(
    pool_folder: str | Path,
    config: SimConfig = SimConfig(),
    *,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    detail: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the simulation for every repeat, (l, k) setting and method.

    Each method of each repeat runs in an
    :class:`~napari_alregions.project.AnnotationProject` (the viewer's engine, in a
    temporary folder): every cycle it calls the project's ``suggest`` for the method on
    each training slide, accepts every proposal, writes the ground truth's labels into it
    (``write_region_labels``, where the viewer's painting ends) and retrains
    (``iter_retrain``), so its training candidates, tissue rule and annotated share are
    the viewer's. Cycle 0 (the initial set and its training) runs once per repeat,
    setting and initial strategy, and its project is copied for each method.

    Returns a dict with ``rows`` (one per repeat, method, setting and cycle), ``full`` (the
    full-annotation baseline: mean, min and max mIoU over repeats, Dice, AUC), ``timings``
    (wall seconds per cycle, kept out of ``rows`` so that those are the same from run to
    run), ``regions`` (final regions per method and setting, of the first repeat) and
    ``regions_by_repeat`` (those of each repeat). With ``out``, also writes ``results.csv``,
    ``timings.csv``, ``table.md``, ``area_vs_miou.png`` and the final regions as QuPath
    GeoJSON, one file per method and setting, repeat and slide (QuPath imports per image):
    ``regions/<method>_l<l>_k<k>/repeat<r>/<slide>.geojson``.
    ``progress(message)`` is called once per cycle and baseline (a step), ``detail(message)``
    within one (the epoch being trained, the slide being predicted).
    """
    import tempfile

    config.validate()
    say = progress or (lambda msg: None)
    pool = Pool.load(pool_folder, level=config.level, stride=config.stride, patch_size=config.patch_size)
    from .distributed import close, connect

    client = connect(config.scheduler, config.local_cluster)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    final_regions: dict[str, list[Region]] = {}
    regions_by_repeat: dict[str, list[list[Region]]] = {}
    full_runs: list[dict[str, float]] = []
    try:
        with _deterministic(), tempfile.TemporaryDirectory(prefix="alregions-sim-") as tmp:
            oracle = _Oracle(pool, config, Path(tmp), client, detail)
            for rep in range(config.repeats):
                seed = config.seed + 1000 * rep  # distinct initial sets and training seeds per repeat
                if config.full_baseline:
                    full_runs.append(oracle.full_baseline(seed))
                    say(f"full annotation baseline (repeat {rep}): mIoU {full_runs[-1]['miou']:.3f}")
                for l_, k_ in config.settings:
                    for init in config.initial:
                        t0 = time.perf_counter()
                        oracle.doing = f"repeat {rep} cycle 0 (l={l_}, k={k_}, initial {init})"
                        base = oracle.project(f"r{rep}_l{l_}_k{k_}_{init}", seed=seed)
                        try:
                            oracle.initial(base, init, l_, k_, seed)
                            first = oracle.retrain(base)
                            for method in config.methods:  # maps and embeddings once, copied with the project
                                oracle.inputs(base, method)
                            base.save()
                            shared_s = time.perf_counter() - t0
                            for method in config.methods:
                                label = method if len(config.initial) == 1 else f"{method} (init {init})"
                                rows_, regions = _run_method(oracle, base.folder, first, label, method, init, l_, k_,
                                                             rep, seed, timings, say, shared_s)
                                shared_s = 0.0  # cycle 0's work is timed with the first method
                                rows += rows_
                                key = f"{label.replace(' ', '_').replace('(', '').replace(')', '')}_l{l_}_k{k_}"
                                regions_by_repeat.setdefault(key, []).append(regions)
                                if rep == 0:
                                    final_regions[key] = regions
                        finally:
                            oracle.discard(base)
    finally:
        pool.close()
        close(client)
    result = {"rows": rows, "full": _full_summary(full_runs), "regions": final_regions,
              "regions_by_repeat": regions_by_repeat, "timings": timings, "config": config.to_dict()}
    if out is not None:
        write_outputs(result, Path(out))
    return result


def _run_method(oracle: _Oracle, base: Path, first, label, method, init, l_, k_, rep, seed, timings, say,
                shared_s: float) -> tuple[list[dict[str, Any]], list[Region]]:
    """The cycles of one method in one repeat, in a copy of the repeat's cycle-0 project."""
    config = oracle.config
    t0 = time.perf_counter()
    project = oracle.project(f"{base.name}_{method}", source=base)
    rows = []
    try:
        for cycle in range(config.cycles):
            if cycle:
                oracle.doing = f"{label} repeat {rep} cycle {cycle}"
                t0 = time.perf_counter()
                oracle.cycle(project, method, l_, k_, seed)
                summary, scores = oracle.retrain(project)
            else:
                summary, scores = first
            rows.append({
                "repeat": rep, "learner": config.learner, "method": label, "initial": init, "region_size": l_, "k": k_, "cycle": cycle,
                "annotated_area_pct": _r(summary["annotated_pct"], 4), "miou_tumour": _r(scores["miou"]),
                "dice_tumour": _r(scores["dice"]), "auc_tumour": _r(scores["auc"]), "n_test_slides": scores["n_test"],
                "n_regions": summary["accepted_regions"], "n_candidates": summary["n_candidates"],
                "train_steps": summary["train_steps"][0],
                "val_loss": _r(summary["val_loss"][0]), "val_auc": _r(summary["val_auc"][0]),
                "model": summary["model"][0],
            })
            status = summary["model"][0]
            say(f"{label} l={l_} k={k_} repeat {rep} cycle {cycle}: area {summary['annotated_pct']:.2f}%  "
                f"mIoU {scores['miou']:.3f}" + (f" ({status})" if status != "new" else ""))
            timings.append({"repeat": rep, "method": label, "region_size": l_, "k": k_, "cycle": cycle,
                            "wall_s": round(time.perf_counter() - t0 + (0 if cycle else shared_s), 2)})
        # the labeled set as regions (without the session's random uids: the same from run to run)
        return rows, [r.with_(uid=None) for n in oracle.pool.train for r in project.session.accepted_on(n)]
    finally:
        oracle.discard(project)


def _full_summary(runs: Sequence[dict[str, float]]) -> dict[str, Any]:
    if not runs:
        return {"miou": math.nan, "miou_min": math.nan, "miou_max": math.nan, "dice": math.nan, "auc": math.nan,
                "n_test_slides": 0, "repeats": []}
    mious = [r["miou"] for r in runs]
    return {"miou": float(np.mean(mious)), "miou_min": float(np.min(mious)), "miou_max": float(np.max(mious)),
            "dice": float(np.mean([r["dice"] for r in runs])), "auc": float(np.mean([r["auc"] for r in runs])),
            "n_test_slides": runs[0]["n_test"], "repeats": [dict(r) for r in runs]}


def _of(rows: Sequence[dict], method: str, l_: int, k_: int) -> list[dict]:
    return [r for r in rows if r["method"] == method and r["region_size"] == l_ and r["k"] == k_]


def area_to_reach(rows: Sequence[dict], method: str, l_: int, k_: int, goal: float, *, repeat: int | None = None) -> float | None:
    """Annotated area (%) at the first cycle whose mIoU reaches ``goal`` (in one repeat); None if never."""
    mine = [r for r in _of(rows, method, l_, k_) if repeat is None or r.get("repeat", 0) == repeat]
    for r in sorted(mine, key=lambda r: r["cycle"]):
        if r["miou_tumour"] >= goal:
            return r["annotated_area_pct"]
    return None


def _labels(result: dict[str, Any]) -> list[str]:
    """Method labels in run order (a method per initial strategy when there are several)."""
    return list(dict.fromkeys(r["method"] for r in result["rows"])) or list(result["config"]["methods"])


def _repeats(rows: Sequence[dict]) -> list[int]:
    return sorted({int(r.get("repeat", 0)) for r in rows})


def _spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """'mean (min–max)', or the value alone for one repeat."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.mean(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def results_table(result: dict[str, Any]) -> str:
    """Markdown tables like the adaptive paper's Table 1, over repeats: the annotated area
    each method needs to reach the goal, and the mIoU it ends with."""
    cfg = result["config"]
    rows, full = result["rows"], result["full"]
    goal = cfg["target"] * full["miou"]
    settings = [tuple(s) for s in cfg["settings"]]
    reps = _repeats(rows)
    n = len(reps)
    full_txt = _spread([r["miou"] for r in full.get("repeats", [])], "{:.3f}") if full.get("repeats") else f"{full['miou']:.3f}"
    head = "| method | " + " | ".join(f"k={k}, l={l}" for l, k in settings) + " |"
    rule = "|" + "---|" * (len(settings) + 1)
    lines = [
        f"Annotated tissue area (%) needed to reach {100 * cfg['target']:.0f}% of full-annotation mIoU(tumour) "
        f"({full_txt} → goal {goal:.3f}); " + (f"mean (min–max) over {n} repeats; " if n > 1 else "")
        + f"'/' = not reached in {cfg['cycles']} cycles" + (", r/N = reached in r of N repeats" if n > 1 else "") + ".",
        "",
        head,
        rule,
    ]
    first = [r["miou_tumour"] for r in rows if r["cycle"] == 0 and math.isfinite(r["miou_tumour"])]
    if first and math.isfinite(full["miou"]) and full["miou"] < np.mean(first):
        lines[0:0] = [f"**Warning:** the full-annotation baseline ({full['miou']:.3f}) is below the mean mIoU at cycle 0 "
                      f"({np.mean(first):.3f}): it is no ceiling (a training cut short?), and an area that 'reaches' "
                      "it says nothing.", ""]
    for m in _labels(result):
        cells = []
        for l_, k_ in settings:
            areas = [area_to_reach(rows, m, l_, k_, goal, repeat=rep) for rep in reps]
            got = [a for a in areas if a is not None]
            cell = "/" if not got else _spread(got)
            if got and len(got) < n:
                cell += f", {len(got)}/{n}"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"mIoU(tumour) at the last cycle (annotated area %), over {_test_slides(result)}"
              + (f"; mean (min–max) over {n} repeats" if n > 1 else "") + ":", "", head, rule]
    for m in _labels(result):
        cells = []
        for l_, k_ in settings:
            last = [max((r for r in _of(rows, m, l_, k_) if r.get("repeat", 0) == rep), key=lambda r: r["cycle"])
                    for rep in reps if any(r.get("repeat", 0) == rep for r in _of(rows, m, l_, k_))]
            cells.append(_spread([r["miou_tumour"] for r in last], "{:.3f}") + " ("
                         + _spread([r["annotated_area_pct"] for r in last]) + " %)" if last else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _test_slides(result: dict[str, Any]) -> str:
    """How many test slides with tumour the mIoU averages over: counted by the baseline, or
    by the cycles when it did not run (``--no-baseline``)."""
    n = result["full"].get("n_test_slides") or max((int(r.get("n_test_slides", 0)) for r in result["rows"]), default=0)
    return f"{n} test slide{'' if n == 1 else 's'} with tumour" if n else "no test slide with tumour (mIoU undefined)"


def _write_csv(path: Path, rows: Sequence[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.csv, timings.csv, table.md, area_vs_miou.png and the final regions,
    regions/<method>_l<l>_k<k>/repeat<r>/<slide>.geojson."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if result["rows"]:
        paths["csv"] = _write_csv(out / "results.csv", result["rows"])
    if result.get("timings"):
        paths["timings"] = _write_csv(out / "timings.csv", result["timings"])
    (out / "table.md").write_text(results_table(result))
    paths["table"] = out / "table.md"
    full = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result["full"].items()}
    (out / "full_annotation.json").write_text(json.dumps(full, indent=1))
    paths["plot"] = _plot(result, out / "area_vs_miou.png")
    by_repeat = result.get("regions_by_repeat") or {key: [regions] for key, regions in result["regions"].items()}
    for key, repeats in by_repeat.items():
        for rep, regions in enumerate(repeats):
            folder = out / "regions" / key / f"repeat{rep}"
            folder.mkdir(parents=True, exist_ok=True)
            for slide in dict.fromkeys(r.slide for r in regions):
                write_regions(folder / f"{slide}.geojson", [r for r in regions if r.slide == slide])
    paths["regions"] = out / "regions"
    return paths


def _mean_curve(rows: Sequence[dict]) -> tuple[np.ndarray, ...]:
    """Per cycle over repeats: mean area, mean mIoU, min and max mIoU."""
    cycles = sorted({r["cycle"] for r in rows})
    by = [[r for r in rows if r["cycle"] == c] for c in cycles]
    area = np.array([np.mean([r["annotated_area_pct"] for r in b]) for b in by])
    miou = [np.array([r["miou_tumour"] for r in b], dtype=float) for b in by]
    return area, np.array([m.mean() for m in miou]), np.array([m.min() for m in miou]), np.array([m.max() for m in miou])


def _plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    settings = [tuple(s) for s in cfg["settings"]]
    n = len(_repeats(result["rows"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.2), squeeze=False)
    for ax, (l_, k_) in zip(axes[0], settings, strict=True):
        for i, m in enumerate(_labels(result)):
            mine = _of(result["rows"], m, l_, k_)
            if not mine:
                continue
            area, mean, lo, hi = _mean_curve(mine)
            colour = f"C{i}"
            ax.plot(area, mean, marker="o", ms=4, color=colour, label=m)
            if n > 1:
                ax.fill_between(area, lo, hi, color=colour, alpha=0.15, lw=0)
        full = result["full"]
        if np.isfinite(full["miou"]):
            ax.axhline(full["miou"], ls="--", c="k", lw=1, label="full annotation" + (" (mean, min–max)" if n > 1 else ""))
            if n > 1 and np.isfinite(full.get("miou_min", np.nan)):
                ax.axhspan(full["miou_min"], full["miou_max"], color="k", alpha=0.07, lw=0)
            ax.axhline(cfg["target"] * full["miou"], ls=":", c="0.35", lw=1, label=f"{cfg['target']:.0%} of it (the table's goal)")
        ax.set_title(f"l = {l_} px, k = {k_}" + (f": mean and min–max of {n} repeats" if n > 1 else ""), fontsize=10)
        ax.set_xlabel("annotated tissue area (%)")
        ax.set_ylabel(f"mIoU (tumour), {_test_slides(result)}")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
