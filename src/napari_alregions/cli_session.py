"""``alregions session …``: the viewer's annotation loop from the command line.

Each verb opens the session folder (taking its lock, as the viewer does), does one step of
:class:`~napari_alregions.project.AnnotationProject` and closes it again; every change is
saved by the project as it happens (atomic writes), so a command interrupted midway loses at
most its own step. ``alregions qupath-script`` prints the QuPath script that drives these
verbs from QuPath's script editor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._argtypes import non_negative_int, positive_int
from .cli_common import add_open_options
from .settings import HEADS, LEARNERS

__all__ = ["QUPATH_SCRIPT", "add_session_parsers", "qupath_script", "status"]

#: the QuPath script shipped with the package (``alregions qupath-script``)
QUPATH_SCRIPT = ("qupath", "alregions.groovy")
#: a proposal's uid may be abbreviated to this many characters or more (as status shows it)
_UID_PREFIX = 8


def qupath_script() -> str:
    """The text of the QuPath script (package data)."""
    from importlib.resources import files

    return files("napari_alregions").joinpath(*QUPATH_SCRIPT).read_text(encoding="utf-8")


# -- shared plumbing ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _opened(args: argparse.Namespace) -> Iterator[Any]:
    """The session of ``args.session``, opened as the verb's options say, closed afterwards."""
    from .cli_common import open_project

    project = open_project(args)
    try:
        yield project
    finally:
        project.close()


def _slides(project, names: Sequence[str] | None) -> list[str]:
    """The slides a verb works on: those named (``--slide``), else every slide of the session."""
    if not project.slides:
        raise ValueError(f"{project.folder}: the session has no slides yet: add one (alregions session add)")
    unknown = [n for n in names or () if n not in project.slides]
    if unknown:
        raise ValueError(f"--slide: no slide {unknown[0]!r} in the session (slides: {', '.join(project.slides)})")
    return list(dict.fromkeys(names)) if names else list(project.slides)


def _drive(gen, desc: str):
    """Run one of the project's generators to its end with a progress bar on stderr; return its result."""
    from ._progress import counts_per_step, progress_bar, run

    with progress_bar(None, desc, "step") as bar:
        return run(gen, counts_per_step(bar))


# -- verbs ----------------------------------------------------------------------------------------------------------

