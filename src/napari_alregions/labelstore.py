"""Label masks of a session, per slide, stored by chunk (SPEC §7).

Each slide's mask (uint8 at the labeling level: 0 unlabeled, ``i + 1`` for class i) is held
in memory whole — ``np.zeros`` maps its pages on first write, so an unlabeled mask costs no
memory — and stored as a zarr array in a folder ``labels/<slide>.zarr`` with chunks of
:data:`LABEL_CHUNK`\\ ² px. Only chunks holding labels exist on disk, each file written
atomically by zarr (temporary file, then rename). Writers mark the box they changed
(:meth:`LabelStore.mark`); a save writes the chunks marked since the last save and nothing
else, so its cost is that of the stroke, not of the slide's labeled area.

A region's labels are a writable view of the mask (:meth:`LabelStore.view`): a napari
Labels layer painting into the view paints into the session, and overlapping regions
share their pixels by construction.

Sessions of format 1 kept a slide's labels in one zip file (``labels/<slide>.zarr.zip``);
they are read, marked for writing, and the zip is removed once the session file that
names the new layout has been written (:meth:`LabelStore.drop_legacy`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from .geometry import Box

__all__ = ["LABEL_CHUNK", "LabelStore"]

LABEL_CHUNK = 512  # label px per side of a stored label chunk
_CHUNKS_ATTR = "napari-alregions chunks"  # format 1: the stored chunks, listed in the zip's attributes

Chunk = tuple[int, int]


class LabelStoreError(ValueError):
    """A label file that cannot be read; the message names it."""


def chunks_of(box: Box) -> set[Chunk]:
    """The chunks that label box ``(y0, x0, y1, x1)`` touches."""
    y0, x0, y1, x1 = (int(v) for v in box)
    c = LABEL_CHUNK
    return {(cy, cx) for cy in range(max(y0, 0) // c, (max(y1, y0 + 1) - 1) // c + 1)
            for cx in range(max(x0, 0) // c, (max(x1, x0 + 1) - 1) // c + 1)}


def chunk_box(chunk: Chunk, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The pixels of chunk ``(cy, cx)`` in a mask of ``shape``."""
    c = LABEL_CHUNK
    cy, cx = chunk
    return slice(cy * c, min((cy + 1) * c, shape[0])), slice(cx * c, min((cx + 1) * c, shape[1]))


