"""Make the real annotated H&E case in tests/data/hgsc/ from the histolytics 0.3.0 wheel.

What
    A 1500x1500 px H&E field of high-grade serous ovarian carcinoma (HGSC): one tumour nest
    with lymphocyte-rich infiltrate around it and desmoplastic stroma on its right. It is
    cut into two halves, top (training slide ``hgsc_train``) and bottom (held-out test slide
    ``hgsc_test``), each 1500x750 px, each written as a tiled (256 px) pyramidal TIFF with
    JPEG compression (quality 90) and three levels as SubIFDs (1, 1/2, 1/4), with a QuPath
    GeoJSON of "Tumor" annotation polygons (level-0 px of that half) and a ``manifest.json``
    in the pool format :class:`napari_alregions.simulate.Pool` reads.

Where from
    The wheel ``histolytics-0.3.0-py3-none-any.whl`` on PyPI (HautaniemiLab, BSD-3-Clause;
    ``pip download --no-deps histolytics==0.3.0``), files
    ``histolytics/data/hgsc_nest.jpg`` (the image; ``histolytics.data.hgsc_cancer_he()``)
    and ``histolytics/data/hgsc_nest.parquet`` (GeoParquet of 1295 segmented, classified
    nuclei in image px; ``histolytics.data.hgsc_cancer_nuclei()``). Classes are those of
    histolytics' ``hgsc_v1_efficientnet_b5`` nuclei models: neoplastic, inflammatory,
    connective (here 288, 633, 374). The wheel's ``hgsc_stromal_he.jpg`` field is not used:
    its table has 5 neoplastic nuclei in 423, so it holds next to no tumour. The image's
    pixel size is not stated by the package; 0.5 um/px is assumed (lymphocyte nuclei are
    ~15 px across, ~7.5 um at that size) and written as the TIFF resolution.

Licence
    BSD-3-Clause, Copyright (c) 2024-2025, HautaniemiLab; the licence text is copied to
    tests/data/hgsc/LICENSE (from the wheel's ``histolytics-0.3.0.dist-info/licenses/LICENSE``).

How the truth is derived
    Tumour = neoplastic epithelium nests, everything else = not tumour. The polygons of the
    nuclei classed "neoplastic" are each grown by 45 px, united and shrunk by 35 px (a
    morphological closing that bridges the cytoplasm between tumour nuclei, leaving the
    outline ~10 px outside the outer nuclei), holes under 20 000 px² (small lumina and gaps
    inside the nest) are filled and components holding fewer than 5 neoplastic nuclei are
    dropped (stray single cells). It is derived from an automated nuclei classification,
    not drawn by a pathologist.

Usage
    pip download --no-deps histolytics==0.3.0 -d /tmp/histo
    unzip -q /tmp/histo/histolytics-0.3.0-py3-none-any.whl -d /tmp/histo/wheel
    python scripts/make_hgsc_case.py /tmp/histo/wheel [--out tests/data/hgsc] [--overlay x.png]

Deterministic: the same wheel gives byte-identical files. Needs numpy, shapely, tifffile,
imagecodecs (the project's dependencies) and pyarrow (the ``parquet`` extra).
"""

from __future__ import annotations

import argparse
import json
import shutil
import uuid
from pathlib import Path

import imagecodecs
import numpy as np
import shapely
import tifffile
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient

IMAGE = "hgsc_nest.jpg"
NUCLEI = "hgsc_nest.parquet"
LICENSE = "histolytics-0.3.0.dist-info/licenses/LICENSE"
MPP = 0.5  # assumed, see above
GROW, SHRINK = 45.0, 35.0  # px: closing of the neoplastic nuclei
MIN_HOLE = 20_000.0  # px²: smaller holes inside a nest are filled
MIN_NUCLEI = 5  # a nest holds at least this many neoplastic nuclei
LEVELS = 3
TILE = 256
QUALITY = 90
COLOR = [200, 0, 0]


def data_dir(root: Path) -> Path:
    """The wheel's ``histolytics/data`` under ``root`` (the unzipped wheel or that folder)."""
    for d in (root / "histolytics" / "data", root):
        if (d / IMAGE).is_file() and (d / NUCLEI).is_file():
            return d
    raise SystemExit(f"{root}: no histolytics/data/{IMAGE} and {NUCLEI} (unzip the histolytics 0.3.0 wheel there)")


def read_nuclei(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(geometries, class names) of a GeoParquet nuclei table (WKB geometry column)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"geo"])
    column = meta.get("primary_column", "geometry")
    geoms = shapely.from_wkb(np.asarray(table.column(column).to_pylist(), dtype=object))
    return geoms, np.asarray(table.column("class_name").to_pylist(), dtype=object)


