"""Expected failures: the session's error, and one line for any of them, said the same way
by the CLI and the viewer."""

from __future__ import annotations

import errno
import os

from ._atomic import target_of

__all__ = ["SessionError", "describe"]


class SessionError(ValueError):
    """A session folder that cannot be used; the message says why."""


#: What to do about the OS errors a user can fix.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    getattr(errno, "EDQUOT", -1): "the disk quota is exceeded: free space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "no permission: write elsewhere or change the folder's permissions",
    errno.EPERM: "not permitted: write elsewhere or change the folder's permissions",
    errno.ENOENT: "check the path: output folders must exist",
    errno.EISDIR: "choose a file name, not a folder",
}


def describe(exc: BaseException) -> str:
    """One line for an expected failure.

    An OS error names the file it is about: for a temporary file of an atomic save, the
    file being saved (not ``.export.4711-1397.part.geojson``), with what to do about it.

    Examples
    --------
    >>> describe(FileNotFoundError(2, "No such file or directory", "/data/.r.12-34.part.geojson"))
    '/data/r.geojson: No such file or directory (check the path: output folders must exist)'
    >>> describe(ValueError("k must be >= 1,\\n got 0"))
    'k must be >= 1, got 0'
    """
    if isinstance(exc, MemoryError):
        return f"out of memory ({exc or 'a too large allocation'}): use smaller inputs or a larger machine"
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename
        if name is not None:
            name = target_of(os.fsdecode(name)) or os.fsdecode(name)
        hint = _OS_HINTS.get(exc.errno or 0, "")
        text = f"{name}: {exc.strerror}" if name is not None else exc.strerror
        return f"{text} ({hint})" if hint else text
    return " ".join(str(exc).split()) or type(exc).__name__
