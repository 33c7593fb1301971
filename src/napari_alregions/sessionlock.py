"""The lock of a session folder: one process writes a session at a time.

Opening a session for writing takes ``session.lock``, a small JSON file naming the
holder: host, pid, the process's start (:mod:`._process`: a pid reused by another program
is told apart), the session folder's absolute path, a random token and the time. A lock is
*stale*, and the next writer takes it without asking, when on this host

* its process no longer runs (killed, crashed, the machine restarted), or its pid now
  belongs to a process started at another time (reused);
* it names another folder: this folder was copied (or moved) while that one was open;
* it is unreadable (damaged, or from a process killed while writing it).

A process that runs (on this host) or another host's lock (which cannot be checked from
here) refuses the open with :class:`SessionLocked` unless the caller takes the lock over;
a reader never needs the lock. The holder checks its token before every save: a process
whose lock was taken over cannot overwrite the new holder's work.

The new holder, being the only writer, removes what killed writers left in the folder
(temporary files of atomic saves, zarr's partial chunk files, unfinished feature caches).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import remove_stale, temp_name
from ._errors import SessionError
from ._process import probe, start_of

__all__ = ["LOCK_FILE", "FolderNotWritable", "SessionLock", "SessionLocked", "acquire", "check_held", "judge", "release",
           "tidy"]

logger = logging.getLogger(__name__)

LOCK_FILE = "session.lock"
_MAX_LOCK_BYTES = 1 << 16  # a lock is a few hundred bytes; a larger file is not one of ours


class SessionLocked(SessionError):
    """Another process holds the session's lock.

    Attributes
    ----------
    holder : dict
        The lock's content: ``host``, ``pid``, ``since`` (and ``started``, ``folder``,
        ``token`` from this version on).
    kind : str
        ``"running"``: its process runs on this host; ``"other-host"``: another host's,
        which cannot be checked from here; ``"taken-over"``: raised by a save, another
        process took this session's lock over.
    reason : str
        The holder in words (``"process 4711 on this host, since ..."``).
    stale : bool
        False: the holder is not known to be gone (an open takes a lock whose holder is gone
        by itself, and says so in :attr:`SessionLock.note`).

    Both kinds raised by an open can be opened read-only, or taken over (``take_over=True``).
    """

    stale = False

    def __init__(self, message: str, holder: dict[str, Any], *, kind: str, reason: str) -> None:
        super().__init__(message)
        self.holder, self.kind, self.reason = holder, kind, reason


class FolderNotWritable(SessionError):
    """The session's lock cannot be written (a read-only file system, no permission): the
    session can be opened read-only only."""


@dataclass
class SessionLock:
    """A lock this process holds. ``note`` says what taking it did, when it took a stale lock
    or took one over (None otherwise): a caller shows it to the user. ``state`` is the file
    a save writes last (``session.json``), ``seen`` its :func:`_stamp` when this process
    last had it in hand."""

    path: Path
    token: str
    pid: int
    note: str | None = None
    state: Path | None = None
    seen: tuple[int, int, int] | None = None

    def saved(self) -> None:
        """After a save: the state file as this process wrote it."""
        self.seen = _stamp(self.state)


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """Which version of a file this is (each atomic save makes a new inode), None when absent."""
    try:
        st = os.stat(path) if path is not None else None
    except FileNotFoundError:
        return None
    return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)


_held: dict[Path, list] = {}  # lock path -> [SessionLock, open sessions of this process using it]
_held_lock = threading.Lock()
_HERE = "this host"


def _host() -> str:
    return platform.node()


def _identity(folder: Path, token: str) -> dict[str, Any]:
    return {"host": _host(), "pid": os.getpid(), "started": start_of(os.getpid()), "folder": str(folder),
            "token": token, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read(path: Path) -> tuple[bytes, dict[str, Any] | None]:
    """The lock file's bytes and content (None: unreadable); FileNotFoundError when absent."""
    raw = _head(path)
    try:
        holder = json.loads(raw) if len(raw) <= _MAX_LOCK_BYTES else None
    except (UnicodeDecodeError, ValueError):
        holder = None
    if not (isinstance(holder, dict) and isinstance(holder.get("host"), str) and type(holder.get("pid")) is int
            and holder["pid"] > 0):
        holder = None  # not a lock of ours: no one to ask
    return raw, holder


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(_MAX_LOCK_BYTES + 1)  # a larger file is judged (and compared) by its start


def _who(holder: dict[str, Any]) -> str:
    host = holder.get("host")
    where = _HERE if host == _host() else f"host {host}"
    return f"process {holder['pid']} on {where}, since {holder.get('since', 'an unknown time')}"


