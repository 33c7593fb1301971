"""Embedding benchmark (issue #6): end-to-end patch embeddings vs. the encoder-only ceiling,
and the prototype similarity map for 10⁶ patches x 100 prototypes, in one run.

    python benchmarks/bench_embed.py [--size 8192] [--batch 256] [--device cpu|cuda]
                                     [--encoder random] [--patch 64] [--stride 64]

End to end = ``embed_slide`` on a JPEG pyramidal TIFF (tile decode in reader threads, patch
assembly, the encoder's penultimate features, L2 normalisation, writing the map). The
ceiling = the same encoder and head on random tensors already on the device. The
similarity map is timed against a straightforward reference (one prototype at a time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_alregions.embed import embed_slide, load_encoder, similarity_map
from napari_alregions.model.device import pick_device
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import ceiling  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def encoder_only(enc, batch: int, n_patches: int, device: torch.device) -> float:
    module = enc.module.to(device).eval()
    return ceiling(lambda x: enc.head(module, x).cpu(), batch=batch, patch=enc.patch_size, n_patches=n_patches,
                   device=device)


def naive_similarity(emb: np.ndarray, protos: np.ndarray) -> np.ndarray:
    """Reference: one prototype at a time over all patches, running max."""
    flat = emb.reshape(-1, emb.shape[-1])
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    best = np.full(len(flat), -np.inf, np.float32)
    for p in protos:
        best = np.maximum(best, flat @ (p / np.linalg.norm(p)))
    return np.clip(best, 0, 1).reshape(emb.shape[:2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--encoder", default="random")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--patches", type=int, default=1_000_000, help="patches of the similarity benchmark")
    ap.add_argument("--prototypes", type=int, default=100)
    args = ap.parse_args()
    device = pick_device(args.device)
    folder = CACHE / f"io_{args.size}"
    m = make_slide_pool(folder, n_slides=1, size=args.size, seed=7)
    slide = open_slide(folder / m["slides"][0]["image"])
    enc = load_encoder(args.encoder, patch_size=args.patch, level=args.level)
    tissue = slide.tissue_map(args.stride)
    n = int(tissue.sum())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; encoder {enc.name} (D={enc.dim}), {args.patch}² patches at level {args.level}, "
          f"stride {args.stride}, batch {args.batch}; {n} tissue patches")
    embed_slide(slide, enc, stride=args.stride, tissue=tissue, batch_size=args.batch, device=device)  # warm-up
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        emb = embed_slide(slide, enc, stride=args.stride, tissue=tissue, batch_size=args.batch, device=device)
        best = max(best, n / (time.perf_counter() - t))
    assert np.isfinite(emb[tissue]).all()
    ceiling = max(encoder_only(enc, args.batch, max(n, 4 * args.batch), device) for _ in range(2))
    print(f"embeddings end-to-end {best:9.0f} patches/s   encoder only {ceiling:9.0f} patches/s   "
          f"ratio {best / ceiling:.2f} (goal as inference: >= {0.6 if device.type == 'cuda' else 0.7})")

    rng = np.random.default_rng(0)
    side = int(np.sqrt(args.patches))
    big = rng.normal(size=(side, side, enc.dim)).astype(np.float32)
    protos = rng.normal(size=(args.prototypes, enc.dim)).astype(np.float32)
    t = time.perf_counter()
    sim = similarity_map(big, protos)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = naive_similarity(big, protos)
    t_ref = time.perf_counter() - t
    assert np.allclose(sim, ref, atol=1e-4)
    print(f"similarity map {side * side:,} patches x {args.prototypes} prototypes (D={enc.dim}): "
          f"{t_ours:.2f} s (naive per-prototype loop {t_ref:.2f} s, {t_ref / t_ours:.1f}x)")


if __name__ == "__main__":
    main()
