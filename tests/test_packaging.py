"""Package metadata that points somewhere points at something that exists."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]


def test_project_urls_name_files_of_the_repository():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["urls"]
    assert {"Homepage", "Documentation"} <= set(urls)
    for label, url in urls.items():
        if urlparse(url).scheme in ("http", "https"):
            continue  # a published address: not checked offline
        assert (ROOT / url).is_file(), f"project.urls {label} = {url!r} names no file of the repository"


def test_package_data_ships_every_data_file_of_the_package():
    """Files the package reads at run time (the napari manifest, the QuPath script) are in the
    wheel: each matches a ``package-data`` pattern (setuptools ships only those)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    package = ROOT / "src" / "napari_alregions"
    data = [p.relative_to(package) for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert {"napari.yaml", "qupath/alregions.groovy"} <= {p.as_posix() for p in data}
    for p in data:
        assert any(p.match(pattern) for pattern in patterns["napari_alregions"]), f"{p} is not in the wheel's package-data"
