"""The AL Regions dock widget: a container of tabs over one project, and the views of it.

The tabs (:mod:`._session_tab`, :mod:`._model_tab`, :mod:`._suggest_tab`,
:mod:`._annotate_tab`, :mod:`._correct_tab`) call project methods, long ones in a worker
(:class:`~._runner.TaskRunner`). What the viewer shows is drawn by views that redraw on the
session's events only (:class:`~._hub.Hub`): slides (:class:`~._slides.SlideView`), maps
and the colour bar (:class:`~._maps.MapView`), boxes (:class:`~._regions.RegionLayers`),
labels (:class:`~._labels.LabelLayers`) and the region lists (:class:`~._lists.RegionLists`).
No algorithm lives here.
"""

from __future__ import annotations

import time
from typing import Any

from magicgui import widgets as mw
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .._errors import describe
from ..project import AnnotationProject
from ._active import remove_top_down
from ._annotate_tab import AnnotateTab, confirm
from ._correct_tab import CorrectTab
from ._hub import Hub
from ._labels import LabelLayers, labels_name
from ._lists import RegionLists
from ._maps import MapView
from ._model_tab import ModelTab
from ._regions import RegionLayers
from ._runner import TaskRunner
from ._session_tab import SessionTab
from ._shortcuts import Shortcuts, _top
from ._slides import SlideView
from ._steps import Steps
from ._suggest_tab import SuggestTab
from ._text import wrapped

__all__ = ["ALRegionsWidget"]

_TABS = (("session", "Session", SessionTab), ("model", "Model", ModelTab), ("suggest", "Suggest", SuggestTab),
         ("annotate", "Annotate", AnnotateTab), ("correct", "Correct", CorrectTab))


