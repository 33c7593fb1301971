"""The fast learner's head: a classifier on frozen features that fits in seconds (SPEC §6).

Samples are the *sub-cells* of a :class:`~napari_alregions.features.FeatureGrid` (a map
cell split ``sub`` x ``sub``): a 256-px region gives 16 map cells at stride 64, but 256
labeled sub-cells, each labeled precisely (by its own pixels). A sub-cell's
features, standardised per slide (:attr:`FeatureGrid.mean`), are its own and the means over two neighbourhoods (about 40 and 120 px: the
context a pathologist reads a nest in). A map cell's probability follows the label rule
of the deep learner and of the simulation's truth (a cell is positive when the centre of
its patch holds a positive pixel): the highest positive probability among the sub-cells
under that centre.

Heads (scikit-learn): ``"blend"`` (the default), the soft vote of ``"forest"``, a random
forest (balanced per bootstrap sample, leaves of 5 or more), and ``"logistic"``, a
standardised logistic regression (balanced classes). The blend is steadier than either
as regions are added: on the real H&E case and the synthetic pool its mean AUC did not fall
from cycle to cycle where the forest's fell by 0.05 (benchmarks/RESULTS.md). While the labels
hold one class only, the head is a novelty score against them (:class:`OneClassHead`). Quality is
estimated on the labeled set by cross-validation grouped by labeled area (sub-cells of one
region are never split between training and testing) and stratified by class; when the
labels hold too few areas, by stratified cross-validation over sub-cells (optimistic, and
said so); never on an empty or one-class split (then there is no estimate, and a reason).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .features import FeatureGrid
from .geometry import labeled_boxes
from .settings import HEADS

__all__ = ["HEADS", "FastModel", "Quality", "TrainingSet", "estimate_quality", "fit_head", "predict_grid",
           "context_features", "centre_sub_cells", "training_set"]

MAX_SAMPLES = 20000  # sub-cells a head fits on at most (drawn per class): fits stay in seconds
CV_SAMPLES = 4000  # sub-cells the quality estimate's folds draw from (drawn per class)
FOREST_TREES = 100
FOREST_GROUPS = 10  # sub-forests: the ensemble members of the disagreement measures
CV_FOLDS = 3
POSITIVE_SHARE = 0.25  # share of a sub-cell's pixels that makes it positive in a binary task


@dataclass(frozen=True)
class Quality:
    """A head's estimated quality on the labeled set.

    ``auc``: the out-of-fold ROC AUC (binary: of the positive class; multi-class: macro
    one-vs-rest), None when no estimate could be made (``reason`` says why).
    ``scheme``: how the folds were made.
    """

    auc: float | None
    scheme: str
    n_samples: int
    n_per_class: tuple[int, ...]
    reason: str = ""

    @property
    def at_chance(self) -> bool:
        return self.auc is not None and self.auc < 0.6

    def describe(self) -> str:
        counts = "/".join(str(n) for n in self.n_per_class)
        if self.auc is None:
            return f"no quality estimate ({self.reason}; {counts} sub-cells per class)"
        return f"AUC {self.auc:.3f} by {self.scheme} ({counts} sub-cells per class)"


@dataclass
class TrainingSet:
    """Window features ``x`` (N, F), classes ``y`` (N,) and labeled-area ids ``groups`` (N,)."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    n_classes: int

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> tuple[int, ...]:
        return tuple(int(v) for v in np.bincount(self.y, minlength=self.n_classes))


