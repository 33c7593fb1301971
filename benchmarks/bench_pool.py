"""Slide-pool throughput: in this process vs. a dask.distributed LocalCluster, one run (issue #7).

    python benchmarks/bench_pool.py [--slides 6] [--size 4096] [--workers 2] [--stride 64]

Both paths run the same per-slide task (``distributed.slide_task``: read tiles, compact CNN
at level 1, write the probability map). Serial: one process, torch with as many threads
as the cluster has workers; cluster: N worker processes of one thread each. Prints
slides/s, patches/s and the ratio, and checks the maps are identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_alregions.distributed import PoolJob, local_client, run_pool
from napari_alregions.model import ModelSpec
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

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
    args = ap.parse_args()
    folder = CACHE / f"pool_{args.slides}x{args.size}"
    manifest = make_slide_pool(folder, n_slides=args.slides, size=args.size, seed=11)
    slides = [folder / s["image"] for s in manifest["slides"]]
    n_patches = 0
    for p in slides:
        with open_slide(p) as s:
            n_patches += int(s.tissue_map(args.stride).sum())
    torch.manual_seed(0)
    spec = ModelSpec(patch_size=64, level=1)
    model = spec.build().eval()
    print(f"{args.slides} slides of {args.size}² px, {n_patches} tissue patches, compact 64² at level 1, "
          f"stride {args.stride}; {os.cpu_count()} cores, {args.workers} workers")
    tmp = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        serial = run_pool(slides, model, spec, PoolJob("predict", stride=args.stride, threads=args.workers), tmp / "serial")
        t_serial = time.perf_counter() - t
        client = local_client(args.workers)
        try:
            client.wait_for_workers(args.workers)
            client.run(_warm)  # imports (torch ~3 s per worker) are not throughput
            t = time.perf_counter()
            dist = run_pool(slides, model, spec, PoolJob("predict", stride=args.stride, threads=1), tmp / "dist", client=client)
            t_dist = time.perf_counter() - t
        finally:
            client.close()
            client.cluster.close()
        same = all(np.allclose(np.load(serial[n]), np.load(dist[n]), atol=1e-5, equal_nan=True) for n in serial)
        print(f"{'':<24}{'s':>8}{'slides/s':>10}{'patches/s':>11}")
        print(f"{'in process':<24}{t_serial:>8.1f}{len(slides) / t_serial:>10.2f}{n_patches / t_serial:>11.0f}")
        print(f"{'LocalCluster':<24}{t_dist:>8.1f}{len(slides) / t_dist:>10.2f}{n_patches / t_dist:>11.0f}")
        print(f"ratio cluster / in process: {t_serial / t_dist:.2f}; maps equal: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
