"""Layer data tuples for napari, built without importing napari (SPEC §3).

Every layer of a slide lives in the slide's level-0 frame scaled by mpp (µm), so that a
coarse map of stride ``s`` needs ``scale = s * mpp`` and a translate of ``(s - 1) / 2``
level-0 pixels: napari places pixel centres, and map pixel (r, c) covers level-0 pixels
``[c*s, (c+1)*s)``.

Slides are laid out side by side, left to right in the session's order (:func:`slide_layout`):
each builder takes the slide's ``offset`` (world units: level-0 px × scale) and adds it to
its translate, so a slide's overlays, regions and labels move with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .geometry import Box, Region, region_to_map_box
from .wsi import Slide

__all__ = [
    "METHOD_COLORS",
    "method_rgb",
    "box_means",
    "edge_widths",
    "coarse_layer_kwargs",
    "overlay_kwargs",
    "priority_colors",
    "priority_limits",
    "label_colormap",
    "LabelPyramid",
    "region_labels_layer",
    "slide_labels_layer",
    "regions_layer",
    "slide_image_layer",
    "slide_layout",
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
    # no method's hue (tab10 above): the labeled set never reads as a method's proposals
    "accepted": (1.0, 0.92, 0.0, 1.0),
}
#: Colour of a method not in the table.
OTHER_METHOD_COLOR = (0.55, 0.34, 0.29, 1.0)


def method_rgb(method: str) -> tuple[int, int, int]:
    """A method's colour (``"accepted"``: the labeled set's) as 0-255 RGB, as QuPath stores it.

    Examples
    --------
    >>> method_rgb("standard"), method_rgb("accepted")
    ((31, 120, 181), (255, 235, 0))
    """
    r, g, b, _ = METHOD_COLORS.get(method, OTHER_METHOD_COLOR)
    return round(r * 255), round(g * 255), round(b * 255)
#: Colour of the rank printed at each box's corner.
TEXT_COLOR = (0.05, 0.05, 0.05, 1.0)


def slide_scale(slide: Slide) -> float:
    """µm per level-0 pixel, or 1 (pixel units) when the slide has no mpp."""
    return float(slide.mpp) if slide.mpp else 1.0


#: Gap between neighbouring slides, as a share of the left one's width.
SLIDE_GAP = 0.1

Offset = tuple[float, float]


def slide_layout(slides: Mapping[str, Slide], gap: float = SLIDE_GAP) -> dict[str, Offset]:
    """Where each slide sits: side by side, left to right in ``slides``' order.

    Parameters
    ----------
    slides : mapping of str to Slide
        The session's slides, in the order they were added.
    gap : float
        Space after each slide, as a share of its width (>= 0).

    Returns
    -------
    dict of str to (float, float)
        ``(y, x)`` translate of each slide in world units (level-0 px × :func:`slide_scale`).
        A slide's place depends only on the slides before it, so adding one moves no other.
    """
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    out, x = {}, 0.0
    for name, slide in slides.items():
        out[name] = (0.0, x)
        x += slide.shape[1] * slide_scale(slide) * (1 + gap)
    return out


def coarse_layer_kwargs(stride: float, unit_scale: float = 1.0, offset: Offset = (0.0, 0.0)) -> dict[str, Any]:
    """``scale`` and ``translate`` that put a map of ``stride`` level-0 px on level 0 at ``offset``."""
    centre = (stride - 1) / 2 * unit_scale
    return {"scale": (stride * unit_scale,) * 2, "translate": (offset[0] + centre, offset[1] + centre)}


def overlay_kwargs(slide: Slide, stride: float, offset: Offset = (0.0, 0.0)) -> dict[str, Any]:
    """Placement of a map of ``stride`` level-0 px over ``slide`` (scale, translate, units):
    the one placement every layer builder uses."""
    kwargs = coarse_layer_kwargs(stride, slide_scale(slide), offset)
    if slide.mpp:
        kwargs["units"] = ("µm", "µm")
    return kwargs


def slide_image_layer(slide: Slide, offset: Offset = (0.0, 0.0)) -> tuple[list, dict[str, Any], str]:
    """A multiscale RGB image layer of the slide."""
    meta = {
        "slide_path": str(slide.path),
        "mpp": slide.mpp,
        "downsamples": list(slide.downsamples),
    }
    kwargs: dict[str, Any] = {
        "name": slide.path.name,
        "multiscale": True,
        "rgb": True,
        "metadata": meta,
        "contrast_limits": (0, 255),
        **overlay_kwargs(slide, 1, offset),
    }
    return (list(slide.levels), kwargs, "image")


def tissue_labels_layer(slide: Slide, offset: Offset = (0.0, 0.0)) -> tuple[np.ndarray, dict[str, Any], str]:
    """The tissue mask as a labels layer aligned with level 0."""
    level = slide.tissue_level
    mask = slide.tissue_mask(level).astype(np.uint8)
    kwargs = overlay_kwargs(slide, slide.downsamples[level], offset)
    kwargs.update(name=f"{slide.path.name} tissue", opacity=0.3, metadata={"slide_path": str(slide.path)})
    return (mask, kwargs, "labels")


#: The least span of a priority overlay's contrast limits: a map whose tissue values differ
#: by less (a model at chance: 0.937-0.939 everywhere) stays faint instead of noise
#: stretched over the whole colour ramp.
MIN_PRIORITY_SPAN = 0.05


def priority_limits(priority: np.ndarray, tissue: np.ndarray | None = None, *, low: float = 50.0,
                    high: float = 99.5, min_span: float = MIN_PRIORITY_SPAN) -> tuple[float, float]:
    """Contrast limits of a priority overlay relative to the slide's own tissue values.

    The ``low`` percentile of the map over tissue is drawn transparent (the colormap starts
    at alpha 0), the ``high`` percentile at full colour: half the tissue stays clear and the
    most informative areas stand out, whatever the model's range (0.2-0.33 after training
    was a faint grey at fixed limits 0-1). The limits are at least ``min_span`` apart: a
    nearly flat map (an untrained model, or one at chance) is drawn clear or faint.

    Parameters
    ----------
    priority : (H, W) array
        The map; NaN where unknown.
    tissue : (H, W) bool array, optional
        Cells on tissue (default: every cell).
    low, high : float
        Percentiles (0-100, ``low < high``).
    min_span : float
        The least ``high - low`` limit (priority maps are in [0, 1]); >= 0.

    Examples
    --------
    >>> [round(v, 3) for v in priority_limits(np.array([[0.2, 0.25], [0.3, 0.9]]))]
    [0.275, 0.891]
    >>> [round(v, 3) for v in priority_limits(np.full((2, 2), 0.938))]  # a model at chance: nothing stands out
    [0.938, 0.988]
    """
    priority = np.asarray(priority)
    if priority.ndim != 2:
        raise ValueError(f"priority must be a 2-D map, got shape {priority.shape}")
    if not 0 <= low < high <= 100:
        raise ValueError(f"low and high must satisfy 0 <= low < high <= 100, got {low}, {high}")
    if not min_span >= 0:
        raise ValueError(f"min_span must be >= 0, got {min_span}")
    values = priority if tissue is None else priority[np.asarray(tissue, dtype=bool)]
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi - lo < min_span:
        hi = lo + min_span
    if hi <= lo:  # flat, and no span asked for: everything at the transparent end
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return lo, hi


def priority_colors(n: int = 9) -> np.ndarray:
    """RGBA control points of the priority colormap: transparent at 0, then inferno-like."""
    anchors = np.array([[0.0, 0.0, 0.0, 0.0], [0.34, 0.06, 0.43, 0.55], [0.73, 0.21, 0.33, 0.75],
                        [0.98, 0.55, 0.04, 0.9], [0.99, 1.0, 0.64, 1.0]])
    t = np.linspace(0, 1, n)
    at = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(t, at, anchors[:, i]) for i in range(4)], axis=1)


def box_means(priority: np.ndarray, regions: Sequence[Region], stride: int) -> np.ndarray:
    """Mean of ``priority`` over the map cells each region covers (NaN cells left out; NaN
    for a region with no known cell): a score that reads the same for any region size."""
    if priority.ndim != 2:
        raise ValueError(f"priority must be a 2-D map, got shape {priority.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    out = np.full(len(regions), np.nan)
    for i, r in enumerate(regions):
        cells = priority[region_to_map_box(r, stride, priority.shape).slices]
        known = cells[np.isfinite(cells)]
        if known.size:
            out[i] = float(known.mean())
    return out


def edge_widths(regions: Sequence[Region]) -> list[float]:
    """Border width (level-0 px) of each region's box: a 50th of its short side, so that a
    small patch is not hidden under the border of a large region."""
    return [max(1.0, min(r.w, r.h) / 50) for r in regions]


def regions_layer(regions: Sequence[Region], *, name: str, slide: Slide, offset: Offset = (0.0, 0.0),
                  color: Sequence[float] | None = None, mean: Sequence[float] | None = None, ranks: bool = True,
                  ) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """Rectangles of level-0 regions as one Shapes layer tuple, whatever their methods.

    Each shape carries ``method``, ``score`` (the selector's), ``mean`` (mean priority in
    the box, NaN where not given), ``rank`` (1 first), ``cycle`` and ``uid`` features, its
    method's edge colour (or ``color`` for all) and a border scaled to its size (:func:`edge_widths`);
    ``ranks``: the rank printed at each box's corner (text costs redraws: none for accepted regions).
    Corners are napari ``(row, col)`` in level-0 px; scale and translate place them.
    """
    data = [np.array([[r.y, r.x], [r.y, r.x1], [r.y1, r.x1], [r.y1, r.x]], dtype=float) for r in regions]
    if mean is not None and len(mean) != len(regions):
        raise ValueError(f"mean needs one value per region ({len(regions)}), got {len(mean)}")
    if color is not None:
        colors = np.tile(np.asarray(color, dtype=float), (len(regions), 1))
    else:
        colors = np.array([METHOD_COLORS.get(r.method, OTHER_METHOD_COLOR) for r in regions], dtype=float).reshape(-1, 4)
    features = {
        "method": [r.method for r in regions],
        "score": [float(r.score) for r in regions],
        "mean": [float(v) for v in mean] if mean is not None else [float("nan")] * len(regions),
        "rank": [int(r.rank) + 1 for r in regions],
        "cycle": [-1 if r.cycle is None else int(r.cycle) for r in regions],
        "uid": [r.uid or "" for r in regions],
    }
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": colors if len(regions) else "yellow",
        "face_color": "transparent",
        "edge_width": edge_widths(regions) if regions else 1.0,
        "features": features,
        # the rank only, dark on the light slide (the list has the scores): long coloured
        # "rank: score" labels of neighbouring boxes printed over each other
        "metadata": {"regions": list(regions)},
    }
    if ranks:
        kwargs["text"] = {"string": "{rank}", "anchor": "upper_left", "color": TEXT_COLOR, "size": 12}
    kwargs.update(overlay_kwargs(slide, 1, offset))
    return data, kwargs, "shapes"


def region_labels_layer(labels: np.ndarray, box: Box, *, factor: float, name: str,
                        colors: Sequence[Sequence[int]], slide: Slide, offset: Offset = (0.0, 0.0),
                        ) -> tuple[np.ndarray, dict[str, Any], str]:
    """A Labels layer over one region: ``labels`` at a level of downsample ``factor``.

    ``box`` is ``(y0, x0, y1, x1)`` in label px; pixel (r, c) covers level-0
    ``[(y0 + r) f, (y0 + r + 1) f)``, centred at ``(y0 + r) f + (f - 1) / 2``.
    """
    y0, x0 = box[0], box[1]
    unit_scale = slide_scale(slide)
    kwargs = overlay_kwargs(slide, factor, (offset[0] + y0 * factor * unit_scale, offset[1] + x0 * factor * unit_scale))
    kwargs.update(name=name, colormap=label_colormap(colors), opacity=0.45)
    return labels, kwargs, "labels"


class LabelPyramid:
    """A slide's label mask as a display pyramid of views: level k is every ``2**k``-th pixel.

    The levels read the mask itself (no copy), so what is painted anywhere shows at every
    level at once, at no memory cost. The pixels of :attr:`hidden` (a label box, or None) read
    as 0: the region being painted is drawn by its own editable layer, and drawn once.

    Parameters
    ----------
    mask : (H, W) array
        The slide's labels at the labeling level (0 unlabeled, ``i + 1`` class i).
    min_side : int
        The coarsest level is the first whose longer side is at most this (>= 1); there are
        two levels at least.

    Examples
    --------
    >>> mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    >>> pyramid = LabelPyramid(mask, min_side=2)
    >>> [level.shape for level in pyramid.levels]
    [(4, 4), (2, 2)]
    >>> pyramid.hidden = (0, 0, 2, 2)
    >>> pyramid.levels[1][:, :]
    array([[ 0,  2],
           [ 8, 10]], dtype=uint8)
    """

    def __init__(self, mask: np.ndarray, *, min_side: int = 512) -> None:
        if np.ndim(mask) != 2:
            raise ValueError(f"mask must be 2-D, got shape {np.shape(mask)}")
        if min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side}")
        self.mask = mask
        self.hidden: Box | None = None
        steps = [1]
        while len(steps) < 2 or max(mask.shape) > min_side * steps[-1]:  # napari unwraps a one-level list
            steps.append(2 * steps[-1])
        self.levels = [_PyramidLevel(self, step) for step in steps]


class _PyramidLevel:
    """One level of a :class:`LabelPyramid`: what napari reads (shape, dtype, slicing)."""

    def __init__(self, pyramid: LabelPyramid, step: int) -> None:
        self._pyramid, self.step = pyramid, step
        h, w = pyramid.mask.shape
        self.shape = (-(-h // step), -(-w // step))
        self.dtype = pyramid.mask.dtype
        self.ndim = 2
        self.size = self.shape[0] * self.shape[1]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (2 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2 or not all(isinstance(k, (slice, int, np.integer)) for k in key):
            raise TypeError(f"a label pyramid level takes int and slice keys, got {key!r}")
        s = self.step
        out = np.array(self._pyramid.mask[::s, ::s][key], copy=True)
        hidden = self._pyramid.hidden
        if hidden is not None:
            y0, x0, y1, x1 = hidden
            rows = np.arange(self.shape[0])[key[0]] * s  # label px of each row read (scalar for an int key)
            cols = np.arange(self.shape[1])[key[1]] * s
            out[np.logical_and.outer((rows >= y0) & (rows < y1), (cols >= x0) & (cols < x1)).reshape(out.shape)] = 0
        return out if out.ndim else out[()]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def slide_labels_layer(pyramid: LabelPyramid, *, factor: float, name: str, colors: Sequence[Sequence[int]],
                       slide: Slide, offset: Offset = (0.0, 0.0)) -> tuple[list, dict[str, Any], str]:
    """A multiscale Labels layer of a slide's labels (``pyramid`` at a level of downsample
    ``factor``), read-only: one layer for every region, however many there are."""
    kwargs = overlay_kwargs(slide, factor, offset)
    kwargs.update(name=name, colormap=label_colormap(colors), opacity=0.45, multiscale=True)
    return pyramid.levels, kwargs, "labels"


def label_colormap(colors: Sequence[Sequence[int]]) -> dict[int | None, tuple[float, ...]]:
    """napari's direct label colours: value ``i + 1`` -> class i's colour; 0 transparent."""
    cmap: dict[int | None, tuple[float, ...]] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for i, c in enumerate(colors):
        cmap[i + 1] = (c[0] / 255, c[1] / 255, c[2] / 255, 1.0)
    return cmap