@dataclass
class FastModel:
    """A fitted head: ``predict_grid`` turns a slide's features into class probabilities."""

    head: str
    estimator: object
    n_classes: int
    quality: Quality
    classes_: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # classes seen in training

    @property
    def has_members(self) -> bool:
        """Whether the head holds a forest, whose sub-forests are an ensemble."""
        return self.head in ("forest", "blend")

    def _columns(self, proba: np.ndarray) -> np.ndarray:
        out = np.zeros((len(proba), self.n_classes), np.float32)
        out[:, self.classes_] = proba
        return out

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of sub-cell features (classes never labeled get 0)."""
        return self._columns(self.estimator.predict_proba(x))

    def predict_members(self, x: np.ndarray) -> np.ndarray:
        """(E, N, C): the forest's sub-forests (E = 10; in a blend each averaged with the
        logistic regression, as the blend averages them) for disagreement measures; (1, N, C)
        for a head without a forest."""
        if not self.has_members:
            return self.predict_proba(x)[None]
        forest = self.estimator if self.head == "forest" else self.estimator.named_estimators_["forest"]
        linear = None if self.head == "forest" else self.estimator.named_estimators_["logistic"].predict_proba(x)
        trees = forest.estimators_
        groups = np.array_split(np.arange(len(trees)), min(FOREST_GROUPS, len(trees)))
        out = []
        for g in groups:
            acc = np.zeros((len(x), len(self.classes_)), np.float64)
            for t in g:
                acc += trees[t].predict_proba(x)
            acc /= len(g)
            out.append(self._columns(acc if linear is None else (acc + linear) / 2))
        return np.stack(out)


CONTEXT_PX = (40, 120)  # sides (working-level px) of the two neighbourhoods a sub-cell's features add


def context_sizes(px: int) -> tuple[int, ...]:
    """Odd neighbourhood sides, in sub-cells of ``px`` px, of :data:`CONTEXT_PX` (at least 3).

    Examples
    --------
    >>> context_sizes(8), context_sizes(16)
    ((5, 15), (3, 7))
    """
    return tuple(max(3, int(round(c / px)) // 2 * 2 + 1) for c in CONTEXT_PX)


def context_features(block: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """A sub-cell's features and the NaN-aware means over its ``sizes`` neighbourhoods.

    Parameters
    ----------
    block : (h, w, D) float ndarray
        Sub-cell features (NaN off tissue).
    sizes : sequence of odd int
        Neighbourhood sides in sub-cells (the image is mirrored at the block's edges).

    Returns
    -------
    (h, w, D · (1 + len(sizes))) float32 ndarray; NaN where the sub-cell itself is NaN.

    Examples
    --------
    >>> b = np.arange(9, dtype=float).reshape(3, 3, 1)
    >>> context_features(b, [3])[1, 1].tolist()
    [4.0, 4.0]
    """
    from scipy.ndimage import uniform_filter

    block = np.asarray(block, np.float32)
    finite = np.isfinite(block)
    vals = np.where(finite, block, 0.0).astype(np.float32)
    weight = finite[..., :1].astype(np.float32)
    out = [block]
    for size in sizes:
        num = uniform_filter(vals, size=(size, size, 1), mode="mirror")
        den = uniform_filter(weight, size=(size, size, 1), mode="mirror")
        out.append(num / np.maximum(den, 1e-6))
    x = np.concatenate(out, axis=-1)
    x[~finite.all(axis=-1)] = np.nan
    return x


def _grid_block(grid: FeatureGrid, r0: int, c0: int, r1: int, c1: int, margin: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Context features of sub-cells [r0, r1) x [c0, c1), computed on a block read with
    ``margin`` sub-cells around it (where the slide has them); the slices of the inner part."""
    hs, ws = grid.data.shape[:2]
    br0, bc0, br1, bc1 = max(0, r0 - margin), max(0, c0 - margin), min(hs, r1 + margin), min(ws, c1 + margin)
    block = grid.standardised(slice(br0, br1), slice(bc0, bc1))
    return block, (slice(r0 - br0, r1 - br0), slice(c0 - bc0, c1 - bc0))


def merge_boxes(boxes: Sequence[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Overlapping boxes (y0, x0, y1, x1) merged into their common bounding box, until none
    overlap: each sub-cell is then a sample once, and in one cross-validation group.

    Examples
    --------
    >>> merge_boxes([(0, 0, 4, 4), (2, 2, 6, 6), (10, 10, 12, 12)])
    [(0, 0, 6, 6), (10, 10, 12, 12)]
    """
    out = [tuple(int(v) for v in b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return out


def _sub_px(grid: FeatureGrid, cell: int, name: str = "") -> int:
    px = cell // grid.sub
    if px * grid.sub != cell:
        raise ValueError(f"{name}: a cell of {cell} px does not split into {grid.sub} sub-cells")
    return px


def training_set(grids: Mapping[str, FeatureGrid], labels: Mapping[str, np.ndarray], *,
                 cell_px: int | Mapping[str, int], n_classes: int,
                 boxes: Mapping[str, Sequence[tuple[int, int, int, int]]] | None = None) -> TrainingSet:
    """The labeled sub-cells of every slide with their context features.

    A sub-cell is a sample when all its label pixels are labeled; its class is the
    majority of its pixels, except in a binary task, where a quarter of positive pixels
    makes it positive (:data:`POSITIVE_SHARE`: a small focus or a brush stroke counts).
    Samples are precise: the any-pixel rule of a whole cell would call cells of mostly
    background tumour.

    Parameters
    ----------
    grids : mapping of slide name to FeatureGrid
    labels : mapping of slide name to (H_l, W_l) uint8 label mask at the features' level
        (0 unlabeled, class i + 1).
    cell_px : int or mapping of slide name to int
        Map cell side in label px (``stride`` / the level's downsample), per slide or for all.
    n_classes : int
    boxes : mapping of slide name to boxes (y0, x0, y1, x1), optional
        Where the labels are (label px; e.g. the accepted regions): each box, overlapping
        ones merged (:func:`merge_boxes`), is one group of the cross-validation. Default:
        the bounding boxes of the labeled areas.
    """
    xs, ys, gs = [], [], []
    group = 0
    for name, grid in grids.items():
        mask = labels.get(name)
        if mask is None:
            continue
        px = _sub_px(grid, int(cell_px if isinstance(cell_px, int) else cell_px[name]), name)
        sizes = context_sizes(px)
        hs, ws = grid.data.shape[:2]
        where = labeled_boxes(mask) if boxes is None else merge_boxes(boxes.get(name, []))
        for y0, x0, y1, x1 in where:
            r0, c0 = -(-int(y0) // px), -(-int(x0) // px)  # sub-cells wholly inside the box
            r1, c1 = min(hs, int(y1) // px), min(ws, int(x1) // px)
            if r1 <= r0 or c1 <= c0:
                group += 1
                continue
            block, inner = _grid_block(grid, r0, c0, r1, c1, max(sizes) // 2)
            feats = context_features(block, sizes)[inner]
            lab = np.asarray(mask[r0 * px : r1 * px, c0 * px : c1 * px]).reshape(r1 - r0, px, c1 - c0, px)
            full = (lab > 0).all(axis=(1, 3))
            counts = np.stack([(lab == v + 1).sum(axis=(1, 3)) for v in range(n_classes)], axis=-1)
            cls = np.argmax(counts, axis=-1)
            if n_classes == 2:  # a stroke across a quarter of a sub-cell makes it positive (small foci count)
                cls = (counts[..., 1] >= POSITIVE_SHARE * px * px).astype(int)
            keep = full & np.isfinite(feats).all(axis=-1)
            xs.append(feats[keep])
            ys.append(cls[keep])
            gs.append(np.full(int(keep.sum()), group))
            group += 1
    if not xs:
        dim = next((g.dim * (1 + len(CONTEXT_PX)) for g in grids.values()), 0)
        return TrainingSet(np.zeros((0, dim), np.float32), np.zeros(0, int), np.zeros(0, int), n_classes)
    return TrainingSet(np.concatenate(xs), np.concatenate(ys).astype(int), np.concatenate(gs), n_classes)


def _subsample(ts: TrainingSet, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``limit`` sub-cells, the rarest classes kept whole where they fit."""
    if len(ts) <= limit:
        return np.arange(len(ts))
    counts = np.bincount(ts.y, minlength=ts.n_classes)
    order = np.argsort(counts)
    left, budget, keep = int((counts > 0).sum()), limit, []
    for c in order:
        if counts[c] == 0:
            continue
        idx = np.flatnonzero(ts.y == c)
        share = budget // left
        take = idx if len(idx) <= share else np.sort(rng.choice(idx, share, replace=False))
        keep.append(take)
        budget -= len(take)
        left -= 1
    return np.sort(np.concatenate(keep))


def _estimator(head: str, seed: int, *, trees: int = FOREST_TREES):
    if head == "forest":
        from sklearn.ensemble import RandomForestClassifier

        # leaves of 5 or more samples: a forest that one more region does not swing
        return RandomForestClassifier(n_estimators=trees, min_samples_leaf=5, max_features="sqrt",
                                      class_weight="balanced_subsample", n_jobs=min(4, os.cpu_count() or 1),
                                      random_state=seed)
    if head == "logistic":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000))
    if head == "blend":
        from sklearn.ensemble import VotingClassifier

        return VotingClassifier([("forest", _estimator("forest", seed, trees=trees)),
                                 ("logistic", _estimator("logistic", seed))], voting="soft")
    raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def _auc(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import roc_auc_score

    present = np.unique(y)
    if n_classes == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    scores = [roc_auc_score(y == c, proba[:, c]) for c in present]
    return float(np.mean(scores))


def _fold_aucs(x: np.ndarray, y: np.ndarray, splits, head: str, seed: int, n_classes: int) -> list[float]:
    """AUC of each fold with both classes on each side (the others cannot be scored)."""
    aucs = []
    for tr, te in splits:
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
            continue
        est = _estimator(head, seed, trees=FOREST_TREES // 2)
        est.fit(x[tr], y[tr])
        cols = np.zeros((len(te), n_classes), np.float32)
        cols[:, est.classes_] = est.predict_proba(x[te])
        aucs.append(_auc(y[te], cols, n_classes))
    return aucs


def estimate_quality(ts: TrainingSet, *, head: str = "blend", seed: int = 0) -> Quality:
    """Cross-validated AUC of ``head`` on the labeled sub-cells (see the module docstring):
    the mean over folds that hold both classes on each side."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = ts.counts()
    present = [c for c in range(ts.n_classes) if counts[c]]
    if len(present) < 2:
        return Quality(None, "", len(ts), counts, "labels of one class only" if present else "no labeled sub-cells")
    rng = np.random.default_rng(seed)
    idx = _subsample(ts, CV_SAMPLES, rng)
    x, y, g = ts.x[idx], ts.y[idx], ts.groups[idx]
    groups_per_class = min(len(np.unique(g[y == c])) for c in present)
    if groups_per_class >= 2:
        folds = StratifiedGroupKFold(n_splits=min(CV_FOLDS, groups_per_class), shuffle=True, random_state=seed)
        aucs = _fold_aucs(x, y, folds.split(x, y, g), head, seed, ts.n_classes)
        if aucs:
            return Quality(float(np.mean(aucs)), f"cross-validation over labeled areas ({len(aucs)} folds)", len(ts), counts)
    n_min = min(int((y == c).sum()) for c in present)
    if n_min < 2:
        return Quality(None, "", len(ts), counts, "too few sub-cells of a class to cross-validate")
    folds = StratifiedKFold(n_splits=min(CV_FOLDS, n_min), shuffle=True, random_state=seed)
    aucs = _fold_aucs(x, y, folds.split(x, y), head, seed, ts.n_classes)
    return Quality(float(np.mean(aucs)), f"cross-validation over sub-cells ({len(aucs)} folds; optimistic: "
                   "too few labeled areas of each class to hold one out)", len(ts), counts)


class OneClassHead:
    """What labels of one class teach: how unlike them a sub-cell is (novelty).

    Features are standardised on the labeled sub-cells; a sub-cell's novelty is its mean
    squared z-score ``d²``; the probability of "another class" is ``d² / (d² + t²)``, with
    ``t²`` the 95th percentile of the labeled sub-cells' own ``d²`` (so it is ½ at the edge of
    what was labeled). The map ranks cells by how unlike the labels they are, and proposals
    go there, instead of a flat map that proposes nothing.
    """

    def __init__(self, label: int, n_classes: int) -> None:
        self.label, self.n_classes = label, n_classes
        self.classes_ = np.arange(n_classes)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None) -> OneClassHead:
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.maximum(x.std(axis=0), 1e-3 * (np.abs(self.mean_) + 1e-3))
        self.t2_ = max(float(np.percentile(self._d2(x), 95)), 1e-6)
        return self

    def _d2(self, x: np.ndarray) -> np.ndarray:
        return np.mean(((x - self.mean_) / self.scale_) ** 2, axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        d2 = self._d2(np.asarray(x, np.float64))
        other = d2 / (d2 + self.t2_)
        out = np.repeat((other / max(1, self.n_classes - 1))[:, None], self.n_classes, axis=1)
        out[:, self.label] = 1.0 - other
        return out


def fit_head(ts: TrainingSet, *, head: str = "blend", seed: int = 0, quality: bool = True) -> FastModel:
    """Fit ``head`` on the labeled sub-cells (at most :data:`MAX_SAMPLES`, drawn per class).

    Raises
    ------
    ValueError
        If there are no labeled sub-cells, or for an unknown head.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if not len(ts):
        raise ValueError("no labeled sub-cells on tissue to train on: label inside an accepted region on tissue first")
    rng = np.random.default_rng(seed)
    idx = _subsample(ts, MAX_SAMPLES, rng)
    est = _estimator(head, seed)
    classes = np.unique(ts.y[idx])
    if len(classes) == 1:  # one class labeled: novelty against it (see OneClassHead)
        est, head = OneClassHead(int(classes[0]), ts.n_classes), "novelty"
    est.fit(ts.x[idx], ts.y[idx])
    q = estimate_quality(ts, head=head, seed=seed) if quality and head in HEADS else Quality(
        None, "", len(ts), ts.counts(), "labels of one class only" if head == "novelty" else "not estimated")
    return FastModel(head, est, ts.n_classes, q, np.asarray(est.classes_, int))


def centre_sub_cells(cell: int, sub: int, patch_size: int) -> slice:
    """The sub-cells of a cell (``cell`` px, ``sub`` per side) that the centre area of a
    ``patch_size`` patch ((d/2)², the label rule's) overlaps. A centre area wider than the
    cell (a patch more than twice the cell) is cut to the cell: its neighbours' sub-cells
    are not read.

    Examples
    --------
    >>> centre_sub_cells(64, 4, 64), centre_sub_cells(32, 4, 64)
    (slice(1, 3, None), slice(0, 4, None))
    """
    px = cell / sub
    half = patch_size // 4
    lo, hi = cell / 2 - half, cell / 2 + half
    return slice(max(0, int(math.floor(lo / px))), min(sub, int(math.ceil(hi / px))))


def _cell_positive(p: np.ndarray) -> np.ndarray:
    """A cell's positive probability from its centre sub-cells' (E, h, a, w, b): the highest."""
    return np.nanmax(p, axis=(2, 4))


def predict_grid(model: FastModel, grid: FeatureGrid, *, cell_px: int, patch_size: int,
                 tissue: np.ndarray | None = None, rows_per_chunk: int = 32, members: bool = False) -> np.ndarray:
    """Class probabilities on the map grid: (H, W, C), or (E, H, W, C) with ``members``
    (the forest's sub-forests); NaN outside tissue.

    Sub-cells are predicted and a cell gets, in a binary task, the highest positive
    probability of the sub-cells under its centre area (the label rule: a cell is positive
    when its centre holds a positive pixel), in a multi-class task the mean over its
    sub-cells. ``grid`` is read in row chunks, so a zarr-backed grid of a large slide is
    never loaded whole.
    """
    h, w = grid.map_shape
    sub = grid.sub
    px = _sub_px(grid, cell_px)
    sizes = context_sizes(px)
    centre = centre_sub_cells(cell_px, sub, patch_size)
    e = FOREST_GROUPS if members and model.has_members else 1
    c = model.n_classes
    out = np.full((e, h, w, c), np.nan, np.float32)
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        block, inner = _grid_block(grid, r0 * sub, 0, r1 * sub, w * sub, max(sizes) // 2)
        feats = context_features(block, sizes)[inner]
        ok = np.isfinite(feats).all(axis=-1)
        if tissue is not None:
            ok &= np.repeat(np.repeat(np.asarray(tissue[r0:r1], bool), sub, 0), sub, 1)
        if not ok.any():
            continue
        x = feats[ok]
        p = model.predict_members(x) if e > 1 else model.predict_proba(x)[None]
        subs = np.full((e, (r1 - r0) * sub, w * sub, c), np.nan, np.float32)
        subs[:, ok] = p
        subs = subs.reshape(e, r1 - r0, sub, w, sub, c)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells (off tissue) stay NaN
            if c == 2:
                pos = _cell_positive(subs[:, :, centre, :, centre, 1])
                cells = np.stack([1.0 - pos, pos], axis=-1)
            else:
                cells = np.nanmean(subs, axis=(2, 4))
        out[:, r0:r1] = cells
    if tissue is not None:
        out[:, ~np.asarray(tissue, bool)] = np.nan
    return out if members else out[0]

