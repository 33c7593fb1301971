from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_alregions.geometry import MapBox, Region, overlaps, region_to_map_box
from napari_alregions.selection import METHODS, select
from napari_alregions.selection.adaptive import adaptive
from napari_alregions.selection.diversity import diversity_pool
from napari_alregions.selection.focannot import focannot_grid, wasserstein_sorted
from napari_alregions.selection.nonsquare import nonsquare_shapes


# -- brute-force references (plain loops, independent of the implementation) ------------------
def brute_window_sums(p: np.ndarray, h: int, w: int) -> np.ndarray:
    H, W = p.shape
    out = np.zeros((H - h + 1, W - w + 1))
    for r in range(H - h + 1):
        for c in range(W - w + 1):
            out[r, c] = p[r : r + h, c : c + w].sum()
    return out


def brute_greedy(p, shapes, k, blocked=()):
    """Score every window, sort, suppress overlaps. Ties (to 1e-9): row, col, shape order."""
    cands = []
    for si, (h, w) in enumerate(shapes):
        if h > p.shape[0] or w > p.shape[1]:
            continue
        sums = brute_window_sums(p, h, w)
        for (r, c), s in np.ndenumerate(sums):
            cands.append((-round(s, 9), r, c, si, h, w))
    cands.sort()
    picks, taken = [], list(blocked)
    for neg, r, c, _si, h, w in cands:
        if len(picks) == k or -neg <= 0:
            break
        box = MapBox(r, c, r + h, c + w)
        if any(box.overlaps(t) for t in taken):
            continue
        picks.append((box, -neg))
        taken.append(box)
    return picks


