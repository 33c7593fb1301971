"""``alregions qupath-import`` / ``qupath-export``: a session's regions and labels to and from QuPath."""

from __future__ import annotations

import argparse
import json

from ._argtypes import positive_float
from .cli_common import add_open_options, open_project

__all__ = ["add_import_args", "add_qupath_parsers", "parse_class_map", "run_import"]


def parse_class_map(items: list[str] | None) -> dict[str, str | None]:
    """``["Stroma=background,Immune cells=", ...]`` -> ``{"Stroma": "background", "Immune cells": None}``
    (an empty right-hand side skips that QuPath class).

    Examples
    --------
    >>> parse_class_map(["Stroma=background", "Tumor: Negative=background,Other="])
    {'Stroma': 'background', 'Tumor: Negative': 'background', 'Other': None}
    """
    out: dict[str, str | None] = {}
    for item in items or []:
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--class-map: expected QUPATH_CLASS=SESSION_CLASS, got {pair!r}")
            out[key.strip()] = value.strip() or None
    return out


def _open(args: argparse.Namespace):
    project = open_project(args)
    slide = args.slide
    if slide is None and len(project.slides) == 1:
        [slide] = project.slides
    elif slide is None or slide not in project.slides:
        project.close()
        listed = ", ".join(project.slides) or "none"
        raise ValueError(f"--slide: no slide {slide!r} in the session (slides: {listed})" if slide is not None else
                         f"--slide: the session has {len(project.slides)} slides ({listed}); name one")
    return project, slide


def run_import(args: argparse.Namespace) -> int:
    """``qupath-import`` and ``session import``: a QuPath file into a session's slide."""
    from ._progress import counts_per_step, progress_bar

    class_map = parse_class_map(args.class_map)
    project, slide = _open(args)
    try:  # one bar, restarted per phase (read, regions, labels)
        with progress_bar(None, "qupath-import", "object") as bar:
            summary = project.import_qupath(args.file, slide, class_map=class_map, max_region=args.max_region,
                                            dry_run=args.dry_run, progress=counts_per_step(bar))
    finally:
        project.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.file}: {summary['message']}")
    # the file's region annotations, and a box around each label no region holds, become regions
    parts = [f"{summary['from_regions']} region annotation(s)" if summary["from_regions"] else "",
             f"{summary['label_boxes']} box(es) around labels outside every region" if summary["label_boxes"] else ""]
    why = "; ".join(p for p in parts if p)
    print(f"{'would add' if args.dry_run else 'added'} {summary['regions']} region(s) to the labeled set of {slide}"
          + (f": {why}" if why else "") + (" (a dry run: nothing written)" if args.dry_run else ""))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    project, slide = _open(args)
    try:
        out = project.export_qupath(args.out, slide, priority=args.priority)
    finally:
        project.close()
    print(f"wrote regions{', labels and the priority map' if args.priority else ' and labels'} of {slide} to {out}")
    return 0


def add_import_args(s: argparse.ArgumentParser) -> None:
    """The arguments of ``qupath-import`` and ``session import``."""
    s.add_argument("session", help="session folder")
    s.add_argument("file", help="GeoJSON exported by QuPath (or by qupath-export)")
    s.add_argument("--slide", help="the session's slide the file annotates (default: the only one)")
    s.add_argument("--class-map", action="append", metavar="QUPATH=OURS[,...]",
                   help="map QuPath classes to session classes, e.g. 'Stroma=background'; 'Other=' skips a class "
                        "(names match case-insensitively; Tumor/Tumour and other spellings match by themselves)")
    s.add_argument("--max-region", type=positive_float, help="largest side (level-0 px) of an unclassified outline taken as a "
                                                    "region; larger ones are tissue outlines and skipped")
    s.add_argument("--dry-run", action="store_true", help="only say what the import would do")
    s.add_argument("--json", action="store_true", help="machine-readable summary")
    add_open_options(s, writes=True, unless="dry_run")


def add_qupath_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("qupath-import", help="import QuPath GeoJSON annotations (regions and labels) into a session")
    add_import_args(s)
    s.set_defaults(func=run_import)

    s = sub.add_parser("qupath-export", help="export a slide's regions and labels as QuPath GeoJSON")
    s.add_argument("session", help="session folder")
    s.add_argument("out", help="GeoJSON file to write")
    s.add_argument("--slide", help="the session's slide (default: the only one)")
    s.add_argument("--priority", action="store_true",
                   help="also the priority map: one QuPath tile per tissue cell with a 'priority' measurement")
    add_open_options(s, writes=False)
    s.set_defaults(func=_cmd_export)
