"""Layer builders (no napari): placement of slides side by side, region boxes, overlay ranges."""

from __future__ import annotations

import numpy as np
import pytest

from napari_alregions.geometry import Region
from napari_alregions.layers import (
    METHOD_COLORS,
    MIN_PRIORITY_SPAN,
    LabelPyramid,
    box_means,
    edge_widths,
    overlay_kwargs,
    priority_limits,
    region_labels_layer,
    regions_layer,
    slide_image_layer,
    slide_labels_layer,
    slide_layout,
    tissue_labels_layer,
)


class _Slide:
    """What the builders read of a slide: shape (level 0) and mpp."""

    def __init__(self, h: int, w: int, mpp: float | None) -> None:
        self.shape, self.mpp = (h, w), mpp


def test_slide_layout_puts_slides_side_by_side_and_adding_one_moves_no_other():
    a, b, c = _Slide(1000, 2000, 0.5), _Slide(3000, 1000, 0.25), _Slide(10, 10, None)
    # world widths: 1000 µm, 250 µm, 10 px; gap 10 % of the slide on the left
    assert slide_layout({"a": a, "b": b}) == {"a": (0.0, 0.0), "b": (0.0, 1100.0)}
    assert slide_layout({"a": a, "b": b, "c": c}) == {"a": (0.0, 0.0), "b": (0.0, 1100.0), "c": (0.0, 1375.0)}
    assert slide_layout({}) == {}
    with pytest.raises(ValueError, match="gap"):
        slide_layout({"a": a}, gap=-1)


def test_every_builder_adds_the_slide_offset(slide):
    off = (7.0, 1234.5)
    base = overlay_kwargs(slide, 64)
    moved = overlay_kwargs(slide, 64, off)
    np.testing.assert_allclose(np.subtract(moved["translate"], base["translate"]), off)
    assert moved["scale"] == base["scale"]
    _, image, _ = slide_image_layer(slide, off)
    np.testing.assert_allclose(image["translate"], off)  # level 0: pixel centres at the slide's origin
    _, tissue, _ = tissue_labels_layer(slide, off)
    np.testing.assert_allclose(np.subtract(tissue["translate"], tissue_labels_layer(slide)[1]["translate"]), off)
    region = Region(128, 256, 64, 64, method="random", slide="s")
    _, boxes, _ = regions_layer([region], name="r", slide=slide, offset=off)
    np.testing.assert_allclose(boxes["translate"], off)
    labels = np.zeros((32, 32), np.uint8)
    _, lab, _ = region_labels_layer(labels, (128, 64, 160, 96), factor=2.0, name="l", colors=[(0, 0, 0), (255, 0, 0)],
                                    slide=slide, offset=off)
    s = slide.mpp
    # label px (r, c) of the box covers level-0 [(y0 + r) f, ...): centre (y0 f + (f - 1) / 2) µm, plus the offset
    np.testing.assert_allclose(lab["translate"], (off[0] + (128 * 2 + 0.5) * s, off[1] + (64 * 2 + 0.5) * s))


def test_regions_layer_one_layer_many_methods():
    slide = _Slide(4096, 4096, 0.5)
    regions = [Region(0, 0, 1024, 1024, score=3.0, method="adaptive", rank=0, uid="a"),
               Region(0, 0, 128, 128, score=1.0, method="top_patches", rank=1, uid="b")]
    data, kwargs, kind = regions_layer(regions, name="s proposals", slide=slide, mean=[0.5, 0.25])
    assert kind == "shapes" and len(data) == 2
    np.testing.assert_allclose(kwargs["edge_color"], [METHOD_COLORS["adaptive"], METHOD_COLORS["top_patches"]])
    # each border a 50th of its own box's short side: the small patch is not buried under a 20-px border
    assert kwargs["edge_width"] == [1024 / 50, 128 / 50] == edge_widths(regions)
    assert kwargs["features"]["mean"] == [0.5, 0.25] and kwargs["features"]["rank"] == [1, 2]
    assert kwargs["features"]["uid"] == ["a", "b"]
    with pytest.raises(ValueError, match="mean"):
        regions_layer(regions, name="x", slide=slide, mean=[0.5])
    _, empty, _ = regions_layer([], name="x", slide=slide)
    assert empty["features"]["method"] == []