def as_boxes(regions, stride):
    return [(r.y // stride, r.x // stride, r.y1 // stride, r.x1 // stride) for r in regions]


@pytest.mark.parametrize("seed", range(12))
def test_standard_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    H, W = rng.integers(6, 28, 2)
    p = rng.random((H, W)) ** 3
    if seed % 3 == 0:
        p[p < 0.4] = 0  # sparse maps create exact ties
    l_map = int(rng.integers(2, 7))
    annotated = [Region(2 * 16, 3 * 16, 4 * 16, 2 * 16)] if seed % 2 else []
    blocked = [region_to_map_box(r, 16, p.shape) for r in annotated]
    p_ref = p.copy()
    for b in blocked:
        p_ref[b.slices] = 0
    k = int(rng.integers(1, 6))
    got = select("standard", p, stride=16, region_size=16 * l_map, k=k, annotated=annotated)
    ref = brute_greedy(p_ref, [(l_map, l_map)], k, blocked)
    assert as_boxes(got, 16) == [(b.r0, b.c0, b.r1, b.c1) for b, _ in ref]
    np.testing.assert_allclose([r.score for r in got], [s for _, s in ref])


@pytest.mark.parametrize("seed", range(8))
def test_standard_nonsquare_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    p = rng.random(tuple(rng.integers(10, 26, 2))) ** 2
    stride, l_map = 128, 6
    shapes = nonsquare_shapes(l_map, stride)
    got = select("standard_nonsquare", p, stride=stride, region_size=stride * l_map, k=4)
    ref = brute_greedy(p, shapes, 4)
    assert as_boxes(got, stride) == [(b.r0, b.c0, b.r1, b.c1) for b, _ in ref]


@pytest.mark.parametrize("seed", range(10))
def test_every_search_matches_brute_force(seed):
    """The dense scan, the branch and bound (alone, with small initial blocks, and
    switching to the dense scan part way) and the automatic choice: same picks, same tie
    order, on plateaus, noise and sparse maps with exact ties."""
    from napari_alregions.selection._common import greedy_windows

    rng = np.random.default_rng(500 + seed)
    H, W = rng.integers(8, 30, 2)
    kind = seed % 3
    p = np.full((H, W), 0.25) if kind == 0 else rng.random((H, W))  # plateau, noise,
    if kind == 2:
        p[p < 0.5] = 0  # sparse with exact ties
    shapes = [(3, 3), (2, 5), (5, 2)] if seed % 2 else [(4, 4)]
    blocked = [MapBox(2, 3, 5, 7)] if seed % 4 == 1 else []
    k = int(rng.integers(1, 7))
    ref = brute_greedy(p, shapes, k, blocked)
    never = np.iinfo(np.int64).max
    for kw in ({"search": "dense"}, {"search": "bound", "dense_after": never},
               {"search": "bound", "dense_after": never, "coarse": 4}, {"search": "bound", "dense_after": 0},
               {"search": "bound", "dense_after": 40, "coarse": 4}, {}):
        got = greedy_windows(p, shapes, k, blocked, **kw)
        assert [b for b, _ in got] == [b for b, _ in ref], kw
        np.testing.assert_allclose([v for _, v in got], [v for _, v in ref])


def test_the_rule_between_dense_scan_and_branch_and_bound():
    """Dense on small maps whatever they hold; on large ones the bound only where the
    initial blocks' bounds prune: sparse maps, or several shapes on a map that is not
    alike everywhere (docs/design.md has the measurements)."""
    from napari_alregions.selection._common import choose_search

    rng = np.random.default_rng(0)
    sparse = np.zeros((2100, 2100))
    sparse[1000:1008, 300:308] = 1.0
    noise = rng.random((2100, 2100))
    lesion = np.zeros((2100, 2100))
    lesion[:, :1000] = rng.random((2100, 1000))  # half the blocks hold priority
    lesion[500:600, 500:600] += 5.0
    ns = nonsquare_shapes(64, 256)
    assert choose_search(sparse[:1000, :1000], [(4, 4)]) == "dense"  # < 2**22 windows
    assert choose_search(sparse, [(4, 4)]) == "bound"
    assert choose_search(noise, [(4, 4)]) == choose_search(lesion, [(4, 4)]) == "dense"
    assert choose_search(lesion, ns) == "bound"  # l = 64: tight bounds, one hotspot
    assert choose_search(noise, ns) == "dense"  # every bound alike
    assert choose_search(lesion, nonsquare_shapes(16, 256)) == "dense"  # windows 8-16 px: weak bounds


def test_nonsquare_shapes_have_area_l2_and_both_orientations():
    shapes = nonsquare_shapes(32, 256)  # l = 8192 level-0 px, as in the paper's Fig. 2
    widths = sorted({w for _, w in shapes})
    assert widths[0] == 16 and widths[-1] == 64  # 4096..8192 and the transposed heights
    assert (32, 32) in shapes and shapes.count((32, 32)) == 1
    for h, w in shapes:
        assert (w, h) in shapes
        assert abs(h * w - 32 * 32) <= 32  # area within one row of l²
    assert len(shapes) == 2 * 17 - 1
    # coarser stride: steps of 256 px are sub-pixel -> consecutive map widths
    coarse = nonsquare_shapes(8, 512)
    assert sorted({min(hw) for hw in coarse}) == [4, 5, 6, 7, 8]
    assert sorted({max(hw) for hw in coarse}) == [8, 9, 11, 13, 16]  # round(64 / w)


# -- regressions for defects of the published reference code ---------------------------------
def test_windows_at_row_and_col_zero_are_scored():
    """Reference code shifted the integral image by one: windows at row/col 0 never won."""
    p = np.zeros((20, 20))
    p[0:4, 0:4] = 1.0
    [r] = select("standard", p, stride=1, region_size=4, k=1)
    assert (r.x, r.y, r.w, r.h, r.score) == (0, 0, 4, 4, 16.0)
    [r] = select("standard_nonsquare", p, stride=1, region_size=4, k=1)
    assert (r.x, r.y) == (0, 0) and r.score == 16.0


def test_annotated_regions_do_not_swallow_the_best_new_region():
    """Reference code gave annotated pixels infinite priority, so a pick could be a window
    over annotated pixels that was then dropped, losing the best new region."""
    p = np.zeros((30, 30))
    p[0:5, 0:5] = 1.0  # already annotated
    p[10:15, 20:25] = 0.5  # the best new region
    p[25:30, 0:5] = 0.2
    annotated = [Region(0, 0, 5, 5)]
    got = select("standard", p, stride=1, region_size=5, k=2, annotated=annotated)
    assert as_boxes(got, 1) == [(10, 20, 15, 25), (25, 0, 30, 5)]


def _check_exact(p, l_map, k, annotated=(), *, expect=None):
    """standard and standard_nonsquare (through select) and the branch and bound alone
    against the brute force; ``expect``: the standard boxes, by hand."""
    from napari_alregions.selection._common import greedy_windows

    blocked = [region_to_map_box(r, 1, p.shape) for r in annotated]
    p_ref = np.nan_to_num(p)
    for b in blocked:
        p_ref[b.slices] = 0
    for method, shapes in (("standard", [(l_map, l_map)]), ("standard_nonsquare", nonsquare_shapes(l_map, 1, 1))):
        ref = brute_greedy(p_ref, shapes, k, blocked)
        want = [(b.r0, b.c0, b.r1, b.c1) for b, _ in ref]
        got = select(method, p, stride=1, region_size=l_map, k=k, annotated=annotated, **({"width_step": 1} if shapes != [(l_map, l_map)] else {}))
        assert as_boxes(got, 1) == want, method
        np.testing.assert_allclose([r.score for r in got], [v for _, v in ref])
        for r in got:
            assert not any(overlaps(r, a) for a in annotated)
        bound = greedy_windows(p_ref, shapes, k, blocked, search="bound", coarse=4, dense_after=np.iinfo(np.int64).max)
        assert [b for b, _ in bound] == [b for b, _ in ref], method
        if method == "standard" and expect is not None:
            assert want == expect


def test_priority_only_in_row_0_or_column_0():
    """Published code scored no window at row or column 0."""
    rng = np.random.default_rng(0)
    row = np.zeros((24, 30))
    row[0] = rng.random(30)
    _check_exact(row, 5, 3)
    col = np.zeros((30, 24))
    col[:, 0] = rng.random(30)
    _check_exact(col, 5, 3)
    [r] = select("standard", row, stride=1, region_size=5, k=1)
    assert r.y == 0


def test_hotspot_in_the_far_corner():
    """The last window row and column exist (no off-by-one at the far border)."""
    p = np.zeros((23, 31))
    p[-3:, -3:] = 1.0
    _check_exact(p, 6, 2, expect=[(23 - 6, 31 - 6, 23, 31)])


def test_two_touching_hotspots_are_both_taken():
    """Boxes that touch do not overlap: the second hotspot is not suppressed."""
    p = np.zeros((20, 24))
    p[5:9, 5:9] = 1.0
    p[5:9, 9:13] = 0.9
    _check_exact(p, 4, 2, expect=[(5, 5, 9, 9), (5, 9, 9, 13)])


def test_touching_and_non_square_annotated_boxes_are_never_re_proposed():
    """Published code suppressed a fixed l x l neighbourhood around old boxes, so it
    re-proposed parts of two touching boxes, and of a box that is not l x l."""
    p = np.zeros((30, 30))
    p[2:8, 2:14] = 1.0  # covered by two touching annotated 6 x 6 boxes
    p[15:18, 3:20] = 0.8  # covered by a 3 x 17 annotated box
    p[22:28, 22:28] = 0.3
    p += 0.01 * np.random.default_rng(1).random(p.shape)
    annotated = [Region(2, 2, 6, 6), Region(8, 2, 6, 6), Region(3, 15, 17, 3)]
    _check_exact(p, 6, 3, annotated)
    got = select("standard", p, stride=1, region_size=6, k=1, annotated=annotated)
    assert as_boxes(got, 1) == [(22, 22, 28, 28)]


def test_one_nan_at_the_origin_counts_as_zero():
    """A NaN in a cumulative sum makes every later sum NaN: published code then ranked
    windows by NaN (0.006 of the optimal priority)."""
    p = np.random.default_rng(2).random((20, 26)) ** 4
    p[0, 0] = np.nan
    _check_exact(p, 4, 4)


def test_all_zero_map_gives_no_regions():
    zeros = np.zeros((24, 24))
    _check_exact(zeros, 4, 3, expect=[])
    for method in ("adaptive", "top_patches", "prototype"):
        assert select(method, zeros, stride=1, region_size=4, k=3) == [], method
    rows, cols = focannot_grid(zeros.shape, 4, 0.5)
    assert select("focannot", zeros, stride=1, region_size=4, k=3, descriptors=np.ones((rows.size, cols.size, 2))) == []


def test_adaptive_seed_on_a_plateau():
    """The seed of a plateau (its first pixel in row-major order, a corner) must find
    its own component: the box is the plateau's bounding box."""
    p = np.zeros((40, 40))
    p[12:21, 7:16] = 0.5  # 9 x 9 plateau: every pixel is a maximum
    p[30:34, 30:34] = 0.2
    [r] = adaptive(p, stride=1, region_size=10, k=1)
    assert (r.y, r.x, r.h, r.w) == (12, 7, 9, 9)
    assert r.score == pytest.approx(p[12:21, 7:16].sum())


def test_adaptive_seed_on_component_border():
    """Reference code found the seed's component by polygon containment, which misses
    seeds on the border of the component's polygon."""
    p = np.zeros((40, 40))
    p[10:20, 10:20] = 0.6  # component
    p[10, 10] = 0.61  # ... whose highest pixel is its corner, on the border
    p[10, 11] = 0.61
    p[11, 10] = 0.61
    p[11, 11] = 0.61  # 2x2 so that the median filter keeps it
    [r] = adaptive(p, stride=1, region_size=10, k=1)
    assert (r.x, r.y) == (10, 10) and (r.w, r.h) == (10, 10)


def test_adaptive_hotspot_at_origin_is_found():
    """Reference code used (x, y) == (0, 0) to mean 'not found'."""
    p = np.zeros((40, 40))
    p[0:4, 0:4] = 1.0
    [r] = adaptive(p, stride=1, region_size=6, k=1)
    assert (r.x, r.y) == (0, 0)
    assert r.w * r.h >= 9


# -- adaptive on hand-made maps ------------------------------------------------------------------
def test_adaptive_two_hotspots_give_matching_boxes():
    p = np.zeros((100, 100))
    p[10:30, 60:86] = 1.0  # large: 20 x 26
    p[70:79, 20:28] = 0.9  # small: 9 x 8
    # l = 16: box areas between 8² and 24² are accepted; both hotspots fit as they are
    got = adaptive(p, stride=256, region_size=16 * 256, k=2)
    assert as_boxes(got, 256) == [(10, 60, 30, 86), (70, 20, 79, 28)]


def test_adaptive_isolated_hotspot_gives_half_size_box():
    p = np.zeros((64, 64))
    p[29:32, 39:42] = 1.0  # 3x3 hotspot: the median filter keeps its centre cross
    [r] = adaptive(p, stride=256, region_size=16 * 256, k=1)
    box = as_boxes([r], 256)[0]
    assert (box[2] - box[0], box[3] - box[1]) == (8, 8)  # l/2 on each side
    # the fallback centres the box on the seed, the cross's top pixel (29, 40)
    assert box == (29 - 4, 40 - 4, 29 + 4, 40 + 4)


def test_adaptive_single_pixel_is_an_outlier():
    """The 3x3 median filter (paper: 'to remove outliers') removes a lone pixel."""
    p = np.zeros((64, 64))
    p[30, 40] = 1.0
    assert adaptive(p, stride=1, region_size=16, k=1) == []


def test_adaptive_thin_strip_is_accepted_not_a_fallback():
    p = np.zeros((64, 200))
    p[30:33, 20:140] = 1.0  # 3 x 120: area 360 within [(l/2)², (3l/2)²] for l = 20
    [r] = adaptive(p, stride=1, region_size=20, k=1)
    assert (r.y, r.x, r.h, r.w) == (30, 20, 3, 120)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (7, 9), (31, 30)])
