"""Embeddings, prototype sets and similarity maps (embed.py, prototypes.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_alregions.embed import embed_patches, embed_slide, load_encoder, similarity_map
from napari_alregions.model import ModelSpec, save_checkpoint
from napari_alregions.prototypes import (
    PrototypeSet,
    from_captions,
    from_folder,
    keyword_search,
    load_prototypes,
    read_caption_table,
    retrieve,
    save_prototypes,
)
from napari_alregions.selection import select
from napari_alregions.wsi import open_slide
from tests.helpers import downsample2, smooth_rgb, write_pyramid

D = 32  # patch side = map stride (level 0)
PLANTED = [(3, 4), (10, 12), (12, 2)]


def _prototype_image() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()[100:132, 200:232].copy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 512² slide whose cells PLANTED hold exact copies of the prototype image."""
    img = smooth_rgb(512, 512, seed=3)
    proto = _prototype_image()
    for r, c in PLANTED:
        img[r * D : (r + 1) * D, c * D : (c + 1) * D] = proto
    path = tmp_path_factory.mktemp("planted") / "planted.tif"
    write_pyramid(path, [img, downsample2(img)])
    return path, proto


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    spec = ModelSpec(patch_size=D, level=0)
    return load_encoder(spec.build(), spec=spec)


def test_similarity_map_peaks_on_planted_copies_and_prototype_selection_finds_them(planted, encoder):
    path, proto = planted
    with open_slide(path) as slide:
        emb = embed_slide(slide, encoder, stride=D, tissue=np.ones((16, 16), bool))
    assert emb.shape == (16, 16, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)  # L2-normalised
    protos = embed_patches(proto[None], encoder)
    sim = similarity_map(emb, protos)
    for r, c in PLANTED:
        assert sim[r, c] == pytest.approx(1.0, abs=1e-4)
    others = np.ones(sim.shape, bool)
    others[tuple(np.array(PLANTED).T)] = False
    assert sim[others].max() < 0.999
    regions = select("prototype", sim, stride=D, region_size=D, k=3)
    assert sorted((r.y // D, r.x // D) for r in regions) == sorted(PLANTED)


def test_similarity_map_matches_brute_force_and_handles_nan():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(7, 9, 5)).astype(np.float32)
    emb[2, 3] = np.nan
    protos = rng.normal(size=(4, 5))
    got = similarity_map(emb, protos, chunk=10)
    want = np.zeros((7, 9))
    for i in range(7):
        for j in range(9):
            v = emb[i, j]
            if np.isfinite(v).all():
                want[i, j] = max(0.0, max(v @ p / np.linalg.norm(v) / np.linalg.norm(p) for p in protos))
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        similarity_map(emb, np.ones((2, 6)))
    with pytest.raises(ValueError, match="non-empty"):
        similarity_map(emb, np.zeros((0, 5)))


def test_encoder_from_checkpoint_exported_program_and_state_dict(tmp_path, encoder):
    x = np.random.default_rng(1).integers(0, 255, (3, D, D, 3), dtype=np.uint8)
    ref = embed_patches(x, encoder)
    spec = ModelSpec(patch_size=D, level=0)
    ck = save_checkpoint(tmp_path / "m.pt", encoder.module, spec)
    np.testing.assert_allclose(embed_patches(x, load_encoder(ck)), ref, atol=1e-5)
    sd = tmp_path / "sd.pt"
    torch.save(encoder.module.state_dict(), sd)
    np.testing.assert_allclose(embed_patches(x, load_encoder(sd, spec=spec)), ref, atol=1e-5)
    with pytest.raises(ValueError, match="bare state dict needs spec"):
        load_encoder(sd)

    class Feats(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.forward_features(x)

    ts = tmp_path / "feats.pt2"
    torch.export.save(torch.export.export(Feats(encoder.module).eval(), (torch.zeros(2, 3, D, D),),
                                          dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096)},)), ts)
    np.testing.assert_allclose(embed_patches(x, load_encoder(ts, spec=spec)), ref, atol=1e-4)
    with pytest.raises(ValueError, match="no such file"):
        load_encoder(tmp_path / "missing.pt")


def test_prototypes_from_folder_round_trip(tmp_path, encoder):
    from skimage.io import imsave

    proto = _prototype_image()
    (tmp_path / "protos" / "tumour").mkdir(parents=True)
    imsave(tmp_path / "protos" / "tumour" / "a.png", np.kron(proto, np.ones((2, 2, 1), np.uint8)))  # 64² -> resized
    imsave(tmp_path / "protos" / "tumour" / "b.png", proto)
    ps = from_folder(tmp_path / "protos", encoder)
    assert list(ps.embeddings) == ["tumour"] and ps.of("tumour").shape == (2, encoder.dim)
    np.testing.assert_allclose(ps.of("tumour")[1], embed_patches(proto[None], encoder)[0], atol=1e-5)
    back = load_prototypes(save_prototypes(tmp_path / "p.npz", ps))
    np.testing.assert_array_equal(back.of("tumour"), ps.of("tumour"))
    assert back.provenance["source"] == "folder"
    (tmp_path / "junk.npz").write_bytes(b"x")  # numpy takes any non-archive for a pickle
    with pytest.raises(ValueError, match=r"not a prototype set \(not an \.npz archive of arrays\)") as err:
        load_prototypes(tmp_path / "junk.npz")
    assert "allow_pickle" not in str(err.value)
    (tmp_path / "empty" / "tumour").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        from_folder(tmp_path / "empty", encoder)
    with pytest.raises(ValueError, match="non-empty"):
        PrototypeSet({"tumour": np.zeros((0, 4))})


