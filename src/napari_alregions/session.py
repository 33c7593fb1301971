"""Annotation sessions on disk (SPEC §7).

A session folder holds ``session.json`` (slides, classes, cycle history, parameters,
versions), ``regions.geojson`` (proposed and accepted regions, QuPath-compatible),
``labels/<slide>.zarr.zip`` (one uint8 zarr array per slide at the labeling level: 0
unlabeled, ``i + 1`` for class i; only the chunks holding labels are stored, listed in
the array's attributes) and ``checkpoints/``, with the maps (:mod:`napari_alregions.maps`) and
feature caches beside them. Every file is written to a
temporary name and renamed into place, and ``session.json`` is written last: a crash in the
middle of :meth:`Session.save` leaves the previous session readable.

A :class:`Session` is observable: each change of its regions, labels, maps, settings,
slides or model fires one of its :class:`SessionEvents`, in the call that made the change.
The napari views (layers, lists, colour bar) redraw on these events only.
"""

from __future__ import annotations

import json
import math
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from . import __version__
from ._atomic import write_text as _atomic_write_text  # a module name: tests simulate a crash here
from ._errors import SessionError
from .geometry import Box, Region
from .labelstore import LABEL_CHUNK, LabelStore, LabelStoreError, as_label_values  # noqa: F401 (LABEL_CHUNK: re-exported)
from .maps import MapStore
from .regionfile import read_regions, region_features, write_features
from .regionset import ACCEPTED, DISMISSED, PROPOSED, RegionSet
from .sessionlock import LOCK_FILE, SessionLock, SessionLocked, acquire, check_held, release, tidy
from .settings import Settings

__all__ = ["Session", "SessionError", "SessionEvents", "SessionLocked", "SlideEntry"]

SESSION_FILE = "session.json"
REGIONS_FILE = "regions.geojson"
FORMAT = "napari-alregions session"
#: The session file's format: 2 stores labels as zarr folders (1: zip files, still read).
FORMAT_VERSION = 2


@dataclass
class SlideEntry:
    """A slide of the session. ``label_level`` is the pyramid level labels are stored at."""

    name: str
    path: str
    label_level: int = 1
    label_shape: tuple[int, int] | None = None
    truth: str | None = None  # ground-truth mask (simulations)
    group: str | None = None  # e.g. centre or scanner, for per-group selection
    size: int | None = None  # file size and digest of its first bytes when added: a replaced file is noticed
    digest: str | None = None


class SessionEvents(SignalGroup):
    """What changed in a session. Each fires on the thread that made the change (a retrain
    runs in a worker thread): a view connects so that it redraws on its GUI thread.

    * ``regions(event)``: a :class:`~napari_alregions.regionset.RegionEvent`;
    * ``labels(slide, box)``: labels written in the label :class:`~napari_alregions.geometry.Box`
      (None: anywhere on the slide);
    * ``maps(slide, kind)``: a map of :data:`~napari_alregions.maps.KINDS` set or dropped;
    * ``settings(settings)``: the new :class:`~napari_alregions.settings.Settings`;
    * ``slides(name)``: a slide added;
    * ``model()``: the model in use changed (new, loaded, retrained).
    """

    regions = Signal(object)
    labels = Signal(str, object)
    maps = Signal(str, str)
    settings = Signal(object)
    slides = Signal(str)
    model = Signal()


