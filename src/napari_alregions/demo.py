"""``alregions demo``: the main job on built-in synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

from .synthetic import make_slide_pool
from .wsi import open_slide

__all__ = ["run_demo"]


def run_demo(out: Path, *, quick: bool = False) -> int:
    """Generate the demo pool (once) and report on it."""
    from tqdm import tqdm

    n, size = (3, 2048) if quick else (6, 4096)
    data = out / "data"
    with tqdm(total=n, desc="demo data", unit="slide", file=sys.stderr, disable=None) as bar:
        manifest = make_slide_pool(data, n_slides=n, size=size, seed=0, progress=lambda d, t: bar.update(1))
    print(f"Synthetic slide pool in {data} ({n} slides of {size}x{size} px at 0.5 µm/px)")
    print(f"{'slide':<12}{'split':<7}{'levels':>7}{'tissue %':>10}{'tumour % of tissue':>20}")
    for entry in manifest["slides"]:
        with open_slide(data / entry["image"]) as slide:
            tissue = 100 * slide.tissue_fraction()
            print(f"{entry['name']:<12}{entry['split']:<7}{slide.level_count:>7}{tissue:>10.1f}"
                  f"{100 * entry['tumour_fraction_of_tissue']:>20.2f}")
    return 0
