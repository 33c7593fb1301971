"""The Annotate tab: accepted regions, painting, retraining, QuPath export and import."""

from __future__ import annotations

import time
from pathlib import Path

from magicgui import widgets as mw
from qtpy.QtWidgets import QMessageBox

from ..geometry import Region

__all__ = ["AnnotateTab"]


def _parse_class_map(text: str) -> dict[str, str | None]:
    """``"Tumor=tumour, Other="`` -> ``{"Tumor": "tumour", "Other": None}`` (empty: skip)."""
    out: dict[str, str | None] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        qupath, sep, ours = part.partition("=")
        if not sep or not qupath.strip():
            raise ValueError(f"class map: {part!r} is not QuPath class=session class")
        out[qupath.strip()] = ours.strip() or None
    return out


class AnnotateTab:
    """The accepted regions of the current slide (select one to paint in it), retraining, QuPath."""

    def __init__(self, w) -> None:
        self.w = w
        hint = mw.Label(value="Select an accepted region to paint in it (its own labels layer, on top; the slide's "
                              "labels layer shows the others). Outside accepted regions nothing can be painted; "
                              "unpainted pixels of a region are background.")
        hint.native.setWordWrap(True)
        self.accepted_list = w.lists.accepted
        remove = w.button("Remove region", "take the selected region out of the labeled set; its labels are deleted")
        remove.changed.connect(self.remove_selected)
        self.retrain_btn = w.button("Retrain", "the session's learner (the fast one by default: a random forest on cached "
                                               "texture features refits on all labels in seconds), then the map and "
                                               "proposals refresh")
        self.retrain_btn.changed.connect(lambda: self.retrain())
        self.deep_btn = w.button("Deep retrain", "the patch CNN trained on all labels to convergence (minutes); it replaces "
                                                 "the fast model only when its validation estimate is better")
        self.deep_btn.changed.connect(lambda: self.retrain(deep=True))
        w.busy_buttons += [remove, self.retrain_btn, self.deep_btn]  # not while a task reads the labels
        self.live = mw.CheckBox(label="Live: refit after each stroke and accept", value=True,
                                tooltip="the fast learner refits (about a second) and the map and proposals refresh "
                                        "after every saved stroke and accepted region")
        self.auto_retrain = mw.CheckBox(label="Auto-retrain", value=False)
        self.auto_after = mw.SpinBox(label="after N accepted regions", value=3, min=1, max=100)
        self.export_folder = mw.FileEdit(label="Export folder", mode="d")
        export = w.button("Export to QuPath", "every slide's regions and labels, one GeoJSON per slide, QuPath's class names")
        export.changed.connect(self.export_qupath)
        self.qupath_file = mw.FileEdit(label="QuPath GeoJSON", mode="r", filter="*.geojson *.json")
        self.class_map = mw.LineEdit(label="Class map", value="",
                                     tooltip="QuPath class=session class, comma-separated (Tumor=tumour, Other= to skip "
                                             "Other); unlisted classes match by name (Tumor/Tumour alike)")
        import_ = w.button("Import from QuPath")
        import_.changed.connect(self.import_qupath)
        self.box = mw.Container(widgets=[hint, remove, mw.Container(widgets=[self.retrain_btn, self.deep_btn],
                                                                    layout="horizontal", labels=False),
                                         self.live, self.auto_retrain, self.auto_after, self.export_folder, export,
                                         self.qupath_file, self.class_map, import_])
        self.box.native.layout().insertWidget(1, self.accepted_list)
        self._flushing_for_retrain = False  # a retrain saves the strokes itself: no live refit for that save

    # ------------------------------------------------------------------ accepting
    def accept(self, regions: list[Region], prefill: str) -> None:
        """Accept ``regions`` in the worker (prefilling and saving the labels), then open the last to paint."""
        p = self.w.project

        def accept() -> tuple[list[Region], float]:
            accepted = [p.accept(r, prefill=prefill) for r in regions]
            return accepted, p.annotated_pct()

        self.w.call("accepting", accept if p else None, on_done=lambda got: self._accepted(regions, *got))

    def _accepted(self, regions: list[Region], accepted: list[Region], pct: float) -> None:
        region, last = regions[-1], accepted[-1]
        self.w.steps.run([lambda: self._paint_accepted(region, last, pct, len(regions) - 1)])

    def _paint_accepted(self, region: Region, accepted: Region, pct: float, more: int) -> None:
        layer = self.w.labels.paint(accepted)
        self.w.slides.go_to(accepted)  # show the region to paint
        self.w.show_status(pct)
        what = "your region" if region.method == "manual" else f"{region.method} #{region.rank + 1}"
        if more:
            what = f"your {more + 1} regions" if region.method == "manual" else f"{what} and {more} more"
        self.w.message_user(f"accepted {what}: paint in layer '{layer.name}'")
        if self.auto_retrain.value and self.w.project.pending_regions >= self.auto_after.value:
            self.retrain_soon()
        else:
            self.live_refit()

    def strokes_saved(self) -> None:
        self.w.show_status()
        if not self._flushing_for_retrain:
            self.live_refit()

    def live_refit(self) -> None:
        """The fast learner's live loop: refit and refresh after a saved stroke or an accept."""
        p = self.w.project
        if p is not None and self.live.value and p.session.settings.learner == "fast":
            self.retrain_soon()

    def retrain_soon(self) -> None:
        """Retrain now, or once the task under way has finished (one retrain for many asks)."""
        if self.w.runner.busy:
            self.w.after_task(self.retrain)
        else:
            self.retrain()

    def remove_selected(self) -> None:
        p = self.w.project
        region = self.w.lists.selected_accepted()
        if p is None or region is None:
            self.w.message_user("select an accepted region in the list first", True)
            return
        self.w.flush_labels(everything=True)  # strokes still waiting for the autosave count as painted
        painted = self.w.guard(p.region_labels, region)
        if painted is None:
            return
        where = f"{region.method or 'manual'} region at ({region.x}, {region.y})"
        if (painted > 1).any() and not self.w.confirm(f"Remove the {where}? The labels painted in it are deleted."):
            return
        if self.w.guard(p.remove_accepted, region) is None:
            return
        self.w.show_status()
        self.w.message_user(f"removed the {where} and its labels")

    # ------------------------------------------------------------------ retrain
    def retrain(self, deep: bool = False) -> None:
        p = self.w.project
        if p is None:
            self.w.message_user("create or open a session first", True)
            return
        self._flushing_for_retrain = True
        try:
            self.w.flush_labels(everything=True)  # train on the pixels shown, undone strokes included
        finally:
            self._flushing_for_retrain = False
        t0 = time.perf_counter()

        def done(summary: dict) -> None:
            what = "sub-cells" if summary.get("learner") == "fast" else "patches"
            done_msg = (f"cycle {summary['cycle']}: trained on {summary['n_candidates']} {what}, maps and "
                        f"proposals refreshed in {time.perf_counter() - t0:.1f} s")
            warnings = summary.get("messages", [])  # why a model was or was not replaced; one at chance
            quality = [summary["quality"]] if summary.get("quality") else []  # how good the fast model is
            self.w.steps.run([lambda: self.w.show_status(summary.get("annotated_pct")),
                              lambda: self.w.message_user("; ".join([done_msg, *quality, *warnings]), bool(warnings))])

        measure = self.w.tab("model").measure.value

        def make(cancel):
            summary = yield from p.iter_retrain(deep=True if deep else None, cancel=cancel, measure=measure)
            # the status line's share reads every region's labels: here, not in the redraw
            return {**summary, "annotated_pct": p.annotated_pct()}

        self.w.task(make, desc="deep retrain" if deep else "retrain", on_done=done)

    # ------------------------------------------------------------------ QuPath
    def export_qupath(self) -> None:
        p = self.w.project
        text = self.export_folder.line_edit.value.strip()
        if p is None or not text:
            self.w.message_user("create or open a session first" if p is None else "choose a folder to export to", True)
            return
        self.w.flush_labels(everything=True)
        folder = Path(text).expanduser()
        self.w.call("exporting to QuPath", p.export_qupath_all, folder,
                    on_done=lambda paths: self.w.message_user(
                        f"exported {len(paths)} slide(s) to {folder}: " + ", ".join(Path(q).name for q in paths)))

    def import_qupath(self) -> None:
        name = self.w.slide_or_say()
        class_map = None if name is None else self.w.guard(_parse_class_map, self.class_map.value)
        if class_map is None:
            return
        p, path = self.w.project, Path(self.qupath_file.value)
        if p is None:
            self.w.message_user("create or open a session first", True)
            return
        options = {"class_map": class_map or None}

        def ask(plan: dict) -> None:  # what the import would do, shown before anything is written
            mapping = ", ".join(f"{k} → {v or 'skipped'}" for k, v in class_map.items()) or "by name"
            if not self.w.confirm(f"Import {path.name} into {name}?\n\n{plan['message']}\n"
                                  f"Adds {plan['regions']} region(s) and paints {plan['labeled_annotations']} labeled "
                                  f"annotation(s).\nClasses: {mapping}."):
                self.w.message_user("import cancelled: nothing was written")
                return
            self.w.flush_labels(everything=True)  # the import redraws every region layer from the session
            # the import starts once the reading task's worker has ended
            self.w.after_task(lambda: self.w.call("importing from QuPath", p.import_qupath, path, name, **options,
                                                  on_done=imported))

        def imported(counts: dict) -> None:
            self.w.show_status()
            self.w.message_user(f"imported {counts['regions']} region(s) and {counts['labeled_annotations']} "
                                "labeled annotation(s)")

        # a QuPath export of tens of thousands of objects takes seconds: read and plan in the worker
        self.w.call("reading the QuPath file", p.import_qupath, path, name, **options, dry_run=True, on_done=ask)

def confirm(parent, text: str) -> bool:
    answer = QMessageBox.question(parent, "AL Regions", text)
    return answer == QMessageBox.StandardButton.Yes
