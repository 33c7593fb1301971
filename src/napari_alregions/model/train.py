"""Training and incremental fine-tuning of a patch classifier (SPEC §6).

Training is a generator of progress records (``iter_train``) so that the CLI can drive a
progress bar, a napari thread worker can yield to the event loop, and tests can run it
synchronously; :func:`train` and :func:`fine_tune` consume it.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelSpec
from .data import PatchCandidates, augment, normalise, read_patches
from .device import autocast, pick_device

__all__ = ["CYCLE_SCHEDULE", "FitResult", "TrainConfig", "TrainResult", "TrainingCancelled", "Validation", "fine_tune", "fit", "iter_fit", "iter_train", "train",
           "validation_split"]


class TrainingCancelled(RuntimeError):
    """Raised when a cancel callback asked training to stop; the caller's model is untouched."""


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule (SPEC §6, §8).

    An epoch draws ``patches_per_slide`` patches from every slide with labels (balanced
    positive/negative where a slide has both), and at least ``min_epoch_patches`` in all,
    so that early stopping compares epochs of a useful size however few slides there are,
    and at least one patch per ``candidates_per_patch`` training candidates, so that a
    larger labeled set gets the longer training it needs to converge.
    Training stops after ``epochs``, ``max_steps`` or ``max_seconds``, or when the
    validation loss has not improved for ``patience`` epochs; the weights of the best
    validation epoch are kept.
    """

    epochs: int = 30
    patches_per_slide: int = 20
    min_epoch_patches: int = 256
    candidates_per_patch: int = 32
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    val_per_class: int = 256
    patience: int = 8
    max_steps: int | None = None
    max_seconds: float | None = None
    seed: int = 0


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_val_auc: float = math.nan
    steps: int = 0
    stopped: str = "epochs"
    validation: Validation | None = None

    @property
    def at_chance(self) -> bool:
        """The best epoch was no better than chance on the validation patches."""
        return self.validation is not None and self.validation.at_chance(self.best_val_loss, self.best_val_auc)


def _slide_key(c: PatchCandidates) -> str:
    return Path(getattr(c.slide, "path", "") or str(id(c.slide))).name


def validation_split(candidates: Sequence[PatchCandidates], fraction: float) -> tuple[list[PatchCandidates], list[PatchCandidates]]:
    """Split candidates into training and validation by spatial blocks (4 patches wide).

    A block goes to validation by a hash of (slide file name, block), not a random draw,
    so the split is stable as labels grow: a patch held out in one cycle stays held out in
    the next, and models of two cycles can be compared on the same patches. Neighbouring
    patches share a block, so they do not leak between the two sets. Validation gets at
    least one block when there are two or more, and one block holding positives when
    positives lie in two or more blocks.
    """
    blocks = []  # (u, slide index, key, has positive)
    keys_of = []
    for i, c in enumerate(candidates):
        block = (c.centres // (4 * c.patch_size)).astype(np.int64)
        keys = block[:, 0] * 1_000_003 + block[:, 1]
        keys_of.append(keys)
        name = _slide_key(c)
        uniq, inverse = np.unique(keys, return_inverse=True)
        positive = np.bincount(inverse, weights=c.labels > 0, minlength=len(uniq)) > 0
        for key, has_pos in zip(uniq.tolist(), positive.tolist(), strict=True):
            blocks.append((zlib.crc32(f"{name}:{key}".encode()) / 2**32, i, key, has_pos))
    held = {(i, k) for u, i, k, _ in blocks if u < fraction}
    pos = [b for b in blocks if b[3]]
    if pos and all(b[1:3] in held for b in pos):  # positives must train
        held.discard(max(pos)[1:3])
    if len(pos) >= 2 and not any(b[1:3] in held for b in pos):  # ... and be validated when they can
        held.add(min(pos)[1:3])
    if not held and len(blocks) >= 2:
        spare = [b for b in blocks if not (b[3] and len(pos) == 1)]
        if spare:
            held.add(min(spare)[1:3])
    if blocks and len(held) == len(blocks):  # keep something to train on
        held.discard(max(blocks)[1:3])
    train, val = [], []
    for i, (c, keys) in enumerate(zip(candidates, keys_of, strict=True)):
        mask = np.isin(keys, [k for j, k in held if j == i])
        train.append(PatchCandidates(c.slide, c.level, c.patch_size, c.centres[~mask], c.labels[~mask]))
        val.append(PatchCandidates(c.slide, c.level, c.patch_size, c.centres[mask], c.labels[mask]))
    return [t for t in train if len(t)], [v for v in val if len(v)]


class Validation:
    """The held-out patches of one training, read once, and how a model scores on them.

    The loss is class-balanced cross-entropy (the mean over classes of each class's mean
    loss), so that a validation set with few positives still judges the positives; chance
    (uniform probabilities) is ln(C). The AUC is one-vs-rest, averaged over the classes
    present with both outcomes.
    """

    def __init__(self, candidates: Sequence[PatchCandidates], spec: ModelSpec, per_class: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        items = []
        for c in candidates:
            items += [(c, i) for i in range(len(c))]
        labels = np.array([c.labels[i] for c, i in items], dtype=np.int64)
        keep = []
        for v in np.unique(labels):
            idx = np.flatnonzero(labels == v)
            keep += sorted(rng.choice(idx, size=min(per_class, idx.size), replace=False).tolist())
        items = [items[j] for j in sorted(keep)]
        self.spec = spec
        self.labels = labels[sorted(keep)]
        self.batches = [_load_batch(items[b : b + 64], spec) for b in range(0, len(items), 64)]
        self.n_classes = len(spec.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def probabilities(self, model: nn.Module, device=None) -> np.ndarray:
        device = pick_device(device)
        model.eval()
        out = []
        with torch.no_grad():
            for x, _ in self.batches:
                xt = normalise(torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).to(device), self.spec.mean, self.spec.std)
                with autocast(device):
                    logits = model(xt)
                out.append(torch.softmax(logits.float(), 1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)

    def score(self, model: nn.Module, device=None) -> tuple[float, float]:
        """(class-balanced loss, AUC) of ``model`` on these patches."""
        from ..metrics import roc_auc

        p = self.probabilities(model, device).astype(np.float64)
        nll = -np.log(np.clip(p[np.arange(len(p)), self.labels], 1e-12, 1.0))
        loss = float(np.mean([nll[self.labels == v].mean() for v in np.unique(self.labels)]))
        aucs = [roc_auc(p[:, v], self.labels == v) for v in np.unique(self.labels)]
        aucs = [a for a in aucs if math.isfinite(a)]
        if self.n_classes == 2 and aucs:
            aucs = aucs[-1:]  # binary: the positive class (both are the same number)
        return loss, (float(np.mean(aucs)) if aucs else math.nan)

    def at_chance(self, loss: float, auc: float) -> bool:
        """Whether scores this bad mean the model learned nothing it can show here: a loss
        within 3 % of chance's ln(C), or an AUC under 0.6."""
        return loss > 0.97 * math.log(self.n_classes) or (math.isfinite(auc) and auc < 0.6)


