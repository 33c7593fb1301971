"""``alregions suggest``: propose regions on a saved priority map."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ._argtypes import non_negative_int, positive_int

__all__ = ["add_suggest_parser", "describe_methods", "load_map"]

#: Refuse maps with more pixels than this (a bound on untrusted input).
MAX_MAP_PIXELS = 1 << 28


def load_map(path: str | Path, *, what: str = "priority map") -> np.ndarray:
    """A 2-D array from ``.npy`` (no pickles) or a single-channel ``.tif``."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if len(series.shape) == 3 and series.shape[-1] in (3, 4) and series.dtype == np.uint8:
                raise ValueError(
                    f"{path}: an RGB image, not a {what}; compute a priority map first "
                    "(save it as .npy or a float TIFF with its stride)"
                )
            if np.prod(series.shape) > MAX_MAP_PIXELS:
                raise ValueError(f"{path}: {what} too large ({series.shape})")
            arr = series.asarray()
    else:
        raise ValueError(f"{path}: {what} must be a .npy or .tif file")
    if np.prod(arr.shape) > MAX_MAP_PIXELS:
        raise ValueError(f"{path}: {what} too large ({arr.shape})")
    return np.asarray(arr)


#: the arguments that provide a method's required arrays
_NEED_FLAGS = {"embeddings": "--embeddings or --cell-features", "descriptors": "--descriptors or --cell-features"}


def describe_methods(*, options: bool = False) -> str:
    """One line per registered selector: its name, title and what it needs; with
    ``options``, also its summary and every option with its default."""
    from .selection import METHODS

    width = max(len(name) for name in METHODS)
    lines = []
    for m in METHODS.values():
        flags = "".join(f"; pass {_NEED_FLAGS[n]}" for n in m.needs if n in _NEED_FLAGS)
        lines.append(f"{m.name:<{width}}  {m.title}: needs {m.inputs}{flags}")
        if options:
            lines.append(f"{'':<{width}}    {m.summary}")
            for o in m.options:
                lines.append(f"{'':<{width}}    --option {o.name}={json.dumps(o.default)}  {o.help}".rstrip())
    return "\n".join(lines)


class _MethodAction(argparse.Action):
    """``--method NAME``; ``--method`` alone lists the choices and exits."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            print(describe_methods())
            parser.exit()
        setattr(namespace, self.dest, values)


class _ListAction(argparse.Action):
    """``--list``: the registry with every option and default, then exit."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(describe_methods(options=True))
        parser.exit()


class _SuggestHelp(argparse.HelpFormatter):
    """Builds the ``--method`` help from the registry only when help is shown (importing
    the selectors costs a second), one line per method."""

    def _get_help_string(self, action):
        if isinstance(action, _MethodAction):
            return action.help + " (default: %(default)s):\n" + describe_methods()
        return super()._get_help_string(action)

    def _split_lines(self, text, width):
        lines = []
        for part in text.splitlines():  # keep the line breaks, wrap each line
            lines += super()._split_lines(part, width) or [""]
        return lines


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    if isinstance(parsed, list):
        parsed = tuple(parsed)
    return key.replace("-", "_"), parsed


