"""Test helpers that are independent of the code under test."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch import nn


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB test image with structure at every scale."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            127 + 100 * np.sin(xx / 37.0 + c) * np.cos(yy / 23.0 - c) + rng.normal(0, 10, (h, w))
            for c in range(3)
        ],
        axis=-1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def write_pyramid(path: Path, levels: list[np.ndarray], *, compression=None, tile=(256, 256), ome=False, mpp=None, **kw) -> None:
    """Write a SubIFD pyramid with tifffile (independent of the code under test)."""
    res = {}
    if mpp is not None and not ome:
        res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    meta = {"axes": "YXS", **({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})} if ome else None
    with tifffile.TiffWriter(path, ome=ome) as tif:
        tif.write(levels[0], tile=tile, compression=compression, subifds=len(levels) - 1,
                  photometric="rgb", metadata=meta, **res, **kw)
        for lvl in levels[1:]:
            tif.write(lvl, tile=tile, compression=compression, subfiletype=1, photometric="rgb", **kw)


def downsample2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    a = img[:h, :w].astype(np.float64)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4).round().astype(np.uint8)


def write_rgb_jpeg_tiff(path: Path, img: np.ndarray, tile: int = 256) -> None:
    """A tiled JPEG TIFF as Aperio's SVS store it: the TIFF says RGB (photometric 2), the
    JPEG streams hold RGB components with no marker saying so (no Adobe APP14, component ids
    1, 2, 3). tifffile decodes it right from the tag; a decoder that sees only the stream
    (nvJPEG) takes it for YCbCr."""
    import imagecodecs

    def unmarked(b: bytes) -> bytes:
        i = b.find(b"\xff\xee")
        if i >= 0:
            b = b[:i] + b[i + 2 + int.from_bytes(b[i + 2 : i + 4], "big") :]
        out = bytearray(b)
        sof, sos = out.find(b"\xff\xc0"), out.find(b"\xff\xda")
        for k in range(3):
            out[sof + 10 + 3 * k] = k + 1  # component specs after length, precision, h, w, count
            out[sos + 5 + 2 * k] = k + 1  # component selectors after length, count
        return bytes(out)

    h, w = img.shape[:2]
    tiles = (unmarked(imagecodecs.jpeg8_encode(np.ascontiguousarray(img[y : y + tile, x : x + tile]), level=90,
                                               colorspace="RGB", outcolorspace="RGB", subsampling=(1, 1)))
             for y in range(0, h, tile) for x in range(0, w, tile))
    tifffile.imwrite(path, tiles, shape=img.shape, dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                     photometric="rgb", subsampling=(1, 1), compressionargs={"outcolorspace": "RGB"})


def stream_threads() -> list:
    """The inference stream's threads still running."""
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("alregions-")]


def forget_decode_checks(monkeypatch) -> None:
    """Start from no per-level GPU-decode checks (restored after the test)."""
    import weakref

    from napari_alregions.model import decoders

    monkeypatch.setattr(decoders, "_LEVEL_DECODE_OK", weakref.WeakKeyDictionary())


def stream_only_decode(streams, device):
    """A CPU stand-in for nvJPEG: decodes from the JPEG stream alone, as nvJPEG does (no
    TIFF tags), to (3, H, W) tensors."""
    import imagecodecs

    return [torch.from_numpy(np.ascontiguousarray(imagecodecs.jpeg8_decode(b).transpose(2, 0, 1))) for b in streams]


class MeanRedness(nn.Module):
    """A model that is a known function of the pixels: logit of the patch's mean red."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean(dim=(1, 2))  # spec mean 0, std 1: x is RGB in [0, 1]
        p = red.clamp(1e-4, 1 - 1e-4)
        return torch.stack([torch.log(1 - p), torch.log(p)], dim=1)


def write_bomb_tiff(path: Path, side: int, *, tile: int = 1024, sparse: bool = False) -> None:
    """A classic TIFF that declares a side² RGB image of tile² tiles, written by hand: every
    tile points at one 16-byte uncompressed tile (or, ``sparse``, none has data: offset and
    byte count 0). 10^6 px with 1024² tiles: a 7.6 MB file declaring 2.7 TiB."""
    import struct

    n = (-(-side // tile)) ** 2
    entries = 11
    bps_at = 8 + 2 + entries * 12 + 4
    off_at = bps_at + 6
    cnt_at = off_at + 4 * n
    tile_at = cnt_at + 4 * n

    def tag(code: int, typ: int, count: int, value: int) -> bytes:  # a SHORT inline, else a LONG or offset
        inline = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
        return struct.pack("<HHI", code, typ, count) + inline

    ifd = [tag(256, 4, 1, side), tag(257, 4, 1, side), tag(258, 3, 3, bps_at), tag(259, 3, 1, 1), tag(262, 3, 1, 2),
           tag(277, 3, 1, 3), tag(284, 3, 1, 1), tag(322, 3, 1, tile), tag(323, 3, 1, tile), tag(324, 4, n, off_at),
           tag(325, 4, n, cnt_at)]
    with open(path, "wb") as fh:
        fh.write(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries) + b"".join(ifd) + struct.pack("<I", 0))
        fh.write(struct.pack("<HHH", 8, 8, 8))
        fh.write(np.full(n, 0 if sparse else tile_at, "<u4").tobytes())
        fh.write(np.full(n, 0 if sparse else 16, "<u4").tobytes())
        fh.write(bytes(16))


# -- a read-only file system, root or not ------------------------------------------------------

_READ_ONLY: list[str] = []  # folders whose writes fail now
_hooked: list[bool] = []  # an audit hook cannot be removed: added once, idle while _READ_ONLY is empty
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_EVENTS = {"os.remove": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "os.mkdir": 1, "os.rmdir": 1,
                 "os.truncate": 1, "os.chmod": 1, "os.utime": 1, "shutil.rmtree": 1}


def _refuse_writes(event: str, args: tuple) -> None:
    if not _READ_ONLY:
        return
    if event == "open":
        paths = args[:1] if args[2] & _WRITE_FLAGS else ()
    else:
        paths = args[: _WRITE_EVENTS.get(event, 0)]
    for p in paths:
        if isinstance(p, (str, bytes, os.PathLike)):
            name = os.path.abspath(os.fsdecode(p))
            if any(name == f or name.startswith(f + os.sep) for f in _READ_ONLY):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)


@contextmanager
def read_only_filesystem(folder: Path):
    """Every write under ``folder`` in this process fails with EROFS, as on a read-only mount
    (an audit hook: chmod does not stop root, who runs the tests in containers)."""
    if not _hooked:
        sys.addaudithook(_refuse_writes)
        _hooked.append(True)
    _READ_ONLY.append(os.path.abspath(folder))
    try:
        yield
    finally:
        _READ_ONLY.pop()


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time: equal before and
    after means nothing was written there."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}
