"""The Correct tab: the model's most uncertain patches, corrected from its prediction (UGA)."""

from __future__ import annotations

from magicgui import widgets as mw
from qtpy.QtWidgets import QListWidget

from ..geometry import Region

__all__ = ["CorrectTab"]


class CorrectTab:
    """Find the N most uncertain patches (of the slide, or of each group of slides); correct one."""

    def __init__(self, w) -> None:
        self.w = w
        self.n_uncertain = mw.SpinBox(label="Patches N", value=10, min=1, max=500)
        find = w.button("Find uncertain patches", "the model's most uncertain patches, with its prediction shown")
        find.changed.connect(self.find_uncertain)
        self.uncertain_list = QListWidget()
        self._uncertain: list[Region] = []  # the list's rows, in order (one slide's patches or several groups')
        self.uncertain_list.currentRowChanged.connect(self._row_chosen)
        groups = w.button("Per slide group", "the N most uncertain patches of each group of slides (centre, scanner)")
        groups.changed.connect(self.find_uncertain_by_group)
        correct = w.button("Correct selected patch", "labels prefilled with the model's prediction, to correct")
        correct.changed.connect(self.correct_selected)
        self.box = mw.Container(widgets=[self.n_uncertain, mw.Container(widgets=[find, groups], layout="horizontal",
                                                                        labels=False), correct])
        self.box.native.layout().insertWidget(2, self.uncertain_list)
        w.hub.events.project.connect(lambda _: self._fill([], str))

    def _row_chosen(self, i: int) -> None:
        if 0 <= i < len(self._uncertain):
            self.w.slides.go_to(self._uncertain[i])

    def find_uncertain(self) -> None:
        p, name = self.w.project, self.w.slide_or_say()
        if name is None:
            return
        k = self.n_uncertain.value

        def done(regions: list[Region]) -> None:
            self.w.steps.run([  # one layer per event-loop turn
                lambda: self.w.maps.show_prediction(name),
                lambda: self._fill(regions, lambda r: f"#{r.rank + 1}  uncertainty {r.score:.3f}  at ({r.x}, {r.y})"),
                lambda: self.w.message_user(f"{len(regions)} uncertain patch(es); select one and correct the prediction")])

        self.w.call("finding uncertain patches", p.suggest, name, "top_patches", region_size=p.stride, k=k, on_done=done)

    def find_uncertain_by_group(self) -> None:
        p = self.w.project
        if p is None or not p.slides:
            self.w.message_user("add slides first", True)
            return
        groups = self.w.guard(p.uncertain_by_group, n=self.n_uncertain.value)
        if groups is None:
            return
        group_of = {id(r): group for group, regions in groups.items() for r in regions}
        self._fill([r for regions in groups.values() for r in regions],
                   lambda r: f"[{group_of[id(r)] or 'no group'}] #{r.rank + 1} {r.slide} uncertainty {r.score:.3f} "
                             f"at ({r.x}, {r.y})")
        self.w.message_user(f"most uncertain patches of {len(groups)} group(s); set groups when adding slides")

    def _fill(self, regions: list[Region], text) -> None:
        """Rows and the patches they stand for, together (a row of a group list is on any slide)."""
        self._uncertain = list(regions)
        self.uncertain_list.clear()
        for r in self._uncertain:
            self.uncertain_list.addItem(text(r))

    def correct_selected(self) -> None:
        i = self.uncertain_list.currentRow()
        if not 0 <= i < len(self._uncertain):
            self.w.message_user("select an uncertain patch first", True)
            return
        self.w.tab("annotate").accept([self._uncertain[i]], "prediction")
