"""Prototype sets for cold-start selection (prototype-sampling paper; SPEC §5).

A :class:`PrototypeSet` holds prototype embeddings per class and where they came from.
Three ways to build one:

* :func:`from_folder` – example images in one sub-folder per class;
* :func:`keyword_search` + :func:`from_captions` – rows of an image–caption table whose
  caption matches every "with" keyword group (any synonym of a group) and none of the
  "without" keywords (case-insensitive, whole words), images centre-cropped to the
  encoder input;
* :func:`retrieve` – the top-N images of precomputed image embeddings by cosine
  similarity to a text (prompt) embedding.

Sets are saved as ``.npz`` (no pickles) with their provenance as JSON.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path, load_npy, load_npz

__all__ = [
    "ParquetMissing",
    "PrototypeSet",
    "center_crop",
    "from_captions",
    "from_folder",
    "keyword_search",
    "load_embeddings",
    "load_prototypes",
    "read_caption_table",
    "retrieve",
    "save_prototypes",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Bound on how many images one set reads (untrusted tables can be huge).
MAX_IMAGES = 100_000


@dataclass
class PrototypeSet:
    """Prototype embeddings per class, with provenance."""

    embeddings: dict[str, np.ndarray]  # class -> (N_c, D)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        dims = {e.shape[1] for e in self.embeddings.values() if np.ndim(e) == 2}
        if not self.embeddings or any(np.ndim(e) != 2 or len(e) == 0 for e in self.embeddings.values()):
            raise ValueError("a prototype set needs at least one non-empty (N, D) array per class")
        if len(dims) != 1:
            raise ValueError(f"prototype classes disagree in dimension: {sorted(dims)}")

    @property
    def dim(self) -> int:
        return next(iter(self.embeddings.values())).shape[1]

    def of(self, cls: str | None = None) -> np.ndarray:
        """The prototypes of one class (default: all classes stacked)."""
        if cls is None:
            return np.concatenate(list(self.embeddings.values()))
        if cls not in self.embeddings:
            raise KeyError(f"no prototypes for class {cls!r}; classes: {', '.join(self.embeddings)}")
        return self.embeddings[cls]


def save_prototypes(path: str | os.PathLike[str], protos: PrototypeSet) -> Path:
    """Write a set as ``.npz`` atomically (arrays ``class:<name>`` plus ``provenance`` JSON)."""
    path = Path(path)
    arrays = {f"class:{c}": np.asarray(e, np.float32) for c, e in protos.embeddings.items()}
    arrays["provenance"] = np.array(json.dumps(protos.provenance, default=str))
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def load_prototypes(path: str | os.PathLike[str]) -> PrototypeSet:
    """Read a set written by :func:`save_prototypes` (``allow_pickle=False``)."""
    path = Path(path)
    try:
        z = load_npz(path, what="prototype set")
        emb = {k[len("class:"):]: v for k, v in z.items() if k.startswith("class:")}
        prov = json.loads(str(z["provenance"])) if "provenance" in z else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a prototype set (provenance: {exc})") from exc
    if not emb:
        raise ValueError(f"{path}: empty prototype set")
    return PrototypeSet(emb, prov)


# ---------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------
def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central square of an RGB image, resized to ``size`` px (uint8, 3 channels)."""
    from skimage.transform import resize

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image, got shape {img.shape}")
    img = img[..., :3]
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = img[y0 : y0 + side, x0 : x0 + side]
    if side != size:
        crop = resize(crop, (size, size), preserve_range=True, anti_aliasing=side > size)
    return np.clip(crop, 0, 255).astype(np.uint8) if crop.dtype != np.uint8 else crop


def _read_images(paths: Sequence[Path], size: int) -> np.ndarray:
    from skimage.io import imread

    if len(paths) > MAX_IMAGES:
        raise ValueError(f"{len(paths)} images: more than {MAX_IMAGES}; narrow the selection")
    out = np.empty((len(paths), size, size, 3), np.uint8)
    broken = []
    for i, p in enumerate(paths):
        try:
            out[i] = center_crop(imread(p), size)
        except Exception as exc:  # unreadable, missing, wrong format
            broken.append(f"{p} ({type(exc).__name__})")
    if broken:
        more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
        raise ValueError(f"cannot read {len(broken)} image(s): {'; '.join(broken[:5])}{more}")
    return out


