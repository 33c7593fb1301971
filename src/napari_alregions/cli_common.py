"""What every ``alregions`` verb that opens a session shares: ``--take-over`` and
``--read-only``, and one way to open with them.

A verb that only reads (an export, a dry run) opens the session read-only: it takes no
lock and writes no session data (it only removes temporary files of killed saves, when no
process writes the session), works while the session is open elsewhere and on a read-only
file system. A verb that writes takes the lock; a stale one (a killed process's,
a copied folder's) without asking, a running process's or another host's with
``--take-over``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_open_options", "open_options", "open_project", "open_session"]


def add_open_options(parser: argparse.ArgumentParser, *, writes: bool, unless: str | None = None) -> None:
    """Add ``--take-over`` and ``--read-only`` to a verb that opens a session.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The verb's parser.
    writes : bool
        Whether the verb writes to the session.
    unless : str, optional
        The option (its ``dest``) that makes a writing verb only read, e.g. ``"dry_run"``.
    """
    g = parser.add_argument_group("session lock")
    g.add_argument("--take-over", action="store_true",
                   help="take the session's lock from the process holding it (one that no longer uses it, or another "
                        "host's that is closed); that process can no longer save. A killed process's lock is taken "
                        "without this. Verbs that only read take no lock")
    g.add_argument("--read-only", action="store_true",
                   help="open without the lock, writing nothing (while the session is open elsewhere, or on a "
                        "read-only disk); verbs that only read always do")
    parser.set_defaults(open_writes=writes, open_unless=unless)


def open_options(args: argparse.Namespace) -> dict[str, bool]:
    """``read_only`` and ``take_over`` for :meth:`Session.open` / :meth:`AnnotationProject.open`
    from the options of :func:`add_open_options` (ValueError: ``--read-only`` on a verb that writes)."""
    unless = args.open_unless
    if not args.open_writes or (unless and getattr(args, unless)):
        return {"read_only": True, "take_over": False}
    if args.read_only:
        raise ValueError(f"--read-only: {args.command} writes to the session; drop --read-only (and add --take-over "
                         "if another process holds the session)"
                         + (f", or add --{unless.replace('_', '-')} to only read it" if unless else ""))
    return {"read_only": False, "take_over": args.take_over}


def open_session(args: argparse.Namespace, folder: str | None = None):
    """:meth:`Session.open` of ``folder`` (default: ``args.session``) as the options say."""
    from .session import Session

    session = _open(Session.open, args, folder)
    _say_note(session)
    return session


def open_project(args: argparse.Namespace, folder: str | None = None):
    """:meth:`AnnotationProject.open` of ``folder`` (default: ``args.session``) as the options say."""
    from .project import AnnotationProject

    project = _open(AnnotationProject.open, args, folder)
    _say_note(project.session)
    return project


#: What gets past a lock, in options.
_WAY = {"running": "close it there, or rerun with --take-over if that process no longer uses it",
        "other-host": "rerun with --take-over once it is closed there"}


def _open(open_: Callable[..., Any], args: argparse.Namespace, folder: str | None) -> Any:
    from .sessionlock import SessionLocked

    folder = args.session if folder is None else folder
    try:
        return open_(folder, **open_options(args))
    except SessionLocked as exc:
        raise SessionLocked(f"{folder}: the session is open in another process ({exc.reason}): {_WAY[exc.kind]}",
                            exc.holder, kind=exc.kind, reason=exc.reason) from None


def _say_note(session: Any) -> None:
    if session.lock_note:  # the CLI's stderr says what the library only logs
        print(f"alregions: {session.lock_note}", file=sys.stderr)