def _cmd_suggest(args: argparse.Namespace) -> int:
    from .io_qupath import read_labeled_regions, write_regions
    from .selection import METHODS, select

    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    priority = load_map(args.map)
    options = dict(args.option or [])
    tissue = load_map(args.tissue, what="tissue mask").astype(bool) if args.tissue else None
    if args.embeddings:
        options["embeddings"] = load_map_nd(args.embeddings)
    if args.descriptors:
        options["descriptors"] = load_map_nd(args.descriptors)
    if args.cell_features:
        # per-patch embeddings (alregions embed) pooled to the grid the method needs, as the project does
        from .selection import needed_array

        cells = load_map_nd(args.cell_features)
        if cells.ndim != 3 or cells.shape[:2] != priority.shape:
            raise ValueError(f"--cell-features {args.cell_features}: a grid of {cells.shape[:-1] if cells.ndim > 1 else cells.shape} "
                             f"cells, but the priority map {args.map} has {priority.shape}: compute both on the same "
                             "slide with the same stride (an (H, W, D) array from alregions embed)")
        for need in METHODS[args.method].needs:
            if need not in options:
                options[need] = needed_array(need, cells, region_size=args.region_size, stride=args.stride,
                                             options=options)
    annotated = read_labeled_regions(args.annotated) if args.annotated else []
    try:
        regions = select(
            args.method, priority, stride=args.stride, region_size=args.region_size, k=args.k,
            tissue=tissue, annotated=annotated, seed=args.seed, slide=args.slide or Path(args.map).stem,
            cycle=args.cycle, **options,
        )
    except ValueError as exc:  # an array that does not fit the map: name both inputs
        need = next((n for n in ("embeddings", "descriptors") if str(exc).startswith(n) and n in options), None)
        if need is None:
            raise
        flag, path = (f"--{need}", getattr(args, need)) if getattr(args, need) else ("--cell-features", args.cell_features)
        raise ValueError(f"{flag} {path} does not fit the priority map {args.map} ({priority.shape[0]} x {priority.shape[1]} "
                         f"cells) with -l {args.region_size} and --stride {args.stride}: {exc}") from exc
    out = write_regions(args.out, regions)
    for r in regions:
        print(f"#{r.rank + 1}  x={r.x} y={r.y} w={r.w} h={r.h}  score={r.score:.4g}")
    # fewer than k is a defined result (no more non-overlapping windows with priority > 0)
    short = "" if len(regions) == args.k else f" (k={args.k} asked; only {len(regions)} fit)"
    print(f"{len(regions)} {args.method} region(s) written to {out}{short}")
    return 0


def load_map_nd(path: str | Path) -> np.ndarray:
    """An N-d float array from a ``.npy`` file (embeddings, descriptors)."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: expected a .npy file")
    return np.load(path, allow_pickle=False)


def add_suggest_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "suggest",
        help="propose annotation regions on a priority map",
        description="Propose k annotation regions on a priority map (.npy or float .tif) "
        "of the given stride and write them as QuPath GeoJSON (level-0 pixels).",
        formatter_class=_SuggestHelp,
    )
    s.add_argument("map", help="priority map: .npy or single-channel .tif, one value per map pixel")
    s.add_argument("--method", default="adaptive", nargs="?", action=_MethodAction, metavar="METHOD",
                   help="selector; --method alone lists them, --list with their options")
    s.add_argument("--list", action=_ListAction, help="list every selector with its options and defaults, then exit")
    s.add_argument("-l", "--region-size", type=positive_int, required=True, help="region side l, level-0 px")
    s.add_argument("-k", type=positive_int, default=5, help="number of regions")
    s.add_argument("--stride", type=positive_int, default=256, help="level-0 px per map pixel")
    s.add_argument("--tissue", help="tissue mask at map resolution (.npy/.tif)")
    s.add_argument("--annotated", help="GeoJSON of regions already annotated (never re-proposed)")
    s.add_argument("--embeddings", help="diversity: (Gh, Gw, D) region embeddings .npy")
    s.add_argument("--descriptors", help="focannot: (Gr, Gc, D) patch descriptors .npy")
    s.add_argument("--cell-features", help="diversity/focannot: (H, W, D) patch embeddings from `alregions embed`, "
                                           "pooled to the region grid")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--slide", help="slide name recorded on the regions (default: the map's name)")
    s.add_argument("--cycle", type=non_negative_int, help="active-learning cycle recorded on the regions")
    s.add_argument("--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="method option, e.g. --option max_steps=8 (repeatable)")
    s.add_argument("--out", required=True, help="output GeoJSON (an existing file is replaced)")
    s.set_defaults(func=_cmd_suggest)
