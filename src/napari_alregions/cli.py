"""The ``alregions`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._argtypes import non_negative_int, positive_int, positive_ints
from ._errors import describe
from ._progress import progress_bar, steps_with_message, within_step
from .settings import HEADS

__all__ = ["main"]

logger = logging.getLogger("napari_alregions")


def _cmd_info(args: argparse.Namespace) -> int:
    from .wsi import open_slide

    with open_slide(args.slide) as slide:
        info = slide.info
        record = {
            "path": info.path,
            "format": info.format,
            "width": info.shape[1],
            "height": info.shape[0],
            "mpp": info.mpp,
            "pyramidal": info.pyramidal,
            "tile": info.tile_shape,
            "levels": [
                {"level": i, "width": w, "height": h, "downsample": round(d, 4)}
                for i, ((h, w), d) in enumerate(zip(info.level_shapes, info.downsamples, strict=True))
            ],
            "tissue_fraction": round(slide.tissue_fraction(), 4),
        }
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    mpp = f"{record['mpp']:.4g} µm/px" if record["mpp"] else "unknown"
    print(f"{record['path']}")
    print(f"  format      {record['format']}{'' if info.pyramidal else ' (not pyramidal: levels computed)'}")
    print(f"  size        {record['width']} x {record['height']} px, mpp {mpp}")
    print(f"  tissue      {100 * record['tissue_fraction']:.1f}% of the slide")
    for lvl in record["levels"]:
        print(f"  level {lvl['level']}     {lvl['width']} x {lvl['height']} (downsample {lvl['downsample']:g})")
    return 0


def _cmd_make_demo_data(args: argparse.Namespace) -> int:
    from .synthetic import make_slide_pool

    kept: list[str] = []
    with progress_bar(args.n_slides, "rendering slides", "slide") as bar:
        manifest = make_slide_pool(
            args.folder, n_slides=args.n_slides, size=args.size, seed=args.seed, n_test=args.n_test,
            test_size=args.test_size, lesions=args.lesions, overwrite=args.overwrite,
            progress=lambda done, total: bar.update(1),
            report=lambda name, rendered: None if rendered else kept.append(name),
        )
    n_tumour = sum(s["has_tumour"] for s in manifest["slides"])
    n = len(manifest["slides"])
    if not kept:
        print(f"wrote {n} slides ({n_tumour} with tumour) to {args.folder}")
    else:
        print(f"{args.folder}: kept {len(kept)} slide(s) already there with these settings"
              + (f", wrote {n - len(kept)}" if n > len(kept) else "")
              + f" ({n} slides, {n_tumour} with tumour; --overwrite renders them again)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import SimConfig, results_table, run_simulation

    sizes, ks = args.region_size, args.k
    config = SimConfig(
        methods=tuple(m.strip() for m in args.methods.split(",")),
        settings=tuple((l_, k_) for l_ in sizes for k_ in ks),
        cycles=args.cycles, seed=args.seed, stride=args.stride, level=args.level,
        patch_size=args.patch_size, full_baseline=not args.no_baseline,
        initial=tuple(m.strip() for m in args.initial.split(",")), prototypes=args.prototypes, encoder=args.encoder,
        scheduler=args.scheduler, local_cluster=args.local_cluster, repeats=args.repeats, epochs=args.epochs,
        patience=args.patience, learner=args.learner, head=args.head,
    )
    config.validate()  # before the bar starts
    with progress_bar(config.n_steps, "simulation", "cycle") as bar:
        result = run_simulation(args.slides, config, out=args.out, progress=steps_with_message(bar),
                                detail=within_step(bar))
    print(results_table(result))
    print(f"results in {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), quick=args.quick, learner=args.learner)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"alregions: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="alregions",
        description="Region-based active learning for whole-slide image annotation.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="levels, sizes, mpp and tissue fraction of a slide")
    s.add_argument("slide", help="slide: a pyramidal TIFF, OME-TIFF, SVS, ... file, an OME-Zarr folder, or a DICOM file "
                   "or folder (DICOM, MRXS, VMS need the openslide extra)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("make-demo-data", help="write a synthetic slide pool with ground truth")
    s.add_argument("folder")
    s.add_argument("--n-slides", type=positive_int, default=6)
    s.add_argument("--size", type=positive_int, default=4096, help="level-0 side in pixels (0.5 µm/px)")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--n-test", type=non_negative_int, help="test slides (the last ones; default: a third)")
    s.add_argument("--test-size", type=positive_int, help="level-0 side of the test slides (default: --size)")
    s.add_argument("--lesions", choices=("mixed", "sparse"), default="mixed",
                   help="mixed: isolated cells to large lesions, some slides without; sparse: CAMELYON16-like small "
                        "metastases on every slide and tumour-like germinal centres (the demo's task)")
    s.add_argument("--overwrite", action="store_true", help="re-render existing slides")
    s.set_defaults(func=_cmd_make_demo_data)

    s = sub.add_parser("simulate", help="simulated active learning comparing selectors (ground-truth oracle)")
    s.add_argument("--slides", required=True,
                   help="pool folder with manifest.json: slides with a split (train/test) and their ground truth as a "
                        "label mask (see make-demo-data) or QuPath GeoJSON (see README)")
    s.add_argument("--methods", default="random,standard,standard_nonsquare,adaptive")
    s.add_argument("-l", "--region-size", type=positive_ints, default=[384],
                   help="region side(s) in level-0 px, comma-separated")
    s.add_argument("-k", type=positive_ints, default=[2], help="regions per slide and cycle, comma-separated")
    s.add_argument("--cycles", type=positive_int, default=5)
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--repeats", type=positive_int, default=1,
                   help="runs from distinct initial labeled sets (the paper: 3); outputs give mean and min/max")
    s.add_argument("--learner", choices=("fast", "deep"), default="fast",
                   help="fast: cached texture features and a forest + logistic head, refit in seconds (the viewer's default); "
                        "deep: the patch CNN trained to convergence every cycle (the adaptive paper's protocol)")
    s.add_argument("--head", choices=HEADS, default="blend",
                   help="the fast learner's head: a random forest and a logistic regression averaged (default), or either")
    s.add_argument("--epochs", type=positive_int, help="most epochs per cycle's training (deep learner; default: the viewer's schedule)")
    s.add_argument("--patience", type=positive_int, help="early stopping after this many epochs without a better validation loss")
    s.add_argument("--stride", type=positive_int, default=64, help="map stride, level-0 px")
    s.add_argument("--level", type=non_negative_int, default=1, help="working pyramid level of the model")
    s.add_argument("--patch-size", type=positive_int, default=64, help="patch side at the working level")
    s.add_argument("--no-baseline", action="store_true", help="skip the full-annotation baseline")
    s.add_argument("--out", default="simulation")
    s.add_argument("--initial", default="random",
                   help="initial labeled set(s), comma-separated: random, diversity, prototype (each runs every method)")
    s.add_argument("--prototypes", help="prototype set (.npz from `alregions prototypes`) for prototype selection")
    s.add_argument("--encoder", default="random",
                   help="patch encoder for diversity/focannot/prototype: our checkpoint, torchvision:<arch>[:weights], "
                        "an exported program (.pt2), or random[:seed] (untrained, default)")
    from .cli_pool import add_cluster_args

    add_cluster_args(s)
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("demo", help="the main job on built-in synthetic data")
    s.add_argument("--out", default="alregions-demo", help="output folder")
    s.add_argument("--quick", action="store_true", help="a smaller run (for smoke tests)")
    s.add_argument("--learner", choices=("fast", "deep"), default="fast",
                   help="fast (default; minutes) or deep (the paper's CNN protocol; much longer)")
    s.set_defaults(func=_cmd_demo)

    from .cli_embed import add_embed_parsers
    from .cli_pool import add_pool_parser
    from .cli_qupath import add_qupath_parsers
    from .cli_session import add_session_parsers
    from .cli_suggest import add_suggest_parser

    add_suggest_parser(sub)
    add_embed_parsers(sub)
    add_pool_parser(sub)
    add_qupath_parsers(sub)
    add_session_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, MemoryError) as exc:  # expected failures: bad input, files, disks
        logger.info("the traceback (-v):", exc_info=True)
        print(f"alregions: error: {describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alregions: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
