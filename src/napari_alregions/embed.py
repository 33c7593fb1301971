"""Patch embeddings and prototype similarity maps (SPEC §4, §5; prototype-sampling paper).

An :class:`Encoder` maps an RGB patch to a feature vector. It is built from the current
classifier (its penultimate layer), from a torchvision backbone (when torchvision is
installed; weights only from a local file), or from a file: a state dict for one of our
architectures (loaded with ``weights_only=True``) or a TorchScript module. Embeddings
are computed on the map grid like inference (:func:`model.predict.map_patches`: reader
threads, batches, tissue only), L2-normalised, NaN outside tissue.

Similarity map = max cosine similarity of each patch embedding to a set of prototype
embeddings; it is a priority map like any other.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import ModelSpec, load_checkpoint
from .model.networks import ARCHITECTURES, build_model
from .model.predict import map_patches
from .wsi import Slide

__all__ = ["Encoder", "embed_patches", "embed_slide", "load_encoder", "similarity_map"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Encoder:
    """A patch encoder and how it wants its input (``patch_size`` px at pyramid ``level``)."""

    module: nn.Module
    name: str
    patch_size: int
    level: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor] = lambda m, x: m(x)
    _dim: int | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        """Embedding dimension (one probe forward pass)."""
        if self._dim is None:
            dev = next((p.device for p in self.module.parameters()), torch.device("cpu"))
            with torch.no_grad():
                x = torch.zeros(1, 3, self.patch_size, self.patch_size, device=dev)
                self._dim = int(self._flat(self.module.eval(), x).shape[1])
        return self._dim

    def _flat(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = self.features(m, x)
        return f.flatten(1) if f.ndim > 2 else f

    def head(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._flat(m, x).float(), dim=1)


def load_encoder(
    source: str | os.PathLike[str] | nn.Module,
    *,
    spec: ModelSpec | None = None,
    patch_size: int | None = None,
    level: int | None = None,
) -> Encoder:
    """An encoder from a classifier, a checkpoint, a backbone name, a state dict or TorchScript.

    Parameters
    ----------
    source
        * an ``nn.Module`` of ours (with ``spec``): its penultimate layer;
        * a path to one of our checkpoints (``.pt`` with a spec): its penultimate layer;
        * ``"random"`` or ``"random:<seed>"``: an untrained, seeded compact CNN;
        * ``"torchvision:<arch>[:<weights file>]"``, e.g. ``torchvision:resnet18:/w/r18.pth``:
          the backbone without its classifier (ImageNet normalisation);
        * a path to an exported program (``torch.export.save``, ``.pt2``) or a TorchScript
          module (``torch.jit.save``), taken as is. These files are programs: load only
          files you trust;
        * a path to a bare state dict for ``spec.arch`` (``weights_only=True``).
    spec : ModelSpec, optional
        Patch size, level and normalisation (and the architecture of a bare state dict).
    patch_size, level : int, optional
        Override the input geometry (default: from ``spec``, else 224 px at level 0).

    Raises
    ------
    ValueError
        For an unknown source or a file that is none of the above.
    """
    from .model.networks import features as classifier_features

    if isinstance(source, str) and (source == "random" or source.startswith("random:")):
        # no pretrained weights offline: a seeded, untrained compact CNN ("random features")
        seed = int(source.split(":", 1)[1]) if ":" in source else 0
        geometry = spec or ModelSpec(patch_size=patch_size or 64, level=1 if level is None else level)
        torch.manual_seed(seed)
        source, spec = ModelSpec(arch="compact", patch_size=patch_size or geometry.patch_size,
                                 level=geometry.level if level is None else level).build(), geometry
    if isinstance(source, nn.Module):
        if spec is None:
            raise ValueError("a module needs its ModelSpec (patch size, level, normalisation)")
        feats = classifier_features if hasattr(source, "forward_features") else (lambda m, x: m(x))
        return Encoder(source, spec.arch, patch_size or spec.patch_size, spec.level if level is None else level,
                       spec.mean, spec.std, feats)
    text = str(source)
    if text.startswith("torchvision:"):
        return _torchvision_encoder(text, patch_size or 224, 0 if level is None else level)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"encoder {text!r}: no such file (or say torchvision:<arch>)")
    try:
        model, ck_spec, _ = load_checkpoint(path)
    except Exception:
        model = None
    if model is not None:
        return Encoder(model, ck_spec.arch, patch_size or ck_spec.patch_size, ck_spec.level if level is None else level,
                       ck_spec.mean, ck_spec.std, classifier_features)
    geometry = spec or ModelSpec()
    module = _load_program(path)
    if module is not None:
        return Encoder(module, f"program:{path.name}", patch_size or geometry.patch_size,
                       geometry.level if level is None else level, geometry.mean, geometry.std)
    if spec is None or spec.arch not in ARCHITECTURES:
        raise ValueError(f"{path}: not a checkpoint of ours, not TorchScript; a bare state dict needs spec= with its arch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(spec.arch, len(spec.classes), width=spec.width)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load as a {spec.arch} state dict ({exc})") from exc
    return Encoder(model, spec.arch, patch_size or spec.patch_size, spec.level if level is None else level,
                   spec.mean, spec.std, classifier_features)


class _Program(nn.Module):
    """An exported graph as a module; it has no train/eval modes (always inference)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.__dict__["graph"] = graph  # not a submodule: .eval() must not reach it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def to(self, *args, **kwargs):  # noqa: D102
        self.__dict__["graph"] = self.graph.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True):  # noqa: D102
        return self


