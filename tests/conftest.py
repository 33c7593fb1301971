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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ALREGIONS_CACHE", str(tmp_path_factory.getbasetemp() / "alregions-cache"))


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
