"""Segmentation architectures, model cards, safe checkpoints and the model store (Qt-free)."""

from .card import Architecture, ModelCard, Normalization
from .checkpoint import Model, load_checkpoint, read_card, save_checkpoint
from .device import DeviceChoice, describe_device, resolve_device
from .registry import NETWORKS, build_from_card, build_model
from .store import (
    ModelEntry,
    check_model_name,
    delete_model,
    export_model,
    find_model,
    import_model,
    list_models,
    load_model,
    user_dir,
)

__all__ = [
    "Architecture", "DeviceChoice", "Model", "ModelCard", "ModelEntry", "NETWORKS",
    "Normalization", "build_from_card", "build_model", "check_model_name", "delete_model",
    "describe_device",
    "export_model", "find_model", "import_model", "list_models", "load_checkpoint",
    "load_model", "read_card", "resolve_device", "save_checkpoint", "user_dir",
]