def judge(holder: dict[str, Any] | None, folder: str | os.PathLike[str]) -> tuple[str, str]:
    """Whether a lock's holder can still be writing ``folder``.

    Parameters
    ----------
    holder : dict or None
        A lock file's content (None: unreadable).
    folder : str or PathLike
        The folder the lock was found in.

    Returns
    -------
    verdict : str
        ``"stale"`` (no process writes this folder under that lock), ``"running"`` (its
        process runs on this host) or ``"other-host"`` (cannot be checked from here).
    reason : str
        Why, in words.

    Examples
    --------
    >>> judge(None, ".")
    ('stale', 'the lock file is unreadable (a process was killed while writing it, or it was damaged)')
    """
    if holder is None:
        return "stale", "the lock file is unreadable (a process was killed while writing it, or it was damaged)"
    pid, who = holder["pid"], _who(holder)
    if holder.get("host") != _host():
        return "other-host", f"{who}; whether it still runs cannot be checked from here"
    named = holder.get("folder")
    if isinstance(named, str) and not _same_folder(named, folder):
        return "stale", f"the lock is the one of {named}: this folder is a copy of it (or was moved) made while it was open"
    alive, started = probe(pid)
    if not alive:
        return "stale", f"{who}: that process no longer runs"
    recorded = holder.get("started")
    if isinstance(recorded, str) and started is not None and started != recorded:
        return "stale", f"{who}: that process no longer runs (pid {pid} now belongs to another process)"
    if pid == os.getpid():  # not one of this process's held locks (checked before): left by a copy back
        return "stale", f"{who}: this process holds no such lock"
    return "running", f"{who}: that process still runs"


