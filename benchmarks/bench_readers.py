"""Reader benchmark: CPU JPEG decode in reader threads vs. read processes, one run.

    python benchmarks/bench_readers.py [--size 8192] [--level 0] [--patch 256] [--stride 256]
                                       [--workers 2] [--processes 2]

The patch stream alone (read, decode, cut, batch; no model), measured two ways:

1. alone: threads decode in parallel wherever tifffile's codec releases the GIL;
2. beside a thread that keeps the GIL busy with Python, as a CUDA model's thread does
   while it launches kernels (the case the read processes are for: on the CUDA machine 8
   reader threads gave 3.1k patches/s on 16 cores).

Read processes are started once before timing (the pool lives as long as the interpreter).
Prints patches/s and the ratio processes / threads for both cases.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import stream_only  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


class GilBusy:
    """A thread that runs pure Python (holding the GIL but for the interpreter's switches) while on."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        x = 0
        while not self.quit.is_set():
            if not self.on.wait(0.01):
                continue
            for i in range(10_000):
                x += i

    def close(self) -> None:
        self.quit.set()
        self.thread.join()


def stream_rate(slide, tissue, args, processes: int) -> float:
    return stream_only(slide, tissue, level=args.level, stride=args.stride, patch=args.patch, batch=128,
                       device=torch.device("cpu"), workers=args.workers, processes=processes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--level", type=int, default=0)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="reader threads")
    ap.add_argument("--processes", type=int, default=2, help="read processes")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = CACHE / f"io_{args.size}"
    m = make_slide_pool(folder, n_slides=1, size=args.size, seed=7)
    slide = open_slide(folder / m["slides"][0]["image"])
    tissue = slide.tissue_map(args.stride)
    t = time.perf_counter()
    stream_rate(slide, tissue, args, args.processes)  # starts the processes (on demand, as jobs come)
    print(f"slide {args.size}², level {args.level}, {args.patch}² patches, stride {args.stride}: "
          f"{int(tissue.sum())} tissue patches; {args.workers} reader threads vs {args.processes} read processes "
          f"(first pass with process start: {time.perf_counter() - t:.1f} s)")
    busy = GilBusy()
    print(f"{'':<34}{'threads /s':>12}{'processes /s':>14}{'ratio':>8}")
    try:
        for label, on in (("alone", False), ("beside a GIL-busy Python thread", True)):
            (busy.on.set if on else busy.on.clear)()
            threads = max(stream_rate(slide, tissue, args, 0) for _ in range(args.repeats))
            procs = max(stream_rate(slide, tissue, args, args.processes) for _ in range(args.repeats))
            print(f"{label:<34}{threads:>12.0f}{procs:>14.0f}{procs / threads:>8.2f}")
    finally:
        busy.close()


if __name__ == "__main__":
    main()
