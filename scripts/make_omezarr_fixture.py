"""Write tests/data/cmu_crop_ngff04.ome.zarr and cmu_crop_ngff05.ome.zarr with ome-zarr-py.

What
    A 259x387 px crop (rows 1200:1587, cols 900:1159) of the CMU-1 SVS fixture
    (``tests/data/cmu_small_region.svs``, its decoded level 0) as OME-Zarr images written by a
    third-party writer, ome-zarr-py's ``write_image``: axes ``cyx``, three levels (the crop
    and ome-zarr's own 2x and 4x resizes), y/x scale 0.499 µm (``micrometer``) at level 0,
    chunks of 3x128x128. One copy as NGFF 0.4 (zarr v2, ``FormatV04``), one as NGFF 0.5
    (zarr v3, ``FormatV05``). tests/test_wsi_omezarr.py opens both.

Why a committed file
    ome-zarr-py is no dependency of ours: installing it beside our pins downgrades pydantic
    and python-dateutil (through pydantic-zarr and botocore). The files it wrote are kept.

Usage
    pip install ome-zarr==0.18.0   # in a separate environment
    python scripts/make_omezarr_fixture.py [--out tests/data]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import zarr

ROWS, COLS = slice(1200, 1587), slice(900, 1159)


def main() -> None:
    from ome_zarr import __version__
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    from napari_alregions.wsi import open_slide

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("tests/data"))
    args = p.parse_args()
    with open_slide(args.out / "cmu_small_region.svs") as slide:
        crop = np.asarray(slide.levels[0][ROWS, COLS])
    for fmt, name, zarr_format in ((FormatV04(), "cmu_crop_ngff04.ome.zarr", 2), (FormatV05(), "cmu_crop_ngff05.ome.zarr", 3)):
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        root = zarr.open_group(out, mode="w", zarr_format=zarr_format)
        write_image(np.moveaxis(crop, -1, 0), root, axes="cyx", fmt=fmt, scale_factors=(2, 4),
                    scale={"c": 1.0, "y": 0.499, "x": 0.499}, axes_units={"y": "micrometer", "x": "micrometer"},
                    storage_options={"chunks": (3, 128, 128)})
        print(f"wrote {out} with ome-zarr {__version__}")


if __name__ == "__main__":
    main()
