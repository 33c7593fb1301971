"""The AL Regions dock widget: session, model, suggestions, annotation and correction.

A thin shell over :class:`napari_alregions.project.AnnotationProject`: every button calls
one project method (long ones through :class:`TaskRunner`) and then redraws layers from
the project's state. No algorithm lives here.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui import widgets as mw
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QHeaderView, QListWidget, QMessageBox, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

from .._errors import describe
from ..cli_suggest import _parse_option
from ..geometry import Region
from ..layers import (
    METHOD_COLORS,
    MIN_PRIORITY_SPAN,
    box_means,
    overlay_kwargs,
    priority_colors,
    priority_limits,
    slide_image_layer,
    slide_layout,
    slide_scale,
)
from ..priority import MEASURES
from ..project import AnnotationProject, region_size_px
from ..selection import METHODS
from ..session import SessionLocked
from ._active import kept_active
from ._classes import ClassList
from ._colorbar import ColorBar
from ._labels import LabelLayers, labels_name
from ._preload import collector_paused, preload_layer_dependencies
from ._regions import RegionLayers
from ._runner import TaskRunner, _alive

__all__ = ["ALRegionsWidget"]


_SHORT = {"standard_nonsquare": "non-sq.", "standard": "std", "adaptive": "adapt.", "top_patches": "top", "diversity": "div.",
          "prototype": "proto.", "focannot": "focan.", "random": "random"}


class _Locked:
    """An open that found the session held by another process: what to ask the user about."""

    def __init__(self, exc: SessionLocked) -> None:
        self.exc = exc


_frozen = False


def _freeze_startup_objects() -> None:
    """Leave the objects alive now (napari, Qt, torch: ~0.5 M) out of the garbage collector's
    full passes, once per process: with them every full pass stalled the viewer ~0.3 s."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def _free_name(name: str, taken) -> str:
    """``name``, or ``stem_2.ext``, ``stem_3.ext``... when a slide of that name exists."""
    if name not in taken:
        return name
    path = Path(name)
    stem, suffix = (path.name[: -len("".join(path.suffixes))], "".join(path.suffixes)) if path.suffixes else (name, "")
    i = 2
    while f"{stem}_{i}{suffix}" in taken:
        i += 1
    return f"{stem}_{i}{suffix}"


def _sizes(regions) -> str:
    """The box sizes of ``regions`` as a user reads them: "512 px", "512×256 px", "256-512 px"."""
    sides = sorted({(r.w, r.h) for r in regions})
    if not sides:
        return ""
    if len(sides) == 1:
        w, h = sides[0]
        return f"{w} px" if w == h else f"{w}×{h} px"
    lo, hi = min(min(s) for s in sides), max(max(s) for s in sides)
    return f"{lo}-{hi} px"


def _parse_class_map(text: str) -> dict[str, str | None]:
    """``"Tumor=tumour, Other="`` -> ``{"Tumor": "tumour", "Other": None}`` (empty: skip)."""
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        qupath, sep, ours = part.partition("=")
        if not sep or not qupath.strip():
            raise ValueError(f"class map: {part!r} is not QuPath class=session class")
        out[qupath.strip()] = ours.strip() or None
    return out


def _unbind(viewer, keys: list[str]) -> None:
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, RuntimeError):  # already gone with the viewer
            pass
    keys.clear()


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


_UNIT = ("µm", "px")


def _button(text: str, tooltip: str = "") -> mw.PushButton:
    return mw.PushButton(text=text, tooltip=tooltip)


def _option_widget(name: str, default: Any, help_: str) -> mw.Widget:
    """A control for one selector option, typed by its default."""
    if isinstance(default, bool):
        return mw.CheckBox(name=name, value=default, tooltip=help_)
    if isinstance(default, int):
        return mw.SpinBox(name=name, value=default, min=0, max=10**7, tooltip=help_)
    if isinstance(default, float):
        return mw.FloatSpinBox(name=name, value=default, min=0.0, max=1e7, step=0.05, tooltip=help_)
    text = "" if default is None else (str(default) if isinstance(default, str) else repr(list(default)))
    return mw.LineEdit(name=name, value=text, tooltip=f"{help_} (empty: default)")