def _cmd_new(args: argparse.Namespace) -> int:
    from .project import AnnotationProject
    from .session import SESSION_FILE

    classes = [c.strip() for item in args.classes for c in item.split(",")]
    if len(classes) < 2 or not all(classes) or len(set(classes)) != len(classes):
        raise ValueError(f"--classes: expected two or more distinct names, the background first, got {' '.join(args.classes)!r}")
    if args.exist_ok and (Path(args.session) / SESSION_FILE).is_file():
        with contextlib.closing(AnnotationProject.open(args.session, read_only=True)) as project:
            print(f"{args.session}: a session already ({len(project.slides)} slide(s), cycle {project.cycle}); kept as it is")
        return 0
    project = AnnotationProject.create(args.session, classes=classes, patch_size=args.patch_size, level=args.level,
                                      stride=args.stride, members=args.members)
    try:
        project.set_learner(learner=args.learner, head=args.head)
        print(f"created session {args.session}: classes {', '.join(project.classes)}; learner {args.learner}; "
              f"map stride {project.stride} px")
    finally:
        project.close()
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    if args.name and len(args.slides) > 1:
        raise ValueError("--name names one slide; add the slides one at a time to name each")
    paths = [Path(p) for p in args.slides]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    names = [args.name] if args.name else [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two slides would be named {twice[0]!r}: add them one at a time with --name")
    with _opened(args) as project:
        todo = []
        for path, name in zip(paths, names, strict=True):
            entry = project.session.slides.get(name)
            if entry is None:
                todo.append((path, name))
            elif args.exist_ok and Path(entry.path).resolve() == path.resolve():
                print(f"{name}: already in the session")
            else:
                raise ValueError(f"a slide named {name!r} is already in the session ({entry.path}); "
                                 "name this one with --name")
        for path, name in todo:
            project.add_slide(path, name=name, group=args.group)
            h, w = project.slides[name].shape[:2]
            print(f"added {name} ({w} x {h} px)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    with _opened(args) as project:
        for slide in _slides(project, args.slide):
            record = _drive(project.iter_priority(slide, measure=args.measure), f"predict {slide}")
            h, w = record.priority.shape
            model = "fast" if project.fast_in_use else ("deep" if project.trained else "untrained deep")
            print(f"{slide}: priority map of {w} x {h} cells of {record.stride} px ({record.measure}, cycle {record.cycle}, "
                  f"{model} model)")
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    from .selection import METHODS

    for flag, m in (("--method", args.method), ("--untrained-method", args.untrained_method)):
        if m is not None and m not in METHODS:
            raise ValueError(f"{flag}: unknown method {m!r}; choose one of {', '.join(METHODS)}")
    options = dict(args.option or [])
    with _opened(args) as project:
        slides = _slides(project, args.slide)
        method = args.method
        if args.untrained_method and not (project.session.history or project.trained):
            method = args.untrained_method
            options = {}  # the options are the trained method's
            print(f"the session's model is untrained: {method} proposals (--untrained-method)")
        if args.region_size % project.stride:
            raise ValueError(f"-l/--region-size ({args.region_size} px) must be a multiple of the session's map stride "
                             f"({project.stride} px)")
        if args.qupath and len(slides) > 1:
            raise ValueError(f"--qupath {args.qupath}: one file, {len(slides)} slides (QuPath imports one file per "
                             "image): name one --slide, or write every slide with alregions session export")
        for slide in slides:
            _drive(project.iter_inputs(slide, method, measure=args.measure), f"inputs {slide}")
            regions = project.suggest(slide, method, region_size=args.region_size, k=args.k, seed=args.seed, **options)
            for r in regions:
                print(f"{r.uid[:_UID_PREFIX]}  {slide}  #{r.rank + 1}  x={r.x} y={r.y} w={r.w} h={r.h}  score={r.score:.4g}")
            short = "" if len(regions) == args.k else f" (k={args.k} asked; only {len(regions)} fit)"
            print(f"{slide}: {len(regions)} {method} proposal(s){short}")
            if args.qupath:
                # the map goes with the proposals when the slide has one (random computes none)
                priority = args.priority and slide in project.maps
                out = project.export_qupath(args.qupath, slide, priority=priority, accepted=False, labels=False,
                                            methods=[method])
                note = (" and the priority map" if priority else
                        " (no priority map: the method read none; alregions session predict makes one)" if args.priority else "")
                print(f"{slide}: proposals{note} written to {out}")
    return 0


def _find(project, uids: Sequence[str]) -> list:
    """The proposals named by (abbreviated) uids, all found before anything changes."""
    proposals = [r for s in project.slides for r in project.proposals(s)]
    accepted = {r.uid: r for s in project.slides for r in project.session.accepted_on(s)}
    out = []
    for uid in uids:
        if len(uid) < 4:
            raise ValueError(f"uid {uid!r}: give at least 4 characters (status lists {_UID_PREFIX})")
        hits = [r for r in proposals if r.uid.startswith(uid)]
        if len(hits) > 1:
            raise ValueError(f"uid {uid!r} is the start of {len(hits)} proposals: give more characters")
        if not hits:
            where = " (it is accepted already)" if any(u.startswith(uid) for u in accepted) else ""
            raise ValueError(f"no proposal {uid!r} in the session{where}; alregions session status lists them")
        out.append(hits[0])
    return out


def _cmd_accept(args: argparse.Namespace) -> int:
    with _opened(args) as project:
        for r in _find(project, args.uids):
            a = project.accept(r, prefill=args.prefill)
            print(f"accepted {a.uid[:_UID_PREFIX]} on {a.slide} (x={a.x} y={a.y} w={a.w} h={a.h}; labels: {args.prefill})")
    return 0


def _cmd_reject(args: argparse.Namespace) -> int:
    with _opened(args) as project:
        for r in _find(project, args.uids):
            project.dismiss(r)
            print(f"rejected {r.uid[:_UID_PREFIX]} on {r.slide}: not proposed again")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    deep = True if args.deep else (False if args.fast else None)
    with _opened(args) as project:
        summary = _drive(project.iter_retrain(deep=deep, measure=args.measure), "retrain")
        print(f"cycle {summary['cycle']}: {summary['learner']} learner on {summary['accepted_regions']} region(s), "
              f"{summary['annotated_pct']:.2f}% of the tissue annotated; model in use: {project.session.settings.in_use}")
        if summary.get("quality"):
            print(summary["quality"])
        for m in summary.get("messages", []):
            print(m)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    folder = Path(args.qupath)
    if folder.suffix.lower() in (".geojson", ".json"):
        raise ValueError(f"--qupath {args.qupath}: a folder (one GeoJSON file per slide), not a file")
    with _opened(args) as project:
        slides = _slides(project, None)
        missing = [s for s in slides if s not in project.maps] if args.priority else []
        if missing:
            raise ValueError(f"--priority: no priority map yet for {', '.join(missing)}: alregions session predict first")
        for slide, out in zip(slides, project.export_qupath_all(folder, priority=args.priority), strict=True):
            print(f"{slide}: regions, labels{' and the priority map' if args.priority else ''} written to {out}")
    return 0


def _region(r) -> dict[str, Any]:
    return {"uid": r.uid, "slide": r.slide, "method": r.method, "x": r.x, "y": r.y, "w": r.w, "h": r.h,
            "score": _number(r.score), "rank": r.rank, "cycle": r.cycle}


def _number(v: float | None) -> float | None:
    import math

    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def status(project) -> dict[str, Any]:
    """What ``status --json`` prints: slides, cycle, annotated share, proposals and model quality."""
    settings = project.session.settings
    last = project.session.history[-1] if project.session.history else None
    if last is None:
        quality = "a loaded model, not retrained here" if project.trained else "untrained"
    elif last.get("quality"):
        quality = last["quality"]
    else:
        aucs = [v for v in last.get("val_auc", []) if v is not None]
        quality = f"deep model: validation AUC {sum(aucs) / len(aucs):.3f}" if aucs else "deep model: no validation AUC"
    slides = []
    for name, s in project.slides.items():
        record = project.maps.get(name)
        h, w = s.shape[:2]
        slides.append({
            "name": name, "path": project.session.slides[name].path, "width": w, "height": h,
            "accepted": len(project.session.accepted_on(name)), "proposals": len(project.proposals(name)),
            "annotated_pct": round(project.annotated_pct(name), 4),
            "map": None if record is None else {"cycle": record.cycle, "measure": record.measure, "stride": record.stride},
        })
    return {
        "session": str(project.folder), "classes": list(project.classes), "cycle": project.cycle,
        "stride": project.stride, "learner": settings.learner, "in_use": settings.in_use,
        "trained": bool(last) or project.trained,
        "annotated_pct": round(project.annotated_pct(), 4) if project.slides else 0.0,
        "pending_regions": project.pending_regions,
        "model": {"quality": quality, "messages": list(last.get("messages", [])) if last else [],
                  "history": len(project.session.history)},
        "slides": slides,
        "accepted": [_region(r) for n in project.slides for r in project.session.accepted_on(n)],
        "proposals": [_region(r) for n in project.slides for r in project.proposals(n)],
        "notes": list(project.open_messages),
    }


def _cmd_status(args: argparse.Namespace) -> int:
    with _opened(args) as project:
        record = status(project)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(f"session {record['session']}: {len(record['slides'])} slide(s), cycle {record['cycle']}, "
          f"classes {', '.join(record['classes'])}")
    print(f"  annotated   {record['annotated_pct']:.2f}% of the tissue in {len(record['accepted'])} accepted region(s)"
          f" ({record['pending_regions']} not trained on yet)")
    print(f"  model       {record['model']['quality']} (learner {record['learner']}, in use: {record['in_use']})")
    for m in record["model"]["messages"]:
        print(f"              {m}")
    for s in record["slides"]:
        m = s["map"]
        where = f"map of cycle {m['cycle']} ({m['measure']})" if m else "no map"
        print(f"  {s['name']}  {s['width']} x {s['height']} px  {s['annotated_pct']:.2f}% annotated  "
              f"{s['accepted']} accepted  {s['proposals']} proposed  {where}")
    for r in record["proposals"]:
        score = "n/a" if r["score"] is None else f"{r['score']:.4g}"
        print(f"  proposal {r['uid'][:_UID_PREFIX]}  {r['slide']}  {r['method']} #{r['rank'] + 1}  "
              f"x={r['x']} y={r['y']} w={r['w']} h={r['h']}  score={score}")
    for n in record["notes"]:
        print(f"  note        {n}")
    return 0


def _cmd_qupath_script(args: argparse.Namespace) -> int:
    print(qupath_script(), end="")
    return 0


# -- parsers --------------------------------------------------------------------------------------------------------

def _verb(verbs: argparse._SubParsersAction, name: str, text: str, func, *, slide: bool = False,
          read_only: bool = False, lock: bool = True) -> argparse.ArgumentParser:
    """A ``session`` verb's parser: the session folder, ``--slide`` when it works per slide, the lock options."""
    s = verbs.add_parser(name, help=text)
    s.add_argument("session", help="session folder")
    if slide:
        s.add_argument("--slide", action="append", help="a slide of the session (repeatable; default: every slide)")
    if lock:
        add_open_options(s, writes=not read_only)
    s.set_defaults(func=func)
    return s


def add_session_parsers(sub: argparse._SubParsersAction) -> None:
    from .cli_qupath import add_import_args, run_import
    from .cli_suggest import _parse_option

    p = sub.add_parser("session", help="the annotation loop, headless: new, add, predict, propose, accept/reject, "
                                       "import, retrain, export, status",
                       description="The viewer's annotation loop on a session folder, one step per command. Each "
                                   "command takes the session's lock while it runs and saves as it goes.")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    s = _verb(verbs, "new", "create a session (an empty or new folder)", _cmd_new, lock=False)
    s.add_argument("--classes", nargs="+", default=["background", "tumour"], metavar="CLASS",
                   help="the classes, the background first, separated by spaces or commas (default: background tumour)")
    s.add_argument("--learner", choices=LEARNERS, default="fast",
                   help="what retrain trains: fast (texture features + a forest/logistic head, seconds) or deep (the patch CNN)")
    s.add_argument("--head", choices=HEADS, default="blend", help="the fast learner's head")
    s.add_argument("--patch-size", type=positive_int, default=64, help="the CNN's patch side at its level")
    s.add_argument("--level", type=non_negative_int, default=1, help="pyramid level of the model and the labels")
    s.add_argument("--stride", type=positive_int, help="level-0 px per map cell (default: one patch footprint)")
    s.add_argument("--members", type=positive_int, default=1, help="CNN ensemble members")
    s.add_argument("--exist-ok", action="store_true", help="a folder holding a session already is kept as it is (exit 0)")

    s = _verb(verbs, "add", "add slides to the session", _cmd_add)
    s.add_argument("slides", nargs="+", metavar="SLIDE")
    s.add_argument("--name", help="the slide's name in the session (default: its file name)")
    s.add_argument("--group", help="the slides' group (centre, scanner) for per-group selection")
    s.add_argument("--exist-ok", action="store_true", help="skip slides the session holds already (same name, same file)")

    s = _verb(verbs, "predict", "the current model's priority map of each slide (or --slide)", _cmd_predict, slide=True)
    s.add_argument("--measure", default="least_confidence",
                   help="priority measure: least_confidence, margin, entropy, ensemble_disagreement, mutual_information")

    s = _verb(verbs, "propose", "propose k regions per slide (computes the map first when needed)", _cmd_propose,
              slide=True)
    s.add_argument("--method", default="adaptive", help="selector (alregions suggest --method lists them; default adaptive)")
    s.add_argument("--untrained-method", metavar="METHOD",
                   help="the selector while the session's model is untrained (no retrain yet), e.g. random")
    s.add_argument("-l", "--region-size", type=positive_int, required=True,
                   help="region side, level-0 px (a multiple of the session's map stride)")
    s.add_argument("-k", type=positive_int, default=5, help="regions per slide")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--measure", default="least_confidence", help="priority measure of the map the method reads")
    s.add_argument("--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="method option, e.g. --option max_steps=8 (repeatable)")
    s.add_argument("--qupath", metavar="FILE",
                   help="also write these proposals as QuPath GeoJSON (one slide: name it with --slide when the "
                        "session has several)")
    s.add_argument("--priority", action="store_true",
                   help="with --qupath: the slide's priority map too, when it has one, as QuPath tiles with a 'priority' "
                        "measurement")

    s = _verb(verbs, "accept", "move proposals into the labeled set", _cmd_accept)
    s.add_argument("uids", nargs="+", metavar="UID", help="a proposal's uid, or its first characters (status lists them)")
    s.add_argument("--prefill", choices=("background", "prediction", "none"), default="background",
                   help="what the region's unlabeled pixels become (default: background, as in the viewer)")
    s = _verb(verbs, "reject", "dismiss proposals: their area is not proposed again", _cmd_reject)
    s.add_argument("uids", nargs="+", metavar="UID", help="a proposal's uid, or its first characters (status lists them)")

    s = verbs.add_parser("import", help="import QuPath GeoJSON annotations (regions and labels), as qupath-import")
    add_import_args(s)
    s.set_defaults(func=run_import)

    s = _verb(verbs, "retrain", "train on every label, then refresh the maps and proposals", _cmd_retrain)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--fast", action="store_true", help="the fast learner (the default, unless the session's learner is deep)")
    g.add_argument("--deep", action="store_true", help="the patch CNN (replaces the fast model only when it estimates better)")
    s.add_argument("--measure", help="priority measure of the refreshed maps (default: each map's own)")

    s = _verb(verbs, "export", "every slide's regions and labels as QuPath GeoJSON, one file per slide", _cmd_export,
              read_only=True)
    s.add_argument("--qupath", required=True, metavar="FOLDER",
                   help="output folder (created): one <slide>.geojson per slide, named as the viewer's export names them")
    s.add_argument("--priority", action="store_true", help="the priority maps too, as QuPath tiles with a 'priority' measurement")

    s = _verb(verbs, "status", "slides, cycle, annotated share, proposals and model quality", _cmd_status, read_only=True)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("qupath-script", help="print the QuPath script that runs the loop from QuPath's script editor",
                       description="Print the Groovy script for QuPath's script editor (save it: alregions qupath-script "
                                   "> alregions.groovy). See README, 'From QuPath'.")
    s.set_defaults(func=_cmd_qupath_script)
