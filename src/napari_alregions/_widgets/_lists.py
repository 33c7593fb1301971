"""The region lists (proposals of the chosen method, accepted regions) and the method legend.

Rows are drawn from the session when it says something changed (regions, maps; a stroke
redraws only the rows of the regions it touched) or
the slide or method shown changes: no one else fills them. A row keeps its selection
across a refill when its region is still there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui import widgets as mw
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QListWidget

from ..geometry import Region
from ..layers import METHOD_COLORS, box_means
from ._tags import METHOD_TAGS, tag
from ._text import wrapped

__all__ = ["RegionLists", "accepted_row"]


def _hex(rgba) -> str:
    return "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])


def _area(summary) -> str:
    if summary.area_um2 is None:  # no pixel size
        return f"{summary.area_px:,} px²"
    return f"{summary.area_mm2:.3g} mm² ({summary.area_um2:,.0f} µm²)"


def accepted_row(region: Region, summary) -> str:
    """An accepted region's row: tag, area in mm² and µm², class make-up and cycle (a
    :class:`~napari_alregions.project.labeling.RegionSummary`)."""
    classes = ", ".join(f"{name} {share:.0%}" for name, share in summary.classes.items() if share > 0) or "unlabeled"
    return f"{tag(region)} {region.method or 'manual'} · {_area(summary)} · {classes} · cycle {summary.cycle}"


class RegionLists:
    """The proposals list (Suggest tab), the accepted list (Annotate tab) and the legend of
    the methods on the current slide (under the tabs).

    ``current()``: the slide shown; ``proposal_chosen(region)``/``accepted_chosen(region)``:
    the user selected that row.
    """

    def __init__(self, hub, *, current: Callable[[], str | None], proposal_chosen: Callable[[Region], None],
                 accepted_chosen: Callable[[Region], None]) -> None:
        self.project = None
        self.method = "adaptive"
        self._current = current
        self.proposals = QListWidget()
        self.accepted = QListWidget()
        for widget in (self.proposals, self.accepted):  # a long row wraps: the dock keeps its width
            widget.setWordWrap(True)
        self.proposal_rows: list[Region] = []
        self.accepted_rows: list[Region] = []
        self.legend = wrapped(mw.Label(value=""))  # the colour and tag of each method's boxes
        self._syncing = False
        self.proposals.currentRowChanged.connect(lambda i: self._chosen(self.proposal_rows, i, proposal_chosen))
        self.accepted.currentRowChanged.connect(lambda i: self._chosen(self.accepted_rows, i, accepted_chosen))
        # strokes come in bursts (a save per stroke): their rows' class make-up is redrawn once
        self._labels_timer = QTimer(self.proposals)  # goes with the widget
        self._labels_timer.setSingleShot(True)
        self._labels_timer.setInterval(0)
        self._labels_timer.timeout.connect(self._relabel)
        self._painted: list[tuple[str, Any]] = []  # (slide, label box or None) since the last redraw
        hub.events.project.connect(self._project)
        hub.events.labels.connect(self._labels_changed)
        hub.events.maps.connect(lambda _slide, kind: self.refill() if kind == "priority" else None)  # the means
        for signal in (hub.events.regions, hub.events.current, hub.events.model):
            signal.connect(self.refill)

    @property
    def pending(self) -> bool:
        """Rows wait to be redrawn."""
        return self._labels_timer.isActive()

    def _labels_changed(self, slide: str, box) -> None:
        self._painted.append((slide, box))
        self._labels_timer.start()

    def _relabel(self) -> None:
        """Redraw the accepted rows whose labels changed (a stroke: its region's row only)."""
        painted, self._painted = self._painted, []
        p, name = self.project, self._current()
        if p is None or name is None:
            return
        boxes = [box for slide, box in painted if slide == name]
        for i, r in enumerate(self.accepted_rows):
            if any(box is None or p.label_box(r).intersection(box).area for box in boxes):
                self.accepted.item(i).setText(accepted_row(r, p.region_summary(r)))

    def _project(self, project) -> None:
        self.project = project
        self.refill()

    def _chosen(self, rows: list[Region], i: int, then: Callable[[Region], None]) -> None:
        if not self._syncing and 0 <= i < len(rows):
            then(rows[i])

    def set_method(self, method: str) -> None:
        """Show ``method``'s proposals."""
        if method != self.method:
            self.method = method
            self.refill()

    def select_proposal(self, uid: str) -> bool:
        """Select the row of proposal ``uid`` (without moving the camera); whether it is listed."""
        uids = [r.uid for r in self.proposal_rows]
        if uid not in uids:
            return False
        self._syncing = True
        try:
            self.proposals.setCurrentRow(uids.index(uid))
        finally:
            self._syncing = False
        return True

    def selected_proposal(self) -> Region | None:
        i = self.proposals.currentRow()
        return self.proposal_rows[i] if 0 <= i < len(self.proposal_rows) else None

    def selected_accepted(self) -> Region | None:
        i = self.accepted.currentRow()
        return self.accepted_rows[i] if 0 <= i < len(self.accepted_rows) else None

    def refill(self, *_) -> None:
        """Redraw the rows and the legend of the current slide from the session."""
        self._labels_timer.stop()
        self._painted = []
        p, name = self.project, self._current()
        kept_p = getattr(self.selected_proposal(), "uid", None)
        kept_a = getattr(self.selected_accepted(), "uid", None)
        self._syncing = True  # refilling is no choice of the user's: the camera stays
        try:
            self.proposals.clear()
            self.accepted.clear()
            self.proposal_rows, self.accepted_rows = [], []
            self.legend.value = ""
            if p is None or name is None or name not in p.slides:
                return
            self.proposal_rows = sorted(p.proposals(name, self.method), key=lambda r: r.rank)
            rows = self.proposal_rows
            means = box_means(p.maps[name].priority, rows, p.stride) if name in p.maps else [float("nan")] * len(rows)
            for r, mean in zip(rows, means):
                score = "" if np.isnan(mean) else f"  mean priority {mean:.2f}"
                self.proposals.addItem(f"{tag(r)}  {r.method} #{r.rank + 1}{score}  ({r.w}×{r.h} px)")
            self.accepted_rows = list(p.session.accepted_on(name))
            for r in self.accepted_rows:
                self.accepted.addItem(accepted_row(r, p.region_summary(r)))
            methods = sorted({r.method for r in p.proposals(name)})
            self.legend.value = " ".join(f'<span style="white-space:nowrap"><span style="color:'
                                         f'{_hex(METHOD_COLORS.get(m, (1, 1, 0, 1)))}">■</span>&nbsp;'
                                         f'{METHOD_TAGS.get(m, "?")} {m}</span>' for m in methods)
            for rows_, widget, kept in ((self.proposal_rows, self.proposals, kept_p),
                                        (self.accepted_rows, self.accepted, kept_a)):
                uids = [r.uid for r in rows_]
                if kept in uids:
                    widget.setCurrentRow(uids.index(kept))
        finally:
            self._syncing = False
