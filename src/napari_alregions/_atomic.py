"""Atomic file writes: write a temporary sibling, then rename it over the target.

Every file the package saves (sessions, labels, maps, embeddings, checkpoints, GeoJSON,
prototype sets, pool results) goes through :func:`atomic_path`, so a crash mid-write
leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._process import running

__all__ = ["atomic_path", "remove_stale", "save_npy", "target_of", "temp_name", "write_text"]

logger = logging.getLogger(__name__)

#: A temporary name of :func:`atomic_path`: ``.<stem>.<pid>-<thread id>.part<suffix>``.
_TEMP_NAME = re.compile(r"^\.(?P<stem>.*)\.(?P<pid>\d+)-\d+\.part(?P<suffix>(\.[^.]*)?)$")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    The temporary name starts with a dot, is the writing thread's own (two threads saving
    the same file each rename a whole one; the last wins) and keeps the suffix
    (``np.save`` and ``np.savez`` would append one otherwise). If the block raises, the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_name(path: Path) -> Path:
    """This thread's temporary name for ``path`` (see :func:`atomic_path`)."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.part{path.suffix}")


def target_of(path: str | os.PathLike[str]) -> Path | None:
    """The file a temporary name of :func:`atomic_path` stands for, None for other names;
    error messages name the target, not ``.labels.4711-1397.part.zip``."""
    path = Path(path)
    m = _TEMP_NAME.match(path.name)
    return None if m is None else path.with_name(m["stem"] + m["suffix"])


def remove_stale(folder: str | os.PathLike[str], *, min_age_s: float = 5.0, max_age_s: float = 86400.0,
                 dead: Collection[int] = ()) -> list[Path]:
    """Remove the temporary files that killed saves left under ``folder`` (recursively).

    A temporary file of :func:`atomic_path` is stale when it is older than ``min_age_s`` and
    the process named in it is gone or listed in ``dead`` (pids known to have died, though
    the system may have given them to other processes since), or older than ``max_age_s``
    whatever its name says (a pid on another machine, or reused). A live save is never
    touched: its process runs and its file is young. The holder of a session's lock knows
    no other process saves there, and passes ``min_age_s=0``. Returns the files removed.

    Examples
    --------
    >>> remove_stale("my-session")  # doctest: +SKIP
    [PosixPath('my-session/checkpoints/.cycle-3.4711-1397.part.pt')]
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a folder")
    removed = []
    now = time.time()
    for path in folder.rglob(".*.part*"):
        m = _TEMP_NAME.match(path.name)
        if m is None or not path.is_file():
            continue
        try:
            age = now - path.stat().st_mtime
            pid = int(m["pid"])
            gone = pid != os.getpid() and (pid in dead or not running(pid))  # ours: another thread's save
            if age > max_age_s or (age >= min_age_s and gone):
                path.unlink()
                removed.append(path)
        except OSError as exc:  # gone meanwhile, or not ours to remove: leave it
            logger.debug("cannot remove %s: %s", path, exc)
    if removed:
        logger.info("removed %d temporary files of interrupted saves under %s", len(removed), folder)
    return removed


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
