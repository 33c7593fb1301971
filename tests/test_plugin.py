"""The npe2 contributions, imported and used the way napari does."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_alregions

MANIFEST = Path(napari_alregions.__file__).parent / "napari.yaml"


def test_manifest_validates_and_every_python_name_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    assert pm.name == "napari-alregions"
    for command in pm.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_reader_rejects_other_files(tmp_path):
    from napari_alregions._reader import get_reader

    (tmp_path / "a.png").write_bytes(b"")
    assert get_reader(str(tmp_path / "a.png")) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None


def test_reader_probes_the_file_and_declines_what_it_cannot_open(tmp_path, small_pool):
    import shutil

    import tifffile

    from napari_alregions._reader import get_reader

    (tmp_path / "five.tif").write_bytes(b"hello")  # not a TIFF, only named like one
    (tmp_path / "text.svs").write_text("Aperio? no" * 10)
    tifffile.imwrite(tmp_path / "grey16.tif", np.zeros((64, 64), np.uint16))  # a TIFF, but no slide
    folder, manifest = small_pool
    slide = folder / manifest["slides"][0]["image"]
    for bad in ("five.tif", "text.svs", "grey16.tif"):
        assert get_reader(str(tmp_path / bad)) is None, bad
    for suffix in (".scn", ".bif", ".qptiff", ".TIF"):  # formats tifffile reads, by the same probe
        shutil.copy(slide, tmp_path / f"slide{suffix}")
        assert get_reader(str(tmp_path / f"slide{suffix}")) is not None, suffix
    # tifffile reads a .ndpi by NDPI's rules (64-bit offsets): a plain TIFF so named is no NDPI
    shutil.copy(slide, tmp_path / "plain.ndpi")
    assert get_reader(str(tmp_path / "plain.ndpi")) is None
    assert get_reader([str(slide), str(tmp_path / "five.tif")]) is None  # one bad file: not ours
    assert get_reader([str(slide), str(tmp_path / "slide.scn")]) is not None


def test_manifest_claims_exactly_the_suffixes_the_reader_probes():
    from npe2 import PluginManifest

    from napari_alregions._reader import SUFFIXES

    [reader] = PluginManifest.from_file(MANIFEST).contributions.readers
    claimed = {p.lower().removeprefix("*") for p in reader.filename_patterns}
    assert {s for s in claimed if s.count(".") == 1} == set(SUFFIXES)
    assert {".ome.tif", ".ome.tiff"} <= claimed


def test_reader_layer_data(small_pool):
    from napari_alregions._reader import get_reader

    folder, manifest = small_pool
    path = str(folder / manifest["slides"][0]["image"])
    reader = get_reader(path)
    [(data, kwargs, kind)] = reader(path)
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [d.shape for d in data] == [(1024, 1024, 3), (512, 512, 3)]
    assert kwargs["scale"] == (0.5, 0.5)


def test_core_imports_no_gui_and_no_torch():
    """The headless engine never pulls in napari or Qt; torch stays in model/."""
    import subprocess

    code = (
        "import sys, napari_alregions.wsi, napari_alregions.wsi_omezarr, napari_alregions.synthetic, napari_alregions.cli, "
        "napari_alregions.layers, napari_alregions._reader, napari_alregions.project, napari_alregions.session, "
        "napari_alregions.maps, napari_alregions.regionfile;"
        "bad=[m for m in ('napari','qtpy','PyQt6','magicgui') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    code = (
        "import sys, napari_alregions.wsi, napari_alregions.wsi_omezarr, napari_alregions.synthetic, napari_alregions.geometry, "
        "napari_alregions.priority, napari_alregions.selection, napari_alregions.io_qupath, napari_alregions.project;"
        "sys.exit('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, "a core module imported torch: " + res.stderr


@pytest.mark.gui
def test_reader_in_viewer_gives_multiscale_layer(make_napari_viewer, small_pool, artifacts_dir):
    folder, manifest = small_pool
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(folder / manifest["slides"][0]["image"]), plugin="napari-alregions")
    [layer] = layers
    assert layer.multiscale and layer.rgb
    assert len(layer.data) == 2
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    viewer.window._qt_window.resize(900, 700)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    _save_png(artifacts_dir / "reader_slide.png", shot)
    # tissue is pink, background white: the picture is not blank
    assert shot[..., :3].std() > 10


@pytest.mark.gui
def test_picking_our_reader_in_napari(make_napari_viewer, small_pool):
    """What README says: napari's own reader claims .tif too; name ours, or prefer it."""
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    folder, manifest = small_pool
    path = str(folder / manifest["slides"][0]["image"])
    viewer = make_napari_viewer()
    assert not viewer.open(path)[0].multiscale  # viewer.open's default: napari's own reader
    with pytest.raises(MultipleReaderError):
        viewer.open(path, plugin=None)  # no preference: napari asks
    settings = get_settings().plugins
    before = dict(settings.extension2reader)
    try:
        settings.extension2reader = {**before, "*.tif": "napari-alregions"}
        assert viewer.open(path, plugin=None)[0].multiscale
    finally:
        settings.extension2reader = before


