"""Annotation sessions on disk (SPEC §7).

A session folder holds ``session.json`` (slides, classes, cycle history, parameters,
versions), ``regions.geojson`` (proposed and accepted regions, QuPath-compatible),
``labels/<slide>.zarr.zip`` (one uint8 zarr array per slide at the labeling level: 0
unlabeled, ``i + 1`` for class i; only the chunks holding labels are stored, listed in
the array's attributes) and ``checkpoints/``. Every file is written to a
temporary name and renamed into place, and ``session.json`` is written last: a crash in the
middle of :meth:`Session.save` leaves the previous session readable.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._atomic import atomic_path
from ._atomic import write_text as _atomic_write_text  # a module name: tests simulate a crash here
from .geometry import Region
from .io_qupath import read_regions, region_features, write_features
from .regionset import ACCEPTED, DISMISSED, PROPOSED, RegionSet

__all__ = ["Session", "SessionError", "SlideEntry"]

SESSION_FILE = "session.json"
REGIONS_FILE = "regions.geojson"
FORMAT = "napari-alregions session"
LABEL_CHUNK = 512  # label px per side of a stored label chunk
_CHUNKS_ATTR = "napari-alregions chunks"  # the stored chunks, listed in the array's attributes


class SessionError(ValueError):
    """A session folder that cannot be used; the message says why."""


@dataclass
class SlideEntry:
    """A slide of the session. ``label_level`` is the pyramid level labels are stored at."""

    name: str
    path: str
    label_level: int = 1
    label_shape: tuple[int, int] | None = None
    truth: str | None = None  # ground-truth mask (simulations)
    group: str | None = None  # e.g. centre or scanner, for per-group selection


@dataclass
class Session:
    """Labeled set, regions, model checkpoints and cycle history of one annotation project."""

    folder: Path
    classes: tuple[str, ...] = ("background", "tumour")
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    store: RegionSet = field(default_factory=RegionSet)  # every region, with its status
    history: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)  # model (ensemble members), relative to folder
    _labels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _dirty: set[str] = field(default_factory=set, repr=False)
    # per slide, the label chunks that may hold labels (None: not known, scan the mask):
    # saving and loading touch those only, so they cost the labeled area, not the slide's
    _chunks: dict[str, set[tuple[int, int]] | None] = field(default_factory=dict, repr=False)
    # a retrain proposes and saves from its worker thread while the viewer accepts and autosaves
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], *, classes: tuple[str, ...] = ("background", "tumour"), **params: Any) -> Session:
        """A new, empty session in ``folder`` (which must not hold a session yet)."""
        folder = Path(folder)
        if (folder / SESSION_FILE).exists():
            raise SessionError(f"{folder}: already holds a session; open it with Session.open")
        if len(classes) < 2:
            raise ValueError(f"classes needs at least two names, got {classes!r}")
        folder.mkdir(parents=True, exist_ok=True)
        session = cls(folder=folder, classes=tuple(classes), params=dict(params))
        session.save()
        return session

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Session:
        """Reopen a saved session exactly as it was last saved."""
        folder = Path(folder)
        path = folder / SESSION_FILE
        if not path.is_file():
            raise SessionError(f"{folder}: no {SESSION_FILE}; not a session folder")
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SessionError(f"{path}: unreadable ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise SessionError(f"{path}: not a napari-alregions session file")
        slides = {}
        for d in meta.get("slides", []):
            if d.get("label_shape") is not None:
                d["label_shape"] = tuple(d["label_shape"])
            slides[d["name"]] = SlideEntry(**d)
        all_regions = read_regions(folder / REGIONS_FILE) if (folder / REGIONS_FILE).exists() else []
        accepted_ids, dismissed_ids = set(meta.get("accepted", [])), set(meta.get("dismissed", []))
        by_uid = {r.uid: r for r in all_regions}
        status = {r.uid: DISMISSED if r.uid in dismissed_ids else PROPOSED for r in all_regions}
        # accepted in the order they were accepted (session.json keeps that order)
        order = [by_uid[u] for u in meta.get("accepted", []) if u in by_uid]
        store = RegionSet([(r, status[r.uid]) for r in all_regions if r.uid not in accepted_ids]
                          + [(r, ACCEPTED) for r in order])
        return cls(
            folder=folder,
            classes=tuple(meta.get("classes", ("background", "tumour"))),
            slides=slides,
            store=store,
            history=list(meta.get("history", [])),
            params=dict(meta.get("params", {})),
            checkpoints=list(meta.get("checkpoints", [])),
        )

    # -- slides and labels ---------------------------------------------------------------
    def add_slide(self, name: str, path: str | os.PathLike[str], *, label_shape: tuple[int, int], label_level: int = 1,
                  truth: str | os.PathLike[str] | None = None, group: str | None = None) -> SlideEntry:
        if name in self.slides:
            raise ValueError(f"slide {name!r} is already in the session")
        entry = SlideEntry(name, str(path), label_level, tuple(label_shape), None if truth is None else str(truth), group)
        self.slides[name] = entry
        return entry

    def labels(self, name: str) -> np.ndarray:
        """The slide's label mask (a writable array; call :meth:`mark_labels_changed`)."""
        if name not in self.slides:
            raise KeyError(f"no slide {name!r} in the session")
        with self._lock:
            if name not in self._labels:
                path = self._label_path(name)
                if path.exists():
                    self._labels[name], self._chunks[name] = _read_label_zip(path)
                else:
                    shape = self.slides[name].label_shape
                    if shape is None:
                        raise SessionError(f"slide {name!r} has no label shape")
                    # np.zeros maps its pages on first write: an unlabeled mask costs no memory
                    self._labels[name], self._chunks[name] = np.zeros(shape, dtype=np.uint8), set()
            return self._labels[name]

    def set_labels(self, name: str, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        expected = self.slides[name].label_shape
        if expected is not None and labels.shape != tuple(expected):
            raise ValueError(f"labels for {name!r} must have shape {tuple(expected)}, got {labels.shape}")
        if labels.size and int(labels.max()) > len(self.classes):
            raise ValueError(f"label values must be 0 (unlabeled) to {len(self.classes)}, got {int(labels.max())}")
        with self._lock:
            self._labels[name] = labels.astype(np.uint8)
            self._chunks[name] = None
            self._dirty.add(name)

    def mark_labels_changed(self, name: str, box: tuple[int, int, int, int] | None = None) -> None:
        """Have the next :meth:`save` write the slide's labels; ``box`` ``(y0, x0, y1, x1)``
        (label px): only there did they change (else the whole mask is scanned)."""
        with self._lock:
            self._dirty.add(name)
            known = self._chunks.get(name)
            if box is None or known is None:
                self._chunks[name] = None
            else:
                y0, x0, y1, x1 = (int(v) for v in box)
                known.update((cy, cx) for cy in range(y0 // LABEL_CHUNK, (max(y1, y0 + 1) - 1) // LABEL_CHUNK + 1)
                             for cx in range(x0 // LABEL_CHUNK, (max(x1, x0 + 1) - 1) // LABEL_CHUNK + 1))

    def _label_path(self, name: str) -> Path:
        return self.folder / "labels" / f"{name}.zarr.zip"

    @contextmanager
    def changing(self) -> Iterator[Session]:
        """Hold the session while changing several fields (``history``, ``params``, ...):
        a save from another thread waits, so it never writes half of the change."""
        with self._lock:
            yield self

    # -- regions -------------------------------------------------------------------------
    @property
    def regions(self) -> list[Region]:
        """The proposals (not yet accepted or dismissed)."""
        return self.store.proposed()

    @property
    def accepted(self) -> list[Region]:
        """The labeled set's regions, in the order they were accepted."""
        return self.store.accepted()

    @property
    def regions_changed(self) -> list:
        """Callbacks ``f(event)`` run after each change of the regions (:class:`RegionEvent`)."""
        return self.store.changed

    def accept(self, region: Region) -> Region:
        """Move a proposed region (or a new one) into the labeled set."""
        return self.store.accept(region)

    def unaccept(self, uid: str | None) -> Region:
        """Drop the accepted region ``uid`` from the labeled set and return it. Its label
        pixels stay: :meth:`~napari_alregions.project.AnnotationProject.remove_accepted` clears them."""
        return self.store.remove(uid, status=ACCEPTED)

    def propose(self, regions: list[Region], *, slide: str | None = None, method: str | None = None) -> list[Region]:
        """Replace the proposals of the same slides and methods with new ones (with no
        regions: clear those of ``slide`` and ``method``)."""
        return self.store.propose(regions, slide=slide, method=method)

    def accepted_on(self, slide: str) -> list[Region]:
        return self.store.accepted(slide)

    @property
    def cycle(self) -> int:
        return len(self.history)

    # -- persistence ---------------------------------------------------------------------
    def checkpoint_path(self, name: str) -> Path:
        return self.folder / "checkpoints" / name

    def save(self) -> None:
        """Write everything changed, atomically file by file; ``session.json`` last.
        One save at a time (threads wait), so each writes a consistent state."""
        with self._lock:
            (self.folder / "labels").mkdir(parents=True, exist_ok=True)
            (self.folder / "checkpoints").mkdir(exist_ok=True)
            for name in sorted(self._dirty):
                self._chunks[name] = _write_label_zip(self._label_path(name), self._labels[name], self._chunks.get(name))
            items = self.store.items()  # one snapshot: a region is in one list only
            accepted = [r for r, st in items if st == ACCEPTED]
            proposed = [r for r, st in items if st == PROPOSED]
            dismissed = [r for r, st in items if st == DISMISSED]
            write_features(self.folder / REGIONS_FILE, region_features(accepted, proposed + dismissed))
            meta = {
                "format": FORMAT,
                "version": 1,
                "software": {"napari-alregions": __version__, "python": platform.python_version()},
                "classes": list(self.classes),
                "slides": [_entry_dict(e) for e in self.slides.values()],
                "accepted": [r.uid for r in accepted],
                "dismissed": [r.uid for r in dismissed],
                "history": self.history,
                "params": self.params,
                "checkpoints": self.checkpoints,
            }
            _atomic_write_text(self.folder / SESSION_FILE, json.dumps(meta, indent=1, default=_json_default), fsync=True)
            self._dirty.clear()


def _entry_dict(e: SlideEntry) -> dict[str, Any]:
    d = asdict(e)
    if d["label_shape"] is not None:
        d["label_shape"] = list(d["label_shape"])
    return d


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _chunk_box(chunk: tuple[int, int], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The pixels of label chunk ``(cy, cx)`` in a mask of ``shape``."""
    c = LABEL_CHUNK
    cy, cx = chunk
    return slice(cy * c, min((cy + 1) * c, shape[0])), slice(cx * c, min((cx + 1) * c, shape[1]))


def _write_label_zip(path: Path, labels: np.ndarray, chunks: set[tuple[int, int]] | None) -> set[tuple[int, int]]:
    """Write the chunks of ``labels`` that hold labels, among ``chunks`` (None: all), as a
    zipped zarr array; returns the chunks written."""
    import zarr
    from zarr.storage import ZipStore

    c = LABEL_CHUNK
    if chunks is None:
        chunks = {(cy, cx) for cy in range(-(-labels.shape[0] // c)) for cx in range(-(-labels.shape[1] // c))}
    written = sorted(k for k in chunks if labels[_chunk_box(k, labels.shape)].any())
    with atomic_path(path) as tmp:
        store = ZipStore(tmp, mode="w")
        try:
            z = zarr.create_array(store, shape=labels.shape, chunks=(c, c), dtype="uint8", fill_value=0,
                                  attributes={_CHUNKS_ATTR: [list(k) for k in written]})
            for k in written:
                box = _chunk_box(k, labels.shape)
                z[box] = labels[box]
        finally:
            store.close()
    return set(written)


def _read_label_zip(path: Path) -> tuple[np.ndarray, set[tuple[int, int]] | None]:
    """The label mask and its stored chunks (None where the file does not list them)."""
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(path, mode="r")
    try:
        z = zarr.open_array(store, mode="r")
        listed = z.attrs.get(_CHUNKS_ATTR)
        if listed is None or tuple(z.chunks) != (LABEL_CHUNK, LABEL_CHUNK):  # an older file, written whole
            return np.asarray(z[:], dtype=np.uint8), None
        labels = np.zeros(z.shape, dtype=np.uint8)
        for k in listed:
            box = _chunk_box(k, z.shape)
            labels[box] = z[box]
        return labels, {(int(cy), int(cx)) for cy, cx in listed}
    except Exception as exc:
        raise SessionError(f"{path}: unreadable label array ({exc})") from exc
    finally:
        store.close()