def tumour_regions(geoms: np.ndarray, classes: np.ndarray, width: int, height: int) -> list[Polygon]:
    """Tumour-nest polygons from the neoplastic nuclei (see the module's docstring)."""
    neo = geoms[classes == "neoplastic"]
    merged = shapely.union_all(shapely.buffer(neo, GROW)).buffer(-SHRINK)
    centres = shapely.centroid(neo)
    nests = []
    for part in getattr(merged, "geoms", [merged]):
        if part.is_empty or int(shapely.contains(part, centres).sum()) < MIN_NUCLEI:
            continue
        holes = [h for h in part.interiors if Polygon(h).area >= MIN_HOLE]
        nests.append(Polygon(part.exterior, holes))
    clipped = MultiPolygon(nests).intersection(shapely.box(0, 0, width, height))
    return [p for p in getattr(clipped, "geoms", [clipped]) if isinstance(p, Polygon) and not p.is_empty]


def halve(img: np.ndarray) -> np.ndarray:
    """2x2 mean (edge-padded to even sides), rounded."""
    h, w = img.shape[:2]
    a = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.float64)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4).round().astype(np.uint8)


def write_pyramid(path: Path, img: np.ndarray) -> None:
    """A tiled JPEG TIFF with the reduced levels as SubIFDs of level 0, resolution from MPP."""
    levels = [img]
    for _ in range(LEVELS - 1):
        levels.append(halve(levels[-1]))
    args = dict(tile=(TILE, TILE), compression="jpeg", compressionargs={"level": QUALITY}, photometric="rgb")
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(1e4 / MPP, 1e4 / MPP),
                  resolutionunit="CENTIMETER", description=f"HGSC H&E (histolytics 0.3.0 {IMAGE}); {MPP} um/px assumed",
                  software="scripts/make_hgsc_case.py", **args)
        for lvl in levels[1:]:
            tif.write(lvl, subfiletype=1, **args)


def _ring(coords, dx: float, dy: float) -> list[list[float]]:
    return [[round(x - dx, 2), round(y - dy, 2)] for x, y in coords]


def geojson(polys: list[Polygon], x0: float, y0: float, name: str) -> dict:
    """A QuPath FeatureCollection of "Tumor" annotations, coordinates shifted by (-x0, -y0)."""
    features = []
    for i, p in enumerate(sorted(polys, key=lambda q: (q.bounds[1], q.bounds[0]))):
        p = orient(p, sign=1.0)
        rings = [_ring(p.exterior.coords, x0, y0)] + [_ring(h.coords, x0, y0) for h in p.interiors]
        features.append({
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-alregions/tests/data/hgsc/{name}/tumor/{i}")),  # QuPath ids are UUIDs
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": COLOR}},
        })
    return {"type": "FeatureCollection", "features": features}


def overlay(img: np.ndarray, polys: list[Polygon], path: Path) -> None:
    """The truth on the image: tumour tinted red, outlines yellow."""
    from skimage.draw import polygon as fill
    from skimage.segmentation import find_boundaries

    mask = np.zeros(img.shape[:2], bool)
    for p in polys:
        r, c = fill(np.asarray(p.exterior.coords)[:, 1], np.asarray(p.exterior.coords)[:, 0], mask.shape)
        mask[r, c] = True
        for h in p.interiors:
            r, c = fill(np.asarray(h.coords)[:, 1], np.asarray(h.coords)[:, 0], mask.shape)
            mask[r, c] = False
    out = img.astype(np.float64)
    out[mask] = 0.7 * out[mask] + 0.3 * np.array([255.0, 0, 0])
    out[find_boundaries(mask, mode="thick")] = [255, 255, 0]
    imagecodecs.imwrite(path, out.round().astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="the unzipped histolytics 0.3.0 wheel (or its histolytics/data)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "hgsc")
    ap.add_argument("--overlay", type=Path, help="also write a PNG of the whole field with its truth")
    args = ap.parse_args(argv)

    src = data_dir(args.wheel)
    img = imagecodecs.imread(src / IMAGE)[..., :3]
    height, width = img.shape[:2]
    geoms, classes = read_nuclei(src / NUCLEI)
    nests = tumour_regions(geoms, classes, width, height)
    if args.overlay:
        overlay(img, nests, args.overlay)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    half = height // 2
    slides = []
    for name, split, (y0, y1) in (("hgsc_train", "train", (0, half)), ("hgsc_test", "test", (half, height))):
        box = shapely.box(0, y0, width, y1)
        polys = []
        for p in nests:
            cut = p.intersection(box)
            polys += [q for q in getattr(cut, "geoms", [cut]) if isinstance(q, Polygon) and q.area > 0]
        write_pyramid(out / f"{name}.tif", np.ascontiguousarray(img[y0:y1]))
        (out / f"{name}.geojson").write_text(json.dumps(geojson(polys, 0, y0, name)) + "\n")
        share = sum(q.area for q in polys) / (width * (y1 - y0))
        print(f"{name}: {width}x{y1 - y0} px, {len(polys)} tumour polygon(s), tumour {share:.1%} of the field")
        slides.append({"name": name, "image": f"{name}.tif", "annotations": f"{name}.geojson", "split": split})
    (out / "manifest.json").write_text(json.dumps({"slides": slides}, indent=2) + "\n")
    licence = args.wheel / LICENSE
    if licence.is_file():
        shutil.copyfile(licence, out / "LICENSE")
    elif not (out / "LICENSE").is_file():
        raise SystemExit(f"{licence}: not found; copy the histolytics licence to {out / 'LICENSE'}")


if __name__ == "__main__":
    main()
