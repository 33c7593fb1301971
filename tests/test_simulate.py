from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_alregions.geometry import union_area
from napari_alregions.settings import TrainingBudget
from napari_alregions.simulate import SimConfig, oracle_labels, run_simulation
from napari_alregions.wsi import open_labels, open_slide


@pytest.fixture(scope="module")
def sim_pool(tmp_path_factory):
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("simpool")
    make_slide_pool(folder, n_slides=3, size=1536, seed=2)
    return folder


CONFIG = SimConfig(methods=("random", "adaptive"), settings=((256, 2),), cycles=2, epochs=2,
                   patience=1, patches_per_slide=8, full_baseline=False)


@pytest.mark.slow
def test_simulation_is_reproducible_and_writes_outputs(sim_pool, tmp_path):
    a = run_simulation(sim_pool, CONFIG, out=tmp_path / "a")
    b = run_simulation(sim_pool, CONFIG, out=tmp_path / "b")
    # the same command twice: byte-identical results (timings live in their own file)
    assert (tmp_path / "a" / "results.csv").read_bytes() == (tmp_path / "b" / "results.csv").read_bytes()
    assert a["regions"] == b["regions"]
    assert len(a["rows"]) == 2 * 2
    for name in ("results.csv", "timings.csv", "table.md", "area_vs_miou.png"):
        assert (tmp_path / "a" / name).exists()
    slides = sorted({r.slide for r in a["regions"]["adaptive_l256_k2"]})
    assert sorted(f.stem for f in (tmp_path / "a" / "regions" / "adaptive_l256_k2" / "repeat0").glob("*.geojson")) == slides
    assert "| adaptive |" in (tmp_path / "a" / "table.md").read_text()
    row = a["rows"][0]
    assert row["n_test_slides"] == 1 and 0 <= row["auc_tumour"] <= 1 and row["model"] in ("new", "kept previous", "at chance")


@pytest.fixture(scope="module")
def sparse_pool(tmp_path_factory):
    """The demo's task at a smaller scale: two 4096² training slides (the demo's size, so a
    384-px region is the same share of a slide) and three 2048² test slides, every one with
    small metastases and tumour-like germinal centres."""
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("sparsepool")
    make_slide_pool(folder, n_slides=5, size=4096, n_test=3, test_size=2048, lesions="sparse", seed=3)
    return folder


@pytest.mark.slow
def test_repeats_report_mean_and_range_and_curves_do_not_fall(sparse_pool, tmp_path):
    """The demo's protocol (its four selectors, its learner, the fast one, l = 384, k = 2,
    two repeats, the full-annotation baseline) on a smaller pool, for 3 cycles: the curves
    it plots (mean mIoU per cycle over the repeats) and the mean AUC must not fall as labels
    come, by more than 0.02."""
    from napari_alregions.demo import DEMO_CONFIG

    cfg = replace(DEMO_CONFIG, cycles=3)
    assert cfg.learner == "fast" and cfg.repeats == 2 and len(cfg.methods) == 4
    res = run_simulation(sparse_pool, cfg, out=tmp_path)
    rows = res["rows"]
    assert sorted({r["repeat"] for r in rows}) == [0, 1] and all(r["n_test_slides"] == 3 for r in rows)
    # distinct initial labeled sets per repeat
    assert {r["annotated_area_pct"] for r in rows if r["repeat"] == 0 and r["cycle"] == 0} != \
        {r["annotated_area_pct"] for r in rows if r["repeat"] == 1 and r["cycle"] == 0}
    for method in cfg.methods:
        for key in ("miou_tumour", "auc_tumour"):
            mean = [np.mean([r[key] for r in rows if r["method"] == method and r["cycle"] == c]) for c in range(3)]
            assert all(b >= a - 0.02 for a, b in zip(mean, mean[1:])), (method, key, mean)  # more labels: not worse
    table = (tmp_path / "table.md").read_text()
    assert "over 2 repeats" in table and "| random |" in table and "Warning" not in table
    full = res["full"]
    assert len(full["repeats"]) == 2 and full["miou_min"] <= full["miou"] <= full["miou_max"]


