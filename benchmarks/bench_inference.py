"""Inference benchmark: end-to-end probability map vs. the model-only ceiling, one run.

    python benchmarks/bench_inference.py [--size 8192] [--batch 256|auto] [--device cpu|cuda]
                                         [--arch compact] [--patch 64] [--stride 64]
                                         [--compile [MODE]] [--decoder NAME[:BACKEND=HINT,...]]
                                         [--processes N]

Also the stream alone (read, decode, batch and put on the device, no model) and, with a GPU
decoder, the decoder alone on the slide's tiles: where the end-to-end figure sits between
these ceilings says what bounds it.

End to end = ``predict_probability_map`` on a JPEG-compressed pyramidal TIFF: tile decode in
reader threads or read processes (or on the GPU), patch assembly, host-to-device copy, the
model (autocast bf16/fp16 on CUDA), softmax and writing the map. The ceiling = the same model (compiled too, with --compile) on
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
from napari_alregions.model._stream import DECODE_BATCH, pad_mode
from napari_alregions.model.batching import tune_batch_size
from napari_alregions.model.decoders import DECODERS, NvImageCodec
from napari_alregions.model.device import COMPILE_MODES, pick_device
from napari_alregions.model.predict import stream_settings
from napari_alregions.synthetic import make_slide_pool
from napari_alregions.wsi import open_slide

sys.path.insert(0, str(Path(__file__).parent))
from _ceiling import ceiling, softmax_forward, stream_only  # noqa: E402

CACHE = Path(__file__).parent / ".cache"


def model_only(forward, spec: ModelSpec, batch: int, n_patches: int, device: torch.device) -> float:
    return ceiling(forward, batch=batch, patch=spec.patch_size, n_patches=n_patches, device=device)


def decode_only(tiles, decode, device: torch.device, max_tiles: int = 4096) -> float:
    """Tiles/s of the decoder alone, on the level's stored tiles (up to ``max_tiles``),
    in calls of the stream's size; the streams are read beforehand."""
    counts = np.asarray(tiles.counts)
    idx = np.flatnonzero(counts > 0)[:max_tiles]
    streams = [tiles.jpeg_stream(int(i)) for i in idx]
    t = time.perf_counter()
    for s in range(0, len(streams), DECODE_BATCH):
        decode(streams[s : s + DECODE_BATCH], device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(streams) / (time.perf_counter() - t)


def decoder_arg(text: str):
    """'torchvision', 'nvimgcodec', or 'nvimgcodec:KIND=HINT,...' (nvImageCodec backends
    with load hints, e.g. nvimgcodec:hw_gpu_only=0.7,hybrid_cpu_gpu=0.3)."""
    name, _, opts = text.partition(":")
    if name not in DECODERS or (opts and name != "nvimgcodec"):
        raise argparse.ArgumentTypeError(f"expected one of {DECODERS}, or nvimgcodec:KIND=HINT,..., got {text!r}")
    if not opts:
        return name
    try:
        hints = {k: float(v) for k, v in (kv.split("=") for kv in opts.split(","))}
        return NvImageCodec(hints)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def decoder_name(decode, processes: int) -> str:
    if decode is None:
        return "CPU (read processes)" if processes else "CPU (reader threads)"
    if isinstance(decode, NvImageCodec):
        name = "nvImageCodec" + (f" {decode.backends}" if decode.backends else "")
    else:
        name = getattr(decode, "__name__", type(decode).__name__)
    return f"{name}, CPU in read processes for the blocks it has no time for" if processes else name


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
    ap.add_argument("--cpu-decode", action="store_true", help="on CUDA, decode JPEG tiles on the CPU, not on the GPU")
    ap.add_argument("--decoder", type=decoder_arg, default=None,
                    help=f"GPU JPEG decoder: {', '.join(DECODERS)}, or nvimgcodec:KIND=HINT,... (default: predict's choice)")
    ap.add_argument("--processes", type=int, default=None,
                    help="read processes for the CPU decode (default: predict's; 0: decode in the reader threads)")
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
    gpu_decode = False if args.cpu_decode else (True if args.decoder is not None else None)
    how = stream_settings(slide, spec.level, device, patch=args.patch, workers=args.workers, gpu_decode=gpu_decode,
                          decoder=args.decoder, processes=args.processes)
    workers, decode = how.workers, how.decode
    print(f"JPEG decode: {decoder_name(decode, how.processes)}; {workers} reader threads, {how.processes} read processes")
    run = dict(stride=args.stride, batch_size=args.batch, tissue=tissue, device=device, workers=workers,
               gpu_decode=decode is not None, decoder=decode, compile=args.compile, processes=how.processes)
    predict_probability_map(slide, model, spec, **run)  # warm-up (caches, autotune)
    best_e2e = 0.0
    for _ in range(2):
        t = time.perf_counter()
        prob = predict_probability_map(slide, model, spec, **run)
        best_e2e = max(best_e2e, n / (time.perf_counter() - t))
    assert np.isfinite(prob[tissue]).all()
    ceiling = max(model_only(forward, spec, args.batch, max(n, 4 * args.batch), device) for _ in range(2))
    feed = max(stream_only(slide, tissue, level=spec.level, stride=args.stride, patch=spec.patch_size,
                           batch=args.batch, device=device, workers=workers, decode=decode,
                           pad=pad_mode(args.compile, device), processes=how.processes)
               for _ in range(2))
    mp = (args.patch * slide.level_factor(args.level)) ** 2 / 1e6
    print(f"{'':<14}{'patches/s':>12}{'MP/s (level 0)':>16}")
    print(f"{'end-to-end':<14}{best_e2e:>12.0f}{best_e2e * mp:>16.1f}")
    print(f"{'model only':<14}{ceiling:>12.0f}{ceiling * mp:>16.1f}")
    print(f"{'stream only':<14}{feed:>12.0f}{feed * mp:>16.1f}")
    if decode is not None:
        tiles = slide.tiled_level(args.level)
        print(f"decoder only: {max(decode_only(tiles, decode, device) for _ in range(2)):.0f} tiles/s "
              f"({tiles.th}x{tiles.tw} tiles, {DECODE_BATCH} per call)")
    print(f"ratio end-to-end / model-only: {best_e2e / ceiling:.2f} (goal >= {0.6 if device.type == 'cuda' else 0.7})")


if __name__ == "__main__":
    main()
