"""Labeling: the labeled set's regions and their labels (SPEC §5).

Accepting a region opens it for painting (prefilled as asked); labels are written through
the session (:meth:`~napari_alregions.session.Session.editing_labels`), which keeps them
inside accepted regions and fires its ``labels`` event. Every box here is a label
:class:`~napari_alregions.geometry.Box`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import Box, Region
from ..session import covered, overlap

if TYPE_CHECKING:
    from .core import AnnotationProject


@dataclass(frozen=True)
class RegionSummary:
    """What a list row says of a region: its area, the labels in it, its cycle.

    ``area_px`` is in level-0 px; ``area_um2`` / ``area_mm2`` are None when the slide has no
    pixel size. ``classes`` gives each class's share of the region's labeled pixels (0 to 1;
    empty when nothing is labeled), ``labeled`` the labeled share of the region.
    """

    area_px: int
    area_um2: float | None
    area_mm2: float | None
    classes: dict[str, float]
    labeled: float
    cycle: int


class Labeling:
    """Accepting, painting and removing regions of the labeled set."""

    def __init__(self, project: AnnotationProject) -> None:
        self.p = project
        self._tissue_px_cache: dict[str, int] = {}

    def clipped(self, region: Region) -> Region:
        """``region`` clipped to its slide (level-0 px), the same region if inside.

        Raises
        ------
        ValueError
            If no part of the region lies on the slide.
        """
        height, width = self.p._slide(region.slide).shape
        x0, y0 = max(region.x, 0), max(region.y, 0)
        x1, y1 = min(region.x1, width), min(region.y1, height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"region ({region.x}, {region.y}, {region.w} x {region.h} px) lies outside the slide "
                             f"{region.slide!r} ({width} x {height} px)")
        if (x0, y0, x1, y1) == (region.x, region.y, region.x1, region.y1):
            return region
        return region.with_(x=x0, y=y0, w=x1 - x0, h=y1 - y0)

    def _tissue_rows_cols(self, slide: str, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tissue mask and, for the label px rows and columns of ``box``, the mask's row
        and column each falls in (nearest neighbour)."""
        s = self.p._slide(slide)
        mask = s.tissue_mask()
        ratio = self.p.label_factor(slide) / s.level_factor(s.tissue_level)
        y0, x0, y1, x1 = box
        rows = np.minimum((np.arange(y0, y1) * ratio).astype(int), mask.shape[0] - 1)
        cols = np.minimum((np.arange(x0, x1) * ratio).astype(int), mask.shape[1] - 1)
        return mask, rows, cols

    def tissue_labels(self, slide: str, box: Box | None = None) -> np.ndarray:
        """The tissue mask resampled to the labeling level (nearest neighbour), in ``box``
        ``(y0, x0, y1, x1)`` (label px) or over the slide (large for a WSI)."""
        shape = self.p.session.slides[slide].label_shape
        mask, rows, cols = self._tissue_rows_cols(slide, box or (0, 0, *shape))
        return mask[np.ix_(rows, cols)]

    def _tissue_px(self, slide: str) -> int:
        """Label px on tissue, counted on the tissue mask (cached)."""
        if slide not in self._tissue_px_cache:
            shape = self.p.session.slides[slide].label_shape
            mask, rows, cols = self._tissue_rows_cols(slide, (0, 0, *shape))
            per_row = np.bincount(rows, minlength=mask.shape[0])
            per_col = np.bincount(cols, minlength=mask.shape[1])
            self._tissue_px_cache[slide] = int(per_row @ mask.astype(np.int64) @ per_col)
        return self._tissue_px_cache[slide]

    def annotated_pct(self, slide: str | None = None) -> float:
        """Labeled share of the tissue, in %, of one slide or of all slides.

        Labels lie in accepted regions only, so only those are read: the cost follows the
        labeled area, not the slide (this runs after every autosaved stroke).
        """
        names = [slide] if slide is not None else list(self.p.slides)
        done = total = 0
        for n in names:
            total += self._tissue_px(n)
            labels, seen = self.p.session.labels(n), []
            for r in self.p.session.accepted_on(n):
                box = self.p.label_box(r)
                y0, x0, y1, x1 = box
                fresh = labels[y0:y1, x0:x1] > 0
                for other in seen:  # counted with an earlier, overlapping region
                    fresh[overlap(box, other)] = False
                done += int((fresh & self.tissue_labels(n, box)).sum())
                seen.append(box)
        return 100.0 * done / total if total else 0.0

    def accept(self, region: Region, *, prefill: str = "background") -> Region:
        """Move a region into the labeled set and open it for painting.

        Parameters
        ----------
        region : Region
            A proposal (by ``uid``) or a new rectangle on one of the slides.
        prefill : {"background", "prediction", "none"}
            What unlabeled pixels inside the region become: the first class (the common
            case: the pathologist paints only the tumour), the model's prediction (to
            correct uncertain patches), or left unlabeled.
        """
        if prefill not in ("background", "prediction", "none"):
            raise ValueError(f"prefill must be 'background', 'prediction' or 'none', got {prefill!r}")
        if region.slide not in self.p.slides:
            raise ValueError(f"region is on {region.slide!r}, which is not a slide of the session")
        if any(a.uid == region.uid for a in self.p.session.accepted if region.uid):
            return region
        accepted = self.p.session.accept(self.clipped(region))
        with self.p.session.editing_labels(accepted.slide, self.p.label_box(accepted)) as crop:
            if prefill == "background":
                crop[crop == 0] = 1
            elif prefill == "prediction":
                crop[crop == 0] = self._predicted_labels(accepted)[crop == 0]
        self.p._autosave()
        return accepted

    def remove_accepted(self, region: Region) -> Region:
        """Take an accepted region out of the labeled set, deleting the labels painted in it.

        Label pixels that another accepted region of the slide also covers are kept. The
        area can be proposed again; the model forgets the labels at the next retrain.

        Parameters
        ----------
        region : Region
            An accepted region (matched by ``uid``).

        Returns
        -------
        Region
            The removed region, as it was stored.

        Raises
        ------
        ValueError
            If the region is not in the labeled set.
        """
        removed = self.p.session.unaccept(region.uid)
        # labels live inside accepted regions only: the session clears what no other region covers
        self.p.session.labels_written(removed.slide, self.p.label_box(removed))
        self.p._autosave()
        return removed

    def accepted_overlapping(self, region: Region) -> list[Region]:
        """The other accepted regions of the slide whose labels share pixels with ``region``'s
        (a view of one region's labels is stale once another region's were written)."""
        box = self.p.label_box(region)
        out = []
        for other in self.p.session.accepted_on(region.slide):
            if other.uid != region.uid:
                rows, cols = overlap(self.p.label_box(other), box)
                if rows.stop > rows.start and cols.stop > cols.start:
                    out.append(other)
        return out

    def _predicted_labels(self, region: Region) -> np.ndarray:
        """The model's class (label values) on the region's label pixels; background where unknown."""
        prob = self.p.mapping.prediction(region.slide)
        y0, x0, y1, x1 = self.p.label_box(region)
        f = self.p.label_factor(region.slide)
        rows = np.minimum((np.arange(y0, y1) * f // self.p.stride).astype(int), prob.shape[0] - 1)
        cols = np.minimum((np.arange(x0, x1) * f // self.p.stride).astype(int), prob.shape[1] - 1)
        p = prob[np.ix_(rows, cols)]
        known = np.isfinite(p).all(axis=-1)
        return np.where(known, np.argmax(np.nan_to_num(p), axis=-1) + 1, 1).astype(np.uint8)

    def _accepted(self, region: Region) -> Region:
        for a in self.p.session.accepted:
            if a.uid == region.uid:
                return a
        raise ValueError("labels can only be painted inside accepted regions: accept the region first")

    def region_view(self, region: Region) -> np.ndarray:
        """The session's labels inside an accepted region (labeling level), as a writable view:
        a Labels layer showing it paints into the session (then :meth:`labels_painted`), and
        the layers of overlapping regions share those pixels."""
        region = self._accepted(region)
        return self.p.session.label_view(region.slide, self.p.label_box(region))

    def labels_painted(self, region: Region, *, save: bool = True) -> int:
        """Record that the labels in ``region``'s view changed (painted, undone): the session
        keeps its label rules and fires ``labels``; then save (the chunks of this region
        only). Pixels whose value is no class (0 unlabeled, 1..n) become unlabeled;
        returns how many there were."""
        region = self._accepted(region)
        n_bad = self.p.session.labels_written(region.slide, self.p.label_box(region))
        if save:
            self.p.session.save()
        return n_bad

    labels_changed = labels_painted  # the name of earlier versions

    def region_summary(self, region: Region) -> RegionSummary:
        """Area (level-0 px, µm², mm²), the class make-up of the labels inside ``region``
        and the cycle it was proposed in.

        Examples
        --------
        >>> s = project.region_summary(region)  # doctest: +SKIP
        >>> f"{s.area_mm2:.3f} mm², tumour {100 * s.classes['tumour']:.0f} %"  # doctest: +SKIP
        """
        mpp = self.p._slide(region.slide).mpp
        area_px = int(region.w) * int(region.h)
        um2 = area_px * mpp * mpp if mpp else None
        crop = self.p.session.labels(region.slide)[self.p.label_box(region).slices]
        counts = np.bincount(crop.ravel(), minlength=len(self.p.classes) + 1)[1:len(self.p.classes) + 1]
        n = int(counts.sum())
        classes = {c: float(k) / n for c, k in zip(self.p.classes, counts)} if n else {}
        return RegionSummary(area_px, um2, None if um2 is None else um2 / 1e6, classes,
                             n / crop.size if crop.size else 0.0, int(region.cycle or 0))

    def region_labels(self, region: Region) -> np.ndarray:
        """A copy of the labels inside an accepted region (labeling level)."""
        region = self._accepted(region)
        y0, x0, y1, x1 = self.p.label_box(region)
        return self.p.session.labels(region.slide)[y0:y1, x0:x1].copy()

    def write_region_labels(self, region: Region, data: np.ndarray) -> None:
        """Store painted labels of an accepted region and save (autosave per stroke batch)."""
        region = self._accepted(region)
        y0, x0, y1, x1 = self.p.label_box(region)
        data = np.asarray(data)
        if data.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"labels of this region must have shape {(y1 - y0, x1 - x0)}, got {data.shape}")
        if data.size and (data.min() < 0 or data.max() > len(self.p.classes)):
            raise ValueError(f"label values must be 0 (unlabeled) to {len(self.p.classes)}, got {data.min()}..{data.max()}")
        with self.p.session.editing_labels(region.slide, Box(y0, x0, y1, x1)) as crop:
            crop[...] = data
        self.p._autosave()

    def _drop_orphan_labels(self) -> None:
        """Labels outside every accepted region were never acknowledged (a save killed
        between the labels and the session file that records their region): they are cleared
        in memory, and so on disk at the next save."""
        from ..labelstore import chunk_box

        for name in self.p.session.slides:
            chunks = self.p.session.label_chunks(name)
            if not chunks:
                continue
            labels = self.p.session.labels(name)
            boxes = [self.p.label_box(r) for r in self.p.session.accepted_on(name)]
            dropped = 0
            for k in sorted(chunks):
                rows, cols = chunk_box(k, labels.shape)
                box = (rows.start, cols.start, rows.stop, cols.stop)
                orphan = labels[rows, cols].astype(bool) & ~covered(box, boxes)
                if orphan.any():
                    dropped += int(orphan.sum())
                    labels[rows, cols][orphan] = 0
                    self.p.session.mark_labels_changed(name, box)
            if dropped:
                self.p.open_messages.append(f"{name}: {dropped} labeled pixel(s) outside every accepted region "
                                          "(from an interrupted save) were cleared")