CAPTIONS = pd.DataFrame({
    "image_path": [f"img{i}.png" for i in range(8)],
    "caption": [
        "Metastatic CARCINOMA in a lymph node, H&E",       # 0: yes
        "tumor cells infiltrating lymph-node capsule",      # 1: 'lymph-node' is not 'lymph node'
        "Lymph node with tumour deposits",                  # 2: yes
        "normal lymph node, no tumour",                     # 3: excluded by 'normal'
        "tumours in the liver",                             # 4: no lymph node; 'tumours' is not 'tumour'
        "Lymph   node: micrometastasis of Tumor",           # 5: yes (whitespace, case)
        None,                                               # 6: missing caption
        "carcinomatous lymph node",                         # 7: 'carcinomatous' is not 'carcinoma'
    ],
})


def test_keyword_search_exact_rows():
    rows = keyword_search(CAPTIONS, [["tumour", "tumor", "carcinoma"], ["lymph node"]], without=["normal"])
    assert rows.tolist() == [0, 2, 5]
    assert keyword_search(CAPTIONS, [["TUMOURS"]]).tolist() == [4]
    assert keyword_search(CAPTIONS, [["lymph node"]], without=["tumour", "tumor", "carcinoma"]).tolist() == [7]
    with pytest.raises(ValueError, match="at least one"):
        keyword_search(CAPTIONS, [[]])


def test_caption_table_errors(tmp_path, encoder):
    bad = tmp_path / "t.csv"
    pd.DataFrame({"path": ["a.png"], "caption": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="missing column"):
        read_caption_table(bad)
    table = tmp_path / "ok.csv"
    CAPTIONS.to_csv(table, index=False)
    t = read_caption_table(table)
    with pytest.raises(ValueError, match="cannot read 2 image"):
        from_captions(t, [0, 2], encoder, root=tmp_path)
    with pytest.raises(ValueError, match="empty"):
        from_captions(t, [], encoder, root=tmp_path)


def test_retrieve_top_n_by_cosine():
    img = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    ps = retrieve(img, np.array([1.0, 0.0]), top_n=2, prompt="tumour")
    assert ps.provenance["rows"] == [0, 1]
    np.testing.assert_array_equal(ps.of("tumour"), img[[0, 1]])
    with pytest.raises(ValueError, match="dimension"):
        retrieve(img, np.ones(3), top_n=1)


def test_cli_embed_prototypes_similarity_suggest(planted, tmp_path, capsys):
    from skimage.io import imsave

    from napari_alregions.cli import main
    from napari_alregions.io_qupath import read_regions

    path, proto = planted
    (tmp_path / "imgs").mkdir()
    imsave(tmp_path / "imgs" / "p.png", proto)
    imsave(tmp_path / "imgs" / "n.png", np.zeros((32, 32, 3), np.uint8), check_contrast=False)
    pd.DataFrame({"image_path": ["imgs/p.png", "imgs/n.png"],
                  "caption": ["Tumour, lymph node", "normal lymph node"]}).to_csv(tmp_path / "caps.csv", index=False)
    enc = ["--encoder", "random:0", "--patch-size", str(D), "--level", "0"]
    assert main(["embed", str(path), "--stride", str(D), *enc, "--device", "cpu", "--batch-size", "16", "--out", str(tmp_path / "emb.npy")]) == 0
    assert main(["prototypes", "keyword", str(tmp_path / "caps.csv"), "--with", "tumour,tumor", "--with", "lymph node",
                 "--without", "normal", *enc, "--out", str(tmp_path / "p.npz")]) == 0
    assert "1 of 2 captions match" in capsys.readouterr().out
    assert main(["similarity", str(tmp_path / "emb.npy"), str(tmp_path / "p.npz"), "--out", str(tmp_path / "sim.npy")]) == 0
    sim = np.load(tmp_path / "sim.npy")
    for r, c in PLANTED:
        assert sim[r, c] == pytest.approx(1.0, abs=1e-4)
    assert main(["suggest", str(tmp_path / "sim.npy"), "--method", "prototype", "-l", str(D), "--stride", str(D),
                 "-k", "3", "--option", "base=standard", "--out", str(tmp_path / "r.geojson")]) == 0
    assert sorted((r.y // D, r.x // D) for r in read_regions(tmp_path / "r.geojson")) == sorted(PLANTED)
    for method in ("diversity", "focannot"):
        assert main(["suggest", str(tmp_path / "sim.npy"), "--method", method, "--cell-features", str(tmp_path / "emb.npy"),
                     "-l", str(4 * D), "--stride", str(D), "-k", "2", "--out", str(tmp_path / f"{method}.geojson")]) == 0
        assert len(read_regions(tmp_path / f"{method}.geojson")) == 2
    # bad input: a clear message and exit code 2
    assert main(["prototypes", "keyword", str(tmp_path / "caps.csv"), "--with", "melanoma", *enc,
                 "--out", str(tmp_path / "q.npz")]) == 2
    assert "would be empty" in capsys.readouterr().err
    np.save(tmp_path / "other.npy", np.ones((4, 4, 7), np.float32))
    assert main(["similarity", str(tmp_path / "other.npy"), str(tmp_path / "p.npz"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "does not match" in capsys.readouterr().err
