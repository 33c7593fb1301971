"""Training: the model in use, retrained on the labeled set (SPEC §6).

The fast learner (:mod:`.fast`) refits in seconds and is the default; the deep learner
trains the patch CNN and replaces the fast model only when it estimates better.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..settings import TrainingBudget

if TYPE_CHECKING:
    from .core import AnnotationProject


class Training:
    """The model: new, loaded, saved and retrained; the cycle history."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project

    def _build(self, member: int):
        import torch

        torch.manual_seed(self._seed_base() + member)
        return self.p.spec.build()

    def _seed_base(self) -> int:
        """``settings.training.seed`` (default 0): offsets every seed of the model's
        initial weights and training draws (the simulation's repeats differ by it)."""
        return self.p.session.settings.training.seed

    def new_model(self, *, arch: str = "compact", patch_size: int = 64, level: int = 1, stride: int | None = None,
                  members: int = 1) -> None:
        """Start over with an untrained model (labels and regions are kept)."""
        from ..model import ModelSpec

        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        for name, slide in self.p.slides.items():
            if level >= slide.level_count:
                raise ValueError(f"level {level} does not exist on slide {name!r} (levels 0..{slide.level_count - 1})")
        spec = ModelSpec(arch=arch, classes=self.p.classes, patch_size=patch_size, level=level)
        for name, slide in self.p.slides.items():
            factor = slide.level_factor(level)
            if stride and stride % factor:
                raise ValueError(f"stride ({stride}) must be a multiple of the level-{level} downsample of {name!r} ({factor:g})")
        if self.p.session.slides and self.p.spec is not None and level != self.p.label_level:
            raise ValueError(f"the session labels slides at level {self.p.label_level}; a new model must work there too")
        self.p.spec = spec
        self.p.session.update_settings(model=spec.to_dict(), stride=int(stride) if stride else None, members=members,
                                       trained_on=())
        self.p.session.checkpoints = []
        self.p.models = [self._build(i) for i in range(members)]
        self._model_replaced()

    def load_model(self, path: str | os.PathLike[str]) -> None:
        """Use a checkpoint (copied into the session); its classes must be the session's."""
        import shutil

        from ..model import CheckpointError, load_checkpoint

        model, spec, _ = load_checkpoint(path)
        if spec.classes != self.p.classes:
            raise CheckpointError(f"{path}: the checkpoint predicts {list(spec.classes)}, the session annotates {list(self.p.classes)}")
        if self.p.session.slides and spec.level != self.p.label_level:
            raise CheckpointError(f"{path}: the checkpoint works at level {spec.level}, the session labels level {self.p.label_level}")
        target = self.p.session.checkpoint_path(f"loaded_{Path(path).name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != target.resolve():
            shutil.copyfile(path, target)
        self.p.spec = spec
        # the loaded model is the one in use, until a retrain
        self.p.session.update_settings(model=spec.to_dict(), stride=None, members=1, in_use="deep",
                                       trained_on=tuple(r.uid for r in self.p.session.accepted))
        self.p.session.checkpoints = [str(target.relative_to(self.p.folder))]
        self.p.models = [model]
        self._model_replaced()

    def _model_replaced(self) -> None:
        """A new or loaded model: the fast model and every map are stale; saved at once."""
        self.p.fast_learning._drop_fast()
        self.p.mapping._drop_maps()
        self.p.mapping._model_changed()
        self.p.session.save()
        self.p.session.events.model.emit()

    def save_model(self, path: str | os.PathLike[str]) -> list[Path]:
        """Write the trained CNN as checkpoint(s) that :meth:`load_model` (and ``alregions``
        verbs taking ``--checkpoint``) read: ``path`` for one member, ``<stem>_m<i><suffix>``
        for each member of an ensemble. Returns the paths written.

        Raises
        ------
        ValueError
            If the CNN was never trained (the fast learner's head is not saved: it refits
            from the session's labels in seconds).
        """
        from ..model import save_checkpoint

        if not self.p.trained:
            raise ValueError("the deep model is not trained yet: Deep retrain first (the fast model is not saved: "
                             "it is refitted from the session's labels)")
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"path: {path} is a folder; give a file name (e.g. model.pt)")
        paths = [path] if len(self.p.models) == 1 else \
            [path.with_name(f"{path.stem}_m{i}{path.suffix}") for i in range(len(self.p.models))]
        for p, model in zip(paths, self.p.models):
            save_checkpoint(p, model, self.p.spec, cycle=self.p.cycle)
        return paths

    def set_training(self, **budget) -> TrainingBudget:
        """Change the training budget (:class:`~napari_alregions.settings.TrainingBudget`
        fields: ``epochs``, ``max_seconds``, ...; None: the schedule's value), checked as
        ``session.json`` is; saved at once.

        Examples
        --------
        >>> project.set_training(epochs=5, max_seconds=60)  # doctest: +SKIP
        """
        from dataclasses import asdict

        b = TrainingBudget.from_dict({**asdict(self.p.session.settings.training), **budget})
        self.p.session.update_settings(training=b)
        self.p._autosave()
        return b

    def candidates(self) -> list:
        from ..model import labeled_candidates

        return labeled_candidates(self.p.slides, {n: self.p.session.labels(n) for n in self.p.slides}, level=self.p.label_level,
                                  patch_size=self.p.spec.patch_size)

    def train_config(self):
        """The cycle schedule (``model.CYCLE_SCHEDULE``, the simulation's too) within the
        session's budget: ``settings.training`` (a :class:`~napari_alregions.settings.TrainingBudget`)
        may set ``epochs``, ``patience``, ``patches_per_slide``, ``max_seconds`` (default 120 s;
        300 s for the first training; ``no_time_limit``: none), a step limit (``initial_steps``
        for the first training, ``fine_tune_steps`` after) and ``seed`` (added to the cycle number)."""
        from dataclasses import replace

        from ..model import CYCLE_SCHEDULE

        b = self.p.session.settings.training
        steps = b.fine_tune_steps if self.p.trained else b.initial_steps
        return replace(
            CYCLE_SCHEDULE,
            epochs=b.epochs or CYCLE_SCHEDULE.epochs,
            patience=b.patience or CYCLE_SCHEDULE.patience,
            patches_per_slide=b.patches_per_slide or CYCLE_SCHEDULE.patches_per_slide,
            max_steps=steps,
            max_seconds=None if b.no_time_limit else (b.max_seconds or (120.0 if self.p.trained else 300.0)),
            seed=self._seed_base() + self.p.cycle,
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
            deep = self.p.session.settings.learner == "deep"
        if deep:
            return (yield from self._iter_retrain_deep(cancel=cancel, refresh=refresh, measure=measure))
        trained_on = [r.uid for r in self.p.session.accepted]
        model = yield from self.p.fast_learning.iter_fit_fast(cancel=cancel)
        q = model.quality
        settings = self.p.session.settings
        self.p.fast = model
        status = "at chance" if q.at_chance else "new"
        messages = [f"the fast model is no better than chance on its labels ({q.describe()})"] if q.at_chance else []
        in_use = "fast"
        if settings.in_use == "deep" and self.p.trained:
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
        summary = {"cycle": self.p.cycle + 1, "learner": learner, "accepted_regions": len(self.p.session.accepted),
                   "annotated_pct": round(self.p.labeling.annotated_pct(), 4), **details}
        with self.p.session.changing() as session:  # in a worker thread, beside the viewer's autosaves
            if checkpoints is not None:
                session.checkpoints = checkpoints
            session.history.append(summary)
            session.update_settings(in_use=in_use, trained_on=tuple(trained_on))
            session.save()
        session.events.model.emit()
        return summary

    def _refresh(self, summary: dict, measure: str | None, cancel: Callable[[], bool] | None) -> Generator[dict, None, None]:
        """New maps of the slides that had one (their measure, unless ``measure``), and their proposals rerun."""
        for slide, record in list(self.p.maps.items()):
            yield from self.p.mapping.iter_priority(slide, measure=measure or record.measure, cancel=cancel)
            _, failed = self.p.suggestion.refresh_suggestions(slide)
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
        from ..model import iter_fit, save_checkpoint

        cands = self.candidates()
        if not cands:
            raise ValueError("no labels to train on: accept a region and paint labels in it first")
        trained_on = [r.uid for r in self.p.session.accepted]  # regions accepted meanwhile are still pending
        config = self.train_config()
        new_models, fits = [], []
        restart = self._deep_at_chance()
        for i, model in enumerate(self.p.models):
            member_config = replace(config, seed=config.seed * 100 + i)
            result = None
            # a member at chance after its last training starts again from new weights: fine-tuning
            # a model that learned nothing keeps it where it is
            fresh = restart[i] if i < len(restart) else False
            previous = model if self.p.trained and not fresh else None
            for rec in iter_fit(self.p.spec, cands, member_config, previous=previous, start=None if fresh else model,
                                cancel=cancel):
                if rec.get("done"):
                    result = rec["result"]
                else:
                    yield {**rec, "member": i, "members": len(self.p.models)}
            new_models.append(result.model.cpu())
            fits.append(result)
        cycle = self.p.cycle + 1
        who = (lambda i: f"member {i}: ") if len(fits) > 1 else (lambda i: "")
        in_use, messages = "deep", [who(i) + f.message() for i, f in enumerate(fits) if f.message()]
        messages += [who(i) + "trained from new weights: the last model was no better than chance"
                     for i, fresh in enumerate(restart[: len(fits)]) if fresh]
        if self.p.session.settings.learner != "deep":  # beside the fast learner: the better estimate is used
            fast = self.p.fast if self.p.fast is not None and not self.p.pending_regions else None
            if fast is None:
                try:
                    fast = yield from self.p.fast_learning.iter_fit_fast(cancel=cancel)
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
            fast = self.p.fast
        # nothing is installed before here: a cancel or an error above leaves the session as it was
        paths = [save_checkpoint(self.p.session.checkpoint_path(f"cycle_{cycle:03d}_m{i}.pt"), m, self.p.spec, cycle=cycle)
                 for i, m in enumerate(new_models)]
        self.p.models = new_models
        self.p.mapping._model_changed()
        if self.p.session.settings.features != "classifier":  # (classifier features are stale now: refit later)
            self.p.fast = fast
        summary = self._record_cycle(learner="deep", trained_on=trained_on, in_use=in_use, details={
            "train_steps": [f.train.steps for f in fits],
            "val_loss": [_finite(f.val_loss) for f in fits],
            "val_auc": [_finite(f.val_auc) for f in fits],
            "previous_val_loss": [_finite(f.previous_val_loss) for f in fits],
            "n_val": [f.n_val for f in fits],
            "model": [f.status for f in fits],
            "messages": messages,
            "n_candidates": sum(len(c) for c in cands),
        }, checkpoints=[str(p.relative_to(self.p.folder)) for p in paths])
        if refresh:
            yield from self._refresh(summary, measure, cancel)
        return summary

    def _last_deep_cycle(self) -> dict:
        """The history's entry of the CNN's last training ({} when it has none; entries of
        earlier versions, without ``learner``, are the CNN's)."""
        return next((e for e in reversed(self.p.session.history) if e.get("learner", "deep") == "deep"), {})

    def _deep_val_auc(self) -> float | None:
        """The mean validation AUC of the CNN's last training, None when it has none."""
        aucs = [v for v in self._last_deep_cycle().get("val_auc", []) if v is not None]
        return float(np.mean(aucs)) if aucs else None

    def _deep_at_chance(self) -> list[bool]:
        """Per member: was the CNN at chance after its last deep training?"""
        return [status == "at chance" for status in self._last_deep_cycle().get("model", [])]


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 5)
