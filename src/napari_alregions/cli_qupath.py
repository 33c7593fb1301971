"""``alregions qupath-import`` / ``qupath-export``: a session's regions and labels to and from QuPath."""

from __future__ import annotations

import argparse
import json

from ._argtypes import positive_float
from .cli_common import add_open_options, open_project

__all__ = ["add_qupath_parsers", "parse_class_map"]


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
    if slide is None:
        if len(project.slides) != 1:
            project.close()
            raise ValueError(f"--slide: the session has {len(project.slides)} slides ({', '.join(project.slides) or 'none'}); name one")
        [slide] = project.slides
    return project, slide


def _cmd_import(args: argparse.Namespace) -> int:
    class_map = parse_class_map(args.class_map)
    project, slide = _open(args)
    try:
        summary = project.import_qupath(args.file, slide, class_map=class_map, max_region=args.max_region, dry_run=args.dry_run)
    finally:
        project.close()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["message"])
        verb = "would add" if args.dry_run else "added"
        print(f"{verb} {summary['regions']} region(s) to the labeled set of {slide}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    project, slide = _open(args)
    try:
        out = project.export_qupath(args.out, slide, priority=args.priority)
    finally:
        project.close()
    print(f"wrote regions{', labels and the priority map' if args.priority else ' and labels'} of {slide} to {out}")
    return 0


def add_qupath_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("qupath-import", help="import QuPath GeoJSON annotations (regions and labels) into a session")
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
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("qupath-export", help="export a slide's regions and labels as QuPath GeoJSON")
    s.add_argument("session", help="session folder")
    s.add_argument("out", help="GeoJSON file to write")
    s.add_argument("--slide", help="the session's slide (default: the only one)")
    s.add_argument("--priority", action="store_true",
                   help="also the priority map: one QuPath tile per tissue cell with a 'priority' measurement")
    add_open_options(s, writes=False)
    s.set_defaults(func=_cmd_export)
