from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_alregions.model import (
    CheckpointError,
    ModelSpec,
    TrainConfig,
    TrainingCancelled,
    build_model,
    find_candidates,
    fine_tune,
    load_checkpoint,
    predict_probability_map,
    save_checkpoint,
    train,
)
from napari_alregions.wsi import open_labels, open_slide

from .helpers import MeanRedness


def test_probability_map_equals_the_function_on_the_patches(small_pool):
    folder, manifest = small_pool
    slide = open_slide(folder / manifest["slides"][0]["image"])
    spec = ModelSpec(level=1, patch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    stride = 64
    tissue = slide.tissue_map(stride)
    # on the CPU: exact float32 arithmetic and CPU JPEG decoding, as the expectation uses
    prob = predict_probability_map(slide, MeanRedness(), spec, stride=stride, batch_size=7, workers=3, device="cpu")
    assert prob.shape == (*slide.map_shape(stride), 2)
    assert np.isnan(prob[~tissue]).all() and not np.isnan(prob[tissue]).any()
    # independent expectation: read each cell's centred patch and compute mean red
    level1 = slide.levels[1].compute()
    for r, c in np.argwhere(tissue)[::7]:
        cy, cx = (r * stride + stride // 2) // 2, (c * stride + stride // 2) // 2  # centre at level 1
        y0, x0 = cy - 16, cx - 16
        patch = np.full((32, 32, 3), 255, np.uint8)
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + 32, level1.shape[0]), min(x0 + 32, level1.shape[1])
        patch[ys - y0 : ye - y0, xs - x0 : xe - x0] = level1[ys:ye, xs:xe]
        assert prob[r, c, 1] == pytest.approx(patch[..., 0].mean() / 255, abs=1e-5)


def test_ensemble_maps_and_cancellation(small_pool):
    folder, manifest = small_pool
    slide = open_slide(folder / manifest["slides"][0]["image"])
    spec = ModelSpec(level=1, patch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    out = predict_probability_map(slide, [MeanRedness(), MeanRedness()], spec, stride=64, device="cpu")
    assert out.shape[0] == 2
    np.testing.assert_array_equal(out[0], out[1])
    from napari_alregions.model import InferenceCancelled

    with pytest.raises(InferenceCancelled):
        predict_probability_map(slide, MeanRedness(), spec, stride=64, batch_size=1, cancel=lambda: True)
    with pytest.raises(ValueError, match="multiple"):
        predict_probability_map(slide, MeanRedness(), spec, stride=63)


def _candidates(folder, manifest, names, level=1):
    cands = []
    for entry in manifest["slides"]:
        if entry["name"] not in names:
            continue
        slide = open_slide(folder / entry["image"])
        gt = np.asarray(open_labels(folder / entry["mask"])[level])
        labels = np.where(gt == 2, 2, 1).astype(np.uint8)
        cands.append(find_candidates(slide, labels, level=level, patch_size=64, tissue=gt > 0))
    return cands


def _auc(scores, labels):
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    npos = labels.sum()
    return (ranks[labels].sum() - npos * (npos + 1) / 2) / (npos * (len(labels) - npos))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("trainpool")
    manifest = make_slide_pool(folder, n_slides=4, size=2048, seed=5)
    train_names = [s["name"] for s in manifest["slides"] if s["split"] == "train"]
    spec = ModelSpec(level=1, patch_size=64)
    torch.manual_seed(0)
    res = train(spec, _candidates(folder, manifest, train_names), TrainConfig(epochs=8, patches_per_slide=48))
    return folder, manifest, spec, res


@pytest.mark.slow
def test_training_beats_chance_on_held_out_slides(trained):
    folder, manifest, spec, res = trained
    test = [s for s in manifest["slides"] if s["split"] == "test" and s["has_tumour"]]
    assert test
    scores, labels = [], []
    for entry in test:
        slide = open_slide(folder / entry["image"])
        prob = predict_probability_map(slide, res.model, spec, stride=64)[..., 1]
        gt = np.asarray(open_labels(folder / entry["mask"])[0])
        h, w = prob.shape
        cells = (gt[: h * 64, : w * 64].reshape(h, 64, w, 64)[:, 16:48, :, 16:48] == 2).any(axis=(1, 3))
        ok = ~np.isnan(prob)
        scores.append(prob[ok])
        labels.append(cells[ok])
    auc = _auc(np.concatenate(scores), np.concatenate(labels))
    assert auc > 0.8, auc  # reaches ~0.99; the bound leaves room for platform noise


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path, trained):
    _, _, spec, res = trained
    res.model.cpu()
    path = save_checkpoint(tmp_path / "m.pt", res.model, spec, cycle=3)
    model, spec2, info = load_checkpoint(path, expect=spec)
    assert spec2 == spec and info == {"cycle": 3}
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), res.model.eval()(x))
    with pytest.raises(CheckpointError, match="not the checkpoint of this model: its classes"):
        load_checkpoint(path, expect=ModelSpec(classes=("a", "b", "c")))
    torch.save(res.model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a napari-alregions checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not a checkpoint that can be loaded safely") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(err.value)  # torch's advice to run the file's code is not passed on
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="damaged, another format"):
        load_checkpoint(tmp_path / "junk.pt")
    payload = torch.load(path, weights_only=True)
    payload["spec"]["classes"] = ["a", "b", "c"]
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_fine_tune_copies_and_cancel_leaves_model_untouched(trained):
    folder, manifest, spec, res = trained
    cands = _candidates(folder, manifest, [manifest["slides"][0]["name"]])
    before = {k: v.clone() for k, v in res.model.state_dict().items()}
    out = fine_tune(res.model, spec, cands, TrainConfig(epochs=3, patches_per_slide=32, max_steps=2))
    assert out.steps == 2 and out.model is not res.model
    for k, v in res.model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    from napari_alregions.model import iter_train

    model = spec.build()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingCancelled):
        for _ in iter_train(model, spec, cands, TrainConfig(epochs=2, patches_per_slide=16), cancel=cancel):
            pass
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, start[k])