class ALRegionsWidget(QWidget):
    """Region-based active learning in the viewer (SPEC §1)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.project: AnnotationProject | None = None
        self.progress = mw.ProgressBar(value=0, min=0, max=0, label="")
        self.progress.visible = False
        self.runner = TaskRunner(self._set_busy, self._message, self.progress)
        self._busy_buttons: list[mw.PushButton] = []
        self._watched: set[int] = set()  # ids of windows whose closing saves pending strokes (no reference kept)
        self._redrawing = False
        self._after_task = None  # what runs once the current task's worker has finished (auto-retrain)
        self._flushing_for_retrain = False  # a retrain saves the strokes itself: no live refit for that save
        self._syncing = False  # a box and its list row being selected together
        self.regions = RegionLayers(napari_viewer, self, message=self._message, guard=self._guard,
                                    drawn=self._refill_lists, chosen=self._box_chosen, busy=lambda: self.runner.busy)
        self.labels = LabelLayers(napari_viewer, self, message=self._message, saved=self._strokes_saved,
                                  painted=self._watch_close)

        self.message = mw.Label(value="Create or open a session to start.")
        self.status = mw.Label(value="")
        tabs = QTabWidget()
        tabs.addTab(self._session_tab().native, "Session")
        tabs.addTab(self._model_tab().native, "Model")
        tabs.addTab(self._suggest_tab().native, "Suggest")
        tabs.addTab(self._annotate_tab().native, "Annotate")
        tabs.addTab(self._correct_tab().native, "Correct")
        self.tabs = tabs
        self.cancel_btn = _button("Cancel", "stop the running task; nothing is changed")
        self.cancel_btn.enabled = False
        self.cancel_btn.changed.connect(self.runner.cancel)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        layout.addWidget(self.progress.native)
        layout.addWidget(self.cancel_btn.native)
        layout.addWidget(self.status.native)
        # the current slide's priority colours and what they mean, whichever tab is open
        self.colorbar = ColorBar()
        self.map_legend = mw.Label(value="")
        layout.addWidget(self.colorbar)
        layout.addWidget(self.map_legend.native)
        self.map_legend.native.hide()
        layout.addWidget(self.message.native)
        for label in (self.message, self.status, self.map_legend):
            # wrapped, and no width of its own: a long line widened the dock by ~84 px and cut the slide off
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.shortcuts = mw.Label(value="")
        self.shortcuts.native.setWordWrap(True)
        self.shortcuts.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.shortcuts.native)
        self._bound: list[str] = []
        self._bind_keys(2)
        runner = self.runner
        viewer, bound = self.viewer, self._bound
        self.destroyed.connect(lambda *_: runner.wait())  # closing the viewer stops the worker first
        self.destroyed.connect(lambda *_: _unbind(viewer, bound))
        labels = self.labels
        self.destroyed.connect(lambda *_: labels.close())

    def _watch_close(self) -> None:
        # closing the viewer's window must not drop strokes still waiting for the autosave
        # timer (see eventFilter); a floating dock is a window of its own but keeps the
        # viewer's window as its parent, so look for the top of the parents, not window()
        window = self
        while window.parentWidget() is not None:
            window = window.parentWidget()
        if window is not self and id(window) not in self._watched:
            window.installEventFilter(self)
            self._watched.add(id(window))

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self.flush_labels()
        return False

    # ------------------------------------------------------------------ shortcuts
    #: Alt+key: the viewer's plain letters and digits belong to napari's layers (modes, tools).
    _KEYS = {"Alt-A": ("accept", "accept_selected"), "Alt-X": ("reject", "reject_selected"),
             "Alt-N": ("next", "_next"), "Alt-P": ("previous", "_previous"), "Alt-D": ("draw", "draw_region"),
             "Alt-R": ("retrain", "retrain")}

    def _bind_keys(self, n_classes: int) -> None:
        """Bind the plugin's shortcuts on the viewer (unbound when the widget goes) and list them."""
        _unbind(self.viewer, self._bound)
        keys = {k: getattr(self, attr) for k, (_, attr) in self._KEYS.items()}
        keys.update({f"Alt-{i + 1}": (lambda i=i: self.pick_class(i + 1)) for i in range(min(n_classes, 9))})
        for key, fn in keys.items():
            self.viewer.bind_key(key, lambda _viewer, fn=fn: fn(), overwrite=True)
            self._bound.append(key)
        classes = self.project.classes if self.project is not None else ()
        picks = ", ".join(f"{i + 1} {c}" for i, c in enumerate(classes[:9])) or "1..n class"
        self.shortcuts.value = ("Shortcuts (Alt+): " + " · ".join(f"{k[4:]} {what}" for k, (what, _) in self._KEYS.items())
                                + f" · {picks}")

    def _next(self) -> None:
        self._step_proposal(1)

    def _previous(self) -> None:
        self._step_proposal(-1)

    def pick_class(self, value: int) -> None:
        """Paint class ``value`` (1..n) in the region being painted."""
        if self.project is None:
            self._message("create or open a session first", True)
            return
        self.labels.pick_class(value)

    # ------------------------------------------------------------------ tabs
    def _session_tab(self) -> mw.Container:
        self.folder = mw.FileEdit(label="Session folder", mode="d")
        self.classes = ClassList(message=self._message, fixed=lambda: self.project is not None,
                                 recoloured=self._recoloured, chosen=self._class_chosen)
        self.class_list, self.class_name = self.classes.list, self.classes.name
        new, open_ = _button("New session"), _button("Open session")
        new.changed.connect(self.new_session)
        open_.changed.connect(self.open_session)
        self.slide_file = mw.FileEdit(label="Slide file", mode="r", filter="*.tif *.tiff *.svs")
        add = _button("Add slide", "open a slide file and add it to the session")
        add.changed.connect(self.add_slide_file)
        add_layer = _button("Add selected image layer", "add the slide behind the selected image layer")
        add_layer.changed.connect(self.add_slide_layer)
        self.slide = mw.ComboBox(label="Current slide", choices=[])
        self.slide.changed.connect(self._slide_changed)
        box = mw.Container(widgets=[self.folder, self.class_name, self.classes.buttons,
                                    mw.Container(widgets=[new, open_], layout="horizontal", labels=False),
                                    self.slide_file, add, add_layer, self.slide])
        box.native.layout().insertWidget(1, self.class_list)
        return box

    # ------------------------------------------------------------------ classes
    def _class_chosen(self, value: int) -> None:
        if self.project is not None and self.labels.painting is not None:
            self.pick_class(value)

    def _recoloured(self, colors) -> bool:
        """New class colours: saved with the session (when there is one) and shown by the labels layers."""
        if self.project is None:
            return True
        self.project.session.update_settings(colors=tuple(tuple(int(v) for v in c) for c in colors))
        if not self._done(self.project.session.save):
            return False
        self.labels.recolour(colors)
        return True

    def _model_tab(self) -> mw.Container:
        from ..architectures import ARCHITECTURES

        self.arch = mw.ComboBox(label="Architecture", choices=list(ARCHITECTURES), value="compact")
        self.patch_size = mw.SpinBox(label="Patch size (px)", value=64, min=16, max=1024, step=16)
        self.level = mw.SpinBox(label="Working level", value=1, min=0, max=10)
        self.members = mw.SpinBox(label="Ensemble members", value=1, min=1, max=10)
        new = _button("New model", "an untrained model; labels and regions are kept")
        new.changed.connect(self.new_model)
        self.checkpoint = mw.FileEdit(label="Checkpoint", mode="r", filter="*.pt")
        load = _button("Load checkpoint")
        load.changed.connect(self.load_checkpoint)
        self.device = mw.Label(label="Device", value="")
        self.measure = mw.ComboBox(label="Priority measure", choices=list(MEASURES), value="least_confidence")
        self.compute_btn = _button("Compute priority map")
        self.compute_btn.changed.connect(self.compute_priority)
        self.encoder_src = mw.LineEdit(label="Encoder", value="classifier",
                                       tooltip="classifier (the model's penultimate layer), random[:seed], a checkpoint "
                                               "path, torchvision:<arch>[:weights] or an exported program (.pt2): "
                                               "the encoder your prototypes were made with")
        embed = _button("Compute embeddings", "patch embeddings of the current slide with the encoder above")
        embed.changed.connect(self.compute_embeddings)
        self.prototypes_file = mw.FileEdit(label="Prototypes", mode="r", filter="*.npz")
        sim = _button("Similarity map", "load the prototype set and show each patch's similarity to it")
        sim.changed.connect(self.compute_similarity)
        self._busy_buttons += [self.compute_btn, embed, sim]
        return mw.Container(widgets=[self.arch, self.patch_size, self.level, self.members, new, self.checkpoint, load,
                                     self.device, self.measure, self.compute_btn, self.encoder_src, embed,
                                     self.prototypes_file, sim])

    def _suggest_tab(self) -> mw.Container:
        self.method = mw.ComboBox(label="Method", choices=[(m.title, m.name) for m in METHODS.values()], value="adaptive")
        self.options = mw.Container(labels=True)
        self.method.changed.connect(self._rebuild_options)
        self.method.changed.connect(self._refill_lists)
        self.region_size = mw.FloatSpinBox(label="Region size l", value=512.0, min=1.0, max=1e6, step=64)
        self.unit = mw.ComboBox(label="Unit", choices=list(_UNIT), value="µm")
        self.k = mw.SpinBox(label="Regions k", value=5, min=1, max=1000)
        self.seed = mw.SpinBox(label="Seed", value=0, min=0, max=2**31 - 1)
        suggest = _button("Suggest")
        suggest.changed.connect(self.suggest)
        self.compare_methods = mw.Select(label="Compare", choices=list(METHODS),
                                         value=["random", "standard", "standard_nonsquare", "adaptive"])
        compare = _button("Compare methods")
        compare.changed.connect(self.compare)
        pool = _button("Diversity over all slides", "k regions per slide that together cover the pool's variety")
        pool.changed.connect(self.pool_diversity)
        # one column per method, one row per measure: 4 methods fit the dock (11 columns did not)
        self.table = mw.Table(value={"data": [], "index": [], "columns": []})
        self.table.native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.legend = mw.Label(value="")  # the colour of each method's boxes
        self.legend.native.setWordWrap(True)
        self.proposal_list = QListWidget()
        self.proposal_list.currentRowChanged.connect(self._go_to_proposal)
        prev, nxt = _button("◀ Previous"), _button("Next ▶")
        prev.changed.connect(lambda: self._step_proposal(-1))
        nxt.changed.connect(lambda: self._step_proposal(1))
        accept = _button("Accept region", "add the selected proposal to the labeled set and paint in it")
        accept.changed.connect(self.accept_selected)
        reject = _button("Reject", "dismiss the selected proposal; it is not proposed again (or delete its box on the canvas)")
        reject.changed.connect(self.reject_selected)
        draw = _button("Draw region", "drag a rectangle of your own on the current slide")
        draw.changed.connect(self.draw_region)
        accept_drawn = _button("Accept drawn", "add the rectangles you drew to the labeled set")
        accept_drawn.changed.connect(self.accept_drawn)
        box = mw.Container(widgets=[self.method, self.options, self.region_size, self.unit, self.k, self.seed, suggest, pool,
                                    self.compare_methods, compare, self.table, self.legend,
                                    mw.Container(widgets=[prev, nxt], layout="horizontal", labels=False),
                                    mw.Container(widgets=[accept, reject], layout="horizontal", labels=False),
                                    mw.Container(widgets=[draw, accept_drawn], layout="horizontal", labels=False)])
        box.native.layout().insertWidget(len(box) - 3, self.proposal_list)
        self._rebuild_options()
        return box

    def _annotate_tab(self) -> mw.Container:
        hint = mw.Label(value="Select an accepted region to paint in it (its own labels layer, on top; the slide's "
                              "labels layer shows the others). Outside accepted regions nothing can be painted; "
                              "unpainted pixels of a region are background.")
        hint.native.setWordWrap(True)
        self.accepted_list = QListWidget()
        self.accepted_list.currentRowChanged.connect(self._go_to_accepted)
        remove = _button("Remove region", "take the selected region out of the labeled set; its labels are deleted")
        remove.changed.connect(self.remove_selected)
        self._busy_buttons.append(remove)  # not while a retrain reads the labels
        self.retrain_btn = _button("Retrain", "the session's learner (the fast one by default: a random forest on cached "
                                               "texture features refits on all labels in seconds), then the map and "
                                               "proposals refresh")
        self.retrain_btn.changed.connect(lambda: self.retrain())
        self._busy_buttons.append(self.retrain_btn)
        self.deep_btn = _button("Deep retrain", "the patch CNN trained on all labels to convergence (minutes); it replaces "
                                                "the fast model only when its validation estimate is better")
        self.deep_btn.changed.connect(self.deep_retrain)
        self._busy_buttons.append(self.deep_btn)
        self.live = mw.CheckBox(label="Live: refit after each stroke and accept", value=True,
                                tooltip="the fast learner refits (about a second) and the map and proposals refresh "
                                        "after every saved stroke and accepted region")
        self.auto_retrain = mw.CheckBox(label="Auto-retrain", value=False)
        self.auto_after = mw.SpinBox(label="after N accepted regions", value=3, min=1, max=100)
        self.qupath_file = mw.FileEdit(label="QuPath GeoJSON", mode="w", filter="*.geojson *.json")
        self.class_map = mw.LineEdit(label="Class map", value="",
                                     tooltip="QuPath class=session class, comma-separated (Tumor=tumour, Other= to skip "
                                             "Other); unlisted classes match by name (Tumor/Tumour alike)")
        export, import_ = _button("Export to QuPath"), _button("Import from QuPath")
        export.changed.connect(self.export_qupath)
        import_.changed.connect(self.import_qupath)
        box = mw.Container(widgets=[hint, remove, mw.Container(widgets=[self.retrain_btn, self.deep_btn], layout="horizontal",
                                                               labels=False), self.live, self.auto_retrain, self.auto_after, self.qupath_file, self.class_map,
                                    mw.Container(widgets=[export, import_], layout="horizontal", labels=False)])
        box.native.layout().insertWidget(1, self.accepted_list)
        return box

    def _correct_tab(self) -> mw.Container:
        self.n_uncertain = mw.SpinBox(label="Patches N", value=10, min=1, max=500)
        find = _button("Find uncertain patches", "the model's most uncertain patches, with its prediction shown")
        find.changed.connect(self.find_uncertain)
        self.uncertain_list = QListWidget()
        self._uncertain: list[Region] = []  # the list's rows, in order (one slide's patches or several groups')
        self.uncertain_list.currentRowChanged.connect(lambda i: self._go_to(self._uncertain, i))
        groups = _button("Per slide group", "the N most uncertain patches of each group of slides (centre, scanner)")
        groups.changed.connect(self.find_uncertain_by_group)
        correct = _button("Correct selected patch", "labels prefilled with the model's prediction, to correct")
        correct.changed.connect(self.correct_selected)
        box = mw.Container(widgets=[self.n_uncertain, mw.Container(widgets=[find, groups], layout="horizontal", labels=False),
                                    correct])
        box.native.layout().insertWidget(2, self.uncertain_list)
        return box

    # ------------------------------------------------------------------ plumbing
    def _message(self, text: str, error: bool = False) -> None:
        self.message.value = text
        (show_error if error else show_info)(text)

    def _set_busy(self, busy: bool) -> None:
        self.cancel_btn.enabled = busy
        for b in self._busy_buttons:
            b.enabled = not busy
        if not busy:
            self.regions.task_finished()  # what the task's region events asked for
        if not busy and self._after_task is not None:
            then, self._after_task = self._after_task, None
            then()

    def _guard(self, fn, *args, **kwargs) -> Any:
        """Run a quick project call; a bad input becomes a message, not a traceback."""
        if self.project is None:
            self._message("create or open a session first", True)
            return None
        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, OSError) as exc:
            self._message(describe(exc), True)
            return None

    def _call(self, desc: str, fn, *args, on_done, **kwargs) -> None:
        """A project call that may take seconds (selecting, saving, opening files) run in the
        worker; ``on_done(result)`` draws it. A bad input becomes a message, as in :meth:`_guard`."""
        if self.project is None or fn is None:
            self._message("create or open a session first", True)
            return

        def make(cancel):
            yield {"phase": desc}
            return fn(*args, **kwargs)

        self._task(make, desc=desc, on_done=on_done)

    def _task(self, make, *, desc: str, on_done) -> bool:
        """Start a task; the message line says what runs (a message of the last task would go stale)."""
        started = self.runner.start(make, desc=desc, on_done=on_done)
        if started:
            self.message.value = f"{desc}…"
        return started

    def _done(self, fn, *args, **kwargs) -> bool:
        """:meth:`_guard` for calls that return nothing: whether it went through."""
        return self._guard(lambda: (fn(*args, **kwargs), True)[1]) is True

    def _refresh_status(self, pct: float | None = None) -> None:
        """The status line; ``pct``: the annotated share, when a worker has computed it (it reads
        every accepted region's labels: ~0.1-1 s with 40 regions)."""
        p = self.project
        if p is None:
            self.status.value = ""
            return
        saved = time.strftime("%H:%M:%S")
        pct = p.annotated_pct() if pct is None else pct
        self.status.value = (f"cycle {p.cycle} · annotated {pct:.2f}% of tissue · "
                             f"{len(p.session.accepted)} accepted · autosaved {saved}")
        self.device.value = p.device

    @property
    def current(self) -> str | None:
        return self.slide.value or None

    def _slide_or_say(self) -> str | None:
        """The current slide, or None after telling the user what is missing."""
        if self.project is None:
            self._message("create or open a session first", True)
            return None
        if self.current is None:
            self._message("add a slide first", True)
            return None
        return self.current

    def _scale(self, name: str) -> float:
        return slide_scale(self.project.slides[name])

    # ------------------------------------------------------------------ session
    def _session_folder(self) -> Path | None:
        """The folder typed in, or None after asking for one (an empty field is no folder:
        it used to create the session wherever napari was started)."""
        text = self.folder.line_edit.value.strip()  # .value of an empty field is Path(".")
        if not text:
            self._message("choose a session folder first", True)
            return None
        return Path(text).expanduser()

    def new_session(self) -> None:
        folder = self._session_folder()
        if folder is None:
            return
        settings = dict(classes=list(self.classes.names), colors=list(self.classes.colors), arch=self.arch.value, patch_size=self.patch_size.value, level=self.level.value,
                        members=self.members.value)

        def make(cancel):  # building the model imports torch: seconds, off the viewer's thread
            yield {"phase": "new session"}
            with collector_paused():
                project = AnnotationProject.create(folder, **settings)
                preload_layer_dependencies()  # what the session's first layers would load on the viewer's thread
                _freeze_startup_objects()  # torch is imported by now
            return project

        def done(project: AnnotationProject) -> None:
            self._set_project(project)
            self._message(f"new session in {folder}")

        self._task(make, desc="new session", on_done=done)

    def open_session(self) -> None:
        folder = self._session_folder()
        if folder is not None:
            self._open_in_worker(folder, {})

    def _open_in_worker(self, folder: Path, how: dict[str, bool]) -> None:
        def make(cancel):  # slides, model, maps, labels and tissue masks are read in the worker
            yield {"phase": "opening session"}
            with collector_paused():
                try:
                    project = AnnotationProject.open(folder, **how)
                except SessionLocked as exc:  # asked about on the viewer's thread, then opened again
                    return _Locked(exc)  # (a returned exception would be taken for the task's error)
                project.annotated_pct()
                preload_layer_dependencies()
                _freeze_startup_objects()  # torch is imported by now
            return project

        self._task(make, desc="open session", on_done=lambda got: self._opened(folder, got))

    def _ask_locked(self, exc: SessionLocked) -> dict[str, bool] | None:
        """Another process holds the session: open read-only, take the lock over, or cancel."""
        box = QMessageBox(QMessageBox.Icon.Warning, "AL Regions", str(exc), parent=self)
        read_only = box.addButton("Open read-only", QMessageBox.ButtonRole.AcceptRole)
        take = box.addButton("Take over", QMessageBox.ButtonRole.DestructiveRole)  # that process can no longer save
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() not in (read_only, take):
            self._message("not opened: the session is open in another process", True)
            return None
        return {"read_only": box.clickedButton() is read_only, "take_over": box.clickedButton() is take}

    def _opened(self, folder: Path, project) -> None:
        if isinstance(project, _Locked):
            how = self._ask_locked(project.exc)
            if how is not None:  # once this task's worker has finished
                self._after_task = lambda: self._open_in_worker(folder, how)
            return
        self._set_project(project)
        # one layer per event-loop turn: the viewer keeps responding while they appear
        steps: list = []
        for name in project.slides:
            steps.append(lambda name=name: self._show_slide(name))
            if name in project.maps:
                steps.append(lambda name=name: self._show_priority(name))
            steps += [lambda name=name: self._show_proposals(name), lambda name=name: self._show_accepted(name)]
            if project.session.accepted_on(name):  # one labels layer per slide, however many regions
                steps.append(lambda name=name: self.labels.show_slide(name))
        notes = [*project.open_messages, *(["read-only: changes are not saved"] if project.session.read_only else [])]
        steps += [lambda: self._go_to_slide(self.current),  # the dropdown's slide is the one on screen
                  lambda: self._message(f"opened {project.folder}: {len(project.slides)} slide(s), cycle {project.cycle}"
                                        + "".join(f"; {m}" for m in notes), bool(notes))]
        self._run_steps(steps)

    def _set_project(self, project: AnnotationProject) -> None:
        if self.project is not None:
            self._drop_session_layers()
        self.regions.set_project(project)
        self.labels.set_project(project)  # the closing session keeps its last strokes
        if self.project is not None:
            self.project.close()
        self.project = project
        self._bind_keys(len(project.classes))
        self.classes.set(project.classes, project.colors)
        spec = project.spec
        self.arch.value, self.patch_size.value, self.level.value = spec.arch, spec.patch_size, spec.level
        self.members.value = project.n_members
        self.encoder_src.value = project.encoder_source
        self.slide.choices = list(project.slides)
        self._refill_lists()  # no change event when the slide name stays (or there is none)
        self._fill_uncertain([], lambda r: "")
        self._refresh_status()

    def _drop_session_layers(self) -> None:
        """Remove the layers of the session being closed (not its slide images): painting
        in them would reach no session."""
        suffixes = ("priority", "accepted", "similarity", "prediction", "proposals", "draw")
        names = {f"{slide} {suffix}" for slide in self.project.slides for suffix in suffixes}
        for layer in [lay for lay in self.viewer.layers if lay.name in names]:
            self.viewer.layers.remove(layer)

    def add_slide_file(self) -> None:
        self._add_slide(Path(self.slide_file.value))

    def add_slide_layer(self) -> None:
        layer = self.viewer.layers.selection.active
        path = getattr(layer, "metadata", {}).get("slide_path") if layer is not None else None
        if not path:
            self._message("select an image layer opened with the AL Regions reader", True)
            return
        self._add_slide(Path(path), layer=layer)

    def _add_slide(self, path: Path, layer=None) -> None:
        p = self.project
        if p is None:
            self._message("create or open a session first", True)
            return
        for entry in p.session.slides.values():
            if Path(entry.path) == path.resolve():
                self._message(f"{path.name} is in the session already, as {entry.name}", True)
                return
        name = _free_name(path.name, p.session.slides)  # another file of the same name gets a suffix

        def done(added: str) -> None:
            if layer is not None:
                layer.name = added
            self.slide.choices = list(p.slides)
            self.slide.value = added
            self._show_slide(added)
            self._refresh_status()
            renamed = "" if added == path.name else f" (a slide named {path.name} is in the session already)"
            self._message(f"added {path.name} as {added}{renamed}" if renamed else f"added {added}")

        def add() -> str:
            added = p.add_slide(path, name=name)
            p.annotated_pct(added)  # reads the tissue mask here, not when the status line is drawn
            return added

        self._call("adding slide", add, on_done=done)

    def _slide_changed(self, *_: Any) -> None:
        self._refill_lists()
        self._show_colorbar()
        self._go_to_slide(self.current)  # the current slide is the one on screen
        p, name = self.project, self.current
        if p is not None and name in p.slides:  # the last slide's message would mislead here
            self.message.value = (f"showing {name}: {len(p.proposals(name))} proposed, "
                                  f"{len(p.session.accepted_on(name))} accepted regions")

    # ------------------------------------------------------------------ layers
    def _layer(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _offset(self, name: str) -> tuple[float, float]:
        """Where the slide sits in the viewer (world units): side by side, in the session's order."""
        return slide_layout(self.project.slides)[name]

    def _placed(self, name: str, stride: float) -> dict[str, Any]:
        return overlay_kwargs(self.project.slides[name], stride, self._offset(name))

    def _show_slide(self, name: str) -> None:
        layer = self._layer(name)
        if layer is None:
            data, kwargs, _ = slide_image_layer(self.project.slides[name], self._offset(name))
            kwargs["name"] = name
            with kept_active(self.viewer):
                self.viewer.add_image(data, **kwargs)
        else:  # opened before it was added (reader, sample): it moves to its place
            layer.translate = self._offset(name)

    def _show_priority(self, name: str) -> None:
        rec = self.project.maps[name]
        lname = f"{name} priority"
        layer = self._layer(lname)
        limits = priority_limits(rec.priority, self.project.slides[name].tissue_map(rec.stride))
        if layer is None:
            cmap = Colormap(priority_colors(), name="alregions priority")
            with kept_active(self.viewer):
                layer = self.viewer.add_image(rec.priority, name=lname, colormap=cmap, opacity=0.7, contrast_limits=limits,
                                              metadata={"measure": rec.measure}, **self._placed(name, rec.stride))
            layer.events.visible.connect(_alive(lambda _: self._show_colorbar()))  # the bar describes what is shown
        else:
            layer.data = rec.priority
            layer.contrast_limits = limits
        layer.metadata.update(measure=rec.measure, cycle=rec.cycle)
        self._show_colorbar()

    def _show_colorbar(self) -> None:
        """The colour bar and legend of the current slide's priority map (none without one)."""
        self.map_legend.value = ""
        self.map_legend.native.hide()  # an empty line would leave a gap in the dock
        self.colorbar.clear()
        layer = None if self.project is None or self.current is None else self._layer(f"{self.current} priority")
        if layer is None or not layer.visible:
            return
        lo, hi = layer.contrast_limits
        self.colorbar.show_ramp(layer.colormap.colors, lo, hi)
        measure = str(layer.metadata.get("measure", "priority")).replace("_", " ")
        text = f"{measure} map: clear up to {lo:.3g} (the tissue's median), "
        if hi - lo > MIN_PRIORITY_SPAN * (1 + 1e-6):
            text += f"full colour from {hi:.3g} (its top 0.5 %)"
        else:  # the upper limit is the least span, above any value the map has (1.03 for a flat 0.98)
            text += "faint above: the map is nearly flat over the tissue, no area stands out"
        self.map_legend.value = text
        self.map_legend.native.show()

    def _show_proposals(self, name: str) -> None:
        self.regions.show_proposals(name)

    def _show_accepted(self, name: str) -> None:
        self.regions.show_accepted(name)

    def _proposal_rows(self) -> list[Region]:
        """The proposal list's rows: the current slide's proposals of the chosen method, by rank."""
        p, name = self.project, self.current
        if p is None or name is None or name not in p.slides:
            return []
        return sorted(p.proposals(name, self.method.value), key=lambda r: r.rank)

    def _box_chosen(self, region: Region) -> None:
        """A box clicked on the canvas: its row is selected in the list."""
        self._syncing = True
        try:
            if region.method != self.method.value:
                self.method.value = region.method  # the list shows that method's proposals
            rows = [r.uid for r in self._proposal_rows()]
            if region.uid in rows:
                self.tabs.setCurrentIndex(2)
                self.proposal_list.setCurrentRow(rows.index(region.uid))
        finally:
            self._syncing = False

    def _selected_proposal(self) -> Region | None:
        """The proposal selected in the list, or None (and a message saying to select one)."""
        rows = self._proposal_rows()
        i = self.proposal_list.currentRow()
        if not 0 <= i < len(rows):
            self._message("select a proposal in the list first", True)
            return None
        return rows[i]

    def reject_selected(self) -> None:
        """Dismiss the proposal selected in the list (it is not proposed again)."""
        region, i = self._selected_proposal(), self.proposal_list.currentRow()
        if region is None:
            return
        if self._guard(self.project.dismiss, region) is None:
            return
        self._show_proposals(region.slide)
        self.proposal_list.setCurrentRow(min(i, self.proposal_list.count() - 1))
        self._message(f"dismissed {region.method} #{region.rank + 1}")

    def draw_region(self) -> None:
        """A rectangle tool on the current slide's draw layer."""
        name = self._slide_or_say()
        if name is None:
            return
        lname = f"{name} draw"
        layer = self._layer(lname)
        if layer is None:
            layer = self.viewer.add_shapes(name=lname, edge_color=np.array(METHOD_COLORS["accepted"]), face_color="transparent",
                                           edge_width=max(2.0, min(self.project.slides[name].shape) / 200),
                                           **self._placed(name, 1))
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self._message(f"drag a rectangle on {name}, then 'Accept drawn'")

    def accept_drawn(self) -> None:
        """Accept the rectangles of the current slide's draw layer as regions."""
        name = self._slide_or_say()
        if name is None:
            return
        layer = self._layer(f"{name} draw")
        if layer is None or not layer.nshapes:
            self._message("draw a rectangle first ('Draw region')", True)
            return
        h0, w0 = self.project.slides[name].shape
        drawn = []
        for corners in layer.data:
            (y0, x0), (y1, x1) = np.clip(np.min(corners, 0), 0, (h0, w0)), np.clip(np.max(corners, 0), 0, (h0, w0))
            y0, x0, y1, x1 = (int(round(v)) for v in (y0, x0, y1, x1))
            if y1 > y0 and x1 > x0:
                drawn.append(Region(x0, y0, x1 - x0, y1 - y0, method="manual", slide=name, cycle=self.project.cycle))
        layer.data = []
        if not drawn:
            self._message("the rectangle is outside the slide", True)
            return
        p = self.project
        self._call("accepting", lambda: [p.accept(r) for r in drawn],
                   on_done=lambda accepted: self._accepted(drawn[-1], accepted[-1], more=len(drawn) - 1))

    @staticmethod
    def _labels_name(region: Region) -> str:
        return labels_name(region)

    def flush_labels(self, *, everything: bool = False) -> None:
        """Save the strokes painted since the last save (see :meth:`LabelLayers.flush`)."""
        self.labels.flush(everything=everything)

    # ------------------------------------------------------------------ navigation
    def _refill_lists(self) -> None:
        p, name = self.project, self.current
        kept = self._row_uid()
        self._syncing = True  # refilling is no choice of the user's: the camera stays
        try:
            self.proposal_list.clear()
            self.accepted_list.clear()
            if p is None or name is None or name not in p.slides:
                return
            rows = self._proposal_rows()
            means = box_means(p.maps[name].priority, rows, p.stride) if name in p.maps else [float("nan")] * len(rows)
            for r, mean in zip(rows, means):
                score = "" if np.isnan(mean) else f"  mean priority {mean:.2f}"
                self.proposal_list.addItem(f"{r.method} #{r.rank + 1}{score}  ({r.w}×{r.h} px)")
            for r in p.session.accepted_on(name):
                self.accepted_list.addItem(f"{r.method or 'manual'}  ({r.x}, {r.y})  {r.w}×{r.h} px")
            methods = sorted({r.method for r in p.proposals(name)})
            self.legend.value = " ".join(f'<span style="white-space:nowrap"><span style="color:'
                                         f'{_hex(METHOD_COLORS.get(m, (1, 1, 0, 1)))}">■</span>&nbsp;{m}</span>'
                                         for m in methods)
            uids = [r.uid for r in rows]
            if kept in uids:
                self.proposal_list.setCurrentRow(uids.index(kept))
        finally:
            self._syncing = False

    def _row_uid(self) -> str | None:
        rows, i = self._proposal_rows(), self.proposal_list.currentRow()
        return rows[i].uid if 0 <= i < len(rows) and self.proposal_list.count() == len(rows) else None

    def _go_to(self, regions: list[Region], i: int) -> None:
        if not 0 <= i < len(regions):
            return
        r = regions[i]
        self._frame(r.slide, r.y, r.x, r.h, r.w, 0.8)

    def _frame(self, name: str, y: float, x: float, h: float, w: float, fill: float) -> None:
        """Centre the camera on a level-0 box of a slide, filling ``fill`` of the canvas."""
        s, (oy, ox) = self._scale(name), self._offset(name)
        self.viewer.scene.camera.center = (oy + (y + h / 2) * s, ox + (x + w / 2) * s)
        canvas = tuple(getattr(self.viewer.canvas, "size", None) or (600, 800))
        self.viewer.scene.camera.zoom = fill * min(canvas[0] / (h * s), canvas[1] / (w * s))

    def _go_to_slide(self, name: str | None) -> None:
        if self.project is not None and name in self.project.slides:
            h, w = self.project.slides[name].shape
            self._frame(name, 0, 0, h, w, 0.95)

    def _go_to_proposal(self, i: int) -> None:
        if self._syncing:
            return
        rows = self._proposal_rows()
        if 0 <= i < len(rows):
            self._go_to(rows, i)
            self.regions.select(self.current, rows[i].uid)  # the box is selected with its row

    def _go_to_accepted(self, i: int) -> None:
        regions = self.project.session.accepted_on(self.current) if self.project and self.current else []
        if not 0 <= i < len(regions):
            return
        self._go_to(regions, i)
        self.labels.paint(regions[i])  # ready to paint: the painting layer over it, active

    def _step_proposal(self, delta: int) -> None:
        n = self.proposal_list.count()
        if n:
            self.proposal_list.setCurrentRow((self.proposal_list.currentRow() + delta) % n)

    # ------------------------------------------------------------------ model
    def new_model(self) -> None:
        # new_model returns nothing: only a call that went through may say so (a bad level used to be
        # reported, then overwritten by the success message)
        if self._done(self.project.new_model if self.project else None, arch=self.arch.value, patch_size=self.patch_size.value,
                      level=self.level.value, members=self.members.value):
            self._refresh_status()
            self._message(f"new untrained {self.arch.value} model ({self.members.value} member(s))")

    def load_checkpoint(self) -> None:
        from ..model import CheckpointError

        if self.project is None:
            self._message("create or open a session first", True)
            return
        try:
            self.project.load_model(Path(self.checkpoint.value))
        except (CheckpointError, FileNotFoundError) as exc:
            self._message(describe(exc), True)
            return
        self._refresh_status()
        self._message(f"loaded {Path(self.checkpoint.value).name}")

    def compute_priority(self) -> None:
        p, name = self.project, self._slide_or_say()
        if name is None:
            return
        measure = self.measure.value

        def done(_: Any) -> None:
            self._show_priority(name)
            self._message(f"priority map ({measure}) for {name}")

        self._task(lambda cancel: p.iter_priority(name, measure=measure, cancel=cancel),
                          desc="priority map", on_done=done)

    def _apply_encoder(self) -> bool:
        source = self.encoder_src.value.strip() or "classifier"
        if source == self.project.encoder_source:
            return True
        try:
            self.project.set_encoder(source)
        except (ValueError, OSError) as exc:
            self._message(describe(exc), True)
            return False
        return True

    def compute_embeddings(self) -> None:
        p, name = self.project, self._slide_or_say()
        if name is None:
            return
        if not self._apply_encoder():
            return
        self._task(lambda cancel: p.iter_embed(name, cancel=cancel), desc="embeddings",
                          on_done=lambda emb: self._message(f"{int(np.isfinite(emb).all(-1).sum())} patch embeddings "
                                                            f"(D={emb.shape[-1]}) for {name}"))

    def compute_similarity(self) -> None:
        p, name = self.project, self._slide_or_say()
        if name is None:
            return
        if self.prototypes_file.value and Path(self.prototypes_file.value).is_file():
            if not self._done(p.set_prototypes, Path(self.prototypes_file.value)):
                return  # the message says why; an older prototype set is not used in its place
        if p.prototypes is None:
            self._message("choose a prototype set (.npz from `alregions prototypes`)", True)
            return
        if not self._apply_encoder():
            return

        def done(sim: np.ndarray) -> None:
            lname = f"{name} similarity"
            if self._layer(lname) is None:
                with kept_active(self.viewer):
                    self.viewer.add_image(sim, name=lname, colormap=Colormap(priority_colors(), name="alregions similarity"),
                                          opacity=0.7, contrast_limits=(0.0, 1.0), **self._placed(name, p.stride))
            else:
                self._layer(lname).data = sim
            self._message(f"prototype similarity for {name} (max {float(sim.max()):.3f}); suggest with 'Prototype similarity'")

        self._task(lambda cancel: p.iter_similarity(name, cancel=cancel), desc="similarity", on_done=done)

    # ------------------------------------------------------------------ suggest
    def _rebuild_options(self, *_: Any) -> None:
        self.options.clear()
        for o in METHODS[self.method.value].options:
            self.options.append(_option_widget(o.name, o.default, o.help))

    def _method_options(self) -> dict[str, Any]:
        out = {}
        for w in self.options:
            if isinstance(w, mw.LineEdit):
                if w.value.strip():
                    out.update([_parse_option(f"{w.name}={w.value.strip()}")])
            else:
                out[w.name] = w.value
        return out

    def _region_px(self, name: str) -> int:
        p = self.project
        return region_size_px(self.region_size.value, self.unit.value, mpp=p.slides[name].mpp, stride=p.stride)

    def _slide_and_region_px(self) -> tuple[str, int] | None:
        """The current slide and the region side in its level-0 px, or None after saying why not."""
        name = self._slide_or_say()
        l_ = None if name is None else self._guard(self._region_px, name)
        return None if l_ is None else (name, l_)

    def suggest(self) -> None:
        picked = self._slide_and_region_px()
        if picked is None:
            return
        name, l_ = picked
        method, k = self.method.value, self.k.value
        options = self._guard(self._method_options)
        if options is None:
            return

        def done(regions: list[Region]) -> None:
            self._show_proposals(name)
            short = "" if len(regions) == k else f" (only {len(regions)} fit)"
            self._message(f"{METHODS[method].title}: {len(regions)} region(s) of {_sizes(regions) or f'{l_} px'}{short}")

        self._call("selecting regions", self.project.suggest, name, method, region_size=l_, k=k, seed=self.seed.value,
                   on_done=done, **options)

    def compare(self) -> None:
        picked = self._slide_and_region_px()
        if picked is None:
            return
        name, l_ = picked
        self._call("comparing methods", self.project.compare, name, list(self.compare_methods.value), region_size=l_,
                   k=self.k.value, seed=self.seed.value, on_done=lambda result: self._compared(name, result))

    def _compared(self, name: str, result) -> None:
        out, summaries, overlap = result
        self._show_proposals(name)
        mm2 = (self.project.slides[name].mpp or 0) ** 2 / 1e6
        rows = {"count": [s.count for s in summaries],
                "area (mm²)" if mm2 else "area (px²)": [round(s.area * mm2, 3) if mm2 else s.area for s in summaries],
                "tissue %": [round(s.tissue_pct, 1) for s in summaries],
                "mean priority": [round(s.mean_priority, 3) for s in summaries],
                "sum priority": [round(sum(r.score for r in out[s.method]), 2) for s in summaries]}
        for j, s in enumerate(summaries):
            rows[f"IoU {s.method}"] = [round(float(v), 2) for v in overlap[j]]
        # short column names (the full one in the tooltip): 4 methods fit the dock
        self.table.value = {"data": list(rows.values()), "index": list(rows),
                            "columns": [_SHORT.get(s.method, s.method) for s in summaries]}
        for j, s in enumerate(summaries):
            item = self.table.native.horizontalHeaderItem(j)
            if item is not None:
                item.setToolTip(s.method)
        self._refill_lists()
        self._message(f"compared {len(out)} methods on {name}")

    def pool_diversity(self) -> None:
        picked = self._slide_and_region_px()
        if picked is None:
            return
        _, l_ = picked

        def done(out: dict) -> None:
            for slide in out:
                self._show_proposals(slide)
            self._message(f"diversity over {len(out)} slide(s): " + ", ".join(f"{s}: {len(r)}" for s, r in out.items()))

        self._call("diversity over all slides", self.project.suggest_pool_diversity, region_size=l_,
                   n_per_slide=self.k.value, seed=self.seed.value, on_done=done)

    def accept_selected(self) -> None:
        region = self._selected_proposal()
        if region is not None:
            self._accept(region, "background")

    def _accept(self, region: Region, prefill: str) -> None:
        """Accept in the worker (prefilling and saving the labels), then open the region to paint."""
        p = self.project

        def accept() -> tuple[Region, float]:
            accepted = p.accept(region, prefill=prefill)
            return accepted, p.annotated_pct()

        self._call("accepting", accept if p else None, on_done=lambda got: self._accepted(region, *got))

    def _accepted(self, region: Region, accepted: Region, pct: float | None = None, *, more: int = 0) -> None:
        """Draw what accepting ``region`` (as ``accepted``; ``more`` others with it) changed, then
        open it to paint. One layer per event-loop turn: a slide's first accept adds its accepted
        boxes, its labels layer and the painting layer, ~0.8 s of the viewer's thread in one turn."""
        name = accepted.slide
        self._run_steps([lambda: self._show_proposals(name), lambda: self._show_accepted(name),
                         lambda: self.labels.show_slide(name),
                         lambda: self._paint_accepted(region, accepted, pct, more)])

    def _paint_accepted(self, region: Region, accepted: Region, pct: float | None, more: int) -> None:
        layer = self.labels.paint(accepted)
        self._go_to([accepted], 0)  # show the region to paint
        self._refill_lists()
        self._refresh_status(pct)
        what = "your region" if region.method == "manual" else f"{region.method} #{region.rank + 1}"
        if more:
            what = f"your {more + 1} regions" if region.method == "manual" else f"{what} and {more} more"
        self._message(f"accepted {what}: paint in layer '{layer.name}'")
        if self.auto_retrain.value and self.project.pending_regions >= self.auto_after.value:
            self._retrain_soon()
        else:
            self._live_refit()

    def _strokes_saved(self) -> None:
        self._refresh_status()
        if not self._flushing_for_retrain:
            self._live_refit()

    def _live_refit(self) -> None:
        """The fast learner's live loop: refit and refresh after a saved stroke or an accept."""
        p = self.project
        if p is not None and self.live.value and p.session.settings.learner == "fast":
            self._retrain_soon()

    def _retrain_soon(self) -> None:
        """Retrain now, or once the task under way has finished (one retrain for many asks)."""
        if self.runner.busy:
            self._after_task = self.retrain
        else:
            self.retrain()

    def remove_selected(self) -> None:
        p, name = self.project, self.current
        regions = p.session.accepted_on(name) if p is not None and name else []
        i = self.accepted_list.currentRow()
        if not 0 <= i < len(regions):
            self._message("select an accepted region in the list first", True)
            return
        region = regions[i]
        self.flush_labels(everything=True)  # strokes still waiting for the autosave count as painted
        painted = self._guard(p.region_labels, region)
        if painted is None:
            return
        where = f"{region.method or 'manual'} region at ({region.x}, {region.y})"
        if (painted > 1).any() and not self._confirm(f"Remove the {where}? The labels painted in it are deleted."):
            return
        if self._guard(p.remove_accepted, region) is None:
            return
        self.labels.removed(region)
        self._show_accepted(name)
        self._refill_lists()
        self._refresh_status()
        self._message(f"removed the {where} and its labels")

    def _confirm(self, text: str) -> bool:
        answer = QMessageBox.question(self, "AL Regions", text)
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ retrain
    def deep_retrain(self) -> None:
        """The patch CNN trained to convergence (minutes); it replaces the fast model only when it estimates better."""
        self.retrain(deep=True)

    def retrain(self, deep: bool = False) -> None:
        p = self.project
        if p is None:
            self._message("create or open a session first", True)
            return
        self._flushing_for_retrain = True
        try:
            self.flush_labels(everything=True)  # train on the pixels shown, undone strokes included
        finally:
            self._flushing_for_retrain = False
        t0 = time.perf_counter()

        def done(summary: dict) -> None:
            # one layer per event-loop turn, so the viewer keeps responding while they redraw
            steps = []
            for name in p.slides:
                if name in p.maps:
                    steps.append(lambda name=name: self._show_priority(name))
                steps.append(lambda name=name: self._show_proposals(name))
            what = "sub-cells" if summary.get("learner") == "fast" else "patches"
            done_msg = (f"cycle {summary['cycle']}: trained on {summary['n_candidates']} {what}, maps and "
                        f"proposals refreshed in {time.perf_counter() - t0:.1f} s")
            warnings = summary.get("messages", [])  # why a model was or was not replaced; one at chance
            quality = [summary["quality"]] if summary.get("quality") else []  # how good the fast model is
            steps += [self._refill_lists, lambda: self._refresh_status(summary.get("annotated_pct")),
                      lambda: self._message("; ".join([done_msg, *quality, *warnings]), bool(warnings))]
            self._run_steps(steps)

        measure = self.measure.value

        def make(cancel):
            summary = yield from p.iter_retrain(deep=True if deep else None, cancel=cancel, measure=measure)
            # the status line's share reads every region's labels: here, not in the redraw
            return {**summary, "annotated_pct": p.annotated_pct()}

        self._task(make, desc="deep retrain" if deep else "retrain", on_done=done)

    def _run_steps(self, steps: list) -> None:
        self._redrawing = bool(steps)
        if not steps:
            return
        try:
            steps[0]()
        except Exception:
            self._redrawing = False  # a failed step must not leave the widget busy for ever
            raise
        # a 1 ms timer, not 0: Qt 6 posts a 0 ms shot as an event, and a chain of posted events
        # runs ahead of every timer (napari's and Qt's own), so the steps ran as one long turn
        QTimer.singleShot(1, lambda: self._run_steps(steps[1:]))

    @property
    def busy(self) -> bool:
        """A task runs or its results are still being drawn."""
        return self.runner.busy or self._redrawing

    # ------------------------------------------------------------------ correct (UGA)
    def find_uncertain(self) -> None:
        p, name = self.project, self._slide_or_say()
        if name is None:
            return

        k = self.n_uncertain.value

        def find() -> tuple[list[Region], np.ndarray]:
            regions = p.suggest(name, "top_patches", region_size=p.stride, k=k)
            return regions, np.nan_to_num(p.prediction(name)[..., -1])

        def done(got: tuple[list[Region], np.ndarray]) -> None:
            regions, prob = got
            self._run_steps([  # one layer per event-loop turn
                lambda: self._show_prediction(name, prob), lambda: self._show_proposals(name),
                lambda: self._fill_uncertain(regions, lambda r: f"#{r.rank + 1}  uncertainty {r.score:.3f}  at ({r.x}, {r.y})"),
                lambda: self._message(f"{len(regions)} uncertain patch(es); select one and correct the prediction")])

        self._call("finding uncertain patches", find, on_done=done)

    def find_uncertain_by_group(self) -> None:
        p = self.project
        if p is None or not p.slides:
            self._message("add slides first", True)
            return
        groups = self._guard(p.uncertain_by_group, n=self.n_uncertain.value)
        if groups is None:
            return
        group_of = {id(r): group for group, regions in groups.items() for r in regions}
        self._fill_uncertain([r for regions in groups.values() for r in regions],
                             lambda r: f"[{group_of[id(r)] or 'no group'}] #{r.rank + 1} {r.slide} uncertainty {r.score:.3f} "
                                       f"at ({r.x}, {r.y})")
        self._message(f"most uncertain patches of {len(groups)} group(s); set groups when adding slides")

    def _show_prediction(self, name: str, prob: np.ndarray) -> None:
        """The model's probability of the last class (NaN outside tissue read as 0)."""
        lname = f"{name} prediction"
        layer = self._layer(lname)
        if layer is None:
            with kept_active(self.viewer):
                self.viewer.add_image(prob, name=lname, colormap="red", opacity=0.4, contrast_limits=(0.0, 1.0),
                                      blending="additive", **self._placed(name, self.project.stride))
        else:
            layer.data = prob

    def _fill_uncertain(self, regions: list[Region], text) -> None:
        """Rows and the patches they stand for, together (a row of a group list is on any slide)."""
        self._uncertain = list(regions)
        self.uncertain_list.clear()
        for r in self._uncertain:
            self.uncertain_list.addItem(text(r))

    def correct_selected(self) -> None:
        i = self.uncertain_list.currentRow()
        if not 0 <= i < len(self._uncertain):
            self._message("select an uncertain patch first", True)
            return
        self._accept(self._uncertain[i], "prediction")

    # ------------------------------------------------------------------ QuPath
    def export_qupath(self) -> None:
        name = self._slide_or_say()
        if name is None:
            return
        self.flush_labels(everything=True)
        path = self._guard(self.project.export_qupath, Path(self.qupath_file.value), name)
        if path is not None:
            self._message(f"exported regions and labels of {name} to {path}")

    def import_qupath(self) -> None:
        name = self._slide_or_say()
        if name is None:
            return
        class_map = self._guard(_parse_class_map, self.class_map.value)
        if class_map is None:
            return
        path = Path(self.qupath_file.value)
        # what the import would do, shown before anything is written
        plan = self._guard(self.project.import_qupath, path, name, class_map=class_map or None, dry_run=True)
        if plan is None:
            return
        mapping = ", ".join(f"{k} → {v or 'skipped'}" for k, v in class_map.items()) or "by name"
        if not self._confirm(f"Import {path.name} into {name}?\n\n{plan['message']}\n"
                             f"Adds {plan['regions']} region(s) and paints {plan['labeled_annotations']} labeled "
                             f"annotation(s).\nClasses: {mapping}."):
            self._message("import cancelled: nothing was written")
            return
        self.flush_labels(everything=True)  # the import redraws every region layer from the session
        counts = self._guard(self.project.import_qupath, path, name, class_map=class_map or None)
        if counts is None:
            return
        self._show_accepted(name)
        self.labels.refresh(name)  # the layers show the session's pixels: redraw
        self._refill_lists()
        self._refresh_status()
        self._message(f"imported {counts['regions']} region(s) and {counts['labeled_annotations']} labeled annotation(s)")
