"""Patch classifiers, training and probability-map inference (torch lives here)."""

from .checkpoint import CheckpointError, ModelSpec, load_checkpoint, save_checkpoint
from .data import PatchCandidates, find_candidates, labeled_candidates, read_patches
from .device import pick_device
from .networks import ARCHITECTURES, CompactCNN, build_model
from .predict import InferenceCancelled, predict_probability_map
from .train import CYCLE_SCHEDULE, FitResult, TrainConfig, TrainingCancelled, TrainResult, fine_tune, fit, iter_fit, iter_train, train

__all__ = [
    "ARCHITECTURES",
    "CYCLE_SCHEDULE",
    "CheckpointError",
    "CompactCNN",
    "FitResult",
    "InferenceCancelled",
    "ModelSpec",
    "PatchCandidates",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "build_model",
    "find_candidates",
    "fine_tune",
    "fit",
    "iter_fit",
    "iter_train",
    "labeled_candidates",
    "load_checkpoint",
    "pick_device",
    "predict_probability_map",
    "read_patches",
    "save_checkpoint",
    "train",
]
