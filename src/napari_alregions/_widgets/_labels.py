"""The session's labels in the viewer: what the widget paints with and shows.

One read-only multiscale Labels layer per slide shows the labels of every accepted region
(a :class:`~napari_alregions.layers.LabelPyramid` of views of the session's mask), and one
editable Labels layer shows the region being painted (a view of the same mask, so painting
is storing). However many regions a session holds, the viewer has one labels layer per
slide and one to paint in: a stroke, an accept or an open costs the same with 1 region or
100 (one layer per region cost 0.5-0.8 s of the viewer's thread each, and slowed strokes).
"""

from __future__ import annotations

from typing import Any, Callable

from qtpy.QtCore import QObject, QTimer

from .._errors import describe
from ..geometry import Region
from ..layers import LabelPyramid, label_colormap, region_labels_layer, slide_labels_layer, slide_layout
from ._active import kept_active

__all__ = ["LabelLayers", "labels_name"]


def labels_name(region: Region) -> str:
    """The painting layer's name while it shows ``region``."""
    return f"{region.slide} labels {region.method} {region.uid[:8]}"


class LabelLayers:
    """The labels layers of one viewer, for the widget's current session.

    ``message(text, error)`` tells the user; ``saved()`` runs after strokes were saved
    (the status line); ``painted()`` after each stroke (the widget watches its window).
    """

    def __init__(self, viewer, parent: QObject, hub, steps, *, message: Callable[[str, bool], None],
                 saved: Callable[[], None], painted: Callable[[], None], new_layer: Callable[[Any], None]) -> None:
        self.viewer, self.steps = viewer, steps
        self.project = None
        self._message, self._saved, self._on_painted, self._new_layer = message, saved, painted, new_layer
        self._pyramids: dict[str, LabelPyramid] = {}
        self._overviews: dict[str, Any] = {}
        self._colors: list[tuple[int, int, int]] | None = None  # the class colours last set
        #: The editable layer over the region being painted (None before the first one).
        self.painting = None
        self._unsaved: dict[str, Region] = {}  # regions painted since the last save, by uid
        self._autosave = QTimer(parent)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(250)
        self._autosave.timeout.connect(self.flush)
        viewer.layers.events.removed.connect(self._layer_removed)
        hub.events.project.connect(self.set_project)
        hub.events.labels.connect(self._labels_changed)
        hub.events.regions.connect(lambda event: [self.removed(r) for r in event.regions] if event.kind == "removed" else None)
        hub.events.settings.connect(lambda _: self.recolour(self.project.colors) if self.project is not None else None)

    @property
    def unsaved(self) -> bool:
        """Strokes wait for the autosave timer."""
        return bool(self._unsaved)

    @property
    def region(self) -> Region | None:
        """The region being painted."""
        return self.painting.metadata.get("region") if self.painting is not None else None

    def set_project(self, project) -> None:
        """Show ``project``'s labels from now on; the layers of the last one go (its strokes saved)."""
        if self.project is not None:
            self.flush(everything=True)
        self.forget()
        self.project = project
        if project is not None:
            self.steps.run([lambda name=name: self.show_slide(name) for name in project.slides
                            if project.session.accepted_on(name)])  # one labels layer per slide, however many regions

    def _labels_changed(self, slide: str, box) -> None:
        """The session's labels changed in ``box`` of ``slide`` (None: anywhere): redraw them,
        unless the change is the painting layer's own strokes (it shows them already)."""
        region = self.region
        if box is not None and region is not None and region.slide == slide and self.project is not None:
            y0, x0, y1, x1 = self.project.label_box(region)
            if y0 <= box[0] and x0 <= box[1] and box[2] <= y1 and box[3] <= x1:
                return
        self.refresh(slide)

    def owned(self) -> list[Any]:
        """The labels layers of the current session."""
        return [*self._overviews.values(), *([self.painting] if self.painting is not None else [])]

    def forget(self) -> None:
        """Forget the current session's labels layers (the widget removes them)."""
        self._overviews.clear()
        self._pyramids.clear()
        self.painting = None
        self._unsaved.clear()

    def close(self) -> None:
        self.viewer.layers.events.removed.disconnect(self._layer_removed)

    # ------------------------------------------------------------------ the slides' layers
    def _offset(self, slide: str) -> tuple[float, float]:
        return slide_layout(self.project.slides)[slide]

    def show_slide(self, slide: str) -> Any:
        """The slide's labels layer, added if missing (one per slide, read-only)."""
        layer = self._overviews.get(slide)
        if layer is not None and layer in self.viewer.layers:
            return layer
        p = self.project
        pyramid = self._pyramids.setdefault(slide, LabelPyramid(p.session.labels(slide)))
        region = self.region
        pyramid.hidden = p.label_box(region) if region is not None and region.slide == slide else None
        data, kwargs, _ = slide_labels_layer(pyramid, factor=p.label_factor(slide), name=f"{slide} labels",
                                             colors=p.colors, slide=p.slides[slide], offset=self._offset(slide))
        with kept_active(self.viewer):
            layer = self.viewer.add_labels(data, **kwargs)
        self._overviews[slide] = layer
        if self.painting is not None and self.painting in self.viewer.layers:  # the painting layer stays on top
            layers = self.viewer.layers
            layers.move(layers.index(layer), layers.index(self.painting))
        return layer

    def refresh(self, slide: str) -> None:
        """Redraw the slide's labels (changed by an import, a removal, an accept)."""
        layer = self._overviews.get(slide)
        if layer is not None and layer in self.viewer.layers:
            layer.refresh()
        elif self.project is not None and self.project.session.accepted_on(slide):
            self.show_slide(slide)
        if self.painting is not None and self.region is not None and self.region.slide == slide:
            self.painting.refresh()

    def recolour(self, colors) -> None:
        """The class colours (RGB 0-255) of every labels layer (a settings change may keep them)."""
        colors = [tuple(int(v) for v in c[:3]) for c in colors]
        if colors == self._colors:
            return
        self._colors = colors
        for layer in self.owned():
            layer.colormap = label_colormap(colors)

    # ------------------------------------------------------------------ the region being painted
    def paint(self, region: Region) -> Any:
        """The editable layer, over ``region`` (an accepted region) and active, in paint mode."""
        p = self.project
        region = next((r for r in p.session.accepted_on(region.slide) if r.uid == region.uid), region)
        last = self.region
        layer = self.painting if self.painting is not None and self.painting in self.viewer.layers else None
        if layer is None or last is None or last.uid != region.uid or last.slide != region.slide:
            self.flush()  # the strokes of the region painted so far are saved as that region's
            data, kwargs, _ = region_labels_layer(p.region_view(region), p.label_box(region),
                                                  factor=p.label_factor(region.slide), name=labels_name(region),
                                                  colors=p.colors, slide=p.slides[region.slide],
                                                  offset=self._offset(region.slide))
            if layer is None:
                layer = self._new_painting_layer(data, kwargs)
            else:  # the same layer moves: adding one per region cost ~0.5 s of the viewer's thread
                layer.data = data
                layer.translate, layer.scale = kwargs["translate"], kwargs["scale"]
                layer.name = kwargs["name"]
                layer._reset_history()  # napari keeps undo steps across data; they were the last region's
            layer.metadata["region"] = region
            self.painting = layer
            for slide in {s for s in (getattr(last, "slide", None), region.slide) if s is not None}:
                self._hide_painted(slide)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        return layer

    def _new_painting_layer(self, data, kwargs) -> Any:
        layer = self.viewer.add_labels(data, **kwargs)
        layer.selected_label = len(self.project.classes)  # the last class (tumour) is what gets painted most
        layer.events.paint.connect(lambda event: self._painted())
        layer.events.selected_label.connect(lambda event: self._keep_to_classes(layer))
        self._new_layer(layer)
        # napari's undo and redo (Ctrl+Z, Ctrl+Shift+Z) change the pixels without a paint event
        for name in ("undo", "redo"):
            def replay(step=getattr(layer, name)) -> None:
                step()
                self._painted()

            setattr(layer, name, replay)
        return layer

    def _hide_painted(self, slide: str) -> None:
        """The slide's layer leaves out the region being painted (its own layer draws it)."""
        pyramid = self._pyramids.get(slide)
        if pyramid is None:
            self.show_slide(slide)
            return
        region = self.region
        pyramid.hidden = self.project.label_box(region) if region is not None and region.slide == slide else None
        self.refresh(slide)

    def _layer_removed(self, event) -> None:
        # the user closed the painting layer: the slide's layer shows that region again
        if event.value is self.painting and self.painting is not None:
            self.flush()
            region = self.region
            self.painting = None
            if region is not None and region.slide in self._pyramids:
                self._pyramids[region.slide].hidden = None
                self.refresh(region.slide)
        for slide, layer in list(self._overviews.items()):
            if event.value is layer:
                del self._overviews[slide]

    def removed(self, region: Region) -> None:
        """``region`` left the labeled set: its layer goes if it was being painted."""
        self._unsaved.pop(region.uid, None)
        if self.region is not None and self.region.uid == region.uid:
            layer, self.painting = self.painting, None
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            if region.slide in self._pyramids:
                self._pyramids[region.slide].hidden = None
        self.refresh(region.slide)

    def pick_class(self, value: int) -> None:
        """Paint class ``value`` (1..n) in the painting layer (made active)."""
        if self.painting is None or self.painting not in self.viewer.layers:
            self._message("select an accepted region (Annotate tab) to paint in first", True)
            return
        if not 1 <= value <= len(self.project.classes):
            return
        self.viewer.layers.selection.active = self.painting
        self.painting.selected_label = value
        self.painting.mode = "paint"  # a class key picks the brush's class, never another tool
        self._message(f"painting {self.project.classes[value - 1]}", False)

    # ------------------------------------------------------------------ saving
    def _painted(self) -> None:
        # napari reports a stroke before its pixels are stored: save on the next event-loop
        # turn, batching the strokes of that moment (a crash loses at most this batch)
        region = self.region
        if region is not None:
            self._unsaved[region.uid] = region
            self._autosave.start()
            self._on_painted()

    def _keep_to_classes(self, layer) -> None:
        # napari offers any label ("new" picks max + 1); the session knows its classes only
        n = len(self.project.classes) if self.project is not None else None
        if n is not None and layer.selected_label > n:
            layer.selected_label = n
            self._message(f"labels are 1..{n} ({', '.join(f'{i + 1} {c}' for i, c in enumerate(self.project.classes))}); "
                          "0 erases", True)

    def flush(self, *, everything: bool = False) -> None:
        """Save the strokes painted since the last save (the chunks of those regions only).
        ``everything``: the region being painted too, for edits no event announced (a script
        writing ``layer.data``), before the labels are read (retrain, export, removal)."""
        pending, self._unsaved = dict(self._unsaved), {}
        if everything and self.region is not None:
            pending[self.region.uid] = self.region
        if self.project is None or not pending:
            return
        accepted = {r.uid for r in self.project.session.accepted}
        changed = False
        for region in pending.values():
            if region.uid not in accepted:  # removed since: its labels went with it
                continue
            try:
                bad = self.project.labels_painted(region, save=False)
            except (ValueError, KeyError, OSError) as exc:
                self._message(describe(exc), True)
                continue
            if bad:
                self._message(f"{bad} pixel(s) of '{labels_name(region)}' had a label that is no class; "
                              "they are unlabeled now", True)
                if self.painting is not None:
                    self.painting.refresh()
            changed = True
        if changed:
            try:
                self.project.save()
            except (ValueError, OSError) as exc:
                self._message(describe(exc), True)
                return
            self._saved()