def from_folder(folder: str | os.PathLike[str], encoder, *, classes: Iterable[str] | None = None) -> PrototypeSet:
    """Prototypes from example images, one sub-folder per class (``folder/<class>/*.png``)."""
    from .embed import embed_patches

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    names = list(classes) if classes is not None else sorted(p.name for p in folder.iterdir() if p.is_dir())
    emb = {}
    for c in names:
        files = sorted(p for p in (folder / c).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{folder / c}: no images ({', '.join(IMAGE_SUFFIXES)})")
        emb[c] = embed_patches(_read_images(files, encoder.patch_size), encoder)
    if not emb:
        raise ValueError(f"{folder}: no class sub-folders")
    return PrototypeSet(emb, {"source": "folder", "folder": str(folder), "encoder": encoder.name,
                              "counts": {c: len(e) for c, e in emb.items()}})


# ---------------------------------------------------------------------------------------
# Image–caption tables
# ---------------------------------------------------------------------------------------
class ParquetMissing(ValueError):
    """Reading Parquet needs pyarrow, which is not installed."""


def _read_parquet(path: Path, **kwargs):
    """``pandas.read_parquet`` with pyarrow, or a clear error naming the extra to install."""
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ParquetMissing(f"{path}: reading Parquet needs pyarrow: pip install 'napari-alregions[parquet]' "
                             "(or save the table as CSV / the embeddings as .npy)") from exc
    return pd.read_parquet(path, engine="pyarrow", **kwargs)


def read_caption_table(path: str | os.PathLike[str]):
    """An image–caption table (CSV or Parquet) with columns ``image_path`` and ``caption``."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such table")
    try:
        table = _read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except ParquetMissing:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: unreadable table ({exc})") from exc
    missing = {"image_path", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need image_path and caption")
    return table


def _word(term: str) -> re.Pattern:
    # whole words / phrases, case-insensitive; inner spaces match any whitespace
    body = r"\s+".join(re.escape(t) for t in term.strip().split())
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def keyword_search(table, with_groups: Sequence[Sequence[str]], without: Sequence[str] = ()) -> np.ndarray:
    """Row indices whose caption matches every group (any synonym) and no excluded word.

    Parameters
    ----------
    table : pandas.DataFrame
        With a ``caption`` column.
    with_groups : sequence of sequences of str
        E.g. ``[["tumour", "tumor", "carcinoma"], ["lymph node"]]``: a caption must
        contain a word of the first group and a word of the second.
    without : sequence of str
        Captions containing any of these are left out.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"caption": ["Tumor in lymph node", "normal lymph node", "tumour"]})
    >>> keyword_search(t, [["tumor", "tumour"], ["lymph node"]]).tolist()
    [0]
    """
    groups = [[w for w in g if w.strip()] for g in with_groups]
    if not groups or any(not g for g in groups):
        raise ValueError("with_groups needs at least one non-empty group of keywords")
    captions = table["caption"].fillna("").astype(str)
    keep = np.ones(len(captions), bool)
    for g in groups:
        pats = [_word(w) for w in g]
        keep &= captions.map(lambda c: any(p.search(c) for p in pats)).to_numpy(bool)
    excl = [_word(w) for w in without if w.strip()]
    if excl:
        keep &= ~captions.map(lambda c: any(p.search(c) for p in excl)).to_numpy(bool)
    return np.flatnonzero(keep)


def from_captions(table, rows: Sequence[int], encoder, *, cls: str = "tumour", root: str | os.PathLike[str] | None = None,
                  query: dict[str, Any] | None = None) -> PrototypeSet:
    """Prototypes of one class from the images of the selected table rows."""
    from .embed import embed_patches

    rows = list(rows)
    if not rows:
        raise ValueError("no caption matched: the prototype set would be empty")
    base = Path(root) if root is not None else Path(".")
    paths = [Path(p) if Path(p).is_absolute() else base / p for p in table["image_path"].iloc[rows].astype(str)]
    emb = embed_patches(_read_images(paths, encoder.patch_size), encoder)
    return PrototypeSet({cls: emb}, {"source": "keyword search", "query": query or {}, "rows": rows,
                                     "encoder": encoder.name})


def load_embeddings(path: str | os.PathLike[str], column: str = "embedding") -> np.ndarray:
    """(N, D) embeddings from ``.npy`` or from a Parquet column of equal-length vectors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        arr = load_npy(path, what="embeddings")
    else:
        try:
            arr = np.stack(_read_parquet(path, columns=[column])[column].to_numpy())
        except ParquetMissing:
            raise
        except Exception as exc:
            raise ValueError(f"{path}: no usable {column!r} column ({exc})") from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise ValueError(f"{path}: expected a finite (N, D) array, got shape {arr.shape}")
    return arr


def retrieve(image_embeddings: np.ndarray, text_embedding: np.ndarray, *, top_n: int, cls: str = "tumour",
             prompt: str | None = None) -> PrototypeSet:
    """The ``top_n`` image embeddings most similar (cosine) to a text embedding."""
    img = np.asarray(image_embeddings, np.float32)
    txt = np.asarray(text_embedding, np.float32).reshape(-1)
    if img.ndim != 2 or img.shape[0] == 0:
        raise ValueError(f"image embeddings must be a non-empty (N, D) array, got {img.shape}")
    if txt.shape[0] != img.shape[1]:
        raise ValueError(f"text embedding has dimension {txt.shape[0]}, images {img.shape[1]}")
    if not 1 <= top_n:
        raise ValueError(f"top_n must be >= 1, got {top_n}")
    sims = (img / np.maximum(np.linalg.norm(img, axis=1, keepdims=True), 1e-12)) @ (txt / max(np.linalg.norm(txt), 1e-12))
    order = np.argsort(-sims, kind="stable")[:top_n]
    return PrototypeSet({cls: img[order]}, {"source": "text retrieval", "prompt": prompt, "rows": order.tolist(),
                                           "similarity": sims[order].round(6).tolist()})
