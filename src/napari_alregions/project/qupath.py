"""QuPath: a project's regions, labels and priority map as QuPath GeoJSON, and back (SPEC §8)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..geometry import labeled_boxes
from ..io_qupath import (
    iter_import,
    iter_rasterize,
    labels_to_features,
    priority_to_features,
    qupath_class_name,
    read_geojson,
    region_features,
    write_features,
)
from ..layers import method_rgb

if TYPE_CHECKING:
    from .core import AnnotationProject


class QuPathLink:
    """Export to and import from QuPath."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project

    def export_qupath(self, path: str | os.PathLike[str], slide: str, *, priority: bool = False, accepted: bool = True,
                      labels: bool = True, methods: Sequence[str] | None = None) -> Path:
        """Regions (accepted and proposed) and labels of a slide as QuPath GeoJSON.

        With ``priority``, the slide's current priority map too: one QuPath tile per tissue
        cell with a ``priority`` measurement (QuPath's measurement maps colour it); an
        import skips the tiles. ``accepted`` and ``labels`` False leave those out (what a
        QuPath user has already: the proposals and the map alone); ``methods`` keeps the
        proposals of those selectors only.
        """
        s = self.p._slide(slide)
        if priority and slide not in self.p.maps:
            raise ValueError(f"{slide} has no priority map yet: compute one first")
        proposals = [r for r in self.p.suggestion.proposals(slide) if methods is None or r.method in methods]
        features = region_features(self.p.session.accepted_on(slide) if accepted else (), proposals, color_of=method_rgb)
        if labels:
            mask = self.p.session.labels(slide)
            features += labels_to_features(mask, classes=[qupath_class_name(c) for c in self.p.classes],
                                           colors=self.p.colors, factor=self.p.label_factor(slide),
                                           slide=slide, boxes=labeled_boxes(mask))
        if priority:
            record = self.p.maps[slide]
            features += priority_to_features(record.priority, stride=record.stride, mask=s.tissue_map(record.stride),
                                             metadata={"measure": record.measure, "cycle": record.cycle, "slide": slide})
        return write_features(path, features)

    def export_qupath_all(self, folder: str | os.PathLike[str], *, priority: bool = False) -> list[Path]:
        """Every slide's regions and labels (and priority map, with ``priority``, for the
        slides that have one) as QuPath GeoJSON, one file per slide named after it
        (``<slide stem>.geojson``), as QuPath imports one file per image.

        Raises
        ------
        ValueError
            If ``folder`` is a file, or the session has no slides.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"folder: {folder} is a file; choose a folder for one GeoJSON file per slide")
        if not self.p.slides:
            raise ValueError("the session has no slides to export")
        folder.mkdir(parents=True, exist_ok=True)
        stems = [Path(name).stem for name in self.p.slides]
        names = {n: (stem if stems.count(stem) == 1 else n) for n, stem in zip(self.p.slides, stems)}
        return [self.export_qupath(folder / f"{names[n]}.geojson", n, priority=priority and n in self.p.maps)
                for n in self.p.slides]

    def import_qupath(self, path: str | os.PathLike[str], slide: str, *, class_map: dict[str, str | None] | None = None,
                      max_region: float | None = None, dry_run: bool = False,
                      progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
        """Read QuPath annotations: class polygons become labels, other polygons regions.

        The file is read as QuPath reads it (:func:`~napari_alregions.io_qupath.plan_import`):
        annotations only (detections, cells, tiles, TMA cores are skipped and counted);
        classes by their base name, matched case-insensitively, through synonyms
        (Tumor/Tumour) and ``class_map``; our own proposals (``Proposal: <method>``),
        unclassified outlines larger than ``max_region`` (tissue outlines) and annotations
        wholly outside the slide are skipped; those partly outside are cut to it; invalid
        polygons (bow-ties, rings traced twice) are repaired, as the message says.
        Every labeled polygon lies in an accepted region afterwards (its bounding box is
        accepted when no region holds it). When the file has no annotation of the first
        class (background), unlabeled pixels of imported regions become background, as
        with :meth:`accept`. Regions the labeled set already holds (same box) are not added
        again, so a file imported twice, or into the session that exported it, adds
        nothing twice; a region with the box of a proposal accepts that proposal.

        Parameters
        ----------
        path : str or PathLike
            A GeoJSON file (FeatureCollection, Feature or list of features).
        slide : str
            The session's slide the file annotates.
        class_map : dict of str to (str or None), optional
            QuPath class -> session class (None: skip that class).
        max_region : float, optional
            Largest side (level-0 px) of an unclassified outline taken as a region (larger
            ones are tissue outlines and skipped); by default 4x the largest region size
            suggested on the session (16 map cells when none was), at most half the
            slide's shorter side.
        dry_run : bool
            Only report what the import would do; nothing is written.
        progress : callable, optional
            Called with ``{"phase": "read" | "regions" | "labels", "done", "total"}`` as
            the import goes (100 000 polygons take tens of seconds).

        Returns
        -------
        dict
            ``regions`` (regions added to the labeled set: ``from_regions`` of the file's
            region annotations and ``label_boxes``, boxes around labeled annotations that no
            region holds), ``labeled_annotations``,
            ``skipped`` (total) and ``skipped_by`` (per reason), ``annotations`` and
            ``message`` (e.g. "12 annotations: 5 regions, 7 labels; skipped 1000
            detections").

        Raises
        ------
        ValueError
            For a malformed file or classes that match no session class (all listed);
            nothing is written then.
        """
        from . import run

        h, w = self.p._slide(slide).shape[:2]
        features = read_geojson(path)  # its errors name the file already
        try:
            plan, own, boxes = run(iter_import(features, classes=self.p.classes, class_map=class_map, extent=(w, h),
                                               max_region=self._max_region(slide) if max_region is None else max_region,
                                               accepted=self.p.session.accepted_on(slide), slide=slide), progress)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        proposed = {(r.x, r.y, r.w, r.h): r for r in self.p.suggestion.proposals(slide)}
        own = [proposed.get((r.x, r.y, r.w, r.h), r) for r in own]  # a proposal made a region in QuPath is accepted
        new = own + boxes
        summary = {"regions": len(new), "from_regions": len(own), "label_boxes": len(boxes),
                   "labeled_annotations": len(plan.labeled), "skipped": sum(plan.skipped.values()),
                   "skipped_by": dict(plan.skipped), "annotations": plan.annotations, "message": plan.message}
        if dry_run:
            return summary
        session = self.p.session
        new = [session.accept(r) for r in new]
        if not any(a.classification == self.p.classes[0] for a in plan.labeled):
            for r in new:
                with session.editing_labels(slide, self.p.label_box(r)) as crop:
                    crop[crop == 0] = 1
        labels = session.labels(slide)
        run(iter_rasterize(plan.labeled, labels, classes=self.p.classes, factor=self.p.label_factor(slide)), progress)
        # the session keeps labels inside accepted regions (looked for where labels are, not over the slide)
        for box in labeled_boxes(labels):
            session.labels_written(slide, box)
        session.save()
        return summary

    def _max_region(self, slide: str) -> int:
        """Default bound on a region's side at import: 4x the largest suggested region size
        (16 map cells when none was), at most half the slide's shorter side."""
        sizes = [p.region_size for plan in self.p.session.settings.suggest.values() for p in plan.values()]
        return min(4 * max([int(v) for v in sizes if v] or [4 * self.p.stride]), min(self.p._slide(slide).shape[:2]) // 2)