@pytest.mark.parametrize("patch_size", [64, 96])  # centre area as wide as a cell, and wider
def test_truth_cells_follow_the_patch_label_rule(sim_pool, patch_size):
    """A cell is tumour when the centre area (d/2)² of its patch holds tumour: brute force per cell."""
    from napari_alregions.simulate import Pool

    pool = Pool.load(sim_pool, level=1, stride=64, patch_size=patch_size)
    try:
        for name in pool.slides:
            gt, cells = pool.truth[name], pool.truth_cells(name)
            half = patch_size // 4
            expect = np.zeros_like(cells)
            for r, c in np.ndindex(cells.shape):
                cy, cx = int((r + 0.5) * 32), int((c + 0.5) * 32)  # the cell's centre at level 1
                expect[r, c] = (gt[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] == 2).any()
            np.testing.assert_array_equal(cells, expect)
    finally:
        pool.close()


@pytest.mark.slow
def test_geojson_ground_truth_gives_the_truth_cells_of_the_mask(sim_pool, tmp_path):
    """A pool whose truth comes as QuPath GeoJSON (tumour polygons) scores like the mask it was made from."""
    import json
    import shutil

    from napari_alregions.io_qupath import labels_to_features, write_features
    from napari_alregions.simulate import Pool

    manifest = json.loads((sim_pool / "manifest.json").read_text())
    for e in manifest["slides"]:
        shutil.copy(sim_pool / e["image"], tmp_path / e["image"])
        truth = np.asarray(open_labels(sim_pool / e["mask"])[1])
        tumour = (truth == 2).astype(np.uint8)  # value 1: the one class below
        feats = labels_to_features(tumour, classes=("Tumor",), factor=2) if tumour.any() else []
        write_features(tmp_path / f"{e['name']}.geojson", feats)
        e.pop("mask")
        e["annotations"] = f"{e['name']}.geojson"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    a, b = Pool.load(sim_pool, level=1, stride=64), Pool.load(tmp_path, level=1, stride=64)
    try:
        assert a.train == b.train and a.test == b.test
        for name in a.slides:
            np.testing.assert_array_equal(a.truth[name] == 2, b.truth[name] == 2)
            np.testing.assert_array_equal(a.truth_cells(name), b.truth_cells(name))
            assert (b.truth[name] == 1).any()  # tissue from the slide's own mask
    finally:
        a.close()
        b.close()


def test_geojson_truth_takes_tissue_outlines_and_ignores_other_classes(sim_pool, tmp_path):
    import json

    from napari_alregions.simulate import truth_from_geojson
    from napari_alregions.wsi import open_slide

    def poly(x0, y0, x1, y1, cls):
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [1, 2, 3]}}}

    feats = [poly(0, 0, 800, 800, "Tissue"), poly(100, 100, 300, 300, "Tumor"), poly(400, 400, 600, 600, "Stroma"),
             {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 0]]]},
              "properties": {"objectType": "detection", "classification": {"name": "Tumor", "color": [1, 2, 3]}}}]
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    with open_slide(sim_pool / "slide_000.tif") as slide:
        truth = truth_from_geojson(slide, path, level=1)  # level-1 px: level-0 coordinates / 2
    expect = np.zeros_like(truth)
    expect[:400, :400] = 1
    expect[50:150, 50:150] = 2  # the detection is no annotation: not tumour
    np.testing.assert_array_equal(truth, expect)


