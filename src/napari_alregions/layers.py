"""Layer data tuples for napari, built without importing napari (SPEC §3).

Every layer of a slide lives in the slide's level-0 frame scaled by mpp (µm), so that a
coarse map of stride ``s`` needs ``scale = s * mpp`` and a translate of ``(s - 1) / 2``
level-0 pixels: napari places pixel centres, and map pixel (r, c) covers level-0 pixels
``[c*s, (c+1)*s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .geometry import Box, Region
from .wsi import Slide

__all__ = [
    "METHOD_ANCHORS",
    "METHOD_COLORS",
    "METHOD_LABELS",
    "coarse_layer_kwargs",
    "overlay_kwargs",
    "priority_colors",
    "label_colormap",
    "region_labels_layer",
    "regions_layer",
    "slide_image_layer",
    "tissue_labels_layer",
]

#: Edge colour of each selector's proposals (RGBA 0-1), so methods stay apart side by side.
METHOD_COLORS = {
    "random": (0.62, 0.62, 0.62, 1.0),
    "standard": (0.12, 0.47, 0.71, 1.0),
    "standard_nonsquare": (0.17, 0.63, 0.17, 1.0),
    "adaptive": (1.0, 0.5, 0.05, 1.0),
    "top_patches": (0.84, 0.15, 0.16, 1.0),
    "diversity": (0.58, 0.4, 0.74, 1.0),
    "prototype": (0.89, 0.47, 0.76, 1.0),
    "focannot": (0.09, 0.75, 0.81, 1.0),
    "accepted": (0.0, 0.9, 0.3, 1.0),
}
_CORNERS = ("upper_left", "upper_right", "lower_left", "lower_right")
#: Corner of each selector's "rank: score" labels: methods side by side often propose the
#: same or nearby windows, whose labels would otherwise print over each other.
METHOD_ANCHORS = {method: _CORNERS[i % len(_CORNERS)] for i, method in enumerate(METHOD_COLORS)}
#: Label text of a selector's proposals where it is not "rank: score": top-uncertain patches
#: are one map cell and often adjacent, so they show the rank only (the widget lists scores).
METHOD_LABELS = {"top_patches": "{rank}"}


def slide_scale(slide: Slide) -> float:
    """µm per level-0 pixel, or 1 (pixel units) when the slide has no mpp."""
    return float(slide.mpp) if slide.mpp else 1.0


def coarse_layer_kwargs(stride: float, unit_scale: float = 1.0) -> dict[str, Any]:
    """``scale`` and ``translate`` that put a map of ``stride`` level-0 px on level 0."""
    offset = (stride - 1) / 2 * unit_scale
    return {"scale": (stride * unit_scale,) * 2, "translate": (offset, offset)}


def overlay_kwargs(slide: Slide, stride: float) -> dict[str, Any]:
    """Placement of a map of ``stride`` level-0 px over ``slide`` (scale, translate, units)."""
    kwargs = coarse_layer_kwargs(stride, slide_scale(slide))
    if slide.mpp:
        kwargs["units"] = ("µm", "µm")
    return kwargs


def slide_image_layer(slide: Slide) -> tuple[list, dict[str, Any], str]:
    """A multiscale RGB image layer of the slide."""
    s = slide_scale(slide)
    meta = {
        "slide_path": str(slide.path),
        "mpp": slide.mpp,
        "downsamples": list(slide.downsamples),
    }
    kwargs: dict[str, Any] = {
        "name": slide.path.name,
        "multiscale": True,
        "rgb": True,
        "scale": (s, s),
        "metadata": meta,
        "contrast_limits": (0, 255),
    }
    if slide.mpp:
        kwargs["units"] = ("µm", "µm")
    return (list(slide.levels), kwargs, "image")


def tissue_labels_layer(slide: Slide) -> tuple[np.ndarray, dict[str, Any], str]:
    """The tissue mask as a labels layer aligned with level 0."""
    level = slide.tissue_level
    mask = slide.tissue_mask(level).astype(np.uint8)
    kwargs = coarse_layer_kwargs(slide.downsamples[level], slide_scale(slide))
    kwargs.update(name=f"{slide.path.name} tissue", opacity=0.3, metadata={"slide_path": str(slide.path)})
    if slide.mpp:
        kwargs["units"] = ("µm", "µm")
    return (mask, kwargs, "labels")


def priority_colors(n: int = 9) -> np.ndarray:
    """RGBA control points of the priority colormap: transparent at 0, then inferno-like."""
    anchors = np.array([[0.0, 0.0, 0.0, 0.0], [0.34, 0.06, 0.43, 0.55], [0.73, 0.21, 0.33, 0.75],
                        [0.98, 0.55, 0.04, 0.9], [0.99, 1.0, 0.64, 1.0]])
    t = np.linspace(0, 1, n)
    at = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(t, at, anchors[:, i]) for i in range(4)], axis=1)


def regions_layer(regions: Sequence[Region], *, name: str, slide: Slide, color: Sequence[float] | None = None,
                  edge_width: float | None = None) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """Rectangles of level-0 regions as a Shapes layer tuple, with method/score/rank/cycle features.

    Corners are napari ``(row, col)`` in level-0 px; the layer's ``scale`` is the µm size.
    """
    data = [np.array([[r.y, r.x], [r.y, r.x1], [r.y1, r.x1], [r.y1, r.x]], dtype=float) for r in regions]
    method = regions[0].method if regions else ""
    color = np.asarray(color if color is not None else METHOD_COLORS.get(method, (1.0, 1.0, 0.0, 1.0)), dtype=float)
    side = max((max(r.w, r.h) for r in regions), default=256)
    features = {
        "method": [r.method for r in regions],
        "score": [float(r.score) for r in regions],
        "rank": [int(r.rank) + 1 for r in regions],
        "cycle": [-1 if r.cycle is None else int(r.cycle) for r in regions],
        "uid": [r.uid or "" for r in regions],
    }
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": color,
        "face_color": "transparent",
        "edge_width": edge_width if edge_width is not None else max(2.0, side / 40),
        "features": features,
        "text": {"string": METHOD_LABELS.get(method, "{rank}: {score:.2f}"), "anchor": METHOD_ANCHORS.get(method, "upper_left"), "color": color,
                 "size": 10},
        "metadata": {"regions": list(regions)},
    }
    kwargs.update(_placement(slide))
    return data, kwargs, "shapes"


def _placement(slide: Slide) -> dict[str, Any]:
    s = slide_scale(slide)
    return {"scale": (s, s), **({"units": ("µm", "µm")} if slide.mpp else {})}


def region_labels_layer(labels: np.ndarray, box: Box, *, factor: float, name: str,
                        colors: Sequence[Sequence[int]], slide: Slide) -> tuple[np.ndarray, dict[str, Any], str]:
    """A Labels layer over one region: ``labels`` at a level of downsample ``factor``.

    ``box`` is ``(y0, x0, y1, x1)`` in label px; pixel (r, c) covers level-0
    ``[(y0 + r) f, (y0 + r + 1) f)``, centred at ``(y0 + r) f + (f - 1) / 2``.
    """
    y0, x0 = box[0], box[1]
    unit_scale = slide_scale(slide)
    kwargs = overlay_kwargs(slide, factor)
    off = kwargs["translate"][0]
    kwargs["translate"] = (y0 * factor * unit_scale + off, x0 * factor * unit_scale + off)
    kwargs.update(name=name, colormap=label_colormap(colors), opacity=0.45)
    return labels, kwargs, "labels"


def label_colormap(colors: Sequence[Sequence[int]]) -> dict[int | None, tuple[float, ...]]:
    """napari's direct label colours: value ``i + 1`` -> class i's colour; 0 transparent."""
    cmap: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i, c in enumerate(colors):
        cmap[i + 1] = (c[0] / 255, c[1] / 255, c[2] / 255, 1.0)
    return cmap
