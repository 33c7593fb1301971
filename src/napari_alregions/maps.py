"""A session's maps: per slide, the priority map with its probabilities, patch embeddings,
prototype similarity and the fast learner's feature grid (SPEC §4, §6).

A :class:`MapStore` is the one place they live. Every change (set, or dropped because the
model changed) fires ``changed(slide, kind)``, the session's ``maps`` event, so the views
that draw a map redraw themselves and nothing keeps a stale copy. The priority maps and the
embeddings are saved in the session folder as they are set (atomic writes) and read back
when the session opens; the feature grids are cached by :mod:`napari_alregions.features`.

Examples
--------
>>> import tempfile
>>> seen = []
>>> store = MapStore(tempfile.mkdtemp(), changed=lambda slide, kind: seen.append((slide, kind)))
>>> store.set("a.tif", "similarity", np.zeros((2, 3), np.float32))
>>> "a.tif" in store.of("similarity"), seen
(True, [('a.tif', 'similarity')])
>>> store.drop("similarity"); seen[-1], len(store.of("similarity"))
(('a.tif', 'similarity'), 0)
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path, save_npy

__all__ = ["KINDS", "MapRecord", "MapStore"]

#: the kinds of map a slide can have
KINDS = ("priority", "embeddings", "similarity", "features")
MAPS_DIR = "maps"
EMBED_DIR = "embeddings"


@dataclass
class MapRecord:
    """A slide's latest prediction: probabilities and the priority map derived from them."""

    probabilities: np.ndarray  # (E, H, W, C) float32, NaN outside tissue
    priority: np.ndarray  # (H, W) float32 in [0, 1]
    measure: str
    stride: int
    cycle: int


class _Kind(Mapping):
    """A read-only view of one kind of map, by slide name."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, slide: str) -> Any:
        return self._data[slide]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)


class MapStore:
    """The maps of a session's slides, with a ``changed(slide, kind)`` callback.

    Parameters
    ----------
    folder : path
        The session folder (priority maps go to ``maps/``, embeddings to ``embeddings/``).
    changed : callable, optional
        Called with ``(slide, kind)`` after each change.
    """

    def __init__(self, folder: str | Path, changed: Callable[[str, str], Any] | None = None) -> None:
        self.folder = Path(folder)
        self._changed = changed or (lambda slide, kind: None)
        self._data: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._views = {k: _Kind(d) for k, d in self._data.items()}

    def of(self, kind: str) -> Mapping[str, Any]:
        """The maps of ``kind`` by slide (read-only; it follows the store)."""
        return self._views[_checked(kind)]

    def get(self, slide: str, kind: str, default: Any = None) -> Any:
        return self._data[_checked(kind)].get(slide, default)

    def set(self, slide: str, kind: str, value: Any, *, save: bool = True) -> None:
        """Make ``value`` the slide's map of ``kind`` (saved first for priority and embeddings)."""
        if save and kind == "priority":
            _save_record(self._path(slide, kind), value)
        elif save and kind == "embeddings":
            self._path(slide, kind).parent.mkdir(parents=True, exist_ok=True)
            save_npy(self._path(slide, kind), value)
        self._data[_checked(kind)][slide] = value
        self._changed(slide, kind)

    def drop(self, kind: str, slide: str | None = None) -> None:
        """Forget the maps of ``kind`` (of one slide, or all), with their saved files."""
        names = list(self._data[_checked(kind)]) if slide is None else [slide]
        if kind in ("priority", "embeddings"):  # all: files of slides not loaded too
            path = self._path("*" if slide is None else slide, kind)
            for f in list(path.parent.glob(path.name)) if slide is None else [path]:
                f.unlink(missing_ok=True)
        for name in names:
            if self._data[kind].pop(name, None) is not None:
                self._changed(name, kind)

    def load(self, slide: str, *, map_shape: Callable[[int], tuple[int, int]]) -> list[str]:
        """Read the slide's saved priority map and embeddings; return what was found damaged
        (a message each: they are recomputed on demand). ``map_shape(stride)`` is the
        slide's map grid: a map of another grid is not the slide's."""
        messages = []
        path = self._path(slide, "priority")
        record = _load_record(path)
        if record is not None and record.priority.shape == map_shape(record.stride):
            self.set(slide, "priority", record, save=False)
        elif path.is_file():
            messages.append(f"{slide}: the saved priority map is damaged; compute it again")
        path = self._path(slide, "embeddings")
        if path.is_file():
            try:
                self.set(slide, "embeddings", np.load(path, allow_pickle=False), save=False)
            except (OSError, ValueError):
                messages.append(f"{slide}: the saved embeddings are damaged; compute them again")
        return messages

    def _path(self, slide: str, kind: str) -> Path:
        if kind == "priority":
            return self.folder / MAPS_DIR / f"{slide}.npz"
        return self.folder / EMBED_DIR / f"{slide}.npy"


def _checked(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _save_record(path: Path, record: MapRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, probabilities=record.probabilities, priority=record.priority,
                            measure=np.array(record.measure), stride=np.array(record.stride), cycle=np.array(record.cycle))


def _load_record(path: Path) -> MapRecord | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return MapRecord(z["probabilities"], z["priority"], str(z["measure"]), int(z["stride"]), int(z["cycle"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # a damaged cache: the map is recomputed on demand
