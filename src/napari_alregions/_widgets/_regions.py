"""Each slide's region boxes in the viewer, kept in step with the session both ways.

One Shapes layer per slide holds the proposals of every method (the method a feature
column, its colour the box's), a points layer their tags ("A2", placed apart); another
Shapes layer holds the accepted regions. The session's region events redraw them (through
the widget's :class:`~._hub.Hub`, on the viewer's thread); the user's edits on the
canvas reach the session: a deleted box is dismissed, a moved or resized one edited
(snapped to the map grid), a clicked one selects its row in the widget's list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ..geometry import Region
from ..layers import METHOD_COLORS, box_means, regions_layer, slide_layout, slide_scale
from ._active import kept_active
from ._tags import place_tags, tag

__all__ = ["RegionLayers"]


def _region_keys(regions) -> list[tuple]:
    """What a drawn box shows of each region: a layer showing the same keys needs no redraw."""
    return [(r.uid, r.x, r.y, r.w, r.h, r.method, r.rank, r.cycle, r.score) for r in regions]


def _removed_only(old, new) -> list[int] | None:
    """Indices of ``old`` to remove to get ``new`` when that is all that changed, else None."""
    keys = set(_region_keys(new))
    kept = [i for i, k in enumerate(_region_keys(old)) if k in keys]
    if len(kept) == len(old) or _region_keys([old[i] for i in kept]) != _region_keys(new):
        return None
    kept_set = set(kept)
    return [i for i in range(len(old)) if i not in kept_set]


class RegionLayers(QObject):
    """The proposals, tags and accepted layers of the widget's current session.

    ``message(text, error)`` tells the user; ``guard(fn, *args)`` runs a project call and
    turns a bad input into a message (None); ``chosen(region)`` when the user selects one
    box on the canvas; ``busy()`` whether a task runs (its region events are drawn once it
    has finished).
    """

    def __init__(self, viewer, parent: QObject, hub, steps, *, message: Callable[[str, bool], None],
                 guard: Callable[..., Any], chosen: Callable[[Region], None], busy: Callable[[], bool]) -> None:
        super().__init__(parent)
        self.viewer, self.steps = viewer, steps
        self.project = None
        self._message, self._guard, self._chosen, self._busy = message, guard, chosen, busy
        self._redrawing = False  # our own redraw of a Shapes layer: no user edit
        self._selecting = False  # a box selected for its list row: no user choice
        self._removing: list[str] = []  # uids of the boxes napari is deleting
        self._pending: set[str] = set()
        self.layers: dict[tuple[str, str], Any] = {}  # (slide, "proposals" | "tags" | "accepted"): the layer
        self._timer = QTimer(self)  # a child timer, not QTimer.singleShot: a pending shot kept the viewer alive
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._redraw_pending)
        hub.events.project.connect(self.set_project)
        hub.events.regions.connect(self._event_arrived)
        hub.events.maps.connect(lambda slide, kind: self.later(slide) if kind == "priority" else None)  # the boxes' means

    def set_project(self, project) -> None:
        """Show ``project``'s regions from now on (the widget removes the last project's layers)."""
        self.layers = {}
        self.project = project
        self._pending.clear()
        if project is not None:
            self.steps.run([step for name in project.slides for step in
                            (lambda name=name: self.show_proposals(name), lambda name=name: self.show_accepted(name))])

    def _layer(self, name: str, kind: str):
        layer = self.layers.get((name, kind))
        return layer if layer is not None and layer in self.viewer.layers else None

    # ------------------------------------------------------------------ drawing
    def _show(self, name: str, kind: str, regions: list[Region], color=None) -> tuple[Any, bool]:
        """The slide's Shapes layer ``kind`` showing ``regions`` (None while it has never had
        any: an empty layer per slide cost ~0.3 s of the viewer's thread at each retrain and
        open), and whether it was (re)drawn."""
        p = self.project
        layer = self._layer(name, kind)
        if layer is None and not regions:
            return None, False
        mean = box_means(p.maps[name].priority, regions, p.stride) if name in p.maps else None
        old = layer.metadata.get("regions", []) if layer is not None else []
        if (layer is not None and _region_keys(old) == _region_keys(regions) and layer.nshapes == len(regions)
                and np.array_equal(layer.features["mean"], mean if mean is not None else [np.nan] * len(regions),
                                   equal_nan=True)):
            return layer, False  # drawn already
        data, kwargs, _ = regions_layer(regions, name=f"{name} {kind}", slide=p.slides[name],
                                        offset=slide_layout(p.slides)[name], color=color, mean=mean, ranks=False)
        # a one-cell box (an uncertain patch) is drawn with a border seen at the slide's scale
        kwargs["edge_width"] = np.maximum(kwargs["edge_width"], max(p.slides[name].shape) / 500).tolist()
        if layer is None:
            with kept_active(self.viewer):
                layer = self.viewer.add_shapes(data, **kwargs)
            self.layers[(name, kind)] = layer
            return layer, True
        gone = _removed_only(old, regions) if layer.nshapes == len(old) else None
        self._redrawing = True
        try:
            layer.selected_data = set()
            if gone:  # accepted or dismissed: remove those boxes (~10x cheaper than redrawing them all)
                layer.remove(gone)
                layer.metadata["regions"] = list(regions)
                return layer, True
            layer.data = [(d, "rectangle") for d in data]
            layer.features = kwargs["features"]
            if regions:
                layer.edge_color = kwargs["edge_color"]
                layer.edge_width = kwargs["edge_width"]
            layer.metadata["regions"] = kwargs["metadata"]["regions"]
        finally:
            self._redrawing = False
        layer.refresh()
        return layer, True

    def _show_tags(self, name: str, regions: list[Region]) -> None:
        """The boxes' tags ("A2": adaptive, rank 2) in a points layer, placed apart."""
        p = self.project
        layer = self._layer(name, "tags")
        if layer is None and not regions:
            return
        s = slide_scale(p.slides[name])
        layout = slide_layout(p.slides)
        oy, ox = layout[name]
        # a character is ~11 screen px wide (napari text size 10): tags apart when every slide is in view
        world_h = max(y + p.slides[n].shape[0] * slide_scale(p.slides[n]) for n, (y, _) in layout.items())
        world_w = max(x + p.slides[n].shape[1] * slide_scale(p.slides[n]) for n, (_, x) in layout.items())
        canvas_h, canvas_w = tuple(getattr(self.viewer.canvas, "size", None) or (600, 800))
        char_px = 11 * max(world_h / max(canvas_h, 1), world_w / max(canvas_w, 1)) / s
        pos = place_tags(regions, char_px=char_px) * s + (oy, ox)
        texts = [tag(r) for r in regions]
        text = {"string": "{tag}", "anchor": "center", "size": 10, "color": "black"}
        if layer is None:
            with kept_active(self.viewer):
                layer = self.viewer.add_points(pos.reshape(-1, 2), name=f"{name} tags", size=1.0, features={"tag": texts},
                                               text=text, face_color="transparent", border_width=0)
            layer.editable = False
            self.layers[(name, "tags")] = layer
        else:
            layer.data = pos.reshape(-1, 2)
            layer.features = {"tag": texts}
            layer.text = text
        layer.metadata["tags"] = dict(zip((r.uid for r in regions), texts))

    def show_proposals(self, name: str) -> None:
        """Draw the slide's one proposals layer (every method) and its tags."""
        if self.project is None or name not in self.project.slides:
            return
        fresh = self._layer(name, "proposals") is None
        regions = self.project.proposals(name)
        layer, drawn = self._show(name, "proposals", regions)
        if fresh and layer is not None:
            layer.events.data.connect(lambda event, name=name: self._edited(name, event))
            layer.selected_data.events.items_changed.connect(lambda *_, layer=layer: self._box_selected(layer))
        if drawn or (layer is not None and self._layer(name, "tags") is None):
            self._show_tags(name, regions)

    def show_accepted(self, name: str) -> None:
        if self.project is not None and name in self.project.slides:
            self._show(name, "accepted", self.project.session.accepted_on(name), METHOD_COLORS["accepted"])

    def select(self, name: str, uid: str) -> None:
        """Select the box of proposal ``uid`` on slide ``name`` (its list row was chosen)."""
        layer = self._layer(name, "proposals")
        uids = [r.uid for r in layer.metadata.get("regions", [])] if layer is not None else []
        if uid in uids:
            self._selecting = True
            try:
                layer.selected_data = {uids.index(uid)}
            finally:
                self._selecting = False

    # ------------------------------------------------------------------ the user's edits
    def _edited(self, name: str, event) -> None:
        """The user deleted, moved or resized boxes of the proposals layer: the session follows
        (a deleted proposal is dismissed; a moved one is edited, snapped to the map grid)."""
        from napari.layers.base._base_constants import ActionType

        if self._redrawing or self.project is None:
            return
        layer = event.source
        action = event.action
        if action == ActionType.REMOVING:  # the features still hold the boxes' uids
            self._removing = [str(layer.features["uid"].iloc[i]) for i in event.data_indices]
        elif action == ActionType.REMOVED:
            uids, self._removing = set(self._removing), []
            gone = [r for r in self.project.proposals(name) if r.uid in uids]
            for r in gone:
                self._guard(self.project.dismiss, r)
            self.later(name)
            if gone:
                self._message(f"dismissed {len(gone)} proposal(s) on {name}", False)
        elif action == ActionType.CHANGED and len(layer.metadata.get("regions", [])) == layer.nshapes:
            by_uid = {r.uid: r for r in self.project.proposals(name)}
            for i in event.data_indices:
                region = by_uid.get(str(layer.features["uid"].iloc[i]))
                if region is None:
                    continue
                y0, x0 = np.min(layer.data[i], axis=0)
                y1, x1 = np.max(layer.data[i], axis=0)
                if not np.allclose((x0, y0, x1, y1), (region.x, region.y, region.x1, region.y1)):
                    edited = self._guard(self.project.edit_proposal, region, x=float(x0), y=float(y0),
                                         w=float(x1 - x0), h=float(y1 - y0))
                    if edited is not None:
                        self._message(f"{region.method} #{region.rank + 1} moved to ({edited.x}, {edited.y}), "
                                      f"{edited.w}×{edited.h} px", False)
            self.later(name)  # the boxes are redrawn where they snapped
        elif action == ActionType.ADDED:  # a box drawn here is a region to accept, not a proposal
            self.later(name)

    def _box_selected(self, layer) -> None:
        if self._selecting or self._redrawing:
            return
        picked = sorted(layer.selected_data)
        regions = layer.metadata.get("regions", [])
        if len(picked) == 1 and picked[0] < len(regions):
            self._chosen(regions[picked[0]])

    # ------------------------------------------------------------------ the session's events
    def later(self, name: str) -> None:
        """Redraw the slide's boxes on the next event-loop turn (not inside napari's handler)."""
        self._pending.add(name)
        self._timer.start()

    @property
    def pending(self) -> bool:
        """Boxes wait to be redrawn."""
        return bool(self._pending)

    def task_finished(self) -> None:
        """Draw what the finished task's region events asked for."""
        if self._pending:
            self._timer.start()

    def _redraw_pending(self) -> None:
        names, self._pending = self._pending, set()
        for name in names:
            self.show_proposals(name)
            self.show_accepted(name)

    def _event_arrived(self, event) -> None:
        slide = getattr(event, "slide", None)
        if self.project is None:
            return
        names = [slide] if slide in self.project.slides else list(self.project.slides)
        if self._busy():  # a task changes regions in bursts (a retrain: every method of every slide):
            self._pending.update(names)  # drawn once, when it has finished (task_finished)
            return
        for name in names:
            self.later(name)
