"""The session's events, delivered on the viewer's thread: what every view redraws on.

The views (layers, lists, the colour bar) connect to :class:`Hub`'s signals only; the hub
follows the current project's ``session.events`` (a psygnal group whose signals fire in the
thread that made the change: a retrain fires them in its worker) and re-emits each one on
the Qt main thread. Where the session has no ``events`` group yet, its region callbacks are
followed and the widget posts the other changes itself (:meth:`Hub.post`).
"""

from __future__ import annotations

import threading
from typing import Any

from psygnal import Signal, SignalGroup
from qtpy.QtCore import QObject, Qt
from qtpy.QtCore import Signal as QtSignal

__all__ = ["Hub", "SIGNALS"]

#: The session's signals the views follow, plus ``current`` (the slide on screen changed).
SIGNALS = ("regions", "labels", "maps", "settings", "slides", "model")


class ViewEvents(SignalGroup):
    regions = Signal(object)  # RegionEvent
    labels = Signal(object, object)  # slide, label box or None
    maps = Signal(object, str)  # slide, kind ("priority", "embeddings", "similarity", "features", "prediction")
    settings = Signal(object)
    slides = Signal(object)  # the slide added
    model = Signal()
    current = Signal(object)  # the slide shown (None: none)
    project = Signal(object)  # a new or reopened project (None: closed)


class Hub(QObject):
    """The current project's events on the main thread (:attr:`events`)."""

    _queued = QtSignal(str, tuple)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.events = ViewEvents()
        self.project = None
        self._main = threading.main_thread()
        self._queued.connect(self._deliver, Qt.ConnectionType.QueuedConnection)
        self._forward = {name: (lambda *args, name=name: self.post(name, *args)) for name in SIGNALS}

    def follow(self, project) -> None:
        """Relay ``project``'s events from now on (the last project's no more), then say so."""
        for p, on in ((self.project, False), (project, True)):
            session = getattr(p, "session", None)
            if session is None:
                continue
            group = getattr(session, "events", None)
            if group is not None:
                for name in SIGNALS:
                    sig = getattr(group, name, None)
                    if sig is not None:
                        (sig.connect if on else sig.disconnect)(self._forward[name])
                continue
            callbacks = session.regions_changed
            if on:
                callbacks.append(self._forward["regions"])
            elif self._forward["regions"] in callbacks:
                callbacks.remove(self._forward["regions"])
        self.project = project
        self.events.project.emit(project)

    @property
    def native(self) -> bool:
        """Whether the session fires its own events (no :meth:`post` needed after a change)."""
        return getattr(getattr(self.project, "session", None), "events", None) is not None

    def post(self, name: str, *args: Any) -> None:
        """Emit ``name`` on the main thread (now when called there, else queued)."""
        if threading.current_thread() is self._main:
            self._deliver(name, args)
        else:
            self._queued.emit(name, args)

    def changed(self, name: str, *args: Any) -> None:
        """A change the widget made that the session does not announce (yet): posted unless it does."""
        if not self.native:
            self.post(name, *args)

    def _deliver(self, name: str, args: tuple) -> None:
        getattr(self.events, name).emit(*args)
