"""Patch classifiers: a compact CNN (default, trains in minutes on a CPU) and torchvision
backbones when torchvision is installed. Pretrained weights are never downloaded."""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import ARCHITECTURES

__all__ = ["ARCHITECTURES", "CompactCNN", "build_model", "features"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CompactCNN(nn.Module):
    """A strided stem, three conv blocks (w-2w-4w-8w channels), global average pooling, a
    linear head: about 13 M multiply-adds for a 64² patch, a few thousand patches/s on a CPU.

    Works for any patch size >= 16. ``dropout`` before the head enables MC-dropout sampling.
    """

    def __init__(self, n_classes: int = 2, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        stem = nn.Sequential(nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.body = nn.Sequential(stem, _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 8 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(8 * w, n_classes)
        self.n_features = 8 * w

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (N, F)."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


class _TorchvisionClassifier(nn.Module):
    """A torchvision backbone with the paper's head: FC 512 -> FC n_classes."""

    def __init__(self, arch: str, n_classes: int, dropout: float) -> None:
        super().__init__()
        try:
            import torchvision.models as tvm
        except Exception as exc:  # ImportError or a broken CUDA-linked wheel
            raise ValueError(
                f"architecture {arch!r} needs torchvision (pip install 'napari-alregions[torchvision]'); "
                f"it could not be imported: {exc}"
            ) from exc
        if arch == "mobilenet_v2":
            net = tvm.mobilenet_v2(weights=None)
            n_feat = net.classifier[-1].in_features
            self.backbone = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1))
        else:
            net = tvm.resnet18(weights=None)
            n_feat = net.fc.in_features
            self.backbone = nn.Sequential(*list(net.children())[:-1])
        self.head = nn.Sequential(nn.Linear(n_feat, 512), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, n_classes))
        self.n_features = n_feat

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))




def build_model(arch: str = "compact", n_classes: int = 2, *, dropout: float = 0.0, width: int = 16) -> nn.Module:
    """A fresh patch classifier.

    Raises
    ------
    ValueError
        For an unknown architecture, fewer than 2 classes, or a torchvision backbone
        without torchvision.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if arch == "compact":
        return CompactCNN(n_classes, width=width, dropout=dropout)
    return _TorchvisionClassifier(arch, n_classes, dropout)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features of any of our classifiers."""
    return model.forward_features(x)  # type: ignore[operator]
