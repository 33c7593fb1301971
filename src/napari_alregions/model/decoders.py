"""JPEG tile decoders for the raw-tile stream: JPEG streams in, (3, H, W) uint8 tensors on
a device out, one call per few hundred tiles.

Two libraries decode on a GPU: torchvision's ``decode_jpeg`` (nvJPEG) and NVIDIA's
nvImageCodec (nvJPEG's hardware and CUDA decoders, libjpeg-turbo on the CPU). Either may be
missing, fail on a given GPU, or read a TIFF writer's streams differently from tifffile, so
a decoder is used on a level only once :func:`decodes_like_cpu` has compared its pixels
with tifffile's there.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .device import pick_device

__all__ = [
    "DECODERS",
    "MAX_MEAN_ABS_DIFF",
    "NvImageCodec",
    "TileDecoder",
    "check_decoder",
    "choose_decoder",
    "decodes_like_cpu",
    "get_decoder",
    "nvjpeg",
    "nvjpeg_decode",
]

TileDecoder = Callable[[list[bytes], torch.device], list[torch.Tensor]]

# the named decoders, in the order tried when none is asked for: torchvision's is the one
# measured (benchmarks/RESULTS.md); nvImageCodec serves where torchvision does not import
DECODERS = ("torchvision", "nvimgcodec")


def nvjpeg():
    """torchvision's decode_jpeg asked for RGB output (nvJPEG's "unchanged" output may be
    the stored YCbCr planes), or None if torchvision does not import."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # missing, or a wheel that does not match this torch
        return None
    return functools.partial(decode_jpeg, mode=ImageReadMode.RGB)


