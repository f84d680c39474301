"""Choosing the compute device: auto picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

from enum import Enum

import torch

from ..errors import GlandsegError


class DeviceChoice(str, Enum):
    AUTO = "auto"
    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(choice: str | DeviceChoice = DeviceChoice.AUTO) -> torch.device:
    """The torch device for a choice; asking for one that is absent raises and says so.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        choice = DeviceChoice(str(getattr(choice, "value", choice)).split(":")[0])
    except ValueError:
        raise GlandsegError(
            f"unknown device {choice!r}; expected auto, cuda, mps or cpu"
        ) from None
    if choice is DeviceChoice.AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice is DeviceChoice.CUDA and not torch.cuda.is_available():
        raise GlandsegError(
            "device 'cuda' asked for, but no CUDA GPU is available; use auto or cpu")
    if choice is DeviceChoice.MPS and not _mps_available():
        raise GlandsegError(
            "device 'mps' asked for, but Apple MPS is not available; use auto or cpu")
    return torch.device(choice.value)


def describe_device(device: torch.device) -> str:
    """What a person should read: the GPU's name, or the CPU with its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return "Apple MPS"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'' if n == 1 else 's'}"
