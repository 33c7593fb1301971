"""Layer data tuples for napari, built without importing napari (SPEC §3).

Every layer of a slide lives in the slide's level-0 frame scaled by mpp (µm), so that a
coarse map of stride ``s`` needs ``scale = s * mpp`` and a translate of ``(s - 1) / 2``
level-0 pixels: napari places pixel centres, and map pixel (r, c) covers level-0 pixels
``[c*s, (c+1)*s)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .wsi import Slide

__all__ = ["coarse_layer_kwargs", "slide_image_layer", "tissue_labels_layer"]


def slide_scale(slide: Slide) -> float:
    """µm per level-0 pixel, or 1 (pixel units) when the slide has no mpp."""
    return float(slide.mpp) if slide.mpp else 1.0


def coarse_layer_kwargs(stride: float, unit_scale: float = 1.0) -> dict[str, Any]:
    """``scale`` and ``translate`` that put a map of ``stride`` level-0 px on level 0."""
    offset = (stride - 1) / 2 * unit_scale
    return {"scale": (stride * unit_scale,) * 2, "translate": (offset, offset)}


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
