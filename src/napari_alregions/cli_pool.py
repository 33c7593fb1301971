"""``alregions pool predict|embed``: per-slide maps over a slide pool (dask.distributed)."""

from __future__ import annotations

import argparse
import sys

from ._argtypes import non_negative_int, positive_int

__all__ = ["add_cluster_args", "add_inference_args", "add_pool_parser", "batch_size_arg"]


def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: a positive int or "auto"."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def add_inference_args(p: argparse.ArgumentParser, *, device_help: str = "cpu, cuda, cuda:N or auto") -> None:
    """``--device``, ``--batch-size`` and ``--compile`` of the commands that run a model over a slide."""
    p.add_argument("--device", default="auto", help=device_help)
    p.add_argument("--batch-size", type=batch_size_arg, default=None, metavar="N|auto",
                   help="patches per forward pass; 'auto' tunes it to the GPU (default: auto on a GPU, 128 on the CPU)")
    p.add_argument("--compile", action="store_true", help="run the model through torch.compile (pays off on GPUs)")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://10.0.0.5:8786")
    g.add_argument("--local-cluster", type=non_negative_int, default=0, metavar="N",
                   help="start a LocalCluster of N worker processes on this machine")


def _cmd_pool(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .distributed import PoolJob, close, connect, pool_slides, run_pool

    slides = pool_slides(args.slides[0] if len(args.slides) == 1 else args.slides)
    if not slides:
        raise ValueError(f"no slides in {' '.join(args.slides)}")
    if args.checkpoint:
        from .model import load_checkpoint

        model, spec, _ = load_checkpoint(args.checkpoint)
    elif args.kind == "embed":
        import torch

        from .model import ModelSpec

        torch.manual_seed(args.encoder_seed)  # the untrained, seeded encoder of `alregions embed`
        spec = ModelSpec(patch_size=args.patch_size, level=args.level)
        model = spec.build()
    else:
        raise ValueError("predict needs --checkpoint")
    job = PoolJob(args.kind, stride=args.stride, batch_size=args.batch_size, threads=args.threads,
                  device=None if args.device == "auto" else args.device, compile=args.compile)
    client = connect(args.scheduler, args.local_cluster)
    try:
        with tqdm(total=len(slides), desc=args.kind, unit="slide", file=sys.stderr, mininterval=0.5) as bar:
            def progress(name: str, done: int, total: int) -> None:
                bar.n = done
                bar.set_postfix_str(name[-30:])
                bar.refresh()

            results = run_pool(slides, model, spec, job, args.out, client=client, progress=progress)
    finally:
        close(client)
    where = args.scheduler or (f"LocalCluster({args.local_cluster})" if args.local_cluster else "this process")
    print(f"{len(results)} slide(s) done on {where}; results in {args.out}")
    return 0


def add_pool_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pool", help="probability maps or embeddings for every slide of a pool (dask.distributed)",
                       description="Run per-slide work over a pool, on a dask.distributed cluster when asked. Results go "
                                   "to OUT/<slide>.<kind>.npy; a rerun skips slides already done with the same model.")
    p.add_argument("kind", choices=("predict", "embed"))
    p.add_argument("slides", nargs="+", help="a pool folder (manifest.json or slide files) or slide paths")
    p.add_argument("--checkpoint", help="our checkpoint (predict: the classifier; embed: its penultimate layer)")
    p.add_argument("--encoder-seed", type=non_negative_int, default=0, help="embed without --checkpoint: seed of the random encoder")
    p.add_argument("--patch-size", type=positive_int, default=64, help="embed without --checkpoint: patch side")
    p.add_argument("--level", type=non_negative_int, default=1, help="embed without --checkpoint: pyramid level")
    p.add_argument("--stride", type=positive_int, default=128, help="level-0 px per map pixel")
    add_inference_args(p, device_help="cpu, cuda, cuda:N or auto (each worker's GPU when it has one)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per task")
    p.add_argument("--out", default="pool-results")
    add_cluster_args(p)
    p.set_defaults(func=_cmd_pool)
