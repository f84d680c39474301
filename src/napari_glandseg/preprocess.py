"""Pixel values in, network input out: value ranges, finiteness checks and normalisation.

The one owner of how an image becomes the float32 ``(C, Y, X)`` array a network sees, used by
both inference and training (so a model is validated on exactly what it will be run on).
Qt-free and torch-free.

Any dtype: the value-range rule
-------------------------------
Models are trained and described (cards, bioimage.io packages) for 8-bit images. An image of
any other dtype is first mapped onto its *8-bit equivalent* by one linear map, chosen from the
values of the whole image (:func:`value_range`), never from its dtype alone:

- integers (any width, signed or not) whose values all lie in 0..255 are 8-bit images stored
  wider (8-bit PNGs saved as uint16, labels tools' int64): used as they are, like uint8;
  integers that are all multiples of 257 up to 65535 are 8-bit images widened to 16 bits
  (``v * 257``: scikit-image's ``img_as_uint``): 65535 is white;
- floats whose values all lie in 0..1 are the 0..1 convention (scikit-image): 1.0 is white;
  floats in 0..255 (maximum above 1) are 8-bit values stored as floats: 255 is white;
  bool is 0..1;
- anything else (real 12/16-bit data such as MRI or fluorescence, negative values) is
  stretched from the image's own minimum to its maximum, channels together (their balance
  kept): ``(x - min) / (max - min)`` is white at 1.

So the same pixels as uint8, int64, uint16 or float32 0..255 give the same network input
(bit for bit), and a 16-bit image ``x`` gives what its linear 8-bit export
``round(255 * (x - min) / (max - min))`` gives, to within the 8-bit rounding (half a grey
level). Minimum and maximum, not percentiles: that is the stretch which 16-to-8-bit exports
(ImageJ's 8-bit conversion of the full range, most MRI/DICOM viewers' "save as PNG") apply,
so an export and its original agree; percentiles would disagree with every such export.
The range is a whole-image statistic (from a subsample of :data:`STATS_PIXELS` pixels,
exact up to that size): inference estimates it once per image (or per slide, on the
pyramid level it reads) and every tile and block uses it; pixels of a large image beyond the
sampled extremes are clipped. An integer image whose values all lie in 0..255 is
taken as 8-bit even if it was a (very dark) 16-bit acquisition.

:func:`to_standard` applies the map and gives the *standard* form: uint8 for 8-bit data
(no copy for uint8), float32 in 0..1 otherwise. Stain normalisation and the card's
normalisation (:func:`normalise`, :func:`norm_stats`) work on the standard form; training
converts its images with :func:`standardise` before anything else.

Examples
--------
>>> import numpy as np
>>> x = normalise(np.full((2, 3, 3), 255, np.uint8), "unit", None)
>>> x.shape, float(x.max())
((3, 2, 3), 1.0)
>>> value_range(np.array([[0, 200]], np.uint16)), value_range(np.array([[0.0, 200.0]]))
((0.0, 255.0), (0.0, 255.0))
>>> value_range(np.array([[1000, 30000]], np.uint16)), value_range(np.array([[0.0, 0.5]]))
((1000.0, 30000.0), (0.0, 1.0))
>>> value_range(np.array([[0, 257 * 200]], np.uint16))
(0.0, 65535.0)
>>> check_finite(np.array([[0.0, np.nan]], np.float32))
Traceback (most recent call last):
...
napari_glandseg.errors.GlandsegError: image has 1 NaN or infinite pixel value(s); ...
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ._types import Array, Box
from .errors import GlandsegError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: Image-level normalisations need statistics of the whole image (see :func:`norm_stats`).
IMAGE_LEVEL = ("zscore", "percentile")
#: Pixels sampled (at most, about) for the image-level statistics.
STATS_PIXELS = 2**22


def dtype_top(dtype: npt.DTypeLike) -> float:
    """The value that means "full intensity" *in the standard form* (:func:`to_standard`)
    and in alpha channels: the integer type's maximum, else 1.0. Not a rule for raw images
    (a uint16 image may hold 8-bit values): see :func:`value_range`.

    >>> dtype_top(np.uint8), dtype_top(np.uint16), dtype_top(np.float32)
    (255.0, 65535.0, 1.0)
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def _subsample(data, box=None) -> np.ndarray:
    """About :data:`STATS_PIXELS` pixels of ``data[box]`` on a regular grid (all of it up
    to that size), alpha dropped; reads only those pixels of a dask or zarr array."""
    if box is None:
        box = (0, 0, *data.shape[:2])
    y0, x0, y1, x1 = box
    step = max(1, int(math.sqrt((y1 - y0) * (x1 - x0) / STATS_PIXELS)))
    return drop_alpha(np.asarray(data[y0:y1:step, x0:x1:step]))


