"""The session's slides in the viewer: one image layer per slide, bound to its file.

A layer is the slide's when this view added it, or when it was opened from the same file
(the reader's, ``metadata["slide_path"]``) and no slide has it yet: never by its name (a
sample opened as ``slide_000.tif`` is not the session's ``slide_000.tif`` from another
folder). A new or reopened session lets go of the last one's slide images: they stay
as the user's layers, no slide's any more, until a slide of the same file takes one
again. (Removing or hiding a multiscale image once its session had labels layers crashed
vispy's next draw under software OpenGL, Xvfb with llvmpipe: they are left as they are.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui import widgets as mw

from ..layers import overlay_kwargs, slide_image_layer, slide_layout, slide_scale
from ._active import kept_active

__all__ = ["SlideView", "same_file"]


def same_file(layer: Any, path: str | Path) -> bool:
    """Whether ``layer`` shows the file at ``path`` (opened by the AL Regions reader)."""
    meta = getattr(layer, "metadata", None) or {}
    src = meta.get("slide_path")
    if not src:
        return False
    try:
        return Path(src).resolve() == Path(path).resolve()
    except OSError:
        return False


class SlideView:
    """The "Current slide" choice and each slide's image layer.

    ``chosen(name)`` runs when the user picks another slide (it becomes the project's
    current slide and the camera moves there).
    """

    def __init__(self, viewer, hub, steps, *, chosen: Callable[[str | None], None]) -> None:
        self.viewer, self.hub, self.steps = viewer, hub, steps
        self.combo = mw.ComboBox(label="Current slide", choices=[])
        self.combo.changed.connect(lambda value: None if self._setting else chosen(value or None))
        self.layers: dict[str, Any] = {}
        self._setting = False
        self.project = None
        hub.events.project.connect(self._project)
        hub.events.slides.connect(self._added)

    @property
    def current(self) -> str | None:
        return self.combo.value or None

    def show(self, name: str | None) -> None:
        """Make ``name`` the current slide in the choice (no ``chosen`` call)."""
        self._setting = True
        try:
            if name is not None and name in self.combo.choices:
                self.combo.value = name
        finally:
            self._setting = False

    def _project(self, project) -> None:
        self.release()
        self.project = project
        self._setting = True
        try:
            self.combo.choices = list(project.slides) if project is not None else []
        finally:
            self._setting = False
        if project is not None:
            self.steps.run([lambda name=name: self.layer(name) for name in project.slides])

    def _added(self, name: str) -> None:
        self._setting = True
        try:
            self.combo.choices = list(self.project.slides)
        finally:
            self._setting = False
        self.layer(name)

    def release(self) -> None:
        """The session's slide images are no slide's any more: left to the user."""
        self.layers = {}

    def adopt(self, name: str, layer: Any) -> None:
        """``layer`` (opened from the slide's file) shows slide ``name`` from now on."""
        layer.name = name
        self.layers[name] = layer

    def offset(self, name: str) -> tuple[float, float]:
        """Where the slide sits in the viewer (world units): side by side, in the session's order."""
        return slide_layout(self.project.slides)[name]

    def placed(self, name: str, stride: float) -> dict[str, Any]:
        """The scale and translate of an overlay of ``stride`` level-0 px per pixel on slide ``name``."""
        return overlay_kwargs(self.project.slides[name], stride, self.offset(name))

    def scale(self, name: str) -> float:
        return slide_scale(self.project.slides[name])

    def layer(self, name: str) -> Any:
        """The slide's image layer, added (or one opened from its file taken) if missing."""
        layer = self.layers.get(name)
        if layer is not None and layer in self.viewer.layers:
            layer.translate = self.offset(name)
            return layer
        path = self.project.session.slides[name].path
        taken = {id(lay) for lay in self.layers.values()}
        for other in self.viewer.layers:
            if id(other) not in taken and other.__class__.__name__ == "Image" and same_file(other, path):
                self.adopt(name, other)  # opened before it was added (reader): it moves to its place
                other.translate = self.offset(name)
                return other
        data, kwargs, _ = slide_image_layer(self.project.slides[name], self.offset(name))
        kwargs["name"] = name
        with kept_active(self.viewer):
            layer = self.viewer.add_image(data, **kwargs)
        self.layers[name] = layer
        return layer

    def frame(self, name: str, y: float, x: float, h: float, w: float, fill: float) -> None:
        """Centre the camera on a level-0 box of a slide, filling ``fill`` of the canvas."""
        s, (oy, ox) = self.scale(name), self.offset(name)
        self.viewer.scene.camera.center = (oy + (y + h / 2) * s, ox + (x + w / 2) * s)
        canvas = tuple(getattr(self.viewer.canvas, "size", None) or (600, 800))
        self.viewer.scene.camera.zoom = fill * min(canvas[0] / (h * s), canvas[1] / (w * s))

    def go_to(self, region) -> None:
        self.frame(region.slide, region.y, region.x, region.h, region.w, 0.8)

    def go_to_slide(self, name: str | None) -> None:
        if self.project is not None and name in self.project.slides:
            h, w = self.project.slides[name].shape
            self.frame(name, 0, 0, h, w, 0.95)