def test_empty_and_all_negative_labels(small_pool):
    folder, manifest = small_pool
    slide = open_slide(folder / manifest["slides"][0]["image"])
    shape = slide.levels[1].shape[:2]
    empty = find_candidates(slide, np.zeros(shape, np.uint8), level=1, patch_size=64)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="no labeled patches"):
        train(ModelSpec(), [empty], TrainConfig(epochs=1))
    negatives = np.ones(shape, np.uint8)
    c = find_candidates(slide, negatives, level=1, patch_size=64)
    assert len(c) > 0 and (c.labels == 0).all()
    res = train(ModelSpec(), [c], TrainConfig(epochs=2, patches_per_slide=32, max_steps=2))
    assert res.steps == 2
    with pytest.raises(ValueError, match="shape"):
        find_candidates(slide, np.zeros((3, 3), np.uint8), level=1, patch_size=64)


@pytest.mark.parametrize("block", [256, 32])  # 32: many labeled areas, bounding boxes that overlap
def test_candidates_match_a_brute_force_scan(slide, monkeypatch, block):
    from napari_alregions import geometry

    monkeypatch.setattr(geometry, "LABEL_BLOCK", block)
    h, w = slide.levels[1].shape[:2]
    rng = np.random.default_rng(5)
    labels = np.zeros((h, w), np.uint8)
    for y, x, hh, ww in [(10, 10, 90, 120), (60, 150, 40, 70), (300, 200, 150, 60), (330, 240, 30, 200), (480, 0, 32, 512),
                           (100, 300, 60, 100), (200, 420, 56, 60)]:  # ending on a block edge (160, 256)
        labels[y : y + hh, x : x + ww] = rng.integers(1, 4, size=(min(hh, h - y), min(ww, w - x)))
    labels[320:340, 250:260] = 0  # a hole: centres over it are out
    d, step, half = 32, 8, 8
    for n_classes, lab in ((2, np.minimum(labels, 2)), (3, labels)):
        c = find_candidates(slide, lab, level=1, patch_size=d, step=step)
        expected = []
        for y in range(d // 2, h - d // 2 + 1, step):
            for x in range(d // 2, w - d // 2 + 1, step):
                centre = lab[y - half : y + half, x - half : x + half]
                if (centre > 0).all():
                    counts = [(centre == v).sum() for v in range(1, n_classes + 1)]
                    expected.append((y, x, int((centre == 2).any()) if n_classes == 2 else int(np.argmax(counts))))
        assert len(expected) > 50
        assert [(int(y), int(x), int(k)) for (y, x), k in zip(c.centres, c.labels)] == expected
    # the tissue filter drops centres without tissue and keeps the rest
    no_tissue = find_candidates(slide, labels, level=1, patch_size=d, step=step, tissue=np.zeros((64, 64), bool))
    all_tissue = find_candidates(slide, labels, level=1, patch_size=d, step=step, tissue=np.ones((64, 64), bool))
    assert len(no_tissue) == 0 and np.array_equal(all_tissue.centres, c.centres)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg")
    with pytest.raises(ValueError, match="n_classes"):
        build_model("compact", 1)
    x = torch.rand(3, 3, 48, 48)
    assert build_model("compact", 3, dropout=0.2)(x).shape == (3, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decode path)")
def test_gpu_decode_matches_cpu_decode(small_pool):
    folder, manifest = small_pool
    slide = open_slide(folder / manifest["slides"][0]["image"])
    spec = ModelSpec(level=1, patch_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    model = MeanRedness()
    gpu = predict_probability_map(slide, model, spec, stride=64, device="cuda", gpu_decode=True, batch_size=16)
    cpu = predict_probability_map(slide, model, spec, stride=64, device="cuda", gpu_decode=False, batch_size=16)
    np.testing.assert_allclose(gpu, cpu, atol=2e-3, equal_nan=True)
    with pytest.raises(ValueError, match="gpu_decode"):
        predict_probability_map(slide, model, spec, stride=64, device="cpu", gpu_decode=True)


def _augment_one_by_one(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The augmentation written out per sample, drawing the same numbers in the same order."""
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    scale = 1 + 0.12 * (torch.rand((n, 3, 1, 1), generator=generator) - 0.5) * 2
    shift = 0.04 * (torch.rand((n, 3, 1, 1), generator=generator) - 0.5) * 2
    out = []
    for i in range(n):
        xi = np.rot90(x[i].numpy(), int(k[i]), axes=(1, 2))
        if flip[i]:
            xi = xi[:, :, ::-1]
        od = -np.log(np.maximum(xi, np.float32(1 / 255)))
        out.append(np.clip(np.exp(-(od * scale[i].numpy() + shift[i].numpy())), 0, 1))
    return torch.from_numpy(np.stack(out))


def test_augment_equals_the_per_sample_reference_and_keeps_its_range():
    from napari_alregions.model.data import augment

    x = torch.rand((64, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    got = augment(x, torch.Generator().manual_seed(5))
    want = _augment_one_by_one(x, torch.Generator().manual_seed(5))
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1
    # every rotation and both flips occur in 64 draws; a sample's pixels are only moved and jittered
    assert not torch.equal(got, x)
    with pytest.raises(ValueError, match="square"):
        augment(torch.rand((2, 3, 8, 9)), torch.Generator())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_on_cuda_draws_what_the_cpu_draws():
    from napari_alregions.model.data import augment

    x = torch.rand((32, 3, 16, 16), generator=torch.Generator().manual_seed(2))
    cpu = augment(x, torch.Generator().manual_seed(7))
    gpu = augment(x.cuda(), torch.Generator().manual_seed(7)).cpu()
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=1e-5)


class _NamedSlide:
    """A slide stand-in: the validation split needs only the file name."""

    def __init__(self, name: str) -> None:
        self.path = name


def _grid_candidates(name: str, rows: int, cols: int, *, positive_blocks=(), d: int = 64):
    from napari_alregions.model import PatchCandidates

    ys, xs = np.meshgrid(np.arange(rows) * d, np.arange(cols) * d, indexing="ij")
    centres = np.stack([ys.ravel(), xs.ravel()], 1) + d // 2
    block = centres // (4 * d)
    labels = np.array([int((int(by), int(bx)) in positive_blocks) for by, bx in block])
    return PatchCandidates(_NamedSlide(name), 1, d, centres, labels)


def _centre_set(cands):
    return {(c.slide.path, int(y), int(x)) for c in cands for y, x in c.centres}


def test_validation_split_is_stable_as_labels_grow():
    from napari_alregions.model.train import validation_split

    grown = [_grid_candidates("a.tif", 32, 32), _grid_candidates("b.tif", 16, 32)]
    first = [_grid_candidates("a.tif", 16, 32), _grid_candidates("b.tif", 8, 32)]  # the top halves: earlier labels
    t1, v1 = validation_split(first, 0.2)
    t2, v2 = validation_split(grown, 0.2)
    assert v1 and _centre_set(v1) <= _centre_set(v2)  # held out once, held out for good
    assert _centre_set(t1) <= _centre_set(t2)
    assert 0.1 < len(_centre_set(v2)) / len(_centre_set(t2) | _centre_set(v2)) < 0.3
    # whole blocks go one way: no neighbour of a validation patch trains
    val_blocks = {(s, y // 256, x // 256) for s, y, x in _centre_set(v2)}
    assert not any((s, y // 256, x // 256) in val_blocks for s, y, x in _centre_set(t2))


@pytest.mark.parametrize("name", [f"slide_{i}.tif" for i in range(6)])
def test_validation_split_holds_out_positives_when_two_blocks_have_them(name):
    from napari_alregions.model.train import validation_split

    c = _grid_candidates(name, 8, 8, positive_blocks={(0, 0), (1, 1)})  # 4 blocks, 2 with tumour
    train_c, val_c = validation_split([c], 0.2)
    assert any((v.labels > 0).any() for v in val_c) and any((t.labels > 0).any() for t in train_c)
    one = _grid_candidates(name, 8, 8, positive_blocks={(1, 1)})  # tumour in one block: it trains
    train_c, val_c = validation_split([one], 0.2)
    assert any((t.labels > 0).any() for t in train_c) and not any((v.labels > 0).any() for v in val_c)


def test_fit_keeps_the_previous_model_when_the_retrained_one_is_worse(trained):
    from napari_alregions.model import fit

    folder, manifest, spec, res = trained
    names = [s["name"] for s in manifest["slides"] if s["split"] == "train"]
    cands = _candidates(folder, manifest, names)
    # a learning rate that wrecks the weights: the retrained model is worse on every patch
    wrecked = fit(spec, cands, TrainConfig(epochs=1, max_steps=3, lr=50.0, patches_per_slide=8, seed=3), previous=res.model)
    assert wrecked.kept_previous and wrecked.model is res.model and wrecked.status == "kept previous"
    assert wrecked.previous_val_loss < wrecked.train.best_val_loss
    assert "kept the previous model" in wrecked.message()
    # independent check on held-out slides: the kept model separates tumour, the wrecked one not as well
    test = next(s for s in manifest["slides"] if s["split"] == "test" and s["has_tumour"])
    with open_slide(folder / test["image"]) as slide:
        truth = np.asarray(open_labels(folder / test["mask"])[1])
        tissue = slide.tissue_map(128)
        cells = truth[: tissue.shape[0] * 64, : tissue.shape[1] * 64].reshape(tissue.shape[0], 64, tissue.shape[1], 64)
        cells = (cells[:, 16:48, :, 16:48] == 2).any(axis=(1, 3))
        kept = predict_probability_map(slide, wrecked.model, spec, stride=128, tissue=tissue)[..., 1]
        bad = predict_probability_map(slide, wrecked.train.model, spec, stride=128, tissue=tissue)[..., 1]
    assert _auc(kept[tissue], cells[tissue]) > _auc(bad[tissue], cells[tissue])
    # a first training (nothing to compare with) takes the new model
    first = fit(spec, cands, TrainConfig(epochs=2, patches_per_slide=16, seed=1))
    assert not first.kept_previous and first.previous_val_loss is None and first.status == "new"


def test_fit_says_when_the_model_is_no_better_than_chance(trained):
    from napari_alregions.model import PatchCandidates, fit

    folder, manifest, spec, _ = trained
    names = [s["name"] for s in manifest["slides"] if s["split"] == "train"]
    rng = np.random.default_rng(0)
    # labels that say nothing about the pixels: the validation AUC stays near 0.5
    noise = [PatchCandidates(c.slide, c.level, c.patch_size, c.centres, rng.permutation(c.labels))
             for c in _candidates(folder, manifest, names)]
    res = fit(spec, noise, TrainConfig(epochs=2, patches_per_slide=16, seed=0))
    assert res.at_chance and res.status == "at chance", (res.val_loss, res.val_auc)
    assert "no better than chance" in res.message()