def _draw(cands: Sequence[PatchCandidates], n_per_slide: int, rng: np.random.Generator):
    """Balanced draw: positives and negatives with equal probability where both exist."""
    picks = []
    for c in cands:
        pos = np.flatnonzero(c.labels > 0)
        neg = np.flatnonzero(c.labels == 0)
        for _ in range(n_per_slide):
            pool = pos if (pos.size and (not neg.size or rng.random() < 0.5)) else neg
            if pool.size == 0:
                pool = np.arange(len(c))
            picks.append((c, int(pool[rng.integers(pool.size)])))
    order = rng.permutation(len(picks))
    return [picks[i] for i in order]


def _load_batch(items, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    by_slide: dict[int, list[int]] = {}
    for j, (c, i) in enumerate(items):
        by_slide.setdefault(id(c), []).append(j)
    x = np.empty((len(items), spec.patch_size, spec.patch_size, 3), dtype=np.uint8)
    y = np.empty(len(items), dtype=np.int64)
    for js in by_slide.values():
        c = items[js[0]][0]
        idx = [items[j][1] for j in js]
        x[js] = read_patches(c.slide, c.centres[idx], level=c.level, patch_size=c.patch_size)
        y[js] = c.labels[idx]
    return x, y


def iter_train(
    model: nn.Module,
    spec: ModelSpec,
    candidates: Sequence[PatchCandidates],
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[dict]:
    """Train ``model`` in place, yielding a progress record after every step.

    Validation patches come from :func:`validation_split`; each epoch ends with their
    class-balanced loss and AUC (:class:`Validation`). The last record has ``"done": True``
    and ``"result"``: a :class:`TrainResult` whose model holds the weights of the epoch
    with the lowest validation loss (early stopping), and ``at_chance`` true when even
    that epoch was no better than chance.

    Raises
    ------
    ValueError
        If there is nothing to train on (no labeled patch).
    TrainingCancelled
        If ``cancel()`` returns True; ``model`` keeps its weights from before the call.
    """
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train_c, val_c = validation_split(candidates, config.val_fraction)
    if not train_c:
        raise ValueError("no labeled patches to train on: annotate regions (with tissue) first")
    n_train = sum(len(c) for c in train_c)
    device = pick_device(device)
    original = copy.deepcopy(model.state_dict())
    home = next(model.parameters()).device
    model.to(device)
    epoch = max(config.min_epoch_patches, math.ceil(n_train / config.candidates_per_patch))
    per_slide = max(config.patches_per_slide, math.ceil(epoch / len(train_c)))
    steps_per_epoch = max(1, math.ceil(len(train_c) * per_slide / config.batch_size))
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # a short warm-up: early stopping then compares epochs whose learning rate is falling
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 2), pct_start=0.15)
    # Plain cross-entropy: the draw is balanced already. Class weights on top of it (as
    # before) pushed P(tumour) up by a factor that changed with every cycle's label counts.
    loss_fn = nn.CrossEntropyLoss()
    validation = Validation(val_c, spec, config.val_per_class, config.seed + 1) if val_c else None
    result = TrainResult(model=model, validation=validation)
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, step, t0 = 0, 0, time.monotonic()
    try:
        for epoch in range(config.epochs):
            model.train()
            items = _draw(train_c, per_slide, rng)
            epoch_loss, seen = 0.0, 0
            for b in range(0, len(items), config.batch_size):
                if cancel is not None and cancel():
                    raise TrainingCancelled("training cancelled")
                x, y = _load_batch(items[b : b + config.batch_size], spec)
                # uint8 to the device (a quarter of the bytes), augmented there
                xt = torch.from_numpy(x).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                xt = normalise(augment(xt, gen), spec.mean, spec.std)
                yt = torch.from_numpy(y).to(device)
                with autocast(device):
                    logits = model(xt)
                loss = loss_fn(logits.float(), yt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step + 1 < sched.total_steps:
                    sched.step()
                step += 1
                epoch_loss += float(loss.detach()) * len(y)
                seen += len(y)
                yield {"phase": "train", "epoch": epoch, "step": step, "total": total, "loss": float(loss.detach())}
                if step >= total or (config.max_seconds is not None and time.monotonic() - t0 > config.max_seconds):
                    break
            if validation is not None:
                val_loss, val_auc = validation.score(model, device)
            else:  # nothing held out (a single block): the training loss is all there is
                val_loss, val_auc = epoch_loss / max(seen, 1), math.nan
            record = {"epoch": epoch, "train_loss": epoch_loss / max(seen, 1), "val_loss": val_loss, "val_auc": val_auc,
                      "step": step}
            result.history.append(record)
            yield {"phase": "epoch", **record, "total": total}
            if val_loss < result.best_val_loss - 1e-4:
                result.best_val_loss, result.best_val_auc, bad_epochs = val_loss, val_auc, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            if step >= total:
                result.stopped = "steps"
                break
            if config.max_seconds is not None and time.monotonic() - t0 > config.max_seconds:
                result.stopped = "time"
                break
            if bad_epochs >= config.patience:
                result.stopped = "early stopping"
                break
    except BaseException:
        model.load_state_dict(original)
        model.to(home)
        raise
    model.load_state_dict(best_state)
    model.eval()
    result.steps = step
    yield {"phase": "done", "done": True, "result": result, "step": step, "total": total, "n_train_candidates": n_train}


def _run(gen: Iterator[dict], progress: Callable[[dict], None] | None) -> TrainResult:
    for rec in gen:
        if progress is not None:
            progress(rec)
        if rec.get("done"):
            return rec["result"]
    raise RuntimeError("training ended without a result")  # pragma: no cover


def train(
    spec: ModelSpec,
    candidates: Sequence[PatchCandidates],
    config: TrainConfig = TrainConfig(),
    *,
    device: str | torch.device | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train a fresh model of ``spec`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    model = spec.build()
    return _run(iter_train(model, spec, candidates, config, device=device, cancel=cancel), progress)


def fine_tune(
    model: nn.Module,
    spec: ModelSpec,
    candidates: Sequence[PatchCandidates],
    config: TrainConfig = TrainConfig(epochs=10, max_steps=200),
    *,
    device: str | torch.device | None = None,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Continue training a copy of ``model`` within the step/time budget of ``config``.

    The given model is not modified; the result holds the fine-tuned copy.
    """
    work = copy.deepcopy(model)
    return _run(iter_train(work, spec, candidates, config, device=device, cancel=cancel), progress)


@dataclass
class FitResult:
    """One cycle's training: the model to use from now on and how it was chosen."""

    model: nn.Module
    train: TrainResult
    kept_previous: bool = False
    val_loss: float = math.nan  # of ``model`` on this cycle's validation patches
    val_auc: float = math.nan
    previous_val_loss: float | None = None
    previous_val_auc: float | None = None
    n_val: int = 0

    @property
    def at_chance(self) -> bool:
        v = self.train.validation
        return v is not None and v.at_chance(self.val_loss, self.val_auc)

    @property
    def status(self) -> str:
        """"new", "kept previous" or "at chance" (a model no better than chance is used only for want of one)."""
        if self.at_chance:
            return "at chance"
        return "kept previous" if self.kept_previous else "new"

    def message(self) -> str:
        """What a user should be told, or "" when the new model simply took over."""
        if self.kept_previous:
            return (f"kept the previous model: on the {self.n_val} validation patches its loss is "
                    f"{self.previous_val_loss:.3f} against {self.train.best_val_loss:.3f} for the retrained one")
        if self.at_chance:
            auc = f"AUC {self.val_auc:.2f}" if math.isfinite(self.val_auc) else f"loss {self.val_loss:.3f}"
            return (f"the model is no better than chance on its {self.n_val} validation patches ({auc}): "
                    "label more regions, with examples of every class")
        return ""


def iter_fit(
    spec: ModelSpec,
    candidates: Sequence[PatchCandidates],
    config: TrainConfig = TrainConfig(),
    *,
    previous: nn.Module | None = None,
    start: nn.Module | None = None,
    device: str | torch.device | None = None,
    cancel: Callable[[], bool] | None = None,
) -> Iterator[dict]:
    """One active-learning cycle's training, the same for the viewer and the simulation.

    Trains on *all* labels (``candidates``) with a stable validation split drawn from the
    labeled regions, to convergence (early stopping, best validation epoch kept; SPEC §8).
    Training starts from ``start`` (default: a copy of ``previous``, else a fresh model
    seeded by ``config.seed``). ``previous``, the model in use, is scored on the same
    validation patches and kept when it is better (unless it is at chance there): a
    retrain never replaces a model by a worse one, and never keeps one that learned nothing. Yields :func:`iter_train`'s records; the last has ``"done": True`` and
    ``"result"``, a :class:`FitResult`. Neither ``previous`` nor ``start`` is modified.
    """
    if start is None and previous is not None:
        start = previous
    if start is None:
        torch.manual_seed(config.seed)
        work = spec.build()
    else:
        work = copy.deepcopy(start)
    result = None
    for rec in iter_train(work, spec, candidates, config, device=device, cancel=cancel):
        if rec.get("done"):
            result = rec["result"]
        else:
            yield rec
    fit = FitResult(model=result.model, train=result, val_loss=result.best_val_loss, val_auc=result.best_val_auc)
    validation = result.validation
    if validation is not None:
        fit.n_val = len(validation)
        if previous is not None:
            dev = pick_device(device)
            prev = copy.deepcopy(previous).to(dev)
            fit.previous_val_loss, fit.previous_val_auc = validation.score(prev, dev)
            # a previous model at chance is never kept: its low loss on few patches is noise
            if (fit.previous_val_loss < result.best_val_loss
                    and not validation.at_chance(fit.previous_val_loss, fit.previous_val_auc)):
                fit.model, fit.kept_previous = previous, True
                fit.val_loss, fit.val_auc = fit.previous_val_loss, fit.previous_val_auc
    yield {"phase": "done", "done": True, "result": fit, "step": result.steps}


def fit(spec: ModelSpec, candidates: Sequence[PatchCandidates], config: TrainConfig = TrainConfig(), *,
        progress: Callable[[dict], None] | None = None, **kwargs: Any) -> FitResult:
    """:func:`iter_fit` run to its end (``kwargs``: its ``previous``, ``start``, ``device``,
    ``cancel``), ``progress`` called with each record."""
    return _run(iter_fit(spec, candidates, config, **kwargs), progress)


#: The schedule of one active-learning cycle's training (SPEC §8), for the viewer and the
#: simulation alike: epochs of at least 256 patches (and one per 32 candidates), early
#: stopping after 5 epochs without a better validation loss, at most 40 epochs. The
#: viewer adds its time budget.
CYCLE_SCHEDULE = TrainConfig(epochs=40, patches_per_slide=32, min_epoch_patches=256, patience=5)
