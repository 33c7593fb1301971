from __future__ import annotations

import os
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).parent / ".cache" / "artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Screenshots and other files a person should look at after a run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> tuple[Path, dict]:
    """Three 1024² synthetic slides (seed 0)."""
    from napari_alregions.synthetic import make_slide_pool

    folder = tmp_path_factory.mktemp("pool")
    return folder, make_slide_pool(folder, n_slides=3, size=1024, seed=0)


@pytest.fixture
def slide(small_pool):
    """The first slide of the small pool, open."""
    from napari_alregions.wsi import open_slide

    folder, manifest = small_pool
    with open_slide(folder / manifest["slides"][0]["image"]) as s:
        yield s


def _openers():
    """(owner, name) of each function a test opens files with: slides, projects, sessions, pools."""
    from napari_alregions import wsi
    from napari_alregions.project import AnnotationProject
    from napari_alregions.session import Session
    from napari_alregions.simulate import Pool

    return [(wsi, "open_slide"), (AnnotationProject, "open"), (AnnotationProject, "create"), (Session, "open"),
            (Session, "create"), (Pool, "load")]


@pytest.fixture(scope="module", autouse=True)
def _close_what_the_module_opened(request):
    """Slides, projects, sessions and pools that a test module's own code opens are kept and
    closed when the module ends, so a test need not close them and none is left to the
    garbage collector (an unclosed file warns, and ResourceWarning is an error). What the
    package opens itself is not tracked: a file it leaves open still fails the test."""
    import functools
    import sys

    module, opened = request.module, []

    def tracked(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            obj = fn(*args, **kwargs)
            if sys._getframe(1).f_globals is vars(module):  # called by the test module's code
                opened.append(obj)
            return obj
        return call

    with pytest.MonkeyPatch.context() as mp:
        for owner, name in _openers():
            raw = vars(owner)[name]
            if isinstance(raw, classmethod):
                mp.setattr(owner, name, classmethod(tracked(raw.__func__)))
            else:
                for where in (owner, module):
                    if getattr(where, name, None) is raw:
                        mp.setattr(where, name, tracked(raw))
        yield
    for obj in reversed(opened):
        obj.close()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ALREGIONS_CACHE", str(tmp_path_factory.getbasetemp() / "alregions-cache"))


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