def nvjpeg_decode(streams: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """JPEG streams -> (3, H, W) uint8 tensors on ``device``, in one torchvision call."""
    return nvjpeg()([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in streams], device=device)


@functools.cache  # once: a failed import is not retried on every map
def _nvimgcodec():
    try:
        from nvidia import nvimgcodec
    except Exception:  # not installed, or its libraries do not load
        return None
    return nvimgcodec


class NvImageCodec:
    """A :data:`TileDecoder` on nvImageCodec: batched decoding on its own thread pool,
    without the GIL, into planar RGB.

    On CUDA the tiles are decoded on the calling thread's current stream and come back as
    device tensors (DLPack, no copy); on the CPU its libjpeg-turbo backend decodes them.

    Parameters
    ----------
    backends : sequence of str or mapping of str to float, optional
        nvImageCodec backend kinds on CUDA ("hw_gpu_only": the hardware JPEG decoder,
        "gpu_only", "hybrid_cpu_gpu", "cpu_only"), tried in this order; a mapping gives each
        the fraction of a batch it should take (its load hint). Default: the library's
        choice, all backends.
    threads : int
        Host threads of the decoder (0: one per core).

    Examples
    --------
    >>> decode = NvImageCodec({"hw_gpu_only": 0.7, "hybrid_cpu_gpu": 0.3})  # doctest: +SKIP
    >>> [img] = decode([tiles.jpeg_stream(0)], torch.device("cuda", 0))  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    (torch.Size([3, 256, 256]), torch.uint8)
    """

    def __init__(self, backends: Sequence[str] | Mapping[str, float] | None = None, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        hints = dict(backends) if isinstance(backends, Mapping) else dict.fromkeys(backends or (), 1.0)
        kinds = {"hw_gpu_only", "gpu_only", "hybrid_cpu_gpu", "cpu_only"}
        for name, hint in hints.items():
            if name not in kinds:
                raise ValueError(f"backends must name nvImageCodec backend kinds {sorted(kinds)}, got {name!r}")
            if not 0 < hint <= 1:
                raise ValueError(f"backends' load hints must be in (0, 1], got {name}={hint}")
        self.backends = hints
        self.threads = threads
        self._free: dict[str, list] = {}  # device -> idle nvImageCodec decoders
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return _nvimgcodec() is not None

    def _decoder(self, nv, device: torch.device):
        if device.type == "cpu":
            return nv.Decoder(device_id=nv.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=self.threads,
                              backends=[nv.Backend(nv.BackendKind.CPU_ONLY)])
        backends = [nv.Backend(getattr(nv.BackendKind, k.upper()), load_hint=h) for k, h in self.backends.items()]
        return nv.Decoder(device_id=device.index, max_num_cpu_threads=self.threads, backends=backends or None)

    def __call__(self, streams: list[bytes], device: torch.device) -> list[torch.Tensor]:
        nv = _nvimgcodec()
        if nv is None:
            raise RuntimeError("nvImageCodec is not installed (pip install nvidia-nvimgcodec-cu13)")
        device = pick_device(device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"nvImageCodec decodes to the CPU or a CUDA device, not {device}")
        key = str(device)
        # a decoder per concurrent caller: the pool's stagers decode at once, and one
        # decoder's buffers must not be shared by two calls in flight
        with self._lock:
            free = self._free.setdefault(key, [])
            dec = free.pop() if free else None
        if dec is None:
            dec = self._decoder(nv, device)
        try:
            params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, sample_format=nv.SampleFormat.P_RGB,
                                     apply_exif_orientation=False)
            code = [nv.CodeStream(bytes(b)) for b in streams]
            if device.type == "cuda":
                images = dec.decode(code, params=params, cuda_stream=torch.cuda.current_stream(device).cuda_stream)
            else:
                images = dec.decode(code, params=params)
            if any(img is None for img in images):
                bad = [i for i, img in enumerate(images) if img is None]
                raise RuntimeError(f"nvImageCodec could not decode {len(bad)} of {len(streams)} JPEG streams "
                                   f"(first: #{bad[0]})")
            if device.type == "cuda":
                # on this stream already; from_dlpack orders it on the current stream anyway
                return [torch.from_dlpack(img) for img in images]
            return [torch.from_numpy(np.asarray(img)) for img in images]
        finally:
            with self._lock:
                self._free[key].append(dec)


@functools.cache
def _nvimgcodec_default() -> NvImageCodec:
    return NvImageCodec()


def check_decoder(decoder: str | TileDecoder | None) -> None:
    """Raise ValueError unless ``decoder`` is None, a name of :data:`DECODERS` or a callable."""
    if not (decoder is None or decoder in DECODERS or (callable(decoder) and not isinstance(decoder, str))):
        raise ValueError(f"decoder must be one of {DECODERS} or a callable, got {decoder!r}")


def get_decoder(name: str) -> TileDecoder | None:
    """The named decoder of :data:`DECODERS`, or None if its library does not import."""
    check_decoder(name)
    if name == "torchvision":
        return nvjpeg_decode if nvjpeg() is not None else None
    if name == "nvimgcodec":
        return _nvimgcodec_default() if NvImageCodec.available() else None
    raise TypeError(f"get_decoder takes a decoder's name, got {name!r}")


# tiled level -> {(device, decoder): whether its tiles decode there as on the CPU}; weak,
# so a closed slide's entry goes with it
_LEVEL_DECODE_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# uint8 levels. Right decoders differ in IDCT and chroma upsampling: nvJPEG vs. tifffile on
# an H100 by 0.8-2.1 on the bench slide's levels (2.1 at level 1); a misread colour space
# is off by tens (70-110 on Aperio-style tiles)
MAX_MEAN_ABS_DIFF = 5.0


def decodes_like_cpu(tiles, device: torch.device, decode: TileDecoder) -> bool:
    """Whether ``decode`` turns this level's JPEG tiles into the pixels tifffile's decoder
    gives, on ``device`` (checked once per level, device and decoder).

    A library may import fine yet fail on this GPU, and only say so when asked to decode:
    any failure counts as no. TIFF writers differ in how they store colour: YCbCr JPEG
    with or without JFIF, RGB components marked only by the TIFF photometric tag or an
    Adobe marker (Aperio's SVS), shared tables. A decoder that reads such a stream
    differently still returns an image of the right shape, just in the wrong colours, so
    the check compares pixels: the level's largest stored tile (the most detail) decoded
    both ways must agree to within :data:`MAX_MEAN_ABS_DIFF` grey levels on average.
    """
    device = pick_device(device)  # indexed: "cuda" and "cuda:0" share one entry
    known = _LEVEL_DECODE_OK.setdefault(tiles, {})
    key = (str(device), decode)
    if key not in known:
        ok = False
        counts = np.asarray(tiles.counts)
        if counts.size and counts.max() > 0:
            i = int(np.argmax(counts))
            try:
                [img] = decode([tiles.jpeg_stream(i)], device)
                got = img[:3].permute(1, 2, 0).cpu().numpy()
                want = tiles.tile(i)[..., :3]
                ok = (img.device == device and got.shape == want.shape
                      and float(np.abs(got.astype(np.int16) - want).mean()) < MAX_MEAN_ABS_DIFF)
            except Exception:  # a decoder that fails on this stream: decode on the CPU
                ok = False
        known[key] = ok
    return known[key]


def choose_decoder(tiles, device: torch.device, decoder: str | TileDecoder | None = None) -> TileDecoder | None:
    """The decoder for this level's tiles on ``device``: ``decoder`` (a name of
    :data:`DECODERS` or a callable) if it reads them as tifffile does, else None; with no
    ``decoder``, the first of :data:`DECODERS` that does. None: decode on the CPU."""
    if tiles is None or not tiles.is_jpeg:
        return None
    if decoder is not None and not isinstance(decoder, str):
        return decoder if decodes_like_cpu(tiles, device, decoder) else None
    # one library at a time: a later one is imported only if those before it do not serve
    for name in DECODERS if decoder is None else (decoder,):
        decode = get_decoder(name)
        if decode is not None and decodes_like_cpu(tiles, device, decode):
            return decode
    return None