def _same_folder(named: str, folder: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(named, folder)  # another name of the same folder (a link, a mount) is the same
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # cannot be told (no permission to look there): assume it is
        return True


def _create(path: Path, content: bytes) -> bool:
    """Make the lock file with ``content`` if none exists: linked in whole from a temporary
    file, so no reader sees it half-written (an exclusive create where links are refused)."""
    tmp = temp_name(path)
    try:
        tmp.write_bytes(content)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            return True
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if(path: Path, raw: bytes) -> bool:
    """Remove the lock file if it still holds ``raw``. It is renamed aside first (atomic: of
    two processes taking over the same stale lock, one gets it); a lock that changed
    meanwhile is put back."""
    aside = temp_name(path.with_name(f"{path.stem}-aside{path.suffix}"))  # named for remove_stale, if killed here
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    try:
        if _head(aside) == raw:
            return True
        try:
            os.link(aside, path)  # put back another process's fresh lock (unless a third made one)
        except OSError:
            logger.warning("%s changed while it was being taken over; its holder will refuse to save", path)
        return False
    finally:
        aside.unlink(missing_ok=True)


def acquire(folder: str | os.PathLike[str], *, take_over: bool = False, state: str | None = None) -> SessionLock:
    """Take ``folder``'s lock for this process, or raise :class:`SessionLocked`.

    A stale lock (see the module's description) is taken without asking; ``take_over``
    takes any lock (a running process's that the user knows is not writing, another
    host's that is closed). The returned lock's ``note`` says what was taken over. A folder
    this process holds already is shared (released when the last user releases it). On
    taking the lock, the temporary files of killed writers are removed. ``state`` names the
    file a save writes last (see :func:`check_held`).

    Raises
    ------
    SessionLocked
        Another process holds the lock.
    FolderNotWritable
        The lock cannot be written (a read-only folder): open the session read-only.
    """
    folder = Path(os.path.abspath(folder))
    path = (folder / LOCK_FILE).resolve()
    with _held_lock:
        if path in _held:  # a second session of this process on the same folder
            _held[path][1] += 1
            return _held[path][0]
        token = secrets.token_hex(16)
        content = json.dumps(_identity(folder, token)).encode()
        note, dead = None, set()
        for _ in range(5):
            try:
                if _create(path, content):
                    break
                raw, holder = _read(path)
            except FileNotFoundError as exc:
                if not folder.is_dir():
                    raise SessionError(f"{folder}: no such folder") from exc
                continue  # released meanwhile
            except OSError as exc:
                raise FolderNotWritable(f"{folder}: cannot take the session lock ({exc.strerror}): open the session "
                                        "read-only to read it") from exc
            verdict, reason = judge(holder, folder)
            if verdict != "stale" and not take_over:
                raise SessionLocked(_refusal(folder, verdict, reason), holder or {}, kind=verdict, reason=reason)
            if _remove_if(path, raw):
                if verdict == "stale":
                    note = f"took over the session lock: {reason}"
                    if holder is not None and holder["pid"] != os.getpid():  # its saves' files can go
                        dead.add(holder["pid"])
                else:
                    note = f"took over the session lock as asked: {reason}; that process can no longer save it"
        else:
            raise SessionError(f"{folder}: could not take the session lock: it keeps changing (several processes "
                               "opening the session at once?); try again")
        lock = SessionLock(path, token, os.getpid(), note, state=None if state is None else folder / state)
        lock.saved()  # as it is now: no other process writes it from here on
        _held[path] = [lock, 1]
    if note is not None:
        logger.info("%s: %s", folder, note)
    _remove_leftovers(folder, dead)
    return lock


def _refusal(folder: Path, verdict: str, reason: str) -> str:
    if verdict == "running":
        return (f"{folder}: the session is open in another process ({reason}). Close it there, open it read-only "
                "(changes are not saved), or take the lock over if that process is not using it")
    return (f"{folder}: the session may be open on another host ({reason}). Open it read-only, or take the "
            "lock over once it is closed there")


def _remove_leftovers(folder: Path, dead: set[int]) -> None:
    """Remove what killed writers left: only the lock holder may, as no other process of
    this session writes there now. A live process's files (an export into the folder) stay."""
    try:
        remove_stale(folder, min_age_s=0.0, dead=dead)
        for sub in ("labels", "features"):
            for left in list((folder / sub).rglob("*.partial")) if (folder / sub).is_dir() else ():
                if left.is_dir():
                    shutil.rmtree(left, ignore_errors=True)
                else:
                    left.unlink(missing_ok=True)
    except OSError as exc:  # cleaning is a courtesy: the session opens whatever is left
        logger.debug("%s: leftovers not removed: %s", folder, exc)


def tidy(folder: str | os.PathLike[str]) -> list[Path]:
    """For a reader: remove the temporary files of killed saves when no process writes the
    session (no lock, or a stale one on this host), as far as the folder can be written.
    Files of live processes stay (a writer may take the lock meanwhile: its pid runs), and so
    do zarr's partial files, which name no process. Returns the files removed."""
    folder = Path(os.path.abspath(folder))
    with _held_lock:
        if (folder / LOCK_FILE).resolve() in _held:
            return []  # this process writes it
    try:
        raw, holder = _read(folder / LOCK_FILE)
    except FileNotFoundError:
        dead = set()
    except OSError:
        return []
    else:
        if judge(holder, folder)[0] != "stale":
            return []
        dead = {holder["pid"]} if holder is not None and holder["pid"] != os.getpid() else set()
    return remove_stale(folder, min_age_s=0.0, dead=dead)


def check_held(lock: SessionLock) -> None:
    """Before a save: the lock is still this process's, else :class:`SessionLocked`
    (``kind`` "taken-over"): another process holds it, or held it and saved since (its
    changes would be overwritten). A lock file deleted while no other process saved is
    made again."""
    folder = lock.path.parent
    for _ in range(3):
        try:
            raw, holder = _read(lock.path)
        except FileNotFoundError:
            if not folder.is_dir():
                return  # the folder itself is gone: no other process can hold it
            if _stamp(lock.state) != lock.seen:
                raise SessionLocked(f"{folder}: the session was taken over by another process, which saved it and "
                                    "closed; this session can no longer save (it would overwrite those changes): reopen "
                                    "it", {}, kind="taken-over", reason="another process saved it since") from None
            if _create(lock.path, json.dumps(_identity(folder, lock.token)).encode()):
                logger.info("%s: the session lock was deleted: taken again", folder)
                return
            continue
        if holder is not None and holder.get("token") == lock.token:
            return
        reason = _who(holder) if holder is not None else "an unreadable lock"
        raise SessionLocked(f"{folder}: the session was taken over ({reason}); this session can no longer save (it "
                            "would overwrite the other's changes): reopen it", holder or {},
                            kind="taken-over", reason=reason)
    raise SessionError(f"{lock.path}: the session lock keeps changing; nothing was saved")  # pragma: no cover


def release(lock: SessionLock) -> None:
    """Release a lock :func:`acquire` gave (the file goes with the last session using it,
    if it is still this process's: not one another process took over)."""
    with _held_lock:
        entry = _held.get(lock.path)
        if entry is None or entry[0] is not lock:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[lock.path]
        _remove_own(lock)


def _remove_own(lock: SessionLock) -> None:
    try:
        raw, holder = _read(lock.path)
        if holder is not None and holder.get("token") == lock.token:
            _remove_if(lock.path, raw)
    except OSError as exc:  # gone, or the folder became read-only: nothing to release
        logger.debug("%s: not removed: %s", lock.path, exc)


@atexit.register
def _release_all() -> None:
    """An interpreter that exits without closing its sessions leaves no lock behind."""
    with _held_lock:
        for lock, _ in _held.values():
            if lock.pid == os.getpid():
                _remove_own(lock)
        _held.clear()


if hasattr(os, "register_at_fork"):  # a forked child holds none of its parent's locks
    os.register_at_fork(after_in_child=_held.clear)