def test_median3x3_equals_scipy(shape):
    from scipy import ndimage

    from napari_alregions.selection.adaptive import median3x3

    rng = np.random.default_rng(0)
    for a in (rng.random(shape), rng.integers(0, 3, shape).astype(float)):
        expected = ndimage.median_filter(a, 3, mode="nearest")
        np.testing.assert_array_equal(median3x3(a), expected)
        np.testing.assert_array_equal(median3x3(a, band=4), expected)  # several row bands


@pytest.mark.parametrize("with_tissue", [False, True])
def test_top_percentiles_track_np_percentile_as_boxes_are_zeroed(with_tissue):
    from napari_alregions.selection.adaptive import _TopPercentiles

    rng = np.random.default_rng(3)
    m = rng.random((60, 70)).astype(np.float32)
    m[m < 0.3] = 0.0
    m[10:20, 10:20] = 1.0  # a plateau of ties
    tissue = rng.random(m.shape) < 0.7 if with_tissue else None
    pct = _TopPercentiles(m, tissue, 98.0)
    for box in [MapBox(10, 10, 20, 20), MapBox(0, 0, 60, 5), MapBox(30, 30, 60, 70)] * 2:
        m[box.slices] = 0.0
        pct.zero_box(box)
        values = m[tissue] if with_tissue else m.ravel()
        for q in (98.0, 98.7, 99.5, 100.0):
            assert pct(q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


def test_adaptive_stops_when_nothing_is_left():
    p = np.zeros((50, 50))
    p[5:10, 5:10] = 1.0
    got = adaptive(p, stride=1, region_size=8, k=5)
    assert len(got) == 1


# -- properties of every selector ----------------------------------------------------------------
def _options(method, shape, l_map, rng):
    if method == "diversity":
        return {"embeddings": rng.random((shape[0] // l_map, shape[1] // l_map, 4))}
    if method == "focannot":
        rows, cols = focannot_grid(shape, l_map, 0.5)
        return {"descriptors": rng.random((rows.size, cols.size, 4))}
    return {}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(list(METHODS)),
    h=st.integers(4, 40),
    w=st.integers(4, 40),
    l_map=st.integers(2, 8),
    k=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    sparse=st.booleans(),
    with_annotated=st.booleans(),
)
def test_every_selector_returns_valid_regions(method, h, w, l_map, k, seed, sparse, with_annotated):
    rng = np.random.default_rng(seed)
    stride = 64
    p = rng.random((h, w))
    if sparse:
        p[p < 0.8] = 0
    tissue = rng.random((h, w)) < 0.8
    annotated = []
    if with_annotated:
        ax, ay = rng.integers(0, max(1, w - 2)), rng.integers(0, max(1, h - 2))
        annotated = [Region(int(ax) * stride, int(ay) * stride, 2 * stride, 3 * stride)]
    kwargs = dict(stride=stride, region_size=l_map * stride, k=k, tissue=tissue, annotated=annotated)
    opts = _options(method, (h, w), l_map, np.random.default_rng(seed))
    got = select(method, p, seed=seed, **kwargs, **opts)
    assert len(got) <= k
    for r in got:
        assert 0 <= r.x and 0 <= r.y and r.x1 <= w * stride and r.y1 <= h * stride
        assert not any(overlaps(r, a) for a in annotated)
    for a, b in itertools.combinations(got, 2):
        assert not overlaps(a, b)
    assert [r.rank for r in got] == list(range(len(got)))
    again = select(method, p, seed=seed, **kwargs, **opts)
    assert again == got


def test_random_regions_have_enough_tissue():
    rng = np.random.default_rng(0)
    tissue = np.zeros((60, 60), bool)
    tissue[10:30, 10:50] = True
    p = rng.random((60, 60))
    got = select("random", p, stride=1, region_size=10, k=8, tissue=tissue, seed=3)
    assert len(got) == 8
    for r in got:
        assert tissue[r.y : r.y1, r.x : r.x1].mean() >= 0.1
    assert select("random", p, stride=1, region_size=10, k=8, tissue=tissue, seed=3) == got
    assert select("random", p, stride=1, region_size=10, k=8, tissue=tissue, seed=4) != got


def test_random_returns_fewer_when_the_slide_is_full():
    p = np.ones((20, 20))
    got = select("random", p, stride=1, region_size=10, k=10, seed=0)
    assert 1 <= len(got) <= 4


def test_top_patches_skips_background_cells():
    p = np.zeros((40, 40))
    p[0:10, 0:10] = 1.0  # best cell, but 80 % background
    p[10:20, 10:20] = 0.5
    p[20:30, 20:30] = 0.25
    tissue = np.ones((40, 40), bool)
    tissue[0:10, 0:10] = False
    tissue[0:2, 0:10] = True  # 20 % tissue
    got = select("top_patches", p, stride=1, region_size=10, k=3, tissue=tissue)
    assert as_boxes(got, 1) == [(10, 10, 20, 20), (20, 20, 30, 30)]


def test_prototype_uses_clipped_similarity():
    sim = np.full((30, 30), -0.5)
    sim[5:10, 20:25] = 0.9
    [r] = select("prototype", sim, stride=1, region_size=5, k=1)
    assert (r.x, r.y, r.method) == (20, 5, "prototype_standard")
    [r] = select("prototype", sim, stride=1, region_size=5, k=1, base="adaptive")
    assert r.method == "prototype_adaptive" and overlaps(r, Region(20, 5, 5, 5))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        select("prototype", sim * 3, stride=1, region_size=5, k=1)


def test_diversity_picks_one_region_per_planted_cluster():
    rng = np.random.default_rng(1)
    centres = np.eye(4) * 10  # four well-separated clusters
    slides = []
    for _ in range(2):
        labels = rng.integers(0, 4, (6, 6))
        slides.append(centres[labels] + rng.normal(0, 0.1, (6, 6, 4)))
    picks = diversity_pool(slides, stride=1, region_size=5, n_per_slide=2, rng=0)
    assert [len(p) for p in picks] == [2, 2]
    found = set()
    for emb, regions in zip(slides, picks, strict=True):
        for r in regions:
            found.add(int(np.argmax(emb[r.y // 5, r.x // 5])))
    assert found == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="exceed"):
        diversity_pool(slides, stride=1, region_size=5, n_per_slide=40, rng=0)
    with pytest.raises(ValueError, match="same dimension"):
        diversity_pool([slides[0], slides[1][..., :3]], stride=1, region_size=5, n_per_slide=1)


def test_wasserstein_sorted_is_the_best_permutation():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5)), rng.random((2, 5))
    w = wasserstein_sorted(a, b)
    for i, j in itertools.product(range(3), range(2)):
        best = min(((a[i] - b[j][list(perm)]) ** 2).sum() for perm in itertools.permutations(range(5)))
        assert w[i, j] == pytest.approx(best)


def _focannot_setup(shape=(40, 40), l_map=10):
    rows, cols = focannot_grid(shape, l_map, 0.5)
    return rows, cols, np.zeros((rows.size, cols.size, 4))


def test_focannot_reweights_uncertainty_by_diversity():
    """One cluster: among the Q = 3k most uncertain patches, the novel one ranks first."""
    rows, cols, desc = _focannot_setup()
    p = np.full((40, 40), 0.1)
    p[0:10, 0:10] = 1.0  # patch (0, 0): most uncertain
    p[30:40, 30:40] = 0.9  # patch (6, 6): second, with a novel descriptor
    desc[6, 6] = [5.0, 0, 0, 0]
    opts = dict(stride=1, region_size=10, k=1, n_clusters=1, candidates_factor=3, seed=0)
    # hand-computed: W2 (sorted values) is 25 between the novel patch and each other
    # candidate, 0 otherwise; S = IU * mean W2 = 1.0 * 12.5, 0.9 * 25, 0.55 * 12.5
    got = select("focannot", p, descriptors=desc, **opts)
    assert as_boxes(got, 1) == [(30, 30, 40, 40)]
    assert got[0].score == pytest.approx(0.9 * 25)
    # IU alone (identical descriptors) keeps the most uncertain patch
    got = select("focannot", p, descriptors=np.zeros_like(desc), **opts)
    assert as_boxes(got, 1) == [(0, 0, 10, 10)]


def test_focannot_cluster_importance_sets_quotas():
    """λ = 1: the spread-out cluster (high CU) gets the single pick despite lower IU."""
    rows, cols, desc = _focannot_setup()
    rng = np.random.default_rng(0)
    left = cols[None, :] < 15
    desc[:] = np.where(left[..., None], [100.0, 0, 0, 0], [0, 100.0, 0, 0])
    desc += np.where(left[..., None], rng.normal(0, 3.0, desc.shape), rng.normal(0, 0.01, desc.shape))
    p = np.full((40, 40), 0.2)
    p[:, 25:] = 0.9  # the compact (right) cluster is more uncertain
    got = select("focannot", p, stride=1, region_size=10, k=1, descriptors=desc, n_clusters=2, lam=1.0, seed=0)
    assert got[0].x < 15 + 10
    got = select("focannot", p, stride=1, region_size=10, k=1, descriptors=desc, n_clusters=2, lam=0.0, seed=0)
    assert len(got) == 1  # λ = 0: equal CD, a tie broken by the lower cluster index


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["standard", "standard_nonsquare", "adaptive", "top_patches", "random"])
def test_defined_results_for_degenerate_maps(method):
    zeros = np.zeros((20, 20))
    assert (select(method, zeros, stride=1, region_size=4, k=3, seed=0) == []) == (method != "random")
    tiny = np.ones((3, 3))
    assert select(method, tiny, stride=1, region_size=8, k=2, seed=0) == []
    nan = np.full((20, 20), np.nan)
    nan[5:9, 5:9] = 1.0
    got = select(method, nan, stride=1, region_size=4, k=50, seed=0)  # k larger than possible
    assert 0 < len(got) < 50
    no_tissue = np.zeros((20, 20), bool)
    if method in ("top_patches", "random"):
        assert select(method, np.ones((20, 20)), stride=1, region_size=4, k=2, tissue=no_tissue, seed=0) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"priority": np.full((8, 8), np.inf)}, "inf"),
        ({"priority": -np.ones((8, 8))}, "non-negative"),
        ({"priority": np.ones(8)}, "2-D"),
        ({"region_size": 100}, "multiple of stride"),
        ({"stride": 0}, "stride"),
        ({"k": -1}, "k must"),
        ({"tissue": np.ones((4, 4), bool)}, "tissue"),
        ({"method": "best"}, "unknown method"),
        ({"frobnicate": 1}, "takes no option"),
        ({"annotated": [(0, 0, 1, 1)]}, "Region"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"method": "standard", "priority": np.ones((8, 8)), "stride": 16, "region_size": 64, "k": 2, **kwargs}
    method, priority = args.pop("method"), args.pop("priority")
    with pytest.raises(ValueError, match=match):
        select(method, priority, **args)


def test_select_records_slide_and_cycle_and_leaves_input_alone():
    p = np.random.default_rng(0).random((16, 16))
    before = p.copy()
    got = select("standard", p, stride=8, region_size=32, k=2, slide="s7", cycle=3, annotated=[Region(0, 0, 64, 64)])
    assert all(r.slide == "s7" and r.cycle == 3 and r.method == "standard" for r in got)
    np.testing.assert_array_equal(p, before)


def test_registry_lists_options_with_defaults():
    assert list(METHODS) == [
        "random", "standard", "standard_nonsquare", "adaptive", "top_patches", "diversity", "prototype", "focannot",
    ]
    assert METHODS["adaptive"].defaults() == {"tau_range": (98.0, 100.0), "max_steps": 12, "min_side": None, "max_side": None}
    assert METHODS["focannot"].needs == ("descriptors",)
    assert all(m.summary for m in METHODS.values())


def test_kmeans_keeps_the_best_run_and_mostly_reaches_the_optimum():
    """n_init keeps the lowest-inertia run of those one generator seeds; the result is a
    Lloyd fixed point; on small sets it is the optimal partition (brute force over every
    labelling) far more often than a single run."""
    from napari_alregions.selection._cluster import inertia, kmeans

    labs = np.array([lab for lab in itertools.product(range(3), repeat=8) if len(set(lab)) == 3])
    hits = {1: 0, 10: 0}
    for seed in range(20):
        x = np.random.default_rng(seed).random((8, 2))
        within = 0.0
        for j in range(3):  # every labelling's inertia: sum of squares minus |sum|² / count
            m = (labs == j).astype(float)
            within = within + m @ (x**2).sum(axis=1) - ((m @ x) ** 2).sum(axis=1) / m.sum(axis=1)
        for n_init in hits:
            centroids, labels = kmeans(x, 3, np.random.default_rng(seed), n_init=n_init)
            hits[n_init] += inertia(x, centroids, labels) <= within.min() * (1 + 1e-9)
        np.testing.assert_allclose(centroids, [x[labels == j].mean(axis=0) for j in range(3)])
        assert (((x[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1) == labels).all()
        gen = np.random.default_rng(seed)  # the same ten runs, one at a time
        runs = [inertia(x, *kmeans(x, 3, gen, n_init=1)) for _ in range(10)]
        assert inertia(x, centroids, labels) == pytest.approx(min(runs))
    assert hits[10] >= 19 and hits[1] <= 14, hits
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 3, np.random.default_rng(0), n_init=0)


def test_random_with_k_beyond_what_fits_is_the_most_that_fit():
    """Attempts are bounded by the map, not by k: k = 10^9 (which once ran for months) draws
    exactly as k = the number of disjoint boxes that can fit."""
    prio, tissue = np.zeros((64, 64), np.float32), np.ones((64, 64), bool)
    fit = (64 // 10) ** 2
    huge = select("random", prio, stride=64, region_size=640, k=10**9, tissue=tissue, seed=3)
    most = select("random", prio, stride=64, region_size=640, k=fit, tissue=tissue, seed=3)
    assert [(r.x, r.y) for r in huge] == [(r.x, r.y) for r in most] and 0 < len(huge) <= fit
    assert not any(overlaps(a, b) for i, a in enumerate(huge) for b in huge[i + 1 :])


@pytest.mark.parametrize("scale", [1e300, 1e-12])
@pytest.mark.parametrize("method", ["standard", "standard_nonsquare", "adaptive", "top_patches"])
def test_picks_do_not_depend_on_the_maps_scale(method, scale):
    """Priorities near 1e308 overflowed window sums (inf scores, a crash); near 1e-12 they rounded
    to nothing (no region from standard, three from adaptive): a map is its ratios."""
    rng = np.random.default_rng(5)
    base = rng.random((48, 48)) * 0.5
    base[10:20, 25:35] += 0.5
    ref = select(method, base, stride=64, region_size=512, k=3, seed=0)
    got = select(method, base * scale, stride=64, region_size=512, k=3, seed=0)
    assert len(ref) == 3 and [(r.x, r.y, r.w, r.h) for r in got] == [(r.x, r.y, r.w, r.h) for r in ref]
    assert all(np.isfinite(r.score) and r.score > 0 for r in got)


def test_needed_array_pools_cell_features_to_the_methods_grid():
    from napari_alregions.selection import needed_array

    cells = np.arange(8 * 8 * 2, dtype=np.float64).reshape(8, 8, 2)
    emb = needed_array("embeddings", cells, region_size=1024, stride=256)  # 4x4-cell regions
    mean = cells[:4, 4:].reshape(-1, 2).mean(axis=0)  # by hand: region (0, 1), L2-normalised
    np.testing.assert_allclose(emb[0, 1], mean / np.linalg.norm(mean))
    desc = needed_array("descriptors", cells, region_size=1024, stride=256, options={"overlap": 0.5})
    np.testing.assert_allclose(desc[0, 1], cells[:4, 2:6].reshape(-1, 2).mean(axis=0))  # windows 2 cells apart
    with pytest.raises(ValueError, match="region_size"):
        needed_array("embeddings", cells, region_size=1000, stride=256)
    with pytest.raises(ValueError, match="need must be"):
        needed_array("similarity", cells, region_size=1024, stride=256)
