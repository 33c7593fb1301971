"""The interactive annotation loop, headless: what the napari widgets drive (SPEC §1, §2).

An :class:`AnnotationProject` is a :class:`~napari_alregions.session.Session` with its
slides opened and its model (one network or an ensemble) in memory. The session holds the
state (regions, labels, maps, settings) and fires an event for each change; the project's
parts act on it, one module per job (:mod:`.labeling`, :mod:`.mapping`, :mod:`.suggestion`,
:mod:`.fast`, :mod:`.training`, :mod:`.qupath`), served by :class:`AnnotationProject` under
one name. Every user action of the plugin is one method of it:

* ``add_slide`` / ``new_model`` / ``load_model``;
* ``iter_priority`` (generator: predict -> priority map);
* ``suggest`` / ``compare`` (selectors from :mod:`napari_alregions.selection`);
* ``accept`` (proposal -> labeled set, labels prefilled), ``region_labels`` /
  ``write_region_labels`` (painting happens inside accepted regions only);
* ``iter_retrain`` (generator: fine-tune every member -> checkpoint -> new maps ->
  refreshed proposals);
* ``import_qupath`` / ``export_qupath``.

Each change is saved at once (atomic writes), so a crash loses at most the action in
flight. Long steps are generators yielding progress dicts, so they run in a napari thread
worker, in a CLI loop with tqdm, or plainly via :func:`run`.
"""

from __future__ import annotations

from .._progress import run
from ..maps import MapRecord
from .core import DEFAULT_COLORS, AnnotationProject
from .labeling import RegionSummary
from .suggestion import region_size_px

__all__ = ["DEFAULT_COLORS", "AnnotationProject", "MapRecord", "RegionSummary", "region_size_px", "run"]
