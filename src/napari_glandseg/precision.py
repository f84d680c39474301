"""Numeric precision: the one owner of fp32 / bf16 / fp16 for inference and training.

On a GPU, ``auto`` is bf16 autocast where the card supports it, else fp16. On a CPU the
answer depends on the chip: oneDNN reports bf16 as "supported" on every AVX-512 CPU, also
where it is only emulated (no ``avx512_bf16``, no AMX), and there bf16 autocast makes a
training step about twice as slow as fp32 channels-last. So on a CPU ``auto`` picks bf16
only where it is measurably faster: a CPU whose flags lack ``avx512_bf16`` and
``amx_bf16`` gets fp32 without a test; otherwise a small convolution network is timed both
ways once per process (:func:`cpu_bf16_is_faster`, cached) and bf16 must win by
:data:`MIN_GAIN`. Weights stay fp32 in every mode (autocast), so a choice never changes
what is saved.
"""

from __future__ import annotations

import time
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the enum serves the CLI's choices
    import torch


class Precision(str, Enum):
    """``auto``: measured (see the module); ``fp32``, ``bf16``, ``fp16`` force a choice."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


#: bf16 must take at most this share of fp32's time on the probe to be chosen on a CPU
MIN_GAIN = 0.85

_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where that file is not there
    (macOS, Windows): the timing decides alone."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return None


def _probe_seconds(bf16: bool, repeats: int = 3) -> float:
    """Best-of time of one forward and backward pass of a small conv net (channels-last),
    under bf16 autocast or in fp32. The caller's random stream is left where it was (the
    probe runs at the first segmentation or training step, after a seed was set)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _probe_run(bf16, repeats)


def _probe_run(bf16: bool, repeats: int) -> float:
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 16, 3, padding=1),
    )
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = torch.randn(4, 16, 96, 96).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for i in range(repeats + 1):  # the first pass warms oneDNN's kernels up
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().square().mean().backward()
        if i:
            best = min(best, time.perf_counter() - t)
    return best


@lru_cache(maxsize=1)
def cpu_bf16_is_faster() -> bool:
    """True when bf16 autocast beats fp32 channels-last on this CPU by :data:`MIN_GAIN`
    (measured once per process; flags without native bf16 answer False untimed)."""
    import torch

    flags = cpu_flags()
    if flags is not None and not flags & set(_NATIVE_FLAGS):
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        fp32, bf16 = _probe_seconds(False), _probe_seconds(True)
    except (AttributeError, RuntimeError):
        return False
    return bf16 <= MIN_GAIN * fp32


def resolve(choice: Precision | str, device: torch.device | str) -> str:
    """The precision (``"fp32"``, ``"bf16"`` or ``"fp16"``) a run on ``device`` uses for
    ``choice``: ``auto`` is decided here, any other choice is kept."""
    import torch

    choice = Precision(getattr(choice, "value", choice))
    device = torch.device(device)
    if choice is not Precision.AUTO:
        return choice.value
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_bf16_is_faster():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (no autocast)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        getattr(precision, "value", precision)
    )


__all__ = ["MIN_GAIN", "Precision", "autocast_dtype", "cpu_bf16_is_faster", "cpu_flags", "resolve"]
