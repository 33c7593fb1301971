"""Training patches from labeled regions (adaptive paper §2.3; SPEC §6).

Labels live in a mask at the model's working level: 0 unlabeled, ``i + 1`` for class i.
A patch centred at (x, y) (working-level pixels) is a candidate when its centre area
((d/2)², d the patch size) is entirely labeled; its label is the positive class if any
centre pixel is positive (binary: class 1), else the majority class of the centre.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .._integral import box_sum, integral_image
from ..geometry import labeled_boxes
from ..patchlabels import centre_classes
from ..wsi import Slide

__all__ = ["PatchCandidates", "augment", "find_candidates", "labeled_candidates", "normalise", "read_patches"]


@dataclass
class PatchCandidates:
    """Candidate patch centres (working-level px) of one slide with their labels."""

    slide: Slide
    level: int
    patch_size: int
    centres: np.ndarray  # (N, 2) int: (y, x)
    labels: np.ndarray  # (N,) int class index

    def __len__(self) -> int:
        return len(self.labels)


def find_candidates(
    slide: Slide,
    labels: np.ndarray,
    *,
    level: int,
    patch_size: int,
    step: int | None = None,
    tissue: np.ndarray | None = None,
    min_tissue: float = 0.01,
) -> PatchCandidates:
    """Candidate patches on a grid (``step`` px, default d/4) inside the labeled area.

    Parameters
    ----------
    labels : (H_l, W_l) uint8 ndarray
        Label mask at ``level`` (0 unlabeled).
    tissue : (h, w) bool ndarray, optional
        Tissue mask (any resolution covering the slide); patches with less than
        ``min_tissue`` tissue are skipped.
    """
    labels = np.asarray(labels)
    lh, lw = slide.levels[level].shape[:2]
    if labels.shape != (lh, lw):
        raise ValueError(f"labels must have the shape of level {level}, {(lh, lw)}, got {labels.shape}")
    d = patch_size
    step = step or max(1, d // 4)
    half = d // 4  # centre area is d/2 wide: centre +- d/4
    ys = np.arange(d // 2, lh - d // 2 + 1, step)
    xs = np.arange(d // 2, lw - d // 2 + 1, step)
    found = []
    # a slide's labels cover a few regions: work in the bounding box of each labeled area,
    # so memory follows the labeled area, not the slide (a level-1 WSI mask is ~10^9 px)
    boxes = labeled_boxes(labels) if ys.size and xs.size else []
    n_classes = max((int(labels[b.slices].max()) for b in boxes), default=0)
    for y0, x0, y1, x1 in boxes:
        by = ys[(ys - half >= y0) & (ys + half <= y1)]
        bx = xs[(xs - half >= x0) & (xs + half <= x1)]
        if by.size and bx.size:
            found.append(centre_classes(labels[y0:y1, x0:x1], by - y0, bx - x0, half, n_classes, (y0, x0)))
    if not found:
        return PatchCandidates(slide, level, d, np.zeros((0, 2), int), np.zeros(0, int))
    centres = np.concatenate([c for c, _ in found])
    cls = np.concatenate([k for _, k in found])
    # boxes of two areas may overlap: each centre once, in row-major order
    centres, first = np.unique(centres, axis=0, return_index=True)
    cls = cls[first]
    if tissue is not None and len(centres):
        t = np.asarray(tissue, dtype=np.float64)
        sy, sx = t.shape[0] / lh, t.shape[1] / lw
        ty = np.clip((centres[:, 0] * sy).astype(int), 0, t.shape[0] - 1)
        tx = np.clip((centres[:, 1] * sx).astype(int), 0, t.shape[1] - 1)
        r = max(1, int(round(d / 2 * sy)))
        s = integral_image(t)
        y0, y1 = np.clip(ty - r, 0, t.shape[0]), np.clip(ty + r, 0, t.shape[0])
        x0, x1 = np.clip(tx - r, 0, t.shape[1]), np.clip(tx + r, 0, t.shape[1])
        keep = box_sum(s, y0, x0, y1, x1) / float((2 * r) ** 2) >= min_tissue
        centres, cls = centres[keep], cls[keep]
    return PatchCandidates(slide, level, d, centres, cls)


def labeled_candidates(
    slides: Mapping[str, Slide], labels: Mapping[str, np.ndarray], *, level: int, patch_size: int
) -> list[PatchCandidates]:
    """The training candidates of every slide with labels, by one rule for the viewer and the
    simulation: :func:`find_candidates` with the slide's own tissue mask (what a user has;
    never a ground truth)."""
    out = []
    for name, slide in slides.items():
        mask = labels.get(name)
        if mask is None or not mask.any():
            continue
        c = find_candidates(slide, mask, level=level, patch_size=patch_size, tissue=slide.tissue_mask())
        if len(c):
            out.append(c)
    return out


def read_patches(slide: Slide, centres: np.ndarray, *, level: int, patch_size: int) -> np.ndarray:
    """(N, d, d, 3) uint8 patches centred at working-level (y, x) centres; white off-slide."""
    factor = slide.level_factor(level)
    d = patch_size
    out = np.empty((len(centres), d, d, 3), dtype=np.uint8)
    for i, (y, x) in enumerate(centres):
        out[i] = slide.read_region(int((x - d // 2) * factor), int((y - d // 2) * factor), d, d, level=level, fill=255)
    return out


def normalise(x01: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, 3, d, d) RGB in [0, 1] -> model input, on the tensor's device."""
    m = torch.tensor(mean, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips, 90° rotations and stain (optical-density) jitter of uint8-range RGB in [0, 1].

    ``x`` is (N, 3, d, d) in [0, 1] (before normalisation).
    """
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"x must be (N, C, d, d) square patches, got {tuple(x.shape)}")
    n = x.shape[0]
    # draws on the generator's device (the CPU), so that any device gives the same result
    k = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    scale = 1 + 0.12 * (torch.rand((n, 3, 1, 1), generator=generator) - 0.5) * 2
    shift = 0.04 * (torch.rand((n, 3, 1, 1), generator=generator) - 0.5) * 2
    out = torch.empty_like(x)
    for turns in range(4):  # one rotation per group of samples, not one per sample
        idx = torch.nonzero(k == turns).flatten()
        if len(idx):
            idx = idx.to(x.device)
            out[idx] = torch.rot90(x[idx], turns, dims=(2, 3))
    out = torch.where(flip.to(x.device).view(n, 1, 1, 1), out.flip(3), out)
    od = -torch.log(out.clamp_min(1 / 255))
    return torch.exp(-(od * scale.to(x.device) + shift.to(x.device))).clamp(0, 1)