def _all_chunks(shape: tuple[int, ...]) -> set[Chunk]:
    c = LABEL_CHUNK
    return {(cy, cx) for cy in range(-(-shape[0] // c)) for cx in range(-(-shape[1] // c))}


class LabelStore:
    """The label masks of a session folder, by slide name.

    Not thread-safe on its own: :class:`~napari_alregions.session.Session` calls it under
    its lock.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._arrays: dict[str, np.ndarray] = {}
        self._stored: dict[str, set[Chunk]] = {}  # chunks present on disk
        self._dirty: dict[str, set[Chunk]] = {}  # chunks to write at the next save
        self._legacy: set[str] = set()  # slides read from a format-1 zip
        #: Chunks the last :meth:`save` wrote or deleted (a measure of its cost).
        self.last_written = 0

    def path(self, name: str) -> Path:
        return self.folder / "labels" / f"{name}.zarr"

    def legacy_path(self, name: str) -> Path:
        return self.folder / "labels" / f"{name}.zarr.zip"

    def loaded(self, name: str) -> bool:
        return name in self._arrays

    def get(self, name: str, shape: tuple[int, int] | None, *, legacy: bool = False) -> np.ndarray:
        """The slide's mask, read on first use (``legacy``: the session is of format 1)."""
        if name not in self._arrays:
            path, old = self.path(name), self.legacy_path(name)
            if legacy and old.exists():
                labels, stored = _read_label_zip(old)
                # written anew as a folder at the next save; the zip goes after the session file
                self._dirty[name] = stored if stored is not None else _all_chunks(labels.shape)
                stored, self._legacy = set(), self._legacy | {name}
                if path.exists():  # a migration killed half-way: written again whole
                    shutil.rmtree(path)
            elif not legacy and path.exists():
                labels, stored = _read_label_dir(path)
            else:
                if shape is None:
                    raise LabelStoreError(f"slide {name!r} has no label shape")
                labels, stored = np.zeros(shape, dtype=np.uint8), set()
            if shape is not None and labels.shape != tuple(shape):
                raise LabelStoreError(f"{path}: labels of shape {labels.shape}, but the session says {tuple(shape)} "
                                      "(a labels file of another slide?)")
            self._arrays[name], self._stored[name] = labels, stored
            self._dirty.setdefault(name, set())
        return self._arrays[name]

    def view(self, name: str, box: Box) -> np.ndarray:
        """The writable view of the loaded mask ``name`` inside label box ``(y0, x0, y1, x1)``."""
        y0, x0, y1, x1 = box
        labels = self._arrays[name]
        if not (0 <= y0 < y1 <= labels.shape[0] and 0 <= x0 < x1 <= labels.shape[1]):
            raise ValueError(f"box {box} is not inside the labels of {name!r} (shape {labels.shape})")
        return labels[y0:y1, x0:x1]

    def replace(self, name: str, labels: np.ndarray) -> None:
        self._arrays[name] = labels
        self._stored.setdefault(name, set())
        self.mark(name)

    def mark(self, name: str, box: Box | None = None) -> None:
        """Have the next save write the chunks of ``box`` (None: every chunk of the slide)."""
        labels = self._arrays.get(name)
        if labels is None:
            return  # never loaded: nothing changed
        self._dirty.setdefault(name, set()).update(_all_chunks(labels.shape) if box is None else chunks_of(box))

    def pending(self, name: str) -> int:
        return len(self._dirty.get(name, ()))

    def save(self) -> None:
        """Write the marked chunks: those holding labels are written, the others deleted."""
        import zarr
        from zarr.storage import LocalStore

        written = 0
        for name in sorted(self._dirty):
            dirty = self._dirty[name]
            if not dirty:
                continue
            labels, stored = self._arrays[name], self._stored[name]
            path = self.path(name)
            full = {k for k in dirty if labels[chunk_box(k, labels.shape)].any()}
            if not full and not (stored & dirty) and not path.exists():
                dirty.clear()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            store = LocalStore(path)
            if (path / "zarr.json").is_file():
                z = zarr.open_array(store, mode="r+")
                if tuple(z.shape) != labels.shape:
                    raise LabelStoreError(f"{path}: stored shape {tuple(z.shape)} is not the mask's {labels.shape}")
            else:
                z = zarr.create_array(store, shape=labels.shape, chunks=(LABEL_CHUNK, LABEL_CHUNK), dtype="uint8",
                                      fill_value=0, config={"write_empty_chunks": False})
            for k in sorted(full):
                box = chunk_box(k, labels.shape)
                z[box] = labels[box]
                written += 1
            for k in sorted((stored & dirty) - full):  # erased since: the chunk goes
                _chunk_file(path, k).unlink(missing_ok=True)
                written += 1
            self._stored[name] = (stored - dirty) | full
            dirty.clear()
        self.last_written = written

    def drop_legacy(self) -> None:
        """Remove the format-1 zips of migrated slides (call once the session file is written)."""
        for name in sorted(self._legacy):
            self.legacy_path(name).unlink(missing_ok=True)
        self._legacy.clear()

    def stored_chunks(self, name: str) -> set[Chunk]:
        return set(self._stored.get(name, ()))

    def saved(self, name: str) -> bool:
        """Whether a label file of ``name`` exists (either format)."""
        return self.path(name).exists() or self.legacy_path(name).exists()

    def chunks_with_labels(self, name: str) -> set[Chunk]:
        """The chunks of the loaded mask ``name`` that may hold labels: those on disk and
        those marked since the last save."""
        return self.stored_chunks(name) | self._dirty.get(name, set())

    def n_stored(self, name: str, default: int = 0) -> int:
        """Chunks of ``name`` on disk (``default`` for a mask not loaded: unchanged since read)."""
        return len(self._stored[name]) if name in self._stored else default

    def check(self, name: str, shape: tuple[int, int] | None, *, legacy: bool, expect_chunks: int) -> None:
        """Check, without reading the labels, that the file of a slide with ``expect_chunks``
        saved chunks is there and has ``shape``; raises :class:`LabelStoreError` naming it."""
        import zarr

        path = self.legacy_path(name) if legacy else self.path(name)
        if not path.exists():
            if expect_chunks:
                raise LabelStoreError(f"{path}: missing, though {expect_chunks} labeled chunk(s) of slide {name!r} "
                                      "were saved (deleted or moved?)")
            return
        if legacy:
            return  # read (and its shape checked) when first used
        try:
            z = zarr.open_array(str(path), mode="r")
        except Exception as exc:
            raise LabelStoreError(f"{path}: unreadable label array ({exc})") from exc
        if shape is not None and tuple(z.shape) != tuple(shape):
            raise LabelStoreError(f"{path}: labels of shape {tuple(z.shape)}, but the session says {tuple(shape)} "
                                  "(a labels file of another slide?)")


def _chunk_file(path: Path, chunk: Chunk) -> Path:
    return path / "c" / str(chunk[0]) / str(chunk[1])


def _read_label_dir(path: Path) -> tuple[np.ndarray, set[Chunk]]:
    """A folder store's mask and the chunks present (partial files of killed writes are ignored)."""
    import zarr
    from zarr.storage import LocalStore

    try:
        z = zarr.open_array(LocalStore(path, read_only=True), mode="r")
        if tuple(z.chunks) != (LABEL_CHUNK, LABEL_CHUNK) or z.ndim != 2 or z.dtype != np.uint8:
            raise LabelStoreError(f"{path}: not a label array of this package (chunks {z.chunks}, dtype {z.dtype})")
        labels = np.zeros(z.shape, dtype=np.uint8)
        stored = set()
        root = path / "c"
        for row in root.iterdir() if root.is_dir() else ():
            for col in row.iterdir():
                if row.name.isdigit() and col.name.isdigit():
                    k = (int(row.name), int(col.name))
                    box = chunk_box(k, z.shape)
                    labels[box] = z[box]
                    stored.add(k)
                # other names: zarr's partial writes (killed ones go when a writer opens: sessionlock)
        return labels, stored
    except LabelStoreError:
        raise
    except Exception as exc:
        raise LabelStoreError(f"{path}: unreadable label array ({exc})") from exc


def _read_label_zip(path: Path) -> tuple[np.ndarray, set[Chunk] | None]:
    """A format-1 zip's mask and its stored chunks (None where the file does not list them)."""
    import zarr
    from zarr.storage import ZipStore

    try:
        store = ZipStore(path, mode="r")
    except Exception as exc:
        raise LabelStoreError(f"{path}: unreadable label file ({exc})") from exc
    try:
        z = zarr.open_array(store, mode="r")
        listed = z.attrs.get(_CHUNKS_ATTR)
        if listed is None or tuple(z.chunks) != (LABEL_CHUNK, LABEL_CHUNK):  # an older file, written whole
            return np.asarray(z[:], dtype=np.uint8), None
        labels = np.zeros(z.shape, dtype=np.uint8)
        for k in listed:
            box = chunk_box(k, z.shape)
            labels[box] = z[box]
        return labels, {(int(cy), int(cx)) for cy, cx in listed}
    except Exception as exc:
        raise LabelStoreError(f"{path}: unreadable label array ({exc})") from exc
    finally:
        store.close()
