"""Atomic file writes: write a temporary sibling, then rename it over the target.

Every file the package saves (sessions, labels, maps, embeddings, checkpoints, GeoJSON,
prototype sets, pool results) goes through :func:`atomic_path`, so a crash mid-write
leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "save_npy", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    The temporary name starts with a dot, is the writing thread's own (two threads saving
    the same file each rename a whole one; the last wins) and keeps the suffix
    (``np.save`` and ``np.savez`` would append one otherwise). If the block raises, the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.part{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` atomically (``fsync``: flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """``np.save`` atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)
    return Path(path)
