"""Checkpoints: weights plus everything needed to use them, loaded with weights_only=True."""

from __future__ import annotations

import errno
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._atomic import atomic_path
from .networks import ARCHITECTURES, build_model

__all__ = ["CheckpointError", "ModelSpec", "load_checkpoint", "save_checkpoint"]

FORMAT = "napari-alregions checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """How a classifier was built and what it expects.

    ``patch_size`` is in pixels of pyramid ``level`` (whose resolution is ``mpp`` µm/px when
    known); ``mean``/``std`` normalise RGB in [0, 1].
    """

    arch: str = "compact"
    classes: tuple[str, ...] = ("background", "tumour")
    patch_size: int = 64
    level: int = 1
    mpp: float | None = None
    mean: tuple[float, float, float] = (0.70, 0.55, 0.70)
    std: tuple[float, float, float] = (0.15, 0.18, 0.13)
    dropout: float = 0.0
    width: int = 16
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        if len(self.classes) < 2:
            raise ValueError(f"classes needs at least two names, got {self.classes!r}")
        if self.patch_size < 16:
            raise ValueError(f"patch_size must be >= 16 px, got {self.patch_size}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or not all(math.isfinite(v) for v in self.mean):
            raise ValueError(f"mean must be three finite numbers, got {self.mean}")
        # a std of 0 divides every patch by zero: the model sees inf and predicts NaN
        if len(self.std) != 3 or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"std must be three finite numbers > 0, got {self.std}")

    def build(self) -> nn.Module:
        return build_model(self.arch, len(self.classes), dropout=self.dropout, width=self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for key in ("classes", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, spec: ModelSpec, **info: Any) -> Path:
    """Write weights and spec atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "info": info,
    }
    try:
        # through a Python file: a failed write (a full disk) is an OSError with its errno,
        # not the RuntimeError of torch's own writer ("inline_container.cc ... file write failed")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
    except OSError as exc:
        raise OSError(exc.errno or errno.EIO, exc.strerror or str(exc), str(path)) from exc
    except RuntimeError as exc:  # torch's writer ("inline_container.cc ..."): not a text for users
        raise OSError(errno.EIO, "the checkpoint could not be written (a full disk or a failing file system?); the "
                      "previous checkpoint is kept", str(path)) from exc
    return path


#: Spec fields a checkpoint must share with the session that uses it: its weights mean
#: something else for another network, class list, patch size, level or normalisation.
_SAME = ("arch", "classes", "patch_size", "level", "width", "mean", "std")


def _spec_differences(spec: ModelSpec, expect: ModelSpec) -> list[str]:
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
            return all(same(x, y) for x, y in zip(a, b, strict=True))
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-6)
        return a == b

    return [f"{k} {getattr(spec, k)!r} (the session's: {getattr(expect, k)!r})" for k in _SAME
            if not same(getattr(spec, k), getattr(expect, k))]


def load_checkpoint(
    path: str | os.PathLike[str], *, expect: ModelSpec | None = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Load a checkpoint safely (``torch.load(weights_only=True)``: no code runs).

    Parameters
    ----------
    expect : ModelSpec, optional
        If given, the checkpoint's architecture, classes, patch size, level, width and
        normalisation (mean, std) must match (a checkpoint replaced by another one is refused).

    Returns
    -------
    model, spec, info

    Raises
    ------
    FileNotFoundError
    CheckpointError
        Not a checkpoint of ours (e.g. a pickle or a bare state dict), another
        architecture or class list than expected, weights that do not fit or are not
        finite (NaN, inf), or a normalisation std that is not > 0.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it may not read; the outcome says enough
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways (UnpicklingError, KeyError, EOFError)
        # not torch's text: it advises weights_only=False, i.e. running the file's code
        raise CheckpointError(f"{path}: not a checkpoint that can be loaded safely (damaged, another format, or objects "
                              f"other than weights: {type(exc).__name__}); no code from it was run") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a napari-alregions checkpoint (no spec; a bare state dict?)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload['version']} is newer than this program ({VERSION})")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model spec ({exc})") from exc
    differs = [] if expect is None else _spec_differences(spec, expect)
    if differs:
        raise CheckpointError(f"{path}: not the checkpoint of this model: its {'; '.join(differs)} (replaced by "
                              "another checkpoint? put the original back, or load it as a new model)")
    state = payload.get("state_dict")
    if isinstance(state, dict):
        bad = [k for k, v in state.items()
               if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or inf values (first: {bad[0]!r}); "
                                  "the training that wrote it diverged: retrain, or load an earlier checkpoint")
    model = spec.build()
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit a {spec.arch} for {len(spec.classes)} classes ({exc})") from exc
    return model, spec, dict(payload.get("info") or {})
