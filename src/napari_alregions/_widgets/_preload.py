"""What napari loads the first time a layer of each kind is shown, loaded in a worker instead.

napari defers some imports and set-up to the first layer that needs them, and that first
layer is added on the viewer's thread: measured on the first slide, proposals and accepted
region of a session (2-core box), the unit registry 0.54 s, dask's look for a distributed
client 0.35 s, a Shapes layer's feature table (pandas, pyarrow) 0.5 s, a Labels layer's
colours (scikit-image, scipy.linalg) 0.2 s. :func:`preload_layer_dependencies` runs in the
worker that creates or opens a session, before any of those layers exists.
"""

from __future__ import annotations

import importlib
import logging

_log = logging.getLogger(__name__)

#: Imported by napari or dask only when the first layer of a kind is added or first sliced.
LAZY_MODULES = (
    "distributed",  # dask.base.get_scheduler: the first compute of a slide's level
    "pandas",  # napari.layers.utils.layer_utils: a Shapes layer's features
    "skimage.color",  # napari.layers.labels: a Labels layer's colours
    "skimage.exposure",
    "scipy.linalg",
)

_done = False


def preload_layer_dependencies() -> None:
    """Import :data:`LAZY_MODULES` and build napari's unit registry, once per process.

    Safe on a worker thread: imports take Python's import lock, and the registry is built as
    a new object and swapped in whole, only while nobody has used the lazy one (the viewer's
    thread never sees a half-built registry). A module that cannot be imported is skipped:
    napari then pays for it as before.
    """
    global _done
    if _done:
        return
    _done = True
    for name in LAZY_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional extra missing or broken: napari copes without it
            _log.debug("not preloaded: %s (%s)", name, exc)
    _build_unit_registry()


def _build_unit_registry() -> None:
    import pint
    from pint.registry import LazyRegistry

    app = pint.get_application_registry()
    if type(app.get()) is not LazyRegistry:  # built already (a layer was added meanwhile)
        return
    registry = pint.UnitRegistry(on_redefinition="raise")  # what LazyRegistry would build
    if type(app.get()) is LazyRegistry:
        app.set(registry)