@dataclass
class Session:
    """Labeled set, regions, maps, model checkpoints and cycle history of one annotation project."""

    folder: Path
    classes: tuple[str, ...] = ("background", "tumour")
    slides: dict[str, SlideEntry] = field(default_factory=dict)
    store: RegionSet = field(default_factory=RegionSet)  # every region, with its status
    history: list[dict[str, Any]] = field(default_factory=list)
    settings: Settings = field(default_factory=Settings)
    checkpoints: list[str] = field(default_factory=list)  # model (ensemble members), relative to folder
    _store: LabelStore = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    _format: int = field(default=FORMAT_VERSION, repr=False, compare=False)  # as read: 1 keeps labels in zips
    _saved_chunks: dict[str, int] = field(default_factory=dict, repr=False, compare=False)  # as read, per slide
    read_only: bool = field(default=False, compare=False)
    _lock_file: SessionLock | None = field(default=None, repr=False, compare=False)
    # a retrain proposes and saves from its worker thread while the viewer accepts and autosaves
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    events: SessionEvents = field(default_factory=SessionEvents, repr=False, compare=False)
    maps: MapStore = field(default=None, repr=False, compare=False)  # type: ignore[assignment]
    # label px per level-0 px of each slide: what turns a region into its label box
    _factors: dict[str, float] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self._store is None:
            self._store = LabelStore(self.folder)
        self.store.changed.append(self.events.regions.emit)
        self.maps = MapStore(self.folder, changed=self.events.maps.emit)

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], *, classes: tuple[str, ...] = ("background", "tumour"), **params: Any) -> Session:
        """A new, empty session in ``folder`` (which must not hold a session yet)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SessionError(f"{folder}: a file, not a folder; a session needs a folder (a new or empty one)")
        if (folder / SESSION_FILE).exists():
            raise SessionError(f"{folder}: already holds a session: open it instead (Open session in the viewer, Session.open in Python)")
        if len(classes) < 2:
            raise ValueError(f"classes needs at least two names, got {classes!r}")
        folder.mkdir(parents=True, exist_ok=True)
        lock = acquire(folder, state=SESSION_FILE)
        session = cls(folder=folder, classes=tuple(classes), settings=Settings.from_dict(params), _lock_file=lock)
        try:
            session.save()
        except BaseException:
            session.close()
            raise
        return session

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, read_only: bool = False, take_over: bool = False) -> Session:
        """Reopen a saved session exactly as it was last saved.

        Opening for writing takes the session's lock (``session.lock``, see
        :mod:`~napari_alregions.sessionlock`) until :meth:`close`. A stale lock (its process
        was killed, its pid reused, or the folder is a copy) is taken without asking
        (:attr:`lock_note` says so). While another process holds it, :class:`SessionLocked`
        is raised, unless ``take_over`` (a running process the user knows is not writing it,
        or another host's that is closed). ``read_only`` takes no lock and writes no session
        data (it removes the temporary files of killed saves when no process writes the
        session: :func:`~napari_alregions.sessionlock.tidy`); :meth:`save` then refuses.
        """
        folder = Path(folder)
        lock = None  # taken before reading: what is read is what no other process writes now
        if not read_only and (folder / SESSION_FILE).is_file():  # (else _read says what is wrong)
            lock = acquire(folder, take_over=take_over, state=SESSION_FILE)
        elif (folder / SESSION_FILE).is_file():
            tidy(folder)  # killed saves' files, if no one writes there (and the disk lets us)
        try:
            session = cls._read(folder)
        except BaseException:
            if lock is not None:
                release(lock)
            raise
        session._lock_file = lock
        session.read_only = read_only
        return session

    def close(self) -> None:
        """Release the session's lock (nothing is saved: call :meth:`save` first)."""
        if self._lock_file is not None:
            release(self._lock_file)
            self._lock_file = None

    @property
    def lock_note(self) -> str | None:
        """What opening did about another process's lock (took a stale one over...), or None."""
        return None if self._lock_file is None else self._lock_file.note

    @classmethod
    def _read(cls, folder: Path) -> Session:
        path = folder / SESSION_FILE
        if not path.is_file():
            raise SessionError(f"{folder}: no {SESSION_FILE}; not a session folder")
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SessionError(f"{path}: unreadable ({exc})") from exc
        meta = _checked_meta(meta, path)
        slides = {d["name"]: SlideEntry(**d) for d in meta["slides"]}
        regions_path = folder / REGIONS_FILE
        try:
            all_regions = read_regions(regions_path) if regions_path.exists() else []
        except ValueError as exc:
            raise SessionError(f"{regions_path}: unreadable ({exc}); restore it from a backup") from exc
        _check_unique_uids(all_regions, regions_path)
        accepted_ids, dismissed_ids = set(meta["accepted"]), set(meta["dismissed"])
        by_uid = {r.uid: r for r in all_regions}
        lost = [u for u in meta["accepted"] if u not in by_uid]
        if lost:
            raise SessionError(f"{regions_path}: {len(lost)} of the {len(accepted_ids)} accepted region(s) that "
                               f"{SESSION_FILE} lists are not in it ({'the file is missing' if not regions_path.exists() else 'replaced or edited?'}); "
                               "restore it from a backup")
        try:
            settings = Settings.from_dict(meta["params"])
        except ValueError as exc:
            raise SessionError(f"{path}: params: {exc}; the file was edited or damaged (restore it from a backup)") from exc
        if settings.legacy_trained_count is not None:  # format 1 counted the first accepted regions
            settings = replace(settings, trained_on=tuple(meta["accepted"][: settings.legacy_trained_count]),
                               legacy_trained_count=None)
        labels = LabelStore(folder)
        for name, n_chunks in meta["labels"].items():
            if name not in slides:
                continue
            try:
                labels.check(name, slides[name].label_shape, legacy=meta["version"] < 2, expect_chunks=n_chunks)
            except LabelStoreError as exc:
                raise SessionError(f"{exc}; restore it from a backup") from exc
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
            settings=settings,
            checkpoints=list(meta.get("checkpoints", [])),
            _format=meta["version"],
            _store=labels,
            _saved_chunks=dict(meta["labels"]),
        )

    # -- slides and labels ---------------------------------------------------------------
    def add_slide(self, name: str, path: str | os.PathLike[str], *, label_shape: tuple[int, int], label_level: int = 1,
                  truth: str | os.PathLike[str] | None = None, group: str | None = None,
                  label_factor: float | None = None) -> SlideEntry:
        """Add a slide (``label_factor``: level-0 px per label px, see :meth:`set_label_factor`)."""
        if name in self.slides:
            raise ValueError(f"slide {name!r} is already in the session")
        size, digest = file_fingerprint(path) if Path(path).is_file() else (None, None)
        entry = SlideEntry(name, str(path), label_level, tuple(label_shape), None if truth is None else str(truth), group,
                           size, digest)
        with self._lock:
            self.slides[name] = entry
            if label_factor is not None:
                self.set_label_factor(name, label_factor)
        self.events.slides.emit(name)
        return entry

    def set_label_factor(self, name: str, factor: float) -> None:
        """Level-0 px per label px of slide ``name`` (its pyramid's downsample at the
        labeling level): how a region's box maps to its labels."""
        if not factor > 0:
            raise ValueError(f"factor must be positive, got {factor!r}")
        self._factors[name] = float(factor)

    def label_box(self, region: Region) -> Box:
        """The label pixels of a level-0 region (rounded outwards, clipped to the slide)."""
        if region.slide not in self._factors:
            raise KeyError(f"no slide {region.slide!r} open in the session (slides: {', '.join(self.slides) or 'none'})")
        f, shape = self._factors[region.slide], self.slides[region.slide].label_shape
        y0, x0 = max(0, int(region.y // f)), max(0, int(region.x // f))
        y1, x1 = min(shape[0], math.ceil(region.y1 / f)), min(shape[1], math.ceil(region.x1 / f))
        return Box(y0, x0, y1, x1)

    def labels(self, name: str) -> np.ndarray:
        """The slide's label mask. Read it; write through :meth:`editing_labels` (or paint a
        :meth:`label_view` and call :meth:`labels_written`), which keep the rules and fire
        the ``labels`` event."""
        if name not in self.slides:
            raise KeyError(f"no slide {name!r} in the session")
        with self._lock:
            try:
                return self._store.get(name, self.slides[name].label_shape, legacy=self._format < 2)
            except LabelStoreError as exc:
                raise SessionError(str(exc)) from exc

    def label_view(self, name: str, box: Box) -> np.ndarray:
        """The writable view of the slide's labels in label box ``(y0, x0, y1, x1)``: what a
        Labels layer of a region paints into (then :meth:`labels_written` with the box)."""
        self.labels(name)
        return self._store.view(name, box)

    def label_chunks(self, name: str) -> set[tuple[int, int]] | None:
        """The label chunks ``(cy, cx)`` of the slide that may hold labels (saved, or marked
        since), or None when the slide has no saved labels and none were loaded."""
        with self._lock:
            if not (self._store.saved(name) or self._store.loaded(name)):
                return None
            self.labels(name)
            return self._store.chunks_with_labels(name)

    def accepted_cover(self, name: str, box: Box) -> np.ndarray:
        """Which label pixels of ``box`` lie in an accepted region of the slide (a crop of ``box``)."""
        return covered(box, [self.label_box(r) for r in self.accepted_on(name)])

    @contextmanager
    def editing_labels(self, name: str, box: Box) -> Iterator[np.ndarray]:
        """Write labels: yields the writable crop of label box ``box``; on leaving, the
        session keeps its rules (:meth:`labels_written`) and fires ``labels(name, box)``.

        Examples
        --------
        >>> with session.editing_labels("a.tif", Box(0, 0, 8, 8)) as crop:  # doctest: +SKIP
        ...     crop[crop == 0] = 1
        """
        with self._lock:
            crop = self.label_view(name, box)
            try:
                yield crop
            finally:
                self.labels_written(name, box)

    def labels_written(self, name: str, box: Box | None = None) -> int:
        """Keep the session's label rules after a write in ``box`` (None: the whole slide),
        mark the chunks for the next :meth:`save` and fire ``labels(name, box)``.

        The rules: labels exist inside accepted regions only (pixels outside every accepted
        region become unlabeled: how removing a region clears its labels), and each value
        is a class (values above the last class become unlabeled). Returns how many pixels
        held no class.
        """
        with self._lock:
            labels = self.labels(name)
            b = Box(*box) if box is not None else Box(0, 0, *labels.shape)
            crop = labels[b.slices]
            bad = crop > len(self.classes)
            n_bad = int(bad.sum())
            if n_bad:
                crop[bad] = 0
            if name in self._factors and crop.any():
                crop[~self.accepted_cover(name, b)] = 0
            self._store.mark(name, box)
        self.events.labels.emit(name, None if box is None else Box(*box))
        return n_bad

    def set_labels(self, name: str, labels: np.ndarray) -> None:
        """Replace the slide's whole label mask (values 0 to the number of classes)."""
        labels = np.asarray(labels)
        expected = self.slides[name].label_shape
        if expected is not None and labels.shape != tuple(expected):
            raise ValueError(f"labels for {name!r} must have shape {tuple(expected)}, got {labels.shape}")
        labels = as_label_values(labels, len(self.classes), name=f"labels of {name!r}")
        with self._lock:
            self.labels(name)
            self._store.replace(name, labels)
        self.events.labels.emit(name, None)

    def mark_labels_changed(self, name: str, box: Box | None = None) -> None:
        """Have the next :meth:`save` write the slide's labels in ``box`` ``(y0, x0, y1, x1)``
        (label px; None: anywhere, the whole mask is scanned), and fire ``labels``. Prefer
        :meth:`editing_labels`, which keeps the label rules too."""
        with self._lock:
            self._store.mark(name, box)
        self.events.labels.emit(name, None if box is None else Box(*box))

    # -- settings --------------------------------------------------------------------------
    def update_settings(self, **changes: Any) -> Settings:
        """Replace the settings with ``changes`` applied (:class:`Settings` fields) and fire
        ``settings``; saved with the next :meth:`save`.

        Raises
        ------
        TypeError
            For a name that is no field of :class:`Settings`.
        """
        with self._lock:
            self.settings = replace(self.settings, **changes)
            settings = self.settings
        self.events.settings.emit(settings)
        return settings

    @contextmanager
    def changing(self) -> Iterator[Session]:
        """Hold the session while changing several fields (``history``, ``settings``, ...):
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
        if self.read_only:
            raise SessionError(f"{self.folder}: the session was opened read-only; nothing was saved")
        with self._lock:
            _check_still_there(self.folder)
            if self._lock_file is not None:
                check_held(self._lock_file)  # not taken over by another process since
            (self.folder / "labels").mkdir(exist_ok=True)  # never the session folder: one moved away stays away
            (self.folder / "checkpoints").mkdir(exist_ok=True)
            _write_journal(self.folder, {n: self._store.dirty_chunks(n) for n in self.slides}, self.store.accepted())
            self._store.save()
            items = self.store.items()  # one snapshot: a region is in one list only
            accepted = [r for r, st in items if st == ACCEPTED]
            proposed = [r for r, st in items if st == PROPOSED]
            dismissed = [r for r, st in items if st == DISMISSED]
            write_features(self.folder / REGIONS_FILE, region_features(accepted, proposed + dismissed))
            meta = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "software": {"napari-alregions": __version__, "python": platform.python_version()},
                "classes": list(self.classes),
                "slides": [_entry_dict(e) for e in self.slides.values()],
                "accepted": [r.uid for r in accepted],
                "dismissed": [r.uid for r in dismissed],
                "history": self.history,
                "params": self.settings.to_dict(),
                "checkpoints": self.checkpoints,
                # labeled chunks per slide: opening checks the label files are there
                "labels": {n: self._store.n_stored(n, self._saved_chunks.get(n, 0)) for n in self.slides},
            }
            _atomic_write_text(self.folder / SESSION_FILE, json.dumps(meta, indent=1, default=_json_default), fsync=True)
            (self.folder / JOURNAL_FILE).unlink(missing_ok=True)  # the labels' regions are on record now
            if self._lock_file is not None:
                self._lock_file.saved()
            self._format = FORMAT_VERSION  # the labels are in folders now: format-1 zips can go
            self._store.drop_legacy()


#: Written before a save's labels, removed once ``session.json`` is: while it is there, a
#: save was killed before it recorded its regions. It lists the label chunks the save wrote
#: and the accepted regions (level-0 boxes) whose labels those chunks held.
JOURNAL_FILE = "labels/saving.json"


def _write_journal(folder: Path, chunks: dict[str, set[tuple[int, int]]], accepted: list[Region]) -> None:
    chunks = {n: sorted(ks) for n, ks in chunks.items() if ks}
    if chunks:
        boxes = {n: [[r.x, r.y, r.w, r.h] for r in accepted if r.slide == n] for n in chunks}
        _atomic_write_text(folder / JOURNAL_FILE, json.dumps({"chunks": chunks, "regions": boxes}), fsync=True)


def interrupted_save(folder: str | os.PathLike[str]) -> dict[str, tuple[set[tuple[int, int]], list[Region]]]:
    """What a save killed before it wrote ``session.json`` was writing, by slide: the label
    chunks and the accepted regions then. Labels in those chunks, inside those regions but
    outside every region on record, are provably that save's. Empty when the last save
    completed, or the journal is unreadable (then no label is provably ours to clear)."""
    try:
        listed = json.loads((Path(folder) / JOURNAL_FILE).read_text())
        return {str(n): ({(int(cy), int(cx)) for cy, cx in ks},
                         [Region(*(int(v) for v in box), slide=str(n)) for box in listed["regions"].get(n, [])])
                for n, ks in listed["chunks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _check_unique_uids(regions: list[Region], path: Path) -> None:
    """Two regions of one uid would make one of them (and so its labels) vanish: refused
    (regions without an id get one of their own)."""
    seen: set[str] = set()
    twice = sorted({r.uid for r in regions if r.uid and (r.uid in seen or seen.add(r.uid))})
    if twice:
        raise SessionError(f"{path}: region id(s) {', '.join(map(repr, twice[:3]))} appear more than once (the file "
                           "was edited or merged by hand?); give each region its own 'id' or restore the file from a "
                           "backup. Nothing was changed")


def _check_still_there(folder: Path) -> None:
    """A session folder moved or deleted while open: saving must not create a second one at
    the old path (the in-memory session stays; move the folder back and save again)."""
    if not ((folder / SESSION_FILE).is_file() or (folder / LOCK_FILE).is_file()):
        raise SessionError(f"{folder}: the session folder is gone (moved, renamed or deleted while open); nothing "
                           "was saved. Move it back and save again, or reopen it where it is now")


_ENTRY_TYPES = {"name": str, "path": str, "label_level": int, "label_shape": (list, type(None)),
                "truth": (str, type(None)), "group": (str, type(None)), "size": (int, type(None)),
                "digest": (str, type(None))}
_DIGEST_BYTES = 1 << 16
_SAMPLES, _SAMPLE_BYTES = 64, 1 << 12  # digest v2: 64 blocks of 4 KiB spread over the file, its end included
_DIGEST_V2 = "v2:"


def file_fingerprint(path: str | os.PathLike[str], *, like: str | None = None) -> tuple[int, str]:
    """A file's size and a SHA-256 digest of its first 64 KiB (a TIFF's header and first
    tags) and of 64 blocks of 4 KiB evenly spread over the rest (tiles, tile offsets and the
    tags at the end): enough to tell a slide replaced by another one of the same size and
    header, reading 320 KiB however large the file is.

    ``like``: a digest stored earlier; one of version 1 (no ``v2:`` prefix: the first 64 KiB
    only, sessions saved before) is computed the same way, so old sessions still open.
    """
    import hashlib

    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read(_DIGEST_BYTES))
        size = os.fstat(fh.fileno()).st_size
        if like is not None and not like.startswith(_DIGEST_V2):
            return size, digest.hexdigest()
        if size > _DIGEST_BYTES:
            last = max(size - _SAMPLE_BYTES, _DIGEST_BYTES)
            for at in sorted({_DIGEST_BYTES + (last - _DIGEST_BYTES) * i // (_SAMPLES - 1) for i in range(_SAMPLES)}):
                fh.seek(at)
                digest.update(fh.read(_SAMPLE_BYTES))
    return size, _DIGEST_V2 + digest.hexdigest()


def _checked_meta(meta: Any, path: Path) -> dict[str, Any]:
    """``session.json``'s content, type-checked field by field (a clear message naming the
    field, never an AttributeError later); what is absent gets its default."""
    def bad(what: str) -> SessionError:
        return SessionError(f"{path}: {what}; the file was edited or damaged (restore it from a backup)")

    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SessionError(f"{path}: not a napari-alregions session file")
    version = meta.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"'version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SessionError(f"{path}: session format version {version} is newer than this napari-alregions "
                           f"({__version__}) reads (up to {FORMAT_VERSION}); update napari-alregions to open it")
    out: dict[str, Any] = {"version": version}
    for key, kind, default in (("classes", list, ["background", "tumour"]), ("slides", list, []), ("accepted", list, []),
                               ("dismissed", list, []), ("history", list, []), ("params", dict, {}),
                               ("checkpoints", list, []), ("labels", dict, {})):
        value = meta.get(key, default)
        if not isinstance(value, kind):
            raise bad(f"'{key}' must be a {kind.__name__}, got {type(value).__name__}")
        out[key] = value
    if len(out["classes"]) < 2 or not all(isinstance(c, str) and c for c in out["classes"]) \
            or len(set(out["classes"])) != len(out["classes"]):
        raise bad(f"'classes' must be two or more distinct names, got {out['classes']!r}")
    for key in ("accepted", "dismissed", "checkpoints"):
        if not all(isinstance(v, str) for v in out[key]):
            raise bad(f"'{key}' must list strings")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in out["labels"].values()):
        raise bad("'labels' must map slide names to chunk counts")
    for ck in out["checkpoints"]:
        if Path(ck).is_absolute() or ".." in Path(ck).parts:
            raise bad(f"checkpoint {ck!r} is outside the session folder")
    if not all(isinstance(h, dict) for h in out["history"]):
        raise bad("'history' must list objects")
    slides = []
    for i, d in enumerate(out["slides"]):
        if not isinstance(d, dict):
            raise bad(f"slide {i} must be an object, got {type(d).__name__}")
        missing = [k for k in ("name", "path") if k not in d]
        if missing:
            raise bad(f"slide {i} has no {' or '.join(map(repr, missing))}")
        d = {k: v for k, v in d.items() if k in _ENTRY_TYPES}  # fields of newer minor versions are dropped
        for k, v in d.items():
            if not isinstance(v, _ENTRY_TYPES[k]) or isinstance(v, bool):
                raise bad(f"slide {i} ({d.get('name')!r}): '{k}' has the wrong type ({type(v).__name__})")
        if d.get("label_shape") is not None:
            shape = d["label_shape"]
            if len(shape) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
                raise bad(f"slide {d['name']!r}: 'label_shape' must be two positive integers, got {shape!r}")
            d["label_shape"] = tuple(shape)
        if d.get("label_level", 1) < 0:
            raise bad(f"slide {d['name']!r}: 'label_level' must be >= 0")
        slides.append(d)
    if len({d["name"] for d in slides}) != len(slides):
        raise bad("two slides have the same name")
    out["slides"] = slides
    return out


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


def overlap(box: Box, other: Box) -> tuple[slice, slice]:
    """The part of ``box`` (y0, x0, y1, x1) that ``other`` covers, as slices of a crop of ``box``."""
    y0, x0, y1, x1 = box
    oy0, ox0, oy1, ox1 = other
    return (slice(max(oy0, y0) - y0, max(0, min(oy1, y1) - y0)), slice(max(ox0, x0) - x0, max(0, min(ox1, x1) - x0)))


def covered(box: Box, others: list[Box]) -> np.ndarray:
    """Which pixels of ``box`` (y0, x0, y1, x1) any of ``others`` covers, as a crop of ``box``."""
    y0, x0, y1, x1 = box
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for other in others:
        out[overlap(box, other)] = True
    return out
