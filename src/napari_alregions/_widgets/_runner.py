"""One long task at a time in a napari thread worker, with a progress bar and cancel.

The progress bar lives in the dock widget (a magicgui ProgressBar), not in napari's
activity dock: while a ``napari.utils.progress`` is open napari animates an activity
indicator that repaints the whole window continuously; where OpenGL is software-rendered
(remote desktops, Xvfb) that costs two cores and made retraining 3x slower
(``bench_ui.py``: 44-56 s vs 15.7 s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QThreadPool

from .._errors import describe
from ._preload import collector_paused, load_torch_library

__all__ = ["TaskRunner"]


_CANCELLED = object()


def _set_text(bar, text: str) -> None:
    bar.native.setFormat(f"{text}  %v / %m")


class TaskError(Exception):
    """A runtime failure inside a task (e.g. CUDA), reported to the user."""


def _alive(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A slot that does nothing once its Qt widgets are gone (viewer closed mid-task)."""
    def slot(*args: Any) -> Any:
        try:
            return fn(*args)
        except RuntimeError as exc:
            if "has been deleted" not in str(exc):
                raise
            return None

    return slot


class TaskRunner:
    """Runs a project generator (``make(cancel) -> generator``) off the GUI thread.

    Progress records with ``done``/``total`` or ``step``/``total`` move ``bar`` (a
    magicgui ``ProgressBar``) at most 10 times a second. :meth:`cancel` sets the flag the core polls between batches, so a cancelled task
    stops at a defined point and leaves the project unchanged.
    """

    def __init__(self, on_busy: Callable[[bool], None], on_message: Callable[[str, bool], None], bar) -> None:
        self._on_busy = on_busy
        self._on_message = on_message
        self._cancel = threading.Event()
        self.worker = None
        self._progress = bar
        self._bar = None
        self._last_update = 0.0

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, make: Callable[[Callable[[], bool]], Generator[Any, None, Any]], *, desc: str,
              on_done: Callable[[Any], None]) -> bool:
        if self.busy:
            self._on_message("another task is running; wait for it or cancel it", True)
            return False
        cancel = threading.Event()
        self._cancel = cancel

        def work():
            # torch is imported here, in the worker: importing it on the viewer's thread froze it for seconds
            with collector_paused():  # and where the worker would hold the GIL long, it does not
                load_torch_library()
                from ..model import InferenceCancelled, TrainingCancelled

            try:
                return (yield from make(cancel.is_set))
            except (TrainingCancelled, InferenceCancelled):
                return _CANCELLED  # a defined end, not an error
            except RuntimeError as exc:  # superqt would take it for a deleted worker and drop it
                raise TaskError(str(exc)) from exc

        def returned(value: Any) -> None:
            if value is _CANCELLED:
                self._on_message("cancelled: nothing was changed", False)
                return
            on_done(value)
            if cancel.is_set():  # pressed during the last step: the task had finished, say so
                self._on_message(f"{desc} had finished before Cancel took effect: its results are kept", True)

        worker = create_worker(work, _start_thread=False, _ignore_errors=True)  # errors become messages
        self._bar = self._progress
        self._bar.max, self._bar.value = 1, 0  # not 0: Qt's busy animation would repaint constantly
        _set_text(self._bar, desc)
        self._bar.visible = True
        worker.yielded.connect(_alive(self._update))
        worker.returned.connect(_alive(returned))
        worker.errored.connect(_alive(self._failed))
        worker.finished.connect(_alive(self._finished))
        self.worker = worker
        self._on_busy(True)
        worker.start()
        return True

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self, msecs: int = 30000) -> None:
        """Block until the running task ended (used when the viewer closes)."""
        self._cancel.set()
        QThreadPool.globalInstance().waitForDone(msecs)

    def _update(self, rec: Any) -> None:
        bar = self._bar  # updating the bar may run queued slots, _finished among them
        if bar is None or not isinstance(rec, dict):
            return
        now = time.monotonic()
        if now - self._last_update < 0.1:  # repainting per batch would slow the task down
            return
        self._last_update = now
        total = rec.get("total")
        done = rec.get("done", rec.get("step"))
        if total:
            bar.max = int(total)
        if done is not None:
            bar.value = min(int(done), bar.max)
        phase = rec.get("phase", "")
        if "member" in rec and rec.get("members", 1) > 1:
            phase = f"{phase} member {rec['member'] + 1}/{rec['members']}"
        if phase:
            _set_text(bar, phase)

    def _failed(self, exc: BaseException) -> None:
        self._on_message(describe(exc), True)

    def _finished(self) -> None:
        if self._bar is not None:
            self._bar.visible = False
            self._bar = None
        self.worker = None
        self._on_busy(False)
