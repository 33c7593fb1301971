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
