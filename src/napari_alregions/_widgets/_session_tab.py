"""The Session tab: classes, new and open session, slides."""

from __future__ import annotations

from pathlib import Path

from magicgui import widgets as mw
from qtpy.QtWidgets import QMessageBox

from ..project import AnnotationProject
from ..session import SessionLocked
from ._classes import ClassList
from ._preload import collector_paused, freeze_startup_objects, preload_layer_dependencies

__all__ = ["SessionTab"]


class _Locked:
    """An open that found the session held by another process: what to ask the user about."""

    def __init__(self, exc: SessionLocked) -> None:
        self.exc = exc


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


class SessionTab:
    """Classes, the session folder (new or open), adding slides, the current slide."""

    def __init__(self, w) -> None:
        self.w = w
        self.folder = mw.FileEdit(label="Session folder", mode="d")
        self.classes = ClassList(message=w.message_user, fixed=lambda: w.project is not None,
                                 recoloured=self._recoloured, chosen=self._class_chosen)
        self.class_list, self.class_name = self.classes.list, self.classes.name
        new, open_ = w.button("New session"), w.button("Open session")
        new.changed.connect(self.new_session)
        open_.changed.connect(self.open_session)
        self.slide_file = mw.FileEdit(label="Slide file", mode="r", filter="Slides (*.tif *.tiff *.svs *.ndpi *.scn *.mrxs *.dcm *.zarr);;All files (*)")
        add = w.button("Add slide", "open a slide file and add it to the session")
        add.changed.connect(self.add_slide_file)
        add_layer = w.button("Add selected image layer", "add the slide behind the selected image layer")
        add_layer.changed.connect(self.add_slide_layer)
        self.slide = w.slides.combo
        self.box = mw.Container(widgets=[self.folder, self.class_name, self.classes.buttons,
                                         mw.Container(widgets=[new, open_], layout="horizontal", labels=False),
                                         self.slide_file, add, add_layer, self.slide])
        self.box.native.layout().insertWidget(1, self.class_list)
        w.hub.events.project.connect(lambda p: p is not None and self.classes.set(p.classes, p.colors))

    # ------------------------------------------------------------------ classes
    def _class_chosen(self, value: int) -> None:
        if self.w.project is not None and self.w.labels.painting is not None:
            self.w.pick_class(value)

    def _recoloured(self, colors) -> bool:
        """New class colours: saved with the session (when there is one) and shown by the labels layers."""
        p = self.w.project
        if p is None:
            return True
        # the labels layers follow the session's settings event
        return self.w.done(p.session.update_settings, colors=tuple(tuple(int(v) for v in c[:3]) for c in colors)) \
            and self.w.done(p.session.save)

    # ------------------------------------------------------------------ session
    def _session_folder(self) -> Path | None:
        """The folder typed in, or None after asking for one (an empty field is no folder:
        it used to create the session wherever napari was started)."""
        text = self.folder.line_edit.value.strip()  # .value of an empty field is Path(".")
        if not text:
            self.w.message_user("choose a session folder first", True)
            return None
        return Path(text).expanduser()

    def new_session(self) -> None:
        folder = self._session_folder()
        if folder is None:
            return
        m = self.w.tab("model")
        settings = dict(classes=list(self.classes.names), colors=list(self.classes.colors), arch=m.arch.value,
                        patch_size=m.patch_size.value, level=m.level.value, members=m.members.value)

        def make(cancel):  # building the model imports torch: seconds, off the viewer's thread
            yield {"phase": "new session"}
            with collector_paused():
                project = AnnotationProject.create(folder, **settings)
                preload_layer_dependencies()  # what the session's first layers would load on the viewer's thread
                freeze_startup_objects()  # torch is imported by now
            return project

        def done(project: AnnotationProject) -> None:
            self.w.set_project(project)
            self.w.message_user(f"new session in {folder}")

        self.w.task(make, desc="new session", on_done=done)

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
                freeze_startup_objects()  # torch is imported by now
            return project

        self.w.task(make, desc="open session", on_done=lambda got: self._opened(folder, got))

    def _ask_locked(self, exc: SessionLocked) -> dict[str, bool] | None:
        """Another process holds the session: open read-only, take the lock over, or cancel."""
        box = QMessageBox(QMessageBox.Icon.Warning, "AL Regions", str(exc), parent=self.w)
        read_only = box.addButton("Open read-only", QMessageBox.ButtonRole.AcceptRole)
        take = box.addButton("Take over", QMessageBox.ButtonRole.DestructiveRole)  # that process can no longer save
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() not in (read_only, take):
            self.w.message_user("not opened: the session is open in another process", True)
            return None
        return {"read_only": box.clickedButton() is read_only, "take_over": box.clickedButton() is take}

    def _opened(self, folder: Path, project) -> None:
        if isinstance(project, _Locked):
            how = self._ask_locked(project.exc)
            if how is not None:  # once this task's worker has finished
                self.w.after_task(lambda: self._open_in_worker(folder, how))
            return
        self.w.set_project(project)
        notes = [*project.open_messages, *(["read-only: changes are not saved"] if project.session.read_only else [])]
        self.w.steps.run([lambda: self.w.message_user(
            f"opened {project.folder}: {len(project.slides)} slide(s), cycle {project.cycle}"
            + "".join(f"; {m}" for m in notes), bool(notes))])

    # ------------------------------------------------------------------ slides
    def add_slide_file(self) -> None:
        self._add_slide(Path(self.slide_file.value))

    def add_slide_layer(self) -> None:
        layer = self.w.viewer.layers.selection.active
        path = getattr(layer, "metadata", {}).get("slide_path") if layer is not None else None
        if not path:
            self.w.message_user("select an image layer opened with the AL Regions reader", True)
            return
        self._add_slide(Path(path), layer=layer)

    def _add_slide(self, path: Path, layer=None) -> None:
        p = self.w.project
        if p is None:
            self.w.message_user("create or open a session first", True)
            return
        for entry in p.session.slides.values():
            if Path(entry.path) == path.resolve():
                self.w.message_user(f"{path.name} is in the session already, as {entry.name}", True)
                return
        name = _free_name(path.name, p.session.slides)  # another file of the same name gets a suffix

        def done(added: str) -> None:
            if layer is not None:
                self.w.slides.adopt(added, layer)  # this layer, not one found by its name
            self.w.slide_chosen(added)
            self.w.show_status()  # the new slide's tissue was measured in the worker
            renamed = "" if added == path.name else f" (a slide named {path.name} is in the session already)"
            self.w.message_user(f"added {path.name} as {added}{renamed}" if renamed else f"added {added}")

        def add() -> str:
            added = p.add_slide(path, name=name)
            p.annotated_pct(added)  # reads the tissue mask here, not when the status line is drawn
            return added

        self.w.call("adding slide", add, on_done=done)