def value_range(data: Array, box: Box | None = None) -> tuple[float, float]:
    """The raw values that mean black and white for the whole image ``data[box]`` (a
    subsample of it, see :func:`_subsample`), by the rule in this module's docstring.

    Raises :class:`GlandsegError` for NaN or infinite pixels.
    """
    data = data if hasattr(data, "dtype") else np.asarray(data)
    dtype = np.dtype(data.dtype)
    if dtype == np.uint8:  # known without reading a pixel (a lazy slide)
        return 0.0, 255.0
    if dtype == np.bool_:
        return 0.0, 1.0
    sample = _subsample(data, box)
    check_finite(sample)
    if sample.size == 0:
        return 0.0, 255.0
    lo, hi = float(sample.min()), float(sample.max())
    if np.issubdtype(sample.dtype, np.floating) and lo >= 0 and hi <= 1:
        return 0.0, 1.0
    if lo >= 0 and hi <= 255:
        return 0.0, 255.0
    if np.issubdtype(sample.dtype, np.integer) and lo >= 0 and hi <= 65535 and \
            not np.any(sample % 257):
        return 0.0, 65535.0
    return lo, hi


def to_standard(x: np.ndarray, vrange: tuple[float, float]) -> np.ndarray:
    """``x`` mapped by the whole image's ``vrange`` (:func:`value_range`) onto the standard
    form: uint8 for integer (or bool) data on the 8-bit range (no copy for uint8), else
    float32 in 0..1 (values beyond the range clipped). Alpha is dropped.

    >>> to_standard(np.array([[0, 255, 300]], np.uint16), (0.0, 255.0)).tolist()
    [[0, 255, 255]]
    >>> to_standard(np.array([[1000, 3000, 5000]], np.uint16), (1000.0, 5000.0)).tolist()
    [[0.0, 0.5, 1.0]]
    """
    x = drop_alpha(np.asarray(x))
    lo, hi = float(vrange[0]), float(vrange[1])
    integral = np.issubdtype(x.dtype, np.integer) or x.dtype == bool
    if (lo, hi) == (0.0, 255.0) and integral:
        return x if x.dtype == np.uint8 else np.clip(x, 0, 255).astype(np.uint8)
    if (lo, hi) == (0.0, 65535.0) and integral:  # v * 257: v exactly
        return np.clip(np.rint(x.astype(np.float32) / np.float32(257)), 0, 255).astype(np.uint8)
    check_finite(x)
    y = x.astype(np.float32)
    if lo != 0.0:
        y -= np.float32(lo)
    if hi - lo != 1.0:
        y /= np.float32(hi - lo if hi > lo else 1.0)
    return np.clip(y, 0.0, 1.0, out=y)


def standardise(image: Array) -> np.ndarray:
    """A whole image in its standard form: :func:`to_standard` with its own
    :func:`value_range`. (For a part of an image, pass the whole image's range to
    :func:`to_standard` instead.)"""
    return to_standard(np.asarray(image), value_range(image))


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


def norm_stats(data: Array, box: Box, mode: str,
               transform: Callable[[np.ndarray], np.ndarray] | None = None,
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel statistics for image-level normalisations, from a subsample of the region
    in its standard form (:func:`standardise`, after ``transform``: e.g. the whole image's
    :func:`to_standard` then stain normalisation), so that every window and every training
    patch of an image is normalised alike (no seams between windows).

    Returns None for the fixed normalisations (``imagenet``, ``unit``).
    """
    mode = getattr(mode, "value", mode)
    if mode not in IMAGE_LEVEL:
        return None
    sample = _subsample(data, box)
    if transform is not None:
        sample = transform(sample)
    sample = standardise(sample).astype(np.float32)  # no-op range on standard data
    sample = sample.reshape(-1, sample.shape[-1] if sample.ndim == 3 else 1)
    if mode == "zscore":
        return sample.mean(0), sample.std(0) + np.float32(1e-6)
    lo, hi = np.percentile(sample, [1.0, 99.8], axis=0).astype(np.float32)  # not float64
    return lo, np.maximum(hi - lo, np.float32(1e-6))


def normalise(raw: np.ndarray, mode: str,
              stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``(Y, X[, C])`` in the standard form (:func:`to_standard`) -> float32 ``(C, Y, X)``
    as the model card says. Data not in the standard form is taken to be a whole image and
    mapped by its own :func:`value_range` (a tile must be mapped by its image's range first).

    ``imagenet`` and ``unit`` scale the standard form to 0..1 (uint8 / 255); ``zscore`` and
    ``percentile`` use ``stats`` from :func:`norm_stats`. RGBA loses its alpha channel.
    Raises :class:`GlandsegError` for NaN or infinite pixels.
    """
    mode = getattr(mode, "value", mode)
    x = standardise(raw)
    if x.ndim == 2:
        x = x[..., None]
    top = dtype_top(x.dtype)
    x = x.astype(np.float32)
    if mode in ("imagenet", "unit"):
        x /= top
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


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_finite", "drop_alpha",
           "dtype_top", "norm_stats", "normalise", "standardise", "to_standard", "value_range"]
