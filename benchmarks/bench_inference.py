"""Inference benchmark: end-to-end probability map vs. the model-only ceiling, one run.

    python benchmarks/bench_inference.py [--size 8192] [--batch 256|auto] [--device cpu|cuda]
                                         [--arch compact] [--patch 64] [--stride 64]
                                         [--compile [MODE]]

Also the stream alone (read, decode, batch and put on the device, no model): where the
end-to-end figure sits between the two ceilings says what bounds it.

End to end = ``predict_probability_map`` on a JPEG-compressed pyramidal TIFF: tile decode in
reader threads, patch assembly, host-to-device copy, the model (autocast bf16/fp16 on CUDA),
softmax and writing the map. The ceiling = the same model (compiled too, with --compile) on
random tensors already on the device, same batch size ("auto": tuned once, used for both).
Goal: ratio >= 0.7 on a CPU, >= 0.6 on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_alregions.cli_pool import batch_size_arg
from napari_alregions.model import ModelSpec, predict_probability_map
from napari_alregions.model._stream import pad_mode, stream_batches
from napari_alregions.model.batching import tune_batch_size
from napari_alregions.model.device import COMPILE_MODES, pick_device
from napari_alregions.model.predict import stream_settings
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import ceiling, softmax_forward  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def model_only(forward, spec: ModelSpec, batch: int, n_patches: int, device: torch.device) -> float:
    return ceiling(forward, batch=batch, patch=spec.patch_size, n_patches=n_patches, device=device)


def stream_only(slide, tissue, spec: ModelSpec, *, stride: int, batch: int, device: torch.device,
                workers: int | None, gpu_decode: bool | None, pad: str | None) -> float:
    """Patches/s of the stream that feeds the model, the model left out."""
    workers, gpu_decode = stream_settings(slide, spec.level, device, workers=workers, gpu_decode=gpu_decode)
    n = 0
    t = time.perf_counter()
    for b in stream_batches(slide, tissue, level=spec.level, stride=stride, patch=spec.patch_size, batch=batch,
                            device=device, workers=workers, gpu_decode=gpu_decode, pad=pad):
        n += len(b.idx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t)


def compile_note(mode: bool | str) -> str:
    return "" if not mode else ", compiled" if mode is True else f", compiled ({mode})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--batch", type=batch_size_arg, default=256, help="patches per batch, or 'auto'")
    ap.add_argument("--device", default=None)
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None, help="reader threads (default: predict's)")
    ap.add_argument("--cpu-decode", action="store_true", help="on CUDA, decode JPEG tiles on the CPU, not with nvJPEG")
    ap.add_argument("--compile", nargs="?", const=True, default=False, choices=COMPILE_MODES,
                    help="torch.compile the model (end to end and ceiling), optionally in this mode")
    args = ap.parse_args()
    device = pick_device(args.device)
    folder = CACHE / f"io_{args.size}"
    m = make_slide_pool(folder, n_slides=1, size=args.size, seed=7)
    slide = open_slide(folder / m["slides"][0]["image"])
    spec = ModelSpec(arch=args.arch, level=args.level, patch_size=args.patch)
    torch.manual_seed(0)
    model = spec.build().to(device).eval()
    if args.batch == "auto":
        args.batch = tune_batch_size(softmax_forward(model, False), patch=args.patch, device=device)
    forward = softmax_forward(model, args.compile)
    tissue = slide.tissue_map(args.stride)
    n = int(tissue.sum())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}; {args.arch}, {args.patch}² patches at level {args.level}, stride {args.stride}, "
          f"batch {args.batch}{compile_note(args.compile)}")
    print(f"slide {args.size}² px: {n} tissue patches of {tissue.size}")
    gpu_decode = False if args.cpu_decode else None
    predict_probability_map(slide, model, spec, stride=args.stride, batch_size=args.batch, tissue=tissue, device=device,
                            workers=args.workers, gpu_decode=gpu_decode, compile=args.compile)  # warm-up (caches, autotune)
    best_e2e = 0.0
    for _ in range(2):
        t = time.perf_counter()
        prob = predict_probability_map(slide, model, spec, stride=args.stride, batch_size=args.batch, tissue=tissue,
                                       device=device, workers=args.workers, gpu_decode=gpu_decode, compile=args.compile)
        best_e2e = max(best_e2e, n / (time.perf_counter() - t))
    assert np.isfinite(prob[tissue]).all()
    ceiling = max(model_only(forward, spec, args.batch, max(n, 4 * args.batch), device) for _ in range(2))
    feed = max(stream_only(slide, tissue, spec, stride=args.stride, batch=args.batch, device=device,
                           workers=args.workers, gpu_decode=gpu_decode, pad=pad_mode(args.compile, device))
               for _ in range(2))
    mp = (args.patch * slide.level_factor(args.level)) ** 2 / 1e6
    print(f"{'':<14}{'patches/s':>12}{'MP/s (level 0)':>16}")
    print(f"{'end-to-end':<14}{best_e2e:>12.0f}{best_e2e * mp:>16.1f}")
    print(f"{'model only':<14}{ceiling:>12.0f}{ceiling * mp:>16.1f}")
    print(f"{'stream only':<14}{feed:>12.0f}{feed * mp:>16.1f}")
    print(f"ratio end-to-end / model-only: {best_e2e / ceiling:.2f} (goal >= {0.6 if device.type == 'cuda' else 0.7})")


if __name__ == "__main__":
    main()