def _load_program(path: Path) -> nn.Module | None:
    """A ``torch.export`` program (``.pt2``) or a TorchScript module, else None."""
    import warnings

    if path.suffix == ".pt2":
        try:
            return _Program(torch.export.load(str(path)).module())
        except Exception:
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still common
            return torch.jit.load(str(path), map_location="cpu")
    except Exception:
        return None


def _torchvision_encoder(text: str, patch_size: int, level: int) -> Encoder:
    parts = text.split(":", 2)
    arch = parts[1] if len(parts) > 1 else ""
    try:
        import torchvision.models as tvm
    except Exception as exc:
        raise ValueError(f"{text}: torchvision is not installed (pip install napari-alregions[torchvision])") from exc
    if not hasattr(tvm, arch):
        raise ValueError(f"{text}: torchvision has no model {arch!r}")
    net = getattr(tvm, arch)(weights=None)
    if len(parts) > 2:
        net.load_state_dict(torch.load(parts[2], map_location="cpu", weights_only=True))
    for attr in ("fc", "classifier", "head", "heads"):
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
            break
    return Encoder(net, arch, patch_size, level, IMAGENET_MEAN, IMAGENET_STD)


def embed_slide(
    slide: Slide,
    encoder: Encoder,
    *,
    stride: int,
    tissue: np.ndarray | None = None,
    batch_size: int | str | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    compile: bool | str = False,
    workers: int | None = None,
) -> np.ndarray:
    """(H, W, D) float32 L2-normalised patch embeddings on the map grid; NaN off tissue.

    Map pixel (r, c) embeds the patch centred on the cell centre, as for the probability
    map (``stride`` level-0 px per map pixel). ``batch_size`` ("auto" tunes it; default
    "auto" on CUDA, 128 on the CPU), ``device``, ``compile`` and ``workers`` (reader
    threads) as for :func:`~napari_alregions.model.predict_probability_map`.
    """
    return map_patches(slide, [encoder.module], encoder, head=encoder.head, n_out=encoder.dim, stride=stride,
                       tissue=tissue, batch_size=batch_size, device=device, progress=progress, cancel=cancel,
                       compile=compile, workers=workers)[0]


def embed_patches(images: np.ndarray, encoder: Encoder, *, batch_size: int = 64,
                  device: str | torch.device | None = None) -> np.ndarray:
    """(N, D) L2-normalised embeddings of (N, d, d, 3) uint8 patches of the encoder's size."""
    from .model import pick_device
    from .model.data import normalise

    images = np.asarray(images)
    d = encoder.patch_size
    if images.ndim != 4 or images.shape[1:] != (d, d, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, {d}, {d}, 3) uint8, got {images.dtype} {images.shape}")
    dev = pick_device(device)
    module = encoder.module.to(dev).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).to(dev).permute(0, 3, 1, 2).float().div_(255)
            out.append(encoder.head(module, normalise(x, encoder.mean, encoder.std)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


def similarity_map(embeddings: np.ndarray, prototypes: np.ndarray, *, chunk: int = 65536) -> np.ndarray:
    """Max cosine similarity of each patch to the prototypes, clipped to [0, 1].

    Parameters
    ----------
    embeddings : (H, W, D) float ndarray
        Patch embeddings (need not be normalised); NaN patches give 0.
    prototypes : (N, D) float ndarray
        Prototype embeddings, N >= 1.
    chunk : int
        Patches per matrix product (bounds memory for 10⁶ patches).

    Returns
    -------
    (H, W) float32 ndarray

    Examples
    --------
    >>> e = np.zeros((1, 2, 2)); e[0, 0] = (1, 0); e[0, 1] = (0, 1)
    >>> similarity_map(e, np.array([[1.0, 0.0]])).tolist()
    [[1.0, 0.0]]
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    protos = np.asarray(prototypes, dtype=np.float32)
    if emb.ndim != 3:
        raise ValueError(f"embeddings must have shape (H, W, D), got {emb.shape}")
    if protos.ndim != 2 or protos.shape[0] == 0:
        raise ValueError(f"prototypes must be a non-empty (N, D) array, got shape {protos.shape}")
    if protos.shape[1] != emb.shape[2]:
        raise ValueError(f"prototype dimension {protos.shape[1]} does not match the embeddings' {emb.shape[2]} "
                         "(made with another encoder?)")
    if not np.isfinite(protos).all():
        raise ValueError("prototypes contain NaN or inf")
    h, w, dim = emb.shape
    flat = emb.reshape(-1, dim)
    pn = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    out = np.zeros(len(flat), np.float32)
    for i in range(0, len(flat), chunk):
        x = flat[i : i + chunk]
        ok = np.isfinite(x).all(axis=1)
        xn = np.where(ok[:, None], x, 0.0)
        xn = xn / np.maximum(np.linalg.norm(xn, axis=1, keepdims=True), 1e-12)
        out[i : i + chunk] = np.where(ok, (xn @ pn.T).max(axis=1), 0.0)
    return np.clip(out, 0.0, 1.0).reshape(h, w)
