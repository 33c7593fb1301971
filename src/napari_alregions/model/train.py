"""Training and incremental fine-tuning of a patch classifier (SPEC §6).

Training is a generator of progress records (``iter_train``) so that the CLI can drive a
progress bar, a napari thread worker can yield to the event loop, and tests can run it
synchronously; :func:`train` and :func:`fine_tune` consume it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .checkpoint import ModelSpec
from .data import PatchCandidates, augment, normalise, read_patches
from .device import autocast, pick_device

__all__ = ["TrainConfig", "TrainResult", "TrainingCancelled", "fine_tune", "iter_train", "train"]


class TrainingCancelled(RuntimeError):
    """Raised when a cancel callback asked training to stop; the caller's model is untouched."""


@dataclass(frozen=True)
class TrainConfig:
    """Training schedule. Patches per slide per epoch, balanced when positives exist."""

    epochs: int = 30
    patches_per_slide: int = 20
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    patience: int = 8
    max_steps: int | None = None
    max_seconds: float | None = None
    seed: int = 0


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    steps: int = 0
    stopped: str = "epochs"


def _split(cands: Sequence[PatchCandidates], fraction: float, rng: np.random.Generator):
    """Per-slide split of candidates by spatial blocks (so neighbours don't leak)."""
    train, val = [], []
    for c in cands:
        if len(c) == 0:
            continue
        block = (c.centres // (4 * c.patch_size)).astype(np.int64)
        keys = block[:, 0] * 1_000_003 + block[:, 1]
        uniq = np.unique(keys)
        held = set(rng.choice(uniq, size=int(round(len(uniq) * fraction)), replace=False).tolist()) if len(uniq) > 1 else set()
        mask = np.isin(keys, list(held))
        train.append(PatchCandidates(c.slide, c.level, c.patch_size, c.centres[~mask], c.labels[~mask]))
        if mask.any():
            val.append(PatchCandidates(c.slide, c.level, c.patch_size, c.centres[mask], c.labels[mask]))
    return [t for t in train if len(t)], val


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


def _evaluate(model, val_batches, spec, device, loss_fn) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in val_batches:
            xt = normalise(torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255).to(device), spec.mean, spec.std)
            with autocast(device):
                logits = model(xt)
            total += float(loss_fn(logits.float(), torch.from_numpy(y).to(device))) * len(y)
            n += len(y)
    return total / max(n, 1)


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

    The last record has ``"done": True`` and ``"result"``: a :class:`TrainResult` whose
    model holds the weights with the lowest validation loss (early stopping).

    Raises
    ------
    ValueError
        If there is nothing to train on (no labeled patch).
    TrainingCancelled
        If ``cancel()`` returns True; ``model`` keeps its weights from before the call.
    """
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    train_c, val_c = _split(candidates, config.val_fraction, rng)
    if not train_c:
        raise ValueError("no labeled patches to train on: annotate regions (with tissue) first")
    n_train = sum(len(c) for c in train_c)
    device = pick_device(device)
    original = copy.deepcopy(model.state_dict())
    home = next(model.parameters()).device
    model.to(device)
    steps_per_epoch = max(1, math.ceil(len(train_c) * config.patches_per_slide / config.batch_size))
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 2))
    # Class weights against residual imbalance (all-negative slides stay unweighted).
    counts = np.bincount(np.concatenate([c.labels for c in train_c]), minlength=len(spec.classes)).astype(float)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(spec.classes), 1.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(np.sqrt(weights), dtype=torch.float32, device=device))
    val_items = _draw(val_c, max(4, config.patches_per_slide // 2), np.random.default_rng(config.seed + 1)) if val_c else []
    val_batches = [_load_batch(val_items[i : i + config.batch_size], spec) for i in range(0, len(val_items), config.batch_size)]
    result = TrainResult(model=model)
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, step, t0 = 0, 0, time.monotonic()
    try:
        for epoch in range(config.epochs):
            model.train()
            items = _draw(train_c, config.patches_per_slide, rng)
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
            val_loss = _evaluate(model, val_batches, spec, device, loss_fn) if val_batches else epoch_loss / max(seen, 1)
            record = {"epoch": epoch, "train_loss": epoch_loss / max(seen, 1), "val_loss": val_loss, "step": step}
            result.history.append(record)
            yield {"phase": "epoch", **record, "total": total}
            if val_loss < result.best_val_loss - 1e-4:
                result.best_val_loss, bad_epochs = val_loss, 0
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
