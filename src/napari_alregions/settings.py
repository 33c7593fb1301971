"""A session's settings, typed (``session.json``'s ``params``).

Each field has a type and a default; :meth:`Settings.from_dict` checks what a file holds
(a clear message naming the key, never an ``AttributeError`` later) and migrates what
older versions wrote; keys this version does not know are kept in ``extra`` and written
back unchanged.

Settings are frozen: a session changes them with
:meth:`~napari_alregions.session.Session.update_settings`, which replaces the record and
fires the session's ``settings`` event, so every view of them hears of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["HEADS", "LEARNERS", "Settings", "SuggestPlan", "TrainingBudget"]

#: the two learners (SPEC §6): frozen features and a head, or the patch CNN
LEARNERS = ("fast", "deep")
#: the fast learner's heads (learner.py): a forest and a logistic regression averaged, or either
HEADS = ("blend", "forest", "logistic")


def _check(value: Any, kinds: tuple[type, ...], key: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"'{key}' must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ValueError(f"'{key}' must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TrainingBudget:
    """Overrides of the cycle schedule (``model.CYCLE_SCHEDULE``) for this session; None:
    the schedule's value. ``initial_steps`` / ``fine_tune_steps`` cap the optimiser steps of
    the first training and of the later ones; ``max_seconds`` the wall time of one."""

    epochs: int | None = None
    patience: int | None = None
    patches_per_slide: int | None = None
    max_seconds: float | None = None
    initial_steps: int | None = None
    fine_tune_steps: int | None = None
    no_time_limit: bool = False  # train to convergence whatever it takes (the simulation: repeatable)
    seed: int = 0  # added to every seed of the training

    @classmethod
    def from_dict(cls, d: Any, key: str = "training") -> TrainingBudget:
        _check(d, (dict,), key)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"'{key}' has unknown keys {sorted(unknown)}")
        out = {}
        for name, value in d.items():
            if name == "no_time_limit":
                _check(value, (bool,), f"{key}.{name}")
            elif name == "seed":
                _check(value, (int,), f"{key}.{name}")
            elif value is not None:
                kinds = (int, float) if name == "max_seconds" else (int,)
                if _check(value, kinds, f"{key}.{name}") <= 0:
                    raise ValueError(f"'{key}.{name}' must be positive, got {value!r}")
            out[name] = value
        return cls(**out)


@dataclass(frozen=True)
class SuggestPlan:
    """How a selector last ran on a slide, to run it again after a retrain."""

    region_size: int
    k: int
    seed: int | None = 0
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, key: str) -> SuggestPlan:
        _check(d, (dict,), key)
        try:
            plan = cls(region_size=d["region_size"], k=d["k"], seed=d.get("seed"), options=d.get("options", {}))
        except KeyError as exc:
            raise ValueError(f"'{key}' has no {exc}") from None
        _check(plan.region_size, (int,), f"{key}.region_size")
        _check(plan.k, (int,), f"{key}.k")
        if plan.seed is not None:
            _check(plan.seed, (int,), f"{key}.seed")
        _check(plan.options, (dict,), f"{key}.options")
        return plan


@dataclass(frozen=True)
class Settings:
    """What a session remembers beside its slides, regions and labels.

    Examples
    --------
    >>> s = Settings.from_dict({"members": 2, "training": {"epochs": 8}})
    >>> s.members, s.training.epochs, s.training.patience
    (2, 8, None)
    >>> Settings.from_dict(s.to_dict()) == s
    True
    """

    model: dict[str, Any] = field(default_factory=dict)  # ModelSpec.to_dict()
    stride: int | None = None  # level-0 px per map cell; None: one patch footprint
    members: int = 1  # ensemble members
    colors: tuple[tuple[int, int, int], ...] | None = None  # RGB per class
    encoder: str = "classifier"  # embeddings for diversity and prototypes
    learner: str = "fast"  # what Retrain trains: "fast" (features + head) or "deep" (the CNN)
    head: str = "blend"  # the fast learner's head: "blend" (forest + logistic), "forest" or "logistic"
    features: str = "texture"  # the fast learner's encoder (features.slide_features)
    in_use: str = "fast"  # whose maps are shown: "fast" or "deep" (a deep retrain replaces the fast model when better)
    trained_on: tuple[str, ...] = ()  # uids of the accepted regions the model was trained on
    training: TrainingBudget = field(default_factory=TrainingBudget)
    suggest: dict[str, dict[str, SuggestPlan]] = field(default_factory=dict)  # slide -> method -> plan (never changed in place)
    current: str | None = None  # the slide the user worked on last (reopen shows it)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other versions, kept as they were
    #: format 1 kept a count of the first accepted regions instead of ``trained_on``
    legacy_trained_count: int | None = field(default=None, repr=False)

    @classmethod
    def from_dict(cls, d: Any) -> Settings:
        """Settings from ``session.json``'s ``params`` (checked; see the module docstring)."""
        _check(d, (dict,), "params")
        d = dict(d)
        s: dict[str, Any] = {}
        if "model" in d:
            s["model"] = _check(d.pop("model"), (dict,), "model")
        if d.get("stride") is not None:
            s["stride"] = _check(d["stride"], (int,), "stride")
            if s["stride"] <= 0:
                raise ValueError(f"'stride' must be positive, got {s['stride']}")
        d.pop("stride", None)
        if "members" in d:
            s["members"] = _check(d.pop("members"), (int,), "members")
            if s["members"] < 1:
                raise ValueError(f"'members' must be >= 1, got {s['members']}")
        if d.get("colors") is not None:
            colors = _check(d["colors"], (list, tuple), "colors")
            if not all(isinstance(c, (list, tuple)) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                       for c in colors):
                raise ValueError("'colors' must list RGB triples of 0..255")
            s["colors"] = tuple(tuple(c) for c in colors)
        d.pop("colors", None)
        if "encoder" in d:
            s["encoder"] = _check(d.pop("encoder"), (str,), "encoder")
        had_in_use = "in_use" in d
        for key, allowed in (("learner", LEARNERS), ("head", HEADS), ("in_use", LEARNERS)):
            if key in d:
                value = _check(d.pop(key), (str,), key)
                if value not in allowed:
                    raise ValueError(f"'{key}' must be one of {', '.join(allowed)}, got {value!r}")
                s[key] = value
        if "features" in d:
            s["features"] = _check(d.pop("features"), (str,), "features")
        if d.get("current") is not None:
            s["current"] = _check(d["current"], (str,), "current")
        d.pop("current", None)
        if d.get("trained_on") is not None:
            s["trained_on"] = tuple(_check(d["trained_on"], (list, tuple), "trained_on"))
            if not all(isinstance(u, str) for u in s["trained_on"]):
                raise ValueError("'trained_on' must list region uids")
        d.pop("trained_on", None)
        if "trained_on_regions" in d:
            count = _check(d.pop("trained_on_regions"), (int,), "trained_on_regions")
            if not s.get("trained_on"):
                s["legacy_trained_count"] = count
        if not had_in_use and (s.get("trained_on") or s.get("legacy_trained_count")):
            s["in_use"] = "deep"  # a session of an earlier version: its trained model is the CNN
        if "training" in d:
            s["training"] = TrainingBudget.from_dict(d.pop("training"))
        if "suggest" in d:
            plans = _check(d.pop("suggest"), (dict,), "suggest")
            s["suggest"] = {slide: {m: SuggestPlan.from_dict(p, f"suggest.{slide}.{m}")
                                 for m, p in _check(by_method, (dict,), f"suggest.{slide}").items()}
                         for slide, by_method in plans.items()}
        return cls(**s, extra=d)

    def with_plan(self, slide: str, method: str, plan: SuggestPlan) -> Settings:
        """These settings with ``plan`` as how ``method`` last ran on ``slide``."""
        return replace(self, suggest={**self.suggest, slide: {**self.suggest.get(slide, {}), method: plan}})

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("extra", "legacy_trained_count")}
        out["trained_on"] = list(self.trained_on)
        if self.colors is not None:
            out["colors"] = [list(c) for c in self.colors]
        defaults = asdict(TrainingBudget())
        out["training"] = {k: v for k, v in out["training"].items() if v != defaults[k]}
        return {**self.extra, **out}
