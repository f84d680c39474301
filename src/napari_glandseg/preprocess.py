"""Pixel values in, network input out: dtype ranges, finiteness checks and normalisation.

The one owner of how an image becomes the float32 ``(C, Y, X)`` array a network sees, used by
both inference and training (so a model is validated on exactly what it will be run on).
Qt-free and torch-free except :func:`cpu_has_bf16`.

Examples
--------
>>> import numpy as np
>>> x = normalise(np.full((2, 3, 3), 255, np.uint8), "unit", None)
>>> x.shape, float(x.max())
((3, 2, 3), 1.0)
>>> check_finite(np.array([[0.0, np.nan]], np.float32))
Traceback (most recent call last):
...
napari_glandseg.errors.GlandsegError: image has 1 NaN or infinite pixel value(s); ...
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .errors import GlandsegError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: Image-level normalisations need statistics of the whole image (see :func:`norm_stats`).
IMAGE_LEVEL = ("zscore", "percentile")
#: Pixels sampled (at most, about) for the image-level statistics.
STATS_PIXELS = 2**22


def dtype_top(dtype) -> float:
    """The value that means "full intensity": the integer type's maximum, else 1.0.

    >>> dtype_top(np.uint8), dtype_top(np.uint16), dtype_top(np.float32)
    (255.0, 65535.0, 1.0)
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def drop_alpha(x: np.ndarray) -> np.ndarray:
    """``(Y, X, 4)`` -> ``(Y, X, 3)`` (a view); anything else is returned as it is.

    Arrays handed to the core directly may be RGBA (files are composited over white when
    read); the networks see RGB, and statistics must be taken over the same channels.
    """
    return x[..., :3] if x.ndim == 3 and x.shape[-1] == 4 else x


def check_finite(x: np.ndarray, what: str = "image") -> None:
    """Raise a :class:`GlandsegError` when a floating-point array holds NaN or inf.

    A NaN pixel would otherwise turn the image statistics, and with them every tile's
    prediction, into NaN: an empty segmentation without any error.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype,
                                                                    np.complexfloating):
        return
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise GlandsegError(
            f"{what} has {bad} NaN or infinite pixel value(s); replace them (for example "
            "with 0) before segmenting or training"
        )


def norm_stats(data, box, mode: str, transform=None):
    """Per-channel statistics for image-level normalisations, from a subsample of the region
    (after ``transform``, e.g. stain normalisation), so that every window and every training
    patch of an image is normalised alike (no seams between windows).

    Returns None for the fixed normalisations (``imagenet``, ``unit``).
    """
    mode = getattr(mode, "value", mode)
    if mode not in IMAGE_LEVEL:
        return None
    y0, x0, y1, x1 = box
    step = max(1, int(math.sqrt((y1 - y0) * (x1 - x0) / STATS_PIXELS)))
    sample = drop_alpha(np.asarray(data[y0:y1:step, x0:x1:step]))
    if transform is not None:
        sample = transform(sample)
    check_finite(sample)
    sample = sample.astype(np.float32)
    sample = sample.reshape(-1, sample.shape[-1] if sample.ndim == 3 else 1)
    if mode == "zscore":
        return sample.mean(0), sample.std(0) + np.float32(1e-6)
    lo, hi = np.percentile(sample, [1.0, 99.8], axis=0).astype(np.float32)  # not float64
    return lo, np.maximum(hi - lo, np.float32(1e-6))


def normalise(raw: np.ndarray, mode: str, stats) -> np.ndarray:
    """``(Y, X[, C])`` of any dtype -> float32 ``(C, Y, X)`` as the model card says.

    ``imagenet`` and ``unit`` divide by :func:`dtype_top` of ``raw``'s dtype; ``zscore`` and
    ``percentile`` use ``stats`` from :func:`norm_stats`. RGBA loses its alpha channel.
    Raises :class:`GlandsegError` for NaN or infinite pixels.
    """
    mode = getattr(mode, "value", mode)
    x = drop_alpha(raw)
    check_finite(x)
    if x.ndim == 2:
        x = x[..., None]
    x = x.astype(np.float32)
    if mode in ("imagenet", "unit"):
        x /= dtype_top(raw.dtype)
        if mode == "imagenet":
            if x.shape[-1] == 3:
                x = (x - IMAGENET_MEAN) / IMAGENET_STD
            else:
                x = (x - IMAGENET_MEAN.mean()) / IMAGENET_STD.mean()
    else:
        if stats is None:
            raise GlandsegError(f"normalisation {mode!r} needs image statistics (norm_stats)")
        offset, spread = stats
        x = (x - offset) / spread
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_finite", "cpu_has_bf16", "drop_alpha",
           "dtype_top", "norm_stats", "normalise"]