def _tissue_at_level1(slide) -> np.ndarray:
    """The slide's own tissue mask at label level 1, nearest neighbour: label px (y, x) is
    level-0 (2y, 2x), which falls in mask px (2y // f, 2x // f), f the mask level's downsample."""
    mask, f = slide.tissue_mask(), slide.level_factor(slide.tissue_level)
    h, w = slide.levels[1].shape[:2]
    rows = np.minimum(np.arange(h) * 2 // f, mask.shape[0] - 1).astype(int)
    cols = np.minimum(np.arange(w) * 2 // f, mask.shape[1] - 1).astype(int)
    return mask[rows][:, cols]


@pytest.mark.slow
def test_annotated_area_matches_union_of_regions(sim_pool):
    """Bookkeeping: the reported area equals tissue (the slide's own mask, as in the viewer)
    inside the union of the regions."""
    import json

    res = run_simulation(sim_pool, CONFIG)
    manifest = json.loads((sim_pool / "manifest.json").read_text())
    train = [s for s in manifest["slides"] if s["split"] == "train"]
    final = res["regions"]["adaptive_l256_k2"]
    tissue_in, tissue_total = 0, 0
    for entry in train:
        with open_slide(sim_pool / entry["image"]) as slide:
            tissue = _tissue_at_level1(slide)
        mine = [r for r in final if r.slide == entry["name"]]
        covered = np.zeros_like(tissue)
        for r in mine:  # independent rasterisation at level 1
            covered[r.y // 2 : -(-r.y1 // 2), r.x // 2 : -(-r.x1 // 2)] = True
        tissue_in += int((covered & tissue).sum())
        tissue_total += int(tissue.sum())
        # regions never overlap: their union area is their summed area
        assert union_area(mine) == sum(r.area for r in mine)
    last = [r for r in res["rows"] if r["method"] == "adaptive"][-1]
    assert last["n_regions"] == len(final) == 2 * len(train) * CONFIG.cycles
    assert last["annotated_area_pct"] == pytest.approx(100 * tissue_in / tissue_total, abs=1e-3)


def test_the_oracle_paints_the_truth_into_accepted_regions(sim_pool, tmp_path):
    """Tumour (label 2) where the truth is tumour, background (1) elsewhere in the region,
    glass included; nothing outside it; the region is accepted, and the share annotated is
    the project's."""
    from napari_alregions.geometry import Region
    from napari_alregions.simulate import Pool, _Oracle

    truth = np.zeros((20, 20), np.uint8)
    truth[:, 10:] = 1
    truth[0:4, 12:16] = 2
    expect = np.ones_like(truth)
    expect[0:4, 12:16] = 2
    np.testing.assert_array_equal(oracle_labels(truth), expect)

    pool = Pool.load(sim_pool, level=1, stride=64)
    try:
        oracle = _Oracle(pool, SimConfig(), tmp_path)
        project = oracle.project("p", seed=0)
        name = pool.train[0]
        gt = pool.truth[name]
        ys, xs = np.nonzero(gt == 2)
        y, x = 2 * int(ys[len(ys) // 2]) - 101, 2 * int(xs[len(xs) // 2]) - 99  # odd: rounded outwards
        oracle.label(project, [Region(x, y, 200, 200, slide=name)])
        assert len(project.session.accepted) == 1
        labels = project.session.labels(name)
        y0, x0, y1, x1 = y // 2, x // 2, -(-(y + 200) // 2), -(-(x + 200) // 2)
        inside = np.zeros(gt.shape, bool)
        inside[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(labels[inside], np.where(gt[inside] == 2, 2, 1))
        assert (labels[~inside] == 0).all() and (labels == 2).any()
        with open_slide(sim_pool / f"{name}.tif") as s:
            tissue = _tissue_at_level1(s)
        total = 0
        for n in pool.train:
            with open_slide(sim_pool / f"{n}.tif") as s:
                total += _tissue_at_level1(s).sum()
        assert project.annotated_pct() == pytest.approx(100 * (inside & tissue).sum() / total)
        project.close()
    finally:
        pool.close()


def test_bad_config(sim_pool, tmp_path):
    with pytest.raises(ValueError, match="multiple of the stride"):
        run_simulation(sim_pool, SimConfig(settings=((100, 1),)))
    with pytest.raises(ValueError, match="needs a prototype set"):
        run_simulation(sim_pool, SimConfig(initial=("prototype",)))
    with pytest.raises(ValueError, match="unknown initial"):
        run_simulation(sim_pool, SimConfig(initial=("kmeans",)))
    # settings that could only fail late (k = 0 after the baseline's training) fail first
    for bad, match in [({"settings": ((384, 0),)}, "k .* must be >= 1"), ({"cycles": 0}, "cycles must be >= 1"),
                       ({"settings": ()}, "at least one"), ({"methods": ()}, "at least one selector"),
                       ({"settings": ((-64, 1),)}, "positive multiple"), ({"target": 1.5}, "target"),
                       ({"methods": ("bogus",)}, "unknown method 'bogus'; choose from random")]:
        with pytest.raises(ValueError, match=match):
            run_simulation(tmp_path / "no pool here", SimConfig(**bad))  # raised before the pool is read


@pytest.mark.slow
def test_initial_set_strategies_and_embedding_methods(sim_pool, tmp_path):
    """The prototype paper's comparison: random vs diversity vs prototype initial sets."""
    import json

    from napari_alregions.embed import embed_patches, load_encoder
    from napari_alregions.model import read_patches
    from napari_alregions.prototypes import PrototypeSet, save_prototypes
    from napari_alregions.wsi import open_slide

    # prototypes: tumour patches of the test slide (never labeled), same random encoder
    manifest = json.loads((sim_pool / "manifest.json").read_text())
    test = next(s for s in manifest["slides"] if s["split"] == "test" and s["has_tumour"])
    truth = np.asarray(open_labels(sim_pool / test["mask"])[1])
    ys, xs = np.nonzero(truth[32:-32, 32:-32] == 2)
    pick = np.linspace(0, len(ys) - 1, 8).astype(int)
    enc = load_encoder("random", patch_size=64, level=1)
    with open_slide(sim_pool / test["image"]) as slide:
        patches = read_patches(slide, np.stack([ys[pick] + 32, xs[pick] + 32], 1), level=1, patch_size=64)
    protos = save_prototypes(tmp_path / "p.npz", PrototypeSet({"tumour": embed_patches(patches, enc)}))
    cfg = SimConfig(methods=("diversity", "focannot"), settings=((256, 2),), cycles=2, epochs=2,
                    patience=1, patches_per_slide=8, full_baseline=False,
                    initial=("random", "diversity", "prototype"), prototypes=str(protos))
    res = run_simulation(sim_pool, cfg, out=tmp_path / "out")
    labels = {r["method"] for r in res["rows"]}
    assert labels == {f"{m} (init {i})" for m in cfg.methods for i in cfg.initial}
    assert len(res["rows"]) == 2 * 3 * 2
    # each initial strategy labels k regions per training slide at cycle 0
    first = [r for r in res["rows"] if r["cycle"] == 0]
    n_train = sum(s["split"] == "train" for s in manifest["slides"])
    assert all(r["n_regions"] == 2 * n_train for r in first)
    # the prototype initial set lands on tumour more often than the random one
    def tumour_share(init):
        regs = [r for r in res["regions"][f"diversity_init_{init}_l256_k2"] if r.cycle == 0]
        hit = 0
        for r in regs:
            e = next(s for s in manifest["slides"] if s["name"] == r.slide)
            t = np.asarray(open_labels(sim_pool / e["mask"])[1])
            hit += int((t[r.y // 2 : r.y1 // 2, r.x // 2 : r.x1 // 2] == 2).any())
        return hit / len(regs)
    assert tumour_share("prototype") >= tumour_share("random")
    assert "| diversity (init prototype) |" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.slow
def test_simulate_cli(sim_pool, tmp_path, capsys):
    from napari_alregions.cli import main

    out = tmp_path / "sim"
    assert main(["simulate", "--slides", str(sim_pool), "--methods", "random,adaptive", "-l", "256", "-k", "1",
                 "--cycles", "1", "--no-baseline", "--out", str(out)]) == 0
    assert "| adaptive |" in capsys.readouterr().out
    assert (out / "results.csv").read_text().count("\n") == 3  # header + one cycle per method
    assert main(["simulate", "--slides", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


@pytest.mark.slow
def test_the_simulation_is_the_viewers_loop(sim_pool, tmp_path):
    """What a user does in the viewer, by hand (suggest, accept every proposal, paint the
    truth, retrain), gives the simulation's annotated share, regions and validation loss."""
    from napari_alregions.model import CYCLE_SCHEDULE
    from napari_alregions.project import AnnotationProject, run
    from napari_alregions.simulate import Pool, _deterministic

    cfg = SimConfig(methods=("adaptive",), settings=((256, 1),), cycles=2, epochs=2, patience=1, patches_per_slide=8,
                    full_baseline=False, seed=4)
    res = run_simulation(sim_pool, cfg)
    pool = Pool.load(sim_pool, level=1, stride=64)
    p = AnnotationProject.create(tmp_path / "hand", patch_size=64, level=1, stride=64)
    p.session.update_settings(training=TrainingBudget(epochs=2, patience=1, patches_per_slide=8, no_time_limit=True, seed=400))
    p.new_model(patch_size=64, level=1, stride=64)  # initial weights of that seed
    p.estimate_quality = False  # as the simulation's projects (no estimate decides anything there)
    assert p.train_config().min_epoch_patches == CYCLE_SCHEDULE.min_epoch_patches
    got = []
    try:
        with _deterministic():
            for n in pool.train:
                p.add_slide(pool.slides[n].path, name=n)
            for cycle in range(cfg.cycles):
                for i, n in enumerate(pool.train):
                    if cycle:
                        run(p.iter_priority(n))
                    seed = 4000 + 97 * cycle + i if cycle else 4000 + i
                    for r in p.suggest(n, "random" if cycle == 0 else "adaptive", region_size=256, k=1, seed=seed):
                        a = p.accept(r)
                        y0, x0, y1, x1 = p.label_box(a)
                        lab = p.region_labels(a)  # background, as accepted
                        lab[pool.truth[n][y0:y1, x0:x1] == 2] = 2  # the tumour painted
                        p.write_region_labels(a, lab)
                summary = run(p.iter_retrain(refresh=False))
                got.append((round(p.annotated_pct(), 4), len(p.session.accepted), summary["n_candidates"]))
    finally:
        p.close()
        pool.close()
    want = [(r["annotated_area_pct"], r["n_regions"], r["n_candidates"]) for r in res["rows"]]
    assert got == want
    regions = [r.with_(uid=None) for n in pool.train for r in p.session.accepted_on(n)]
    assert regions == res["regions"]["adaptive_l256_k1"]


def _result(*, n_test: int, baseline: bool) -> dict:
    """A simulation's result as run_simulation returns it, made by hand: two repeats of one
    method with regions on two slides."""
    from napari_alregions.geometry import Region

    rows = [{"repeat": rep, "method": "random", "region_size": 256, "k": 1, "cycle": c, "annotated_area_pct": 5.0 * (c + 1),
             "miou_tumour": 0.5 + 0.1 * c, "n_test_slides": n_test} for rep in (0, 1) for c in (0, 1)]
    full = ({"miou": 0.62, "miou_min": 0.6, "miou_max": 0.64, "dice": 0.7, "auc": 0.9, "n_test_slides": n_test,
             "repeats": [{"miou": 0.6}, {"miou": 0.64}]} if baseline else
            {"miou": float("nan"), "miou_min": float("nan"), "miou_max": float("nan"), "dice": float("nan"),
             "auc": float("nan"), "n_test_slides": 0, "repeats": []})
    regions = [[Region(256 * i + rep, 0, 256, 256, method="random", slide=s, cycle=i) for i, s in enumerate(("a", "b", "a"))]
               for rep in (0, 1)]
    return {"rows": rows, "full": full, "regions": {"random_l256_k1": regions[0]},
            "regions_by_repeat": {"random_l256_k1": regions}, "timings": [],
            "config": {"target": 0.95, "settings": [[256, 1]], "cycles": 2, "methods": ["random"]}}


def test_outputs_hold_one_regions_file_per_slide_and_repeat(tmp_path):
    """QuPath imports GeoJSON per image: the final regions are written per method and
    setting, repeat and slide, each file holding that slide's regions of that repeat only."""
    from napari_alregions.io_qupath import read_regions
    from napari_alregions.simulate import write_outputs

    result = _result(n_test=2, baseline=False)
    write_outputs(result, tmp_path)
    assert not list(tmp_path.glob("regions_*"))
    for rep, regions in enumerate(result["regions_by_repeat"]["random_l256_k1"]):
        folder = tmp_path / "regions" / "random_l256_k1" / f"repeat{rep}"
        assert sorted(f.name for f in folder.iterdir()) == ["a.geojson", "b.geojson"]
        for slide in ("a", "b"):
            got = [(r.x, r.y, r.w, r.h, r.slide) for r in read_regions(folder / f"{slide}.geojson")]
            assert got == [(r.x, r.y, r.w, r.h, r.slide) for r in regions if r.slide == slide]


@pytest.mark.parametrize(("n_test", "baseline", "says"), [
    (2, False, "over 2 test slides with tumour"), (1, True, "over 1 test slide with tumour"),
    (0, False, "over no test slide with tumour (mIoU undefined)"),
])
def test_table_counts_the_test_slides_with_or_without_the_baseline(n_test, baseline, says):
    from napari_alregions.simulate import results_table

    table = results_table(_result(n_test=n_test, baseline=baseline))
    assert says in table and "?" not in table


def test_table_warns_when_the_full_annotation_baseline_is_below_cycle_0():
    from napari_alregions.simulate import results_table

    def result(full_miou):
        rows = [{"repeat": 0, "method": "random", "region_size": 256, "k": 1, "cycle": c,
                 "annotated_area_pct": 5.0 * (c + 1), "miou_tumour": m} for c, m in enumerate((0.5, 0.6))]
        return {"rows": rows, "full": {"miou": full_miou, "n_test_slides": 2, "repeats": [{"miou": full_miou}]},
                "config": {"target": 0.95, "settings": [[256, 1]], "cycles": 2, "methods": ["random"]}}

    low = results_table(result(0.25))
    assert low.startswith("**Warning:** the full-annotation baseline (0.250) is below the mean mIoU at cycle 0 (0.500)")
    fine = results_table(result(0.62))
    assert "Warning" not in fine and "| random | 10.0 |" in fine  # 0.6 >= 0.95 x 0.62 at 10 % annotated
