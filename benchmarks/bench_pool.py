"""Slide-pool throughput: in this process vs. a dask.distributed LocalCluster, and on a GPU
against the model-only ceiling, one run (issue #7).

    python benchmarks/bench_pool.py [--slides 6] [--size 4096] [--workers 2] [--stride 64]
                                    [--device cpu|cuda] [--arch compact] [--patch 64] [--level 1]
                                    [--batch N|auto] [--compile]

Both paths run the same per-slide task (``distributed.slide_task``: open the slide, tissue
mask, read tiles, the model, write the probability map). Serial: one process (on the CPU
torch with as many threads as the cluster has workers); cluster: N worker processes (one
thread each on the CPU). Prints slides/s, patches/s and the ratio, and checks the maps
agree. With a CUDA device it also measures the model alone on random tensors already on
the GPU (same batch, same compile setting) and prints pool end-to-end / model-only
(goal >= 0.6).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_alregions.cli_pool import batch_size_arg
from napari_alregions.distributed import PoolJob, local_client, run_pool
from napari_alregions.model import ModelSpec
from napari_alregions.model.batching import tune_batch_size
from napari_alregions.model.device import pick_device
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import ceiling, softmax_forward  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def _warm() -> None:
    import napari_alregions.embed  # noqa: F401  (torch, the model, the slide reader)
    import napari_alregions.model.predict  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 2))
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--batch", type=batch_size_arg, default=None, help="patches per batch or 'auto' (default: predict's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (pool and ceiling)")
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    folder = CACHE / f"pool_{args.slides}x{args.size}"
    manifest = make_slide_pool(folder, n_slides=args.slides, size=args.size, seed=11)
    slides = [folder / s["image"] for s in manifest["slides"]]
    n_patches = 0
    for p in slides:
        with open_slide(p) as s:
            n_patches += int(s.tissue_map(args.stride).sum())
    torch.manual_seed(0)
    spec = ModelSpec(arch=args.arch, patch_size=args.patch, level=args.level)
    model = spec.build().eval()
    if args.batch == "auto":  # tuned once here, so the pool and the ceiling use the same batch
        args.batch = tune_batch_size(softmax_forward(model.to(device), False), patch=args.patch, device=device)
    name = torch.cuda.get_device_name(device) if cuda else f"{os.cpu_count()} CPU cores"
    print(f"{args.slides} slides of {args.size}² px, {n_patches} tissue patches, {args.arch} {args.patch}² at level "
          f"{args.level}, stride {args.stride}, batch {args.batch or 'default'}{', compiled' if args.compile else ''}; "
          f"{name}, {args.workers} workers")
    job_args = dict(stride=args.stride, batch_size=args.batch, device=str(device), compile=args.compile)
    tmp = Path(tempfile.mkdtemp())
    try:
        # warm-up: cuDNN/compile caches and the tuned batch belong to the process, not the pool
        run_pool(slides[:1], model, spec, PoolJob("predict", threads=args.workers, **job_args), tmp / "warm")
        t = time.perf_counter()
        serial = run_pool(slides, model, spec, PoolJob("predict", threads=args.workers, **job_args), tmp / "serial")
        t_serial = time.perf_counter() - t
        client = local_client(args.workers)
        try:
            client.wait_for_workers(args.workers)
            client.run(_warm)  # imports (torch ~3 s per worker) are not throughput
            t = time.perf_counter()
            dist = run_pool(slides, model, spec, PoolJob("predict", threads=1, **job_args), tmp / "dist", client=client)
            t_dist = time.perf_counter() - t
        finally:
            client.close()
            client.cluster.close()
        # the CPU path is exact; on a GPU reduced-precision kernels may differ by a few 1e-3
        tol = 2e-2 if cuda else 1e-5
        same = all(np.allclose(np.load(serial[n]), np.load(dist[n]), atol=tol, equal_nan=True) for n in serial)
        print(f"{'':<24}{'s':>8}{'slides/s':>10}{'patches/s':>11}")
        print(f"{'in process':<24}{t_serial:>8.1f}{len(slides) / t_serial:>10.2f}{n_patches / t_serial:>11.0f}")
        print(f"{'LocalCluster':<24}{t_dist:>8.1f}{len(slides) / t_dist:>10.2f}{n_patches / t_dist:>11.0f}")
        print(f"ratio cluster / in process: {t_serial / t_dist:.2f}; maps agree (atol {tol:g}): {same}")
        if cuda:
            model = model.to(device)
            forward = softmax_forward(model, args.compile)
            batch = args.batch or tune_batch_size(softmax_forward(model, False), patch=args.patch, device=device)
            top = max(ceiling(forward, batch=batch, patch=args.patch, n_patches=max(n_patches, 4 * batch), device=device)
                      for _ in range(2))
            best = n_patches / min(t_serial, t_dist)
            print(f"{'model only':<24}{'':>8}{'':>10}{top:>11.0f}")
            print(f"ratio pool end-to-end / model-only: {best / top:.2f} (goal >= 0.6)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