@pytest.mark.gui
def test_sample_data_opens_slide_and_tissue(make_napari_viewer, qtbot, artifacts_dir):
    from napari_alregions._sample_data import sample_ready
    from napari_alregions._widgets._sample import PLACEHOLDER

    viewer = make_napari_viewer(show=True)
    assert not sample_ready()  # a fresh cache: the first Open Sample generates the slide
    viewer.open_sample("napari-alregions", "demo_slide")
    # ... in a worker: the viewer shows a placeholder meanwhile, then the slide and its tissue
    assert [layer.name for layer in viewer.layers] == [PLACEHOLDER]
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=180_000)
    image, tissue = viewer.layers
    assert image.multiscale and image.rgb
    assert tissue.data.dtype == np.uint8 and 0.05 < tissue.data.mean() < 0.9
    # the tissue labels lie exactly over level 0: same world extent
    np.testing.assert_allclose(image.extent.world[1], tissue.extent.world[1], atol=tissue.scale[0])
    viewer.window._qt_window.resize(900, 700)
    viewer.reset_view()
    _save_png(artifacts_dir / "sample_data.png", viewer.screenshot(canvas_only=True, flash=False))
    # once generated, it opens in a worker too (reading it froze the viewer 3-6 s): the placeholder first
    assert sample_ready()
    viewer.layers.clear()
    viewer.open_sample("napari-alregions", "demo_slide")
    assert [layer.name for layer in viewer.layers] == [PLACEHOLDER]
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60_000)
    assert viewer.layers[0].multiscale and PLACEHOLDER not in viewer.layers


def _save_png(path: Path, rgba: np.ndarray) -> None:
    from skimage.io import imsave

    imsave(path, rgba, check_contrast=False)


def test_napari_lazy_loads_are_done_off_the_viewers_thread_without_a_second_unit_registry():
    """The worker preloads what napari would load at the first layer of each kind; the unit
    registry it builds is the one layers use, and a registry already in use is never replaced."""
    import subprocess

    code = """
import sys, threading
import numpy as np, pint
from pint.registry import LazyRegistry
from napari_alregions._widgets import _preload
assert type(pint.get_application_registry().get()) is LazyRegistry
missing = [m for m in _preload.LAZY_MODULES if m in sys.modules]
worker = threading.Thread(target=_preload.preload_layer_dependencies)
worker.start(); worker.join()
registry = pint.get_application_registry().get()
assert type(registry) is pint.UnitRegistry, type(registry)
assert all(m in sys.modules for m in _preload.LAZY_MODULES), [m for m in _preload.LAZY_MODULES if m not in sys.modules]
import napari.layers
layer = napari.layers.Image(np.zeros((4, 4)), scale=(0.5, 0.5))
assert layer.units[0] == registry.pixel and layer.units[0]._REGISTRY is registry
_preload._done = False  # a second call (another session) leaves the registry in use alone
_preload.preload_layer_dependencies()
assert pint.get_application_registry().get() is registry
print(missing)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "[]", "imported before the preload (nothing left to preload): " + res.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_torch_library_is_loaded_before_torch_is_imported():
    """The worker loads libtorch_cpu itself (a dlopen that releases the GIL), so the import
    that follows does not hold the GIL through it; torch then imports and works as usual."""
    import subprocess

    code = """
import sys
from napari_alregions._widgets import _preload
def loaded():
    return any(line.rstrip().endswith("/libtorch_cpu.so") for line in open("/proc/self/maps"))
assert "torch" not in sys.modules and not loaded()
_preload.load_torch_library()
assert loaded(), "libtorch_cpu.so not loaded"
assert "torch" not in sys.modules  # only the C++ library: torch's Python side is imported as before
import torch
assert float(torch.ones(3).sum()) == 3.0
_preload.load_torch_library()  # again, with torch imported: nothing to do
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


def test_collector_paused_restores_the_collector_as_it_was():
    import gc

    from napari_alregions._widgets._preload import collector_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="in the worker"):
        with collector_paused():
            assert not gc.isenabled()
            raise RuntimeError("failed in the worker")
    assert gc.isenabled()  # a failed task leaves the collector on
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # one switched off by someone else stays off
    finally:
        gc.enable()
