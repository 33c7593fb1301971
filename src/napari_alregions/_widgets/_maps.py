"""The slides' maps in the viewer (priority, prediction, similarity) and the colour bar.

Each map layer is drawn from the project when the session says a map changed (its
``maps`` event): nothing else adds or redraws one. The colour bar and its legend describe
the current slide's priority map, on every tab, while that map is shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui import widgets as mw
from napari.utils.colormaps import Colormap

from ..layers import MIN_PRIORITY_SPAN, priority_colors, priority_limits
from ._active import kept_active
from ._colorbar import ColorBar
from ._runner import _alive
from ._text import wrapped

__all__ = ["MapView"]

#: The prediction's colours: blue, a hue the priority ramp (clear, yellow, red) does not use.
PREDICTION_COLORS = np.array([[0.0, 0.35, 1.0, 0.0], [0.0, 0.35, 1.0, 1.0]])


class MapView:
    """Map layers by slide and kind, and the current slide's colour bar and legend."""

    KINDS = ("priority", "similarity", "prediction")

    def __init__(self, viewer, hub, steps, slides) -> None:
        self.viewer, self.hub, self.steps, self.slides = viewer, hub, steps, slides
        self.project = None
        self.layers: dict[tuple[str, str], Any] = {}
        self.colorbar = ColorBar()
        self.legend = wrapped(mw.Label(value=""))
        self.legend.native.hide()
        hub.events.project.connect(self._project)
        hub.events.maps.connect(self.show)
        hub.events.current.connect(lambda _: self.show_colorbar())

    def _project(self, project) -> None:
        self.layers = {}  # the widget removes the last session's layers
        self.project = project
        self.show_colorbar()
        if project is not None:
            self.steps.run([lambda name=name: self.show(name, "priority") for name in project.maps if name in project.slides])

    def layer(self, slide: str, kind: str) -> Any:
        layer = self.layers.get((slide, kind))
        return layer if layer is not None and layer in self.viewer.layers else None

    def show(self, slide: str, kind: str) -> None:
        """Redraw map ``kind`` of ``slide`` from the project (the layer goes when the map did)."""
        p = self.project
        if p is None or slide not in p.slides:
            return
        if kind == "priority":
            self._priority(slide)
            if self.layer(slide, "prediction") is not None:  # the probabilities changed with it
                self.show_prediction(slide)
        elif kind == "similarity":
            sim = p.similarity[slide] if slide in p.similarity else None
            if sim is None:
                self._remove(slide, kind)
            else:
                self._image(slide, kind, sim, colormap=Colormap(priority_colors(), name="alregions similarity"),
                            opacity=0.7, contrast_limits=(0.0, 1.0))

    def show_prediction(self, slide: str) -> None:
        """The model's probability of the last class (NaN outside tissue read as 0), in blue."""
        p = self.project
        if slide not in p.maps:
            self._remove(slide, "prediction")
            return
        prob = np.nan_to_num(p.prediction(slide)[..., -1])
        self._image(slide, "prediction", prob, colormap=Colormap(PREDICTION_COLORS, name="alregions prediction"),
                    opacity=0.6, contrast_limits=(0.0, 1.0))

    def _remove(self, slide: str, kind: str) -> None:
        layer = self.layers.pop((slide, kind), None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _image(self, slide: str, kind: str, data: np.ndarray, **kwargs) -> Any:
        layer = self.layer(slide, kind)
        if layer is None:
            with kept_active(self.viewer):
                layer = self.viewer.add_image(data, name=f"{slide} {kind}", **kwargs,
                                              **self.slides.placed(slide, self.project.stride))
            self.layers[(slide, kind)] = layer
        else:
            layer.data = data
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
        return layer

    def _priority(self, slide: str) -> None:
        p = self.project
        rec = p.maps.get(slide)
        if rec is None:
            self._remove(slide, "priority")
            self.show_colorbar()
            return
        limits = priority_limits(rec.priority, p.slides[slide].tissue_map(rec.stride))
        fresh = self.layer(slide, "priority") is None
        layer = self._image(slide, "priority", rec.priority, colormap=Colormap(priority_colors(), name="alregions priority"),
                            opacity=0.7, contrast_limits=limits)
        if fresh:
            layer.events.visible.connect(_alive(lambda _: self.show_colorbar()))  # the bar describes what is shown
        layer.metadata.update(measure=rec.measure, cycle=rec.cycle)
        self.show_colorbar()

    def show_colorbar(self) -> None:
        """The colour bar and legend of the current slide's priority map (none without one)."""
        self.legend.value = ""
        self.legend.native.hide()  # an empty line would leave a gap in the dock
        self.colorbar.clear()
        name = self.slides.current
        layer = None if self.project is None or name is None else self.layer(name, "priority")
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
        self.legend.value = text
        self.legend.native.show()
