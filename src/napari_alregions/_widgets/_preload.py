"""What napari loads the first time a layer of each kind is shown, loaded in a worker instead.

napari defers some imports and set-up to the first layer that needs them, and that first
layer is added on the viewer's thread: measured on the first slide, proposals and accepted
region of a session (2-core box), the unit registry 0.54 s, dask's look for a distributed
client 0.35 s, a Shapes layer's feature table (pandas, pyarrow) 0.5 s, a Labels layer's
colours (scikit-image, scipy.linalg) 0.2 s. :func:`preload_layer_dependencies` runs in the
worker that creates or opens a session, before any of those layers exists.

A worker still stalls the viewer where it holds the GIL in one C call: loading torch's C++
library (``dlopen`` of libtorch_cpu, 0.27-0.29 s, see :func:`load_torch_library`) and the
garbage collector's full passes over the objects napari and torch leave (0.1-0.2 s each,
2-5 while a session opens, see :func:`collector_paused`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

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


def load_torch_library() -> None:
    """Load torch's C++ library with the GIL released, before ``import torch`` needs it.

    Python holds the GIL while it loads an extension module, and loading ``torch._C`` runs
    libtorch_cpu's ``dlopen`` (relocations, static initialisers): 0.27-0.29 s in which the
    viewer's thread cannot run. ``dlopen`` called through ctypes releases the GIL; the import
    that follows finds the library loaded (measured: the viewer's longest wait 289 -> 7 ms).
    Best effort: on a platform or layout where this does not apply, torch loads as usual.
    """
    if "torch" in sys.modules or os.name != "posix":
        return
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without running it
        if spec is None or spec.origin is None:
            return
        suffix = ".dylib" if sys.platform == "darwin" else ".so"
        library = Path(spec.origin).parent / "lib" / f"libtorch_cpu{suffix}"
        if not library.is_file():
            return
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
        if not dlopen(os.fsencode(library), os.RTLD_NOW | os.RTLD_LOCAL):  # kept loaded: torch uses it
            _log.debug("not preloaded: %s", library)
    except (OSError, AttributeError, ValueError, ImportError) as exc:
        _log.debug("torch's library not preloaded (%s)", exc)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic garbage collection while a session worker loads (seconds, process-wide).

    A full pass holds the GIL and, over the ~1 M objects napari and torch leave, stalled the
    viewer 0.1-0.2 s each time (measured: 0.10-0.19 s per pass while torch, distributed and
    the unit registry load). Reference counting still frees what is not in a cycle; the
    cycles made meanwhile wait for the next pass.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_frozen = False


def freeze_startup_objects() -> None:
    """Leave the objects alive now (napari, Qt, torch: ~0.5 M) out of the garbage collector's
    full passes, once per process: with them every full pass stalled the viewer ~0.3 s."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True
