"""The session's events, delivered on the viewer's thread: what every view redraws on.

The views (layers, lists, the colour bar) connect to :class:`Hub`'s signals only; the hub
follows the current project's ``session.events`` (a psygnal group whose signals fire in the
thread that made the change: a retrain fires them in its worker) and re-emits each one on
the Qt main thread, in the order they were fired. Besides the session's signals, the hub
says which project (``project``) and which slide (``current``) the viewer shows.
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
        self.unfollow()
        if project is not None:
            for name in SIGNALS:
                getattr(project.session.events, name).connect(self._forward[name])
        self.project = project
        self.events.project.emit(project)

    def unfollow(self) -> None:
        """Relay the current project's events no more (the widget is closing)."""
        if self.project is not None:
            for name in SIGNALS:
                getattr(self.project.session.events, name).disconnect(self._forward[name])

    def post(self, name: str, *args: Any) -> None:
        """Emit ``name`` on the main thread (now when called there, else queued)."""
        if threading.current_thread() is self._main:
            self._deliver(name, args)
        else:
            self._queued.emit(name, args)

    def _deliver(self, name: str, args: tuple) -> None:
        getattr(self.events, name).emit(*args)
