"""Inference benchmark: end-to-end probability map vs. the model-only ceiling, one run.

    python benchmarks/bench_inference.py [--size 8192] [--batch 256] [--device cpu|cuda]
                                         [--arch compact] [--patch 64] [--stride 64]

End to end = ``predict_probability_map`` on a JPEG-compressed pyramidal TIFF: tile decode in
reader threads, patch assembly, host-to-device copy, the model (autocast bf16/fp16 on CUDA),
softmax and writing the map. The ceiling = the same model on random tensors already on the
device, same batch size. Goal: ratio >= 0.7 on a CPU, >= 0.6 on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_alregions.model import ModelSpec, predict_probability_map
from napari_alregions.model.device import pick_device
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import ceiling  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def model_only(model, spec: ModelSpec, batch: int, n_patches: int, device: torch.device) -> float:
    return ceiling(lambda x: torch.softmax(model(x).float(), 1), batch=batch, patch=spec.patch_size,
                   n_patches=n_patches, device=device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default=None)
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None, help="reader threads (default: predict's)")
    ap.add_argument("--cpu-decode", action="store_true", help="on CUDA, decode JPEG tiles on the CPU, not with nvJPEG")
    args = ap.parse_args()
    device = pick_device(args.device)
    folder = CACHE / f"io_{args.size}"
    m = make_slide_pool(folder, n_slides=1, size=args.size, seed=7)
    slide = open_slide(folder / m["slides"][0]["image"])
    spec = ModelSpec(arch=args.arch, level=args.level, patch_size=args.patch)
    torch.manual_seed(0)
    model = spec.build().to(device).eval()
    tissue = slide.tissue_map(args.stride)
    n = int(tissue.sum())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; {args.arch}, {args.patch}² patches at level {args.level}, stride {args.stride}, batch {args.batch}")
    print(f"slide {args.size}² px: {n} tissue patches of {tissue.size}")
    gpu_decode = False if args.cpu_decode else None
    predict_probability_map(slide, model, spec, stride=args.stride, batch_size=args.batch, tissue=tissue, device=device,
                            workers=args.workers, gpu_decode=gpu_decode)  # warm-up (caches, cuDNN autotune)
    best_e2e = 0.0
    for _ in range(2):
        t = time.perf_counter()
        prob = predict_probability_map(slide, model, spec, stride=args.stride, batch_size=args.batch, tissue=tissue,
                                       device=device, workers=args.workers, gpu_decode=gpu_decode)
        best_e2e = max(best_e2e, n / (time.perf_counter() - t))
    assert np.isfinite(prob[tissue]).all()
    ceiling = max(model_only(model, spec, args.batch, max(n, 4 * args.batch), device) for _ in range(2))
    mp = (args.patch * slide.level_factor(args.level)) ** 2 / 1e6
    print(f"{'':<14}{'patches/s':>12}{'MP/s (level 0)':>16}")
    print(f"{'end-to-end':<14}{best_e2e:>12.0f}{best_e2e * mp:>16.1f}")
    print(f"{'model only':<14}{ceiling:>12.0f}{ceiling * mp:>16.1f}")
    print(f"ratio end-to-end / model-only: {best_e2e / ceiling:.2f} (goal >= {0.6 if device.type == 'cuda' else 0.7})")


if __name__ == "__main__":
    main()