def test_box_means_is_the_mean_of_the_covered_cells():
    priority = np.arange(16, dtype=float).reshape(4, 4)
    priority[0, 0] = np.nan
    regions = [Region(0, 0, 20, 20), Region(10, 10, 10, 10), Region(30, 30, 10, 10), Region(0, 0, 10, 10)]
    # stride 10: cells [0:2, 0:2] (one NaN) -> mean(1, 4, 5); cell (1, 1); (3, 3); only the NaN cell
    got = box_means(priority, regions, 10)
    np.testing.assert_allclose(got[:3], [(1 + 4 + 5) / 3, 5.0, 15.0])
    assert np.isnan(got[3])
    with pytest.raises(ValueError, match="stride"):
        box_means(priority, regions, 0)


def test_priority_limits_follow_the_tissue_values():
    rng = np.random.default_rng(0)
    priority = rng.uniform(0.2, 0.33, (50, 50))
    tissue = np.zeros((50, 50), bool)
    tissue[10:40, 10:40] = True
    priority[~tissue] = 0.9  # off tissue: not part of the range
    lo, hi = priority_limits(priority, tissue)
    on = priority[tissue]
    assert lo == pytest.approx(np.median(on)) and hi == pytest.approx(np.percentile(on, 99.5))
    assert 0.2 < lo < hi < 0.33
    # an untrained model's flat map: everything at the transparent end
    lo, hi = priority_limits(np.full((5, 5), 0.7))
    assert lo == pytest.approx(0.7) and hi == pytest.approx(0.75)
    # a model at chance: tissue values within 0.002 are not stretched over the ramp
    near_flat = rng.uniform(0.937, 0.939, (50, 50))
    lo, hi = priority_limits(near_flat)
    assert lo == pytest.approx(np.median(near_flat)) and hi == pytest.approx(lo + MIN_PRIORITY_SPAN)
    assert priority_limits(np.full((5, 5), 0.7), min_span=0)[1] > 0.7  # flat still has two limits
    with pytest.raises(ValueError, match="min_span"):
        priority_limits(priority, min_span=-1)
    assert priority_limits(np.full((3, 3), np.nan)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="low and high"):
        priority_limits(priority, low=60, high=50)


def test_label_pyramid_levels_are_strided_views_with_the_painted_region_left_out():
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 3, (37, 50)).astype(np.uint8)
    pyramid = LabelPyramid(mask, min_side=5)
    # halved until the longer side fits 5 px: 50, 25, 13, 7, 4
    assert [lv.shape for lv in pyramid.levels] == [(37, 50), (19, 25), (10, 13), (5, 7), (3, 4)]
    assert [lv.step for lv in pyramid.levels] == [1, 2, 4, 8, 16]
    pyramid.hidden = (3, 7, 20, 31)  # label px (y0, x0, y1, x1) of the region being painted
    expected = mask.copy()
    expected[3:20, 7:31] = 0
    keys = [(slice(None), slice(None)), (slice(2, 9), slice(1, 17, 2)), (1, slice(None)), (Ellipsis, 2), (slice(0, 3),)]
    for level in pyramid.levels:
        ref = expected[:: level.step, :: level.step]  # brute force: every step-th pixel, the box cleared
        for key in keys:
            np.testing.assert_array_equal(level[key], ref[key])
        assert level[1, 2] == ref[1, 2]
        np.testing.assert_array_equal(np.asarray(level), ref)
    # views, not copies: what is painted in the mask shows at every level at once
    pyramid.hidden = None
    mask[32, 48] = 2
    assert pyramid.levels[1][16, 24] == 2 and pyramid.levels[4][2, 3] == 2
    with pytest.raises(TypeError, match="int and slice"):
        pyramid.levels[0][np.array([0, 1])]
    with pytest.raises(ValueError, match="mask"):
        LabelPyramid(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="min_side"):
        LabelPyramid(mask, min_side=0)
    assert len(LabelPyramid(np.zeros((3, 3), np.uint8)).levels) == 2  # napari takes one level for no pyramid


def test_slide_labels_layer_lies_over_the_labeling_level(slide):
    pyramid = LabelPyramid(np.zeros((64, 64), np.uint8))
    off = (0.0, 100.0)
    data, kwargs, kind = slide_labels_layer(pyramid, factor=4.0, name="s labels", colors=[(0, 0, 0), (255, 0, 0)],
                                            slide=slide, offset=off)
    s = slide.mpp
    assert kind == "labels" and kwargs["multiscale"] and data is pyramid.levels
    # label px (r, c) covers level-0 [r f, (r + 1) f): centre r f + (f - 1) / 2
    np.testing.assert_allclose(kwargs["scale"], (4 * s, 4 * s))
    np.testing.assert_allclose(kwargs["translate"], (1.5 * s, 100.0 + 1.5 * s))
    assert kwargs["colormap"][2] == (1.0, 0.0, 0.0, 1.0) and kwargs["colormap"][0][3] == 0.0
