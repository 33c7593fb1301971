"""Work for the viewer's thread, one piece per event-loop turn."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QTimer

__all__ = ["Steps"]


class Steps:
    """A queue of callables run one per event-loop turn: adding a session's layers (~0.3 s
    each) in one turn froze the viewer for seconds; between steps it keeps responding."""

    def __init__(self) -> None:
        self._queue: list[Callable[[], object]] = []

    @property
    def running(self) -> bool:
        return bool(self._queue)

    def run(self, steps: list[Callable[[], object]]) -> None:
        """Queue ``steps`` after those still waiting."""
        start = not self._queue
        self._queue.extend(steps)
        if start and self._queue:
            self._next()

    def _next(self) -> None:
        if not self._queue:
            return
        step = self._queue[0]
        try:
            step()
        except Exception:
            self._queue.clear()  # a failed step must not leave the widget busy for ever
            raise
        finally:
            if self._queue:
                self._queue.pop(0)
        if self._queue:
            # a 1 ms timer, not 0: Qt 6 posts a 0 ms shot as an event, and a chain of posted events
            # runs ahead of every timer (napari's and Qt's own), so the steps ran as one long turn
            QTimer.singleShot(1, self._next)