class ALRegionsWidget(QWidget):
    """Region-based active learning in the viewer (SPEC §1).

    The tabs' controls are reachable as attributes (``widget.method`` is the Suggest tab's).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: AnnotationProject | None = None
        self.hub = Hub(self)
        self.steps = Steps()
        self.progress = mw.ProgressBar(value=0, min=0, max=0, label="")
        self.progress.visible = False
        self.runner = TaskRunner(self._set_busy, self.message_user, self.progress)
        self.busy_buttons: list[mw.PushButton] = []
        self._watched: set[int] = set()  # ids of windows whose closing saves pending strokes (no reference kept)
        self._after_task = None  # what runs once the current task's worker has finished (auto-retrain)
        viewer = napari_viewer
        self.slides = SlideView(viewer, self.hub, self.steps, chosen=self.slide_chosen)
        self.maps = MapView(viewer, self.hub, self.steps, self.slides)
        self.regions = RegionLayers(viewer, self, self.hub, self.steps, message=self.message_user, guard=self.guard,
                                    chosen=self._box_chosen, busy=lambda: self.runner.busy)
        self.labels = LabelLayers(viewer, self, self.hub, self.steps, message=self.message_user,
                                  saved=lambda: self._tabs["annotate"].strokes_saved(), painted=self._watch_close,
                                  new_layer=lambda layer: self.keys.bind_layer(layer, len(self.project.classes)))
        self.lists = RegionLists(self.hub, current=lambda: self.slides.current, proposal_chosen=self._proposal_chosen,
                                 accepted_chosen=self._accepted_chosen)
        self.message = wrapped(mw.Label(value="Create or open a session to start."))
        self.status = wrapped(mw.Label(value=""))
        self.shortcuts = wrapped(mw.Label(value=Shortcuts.text(())))
        self._tabs: dict[str, Any] = {}
        self.tabs = QTabWidget()
        for key, title, cls in _TABS:
            self._tabs[key] = tab = cls(self)
            scroll = QScrollArea()  # a tab taller than the dock scrolls; its controls keep their size
            scroll.setWidgetResizable(True)
            scroll.setWidget(tab.box.native)
            self.tabs.addTab(scroll, title)
        self.cancel_btn = self.button("Cancel", "stop the running task; nothing is changed")
        self.cancel_btn.enabled = False
        self.cancel_btn.changed.connect(self.runner.cancel)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs, 1)
        for widget in (self.progress.native, self.cancel_btn.native, self.status.native, self.maps.colorbar,
                       self.maps.legend.native, self.lists.legend.native, self.message.native, self.shortcuts.native):
            layout.addWidget(widget)  # under the tabs: on every tab
        suggest, annotate = self._tabs["suggest"], self._tabs["annotate"]
        self.keys = Shortcuts(viewer, {
            "accept": suggest.accept_selected, "reject": suggest.reject_selected, "next": lambda: suggest.step(1),
            "previous": lambda: suggest.step(-1), "draw": suggest.draw_region, "retrain": lambda: annotate.retrain()},
            self.pick_class)
        runner, labels, keys, hub = self.runner, self.labels, self.keys, self.hub
        self.destroyed.connect(lambda *_: hub.unfollow())
        self.destroyed.connect(lambda *_: runner.wait())  # closing the viewer stops the worker first
        self.destroyed.connect(lambda *_: labels.close())
        self.destroyed.connect(lambda *_: keys.close())

    def __getattr__(self, name: str) -> Any:
        # the tabs' controls, as attributes of the widget (scripts, tests and the docs use them)
        tabs = self.__dict__.get("_tabs") or {}
        for tab in tabs.values():
            if name in tab.__dict__:
                return tab.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def tab(self, key: str) -> Any:
        """The tab object ``key`` ("session", "model", "suggest", "annotate", "correct")."""
        return self._tabs[key]

    # ------------------------------------------------------------------ the project
    def set_project(self, project: AnnotationProject) -> None:
        """Work on ``project`` from now on: the last one's strokes are saved, its layers go, and
        the views draw the new one's, on the slide where the user stopped."""
        old, self.project = self.project, project
        self.labels.flush(everything=True)  # the closing session keeps its last strokes
        # the last session's overlays go, one per event-loop turn (40 regions' layers in one turn
        # froze the viewer ~1.4 s), topmost first, before the views draw the new session's
        old_layers = [layer for layer in [*self.maps.layers.values(), *self.regions.layers.values(), *self.labels.owned(),
                                          *self._tabs["suggest"].owned()] if layer in self.viewer.layers]
        old_layers.sort(key=self.viewer.layers.index, reverse=True)
        self.steps.run([lambda layer=layer: remove_top_down(self.viewer, [layer]) for layer in old_layers])
        self.slides.release()
        self.hub.follow(project)  # the views forget the last session's layers and draw this one's
        if old is not None:
            old.close()
        self.shortcuts.value = Shortcuts.text(project.classes)
        current = project.current_slide if project.current_slide in project.slides else next(iter(project.slides), None)
        self.slides.show(current)
        self.hub.post("current", current)
        self.steps.run([lambda: self.slides.go_to_slide(self.slides.current), self.show_status])

    def slide_chosen(self, name: str | None) -> None:
        """The user (or an added slide) made ``name`` the current slide."""
        p = self.project
        if p is None or name not in p.slides:
            return
        self.slides.show(name)
        self.guard(p.set_current_slide, name)
        self.hub.post("current", name)
        self.slides.go_to_slide(name)  # the current slide is the one on screen
        self.message.value = (f"showing {name}: {len(p.proposals(name))} proposed, "
                              f"{len(p.session.accepted_on(name))} accepted regions")

    @property
    def current(self) -> str | None:
        return self.slides.current

    # ------------------------------------------------------------------ selection
    def _proposal_chosen(self, region) -> None:
        self.slides.go_to(region)
        self.regions.select(region.slide, region.uid)  # the box is selected with its row

    def _accepted_chosen(self, region) -> None:
        self.slides.go_to(region)
        self.labels.paint(region)  # ready to paint: the painting layer over it, active

    def _box_chosen(self, region) -> None:
        """A box clicked on the canvas: its row is selected in the list."""
        suggest = self._tabs["suggest"]
        if region.method != suggest.method.value:
            suggest.method.value = region.method  # the list shows that method's proposals
        if self.lists.select_proposal(region.uid):
            self.tabs.setCurrentIndex(2)

    def pick_class(self, value: int) -> None:
        """Paint class ``value`` (1..n) in the region being painted, with the brush."""
        if self.project is None:
            self.message_user("create or open a session first", True)
            return
        self.labels.pick_class(value)

    # ------------------------------------------------------------------ plumbing for the tabs
    @staticmethod
    def button(text: str, tooltip: str = "") -> mw.PushButton:
        return mw.PushButton(text=text, tooltip=tooltip)

    def message_user(self, text: str, error: bool = False) -> None:
        self.message.value = text
        (show_error if error else show_info)(text)

    def confirm(self, text: str) -> bool:
        return confirm(self, text)

    def guard(self, fn, *args, **kwargs) -> Any:
        """Run a quick project call; a bad input becomes a message, not a traceback."""
        if self.project is None:
            self.message_user("create or open a session first", True)
            return None
        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, OSError) as exc:
            self.message_user(describe(exc), True)
            return None

    def done(self, fn, *args, **kwargs) -> bool:
        """:meth:`guard` for calls that return nothing: whether it went through."""
        return self.guard(lambda: (fn(*args, **kwargs), True)[1]) is True

    def call(self, desc: str, fn, *args, on_done, **kwargs) -> None:
        """A project call that may take seconds, run in the worker; ``on_done(result)`` after."""
        if self.project is None or fn is None:
            self.message_user("create or open a session first", True)
            return

        def make(cancel):
            yield {"phase": desc}
            return fn(*args, **kwargs)

        self.task(make, desc=desc, on_done=on_done)

    def task(self, make, *, desc: str, on_done) -> bool:
        """Start a task; the message line says what runs (a message of the last task would go stale)."""
        started = self.runner.start(make, desc=desc, on_done=on_done)
        if started:
            self.message.value = f"{desc}…"
        return started

    def after_task(self, fn) -> None:
        """Run ``fn`` once the task under way has finished."""
        self._after_task = fn

    def _set_busy(self, busy: bool) -> None:
        self.cancel_btn.enabled = busy
        for b in self.busy_buttons:
            b.enabled = not busy
        if not busy:
            self.regions.task_finished()  # what the task's region events asked for
        if not busy and self._after_task is not None:
            then, self._after_task = self._after_task, None
            then()

    @property
    def busy(self) -> bool:
        """A task runs or its results are still being drawn."""
        return self.runner.busy or self.steps.running or self.regions.pending or self.lists.pending

    def slide_or_say(self) -> str | None:
        """The current slide, or None after telling the user what is missing."""
        if self.project is None:
            self.message_user("create or open a session first", True)
            return None
        if self.current is None:
            self.message_user("add a slide first", True)
            return None
        return self.current

    def show_status(self, pct: float | None = None) -> None:
        """The status line; ``pct``: the annotated share, when a worker has computed it (it reads
        every accepted region's labels: ~0.1-1 s with 40 regions)."""
        p = self.project
        if p is None:
            self.status.value = ""
            return
        pct = p.annotated_pct() if pct is None else pct
        self.status.value = (f"cycle {p.cycle} · annotated {pct:.2f}% of tissue · "
                             f"{len(p.session.accepted)} accepted · autosaved {time.strftime('%H:%M:%S')}")
        self._tabs["model"].device.value = p.device

    # ------------------------------------------------------------------ strokes
    @staticmethod
    def _labels_name(region) -> str:
        return labels_name(region)

    def flush_labels(self, *, everything: bool = False) -> None:
        """Save the strokes painted since the last save (see :meth:`LabelLayers.flush`)."""
        self.labels.flush(everything=everything)

    def _watch_close(self) -> None:
        # closing the viewer's window must not drop strokes still waiting for the autosave
        # timer (see eventFilter); a floating dock keeps the viewer's window as its parent
        window = _top(self)
        if window is not self and id(window) not in self._watched:
            window.installEventFilter(self)
            self._watched.add(id(window))

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self.flush_labels()
        return False
