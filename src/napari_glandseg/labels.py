"""Label-image utilities: masks to objects, renumbering, and the smallest integer type.

One owner for what metrics, post-processing, training and file writing all need (Qt-free).

Examples
--------
>>> import numpy as np
>>> as_instances(np.array([[1, 0, 1]])).tolist()  # a 0/1 mask: connected objects
[[1, 0, 2]]
>>> relabel(np.array([[0, 7, 7, 3]]), np.array([3, 7])).tolist()
[[0, 2, 2, 1]]
>>> labels_dtype(np.array([0, 300])).name
'uint16'
"""

from __future__ import annotations

import numpy as np

from ._types import Array
from .errors import GlandsegError


def as_instances(labels: Array) -> np.ndarray:
    """Instance labels: a boolean or 0/1 mask is split into 8-connected objects; anything
    else is taken as instance labels already and returned as it is."""
    labels = np.asarray(labels)
    if labels.dtype == bool or (labels.size and labels.max() <= 1):
        from skimage.measure import label

        return label(labels > 0, connectivity=2)
    return labels


def relabel(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Map the (sorted) ``ids`` to 1..n in order and everything else to 0 (int32)."""
    ids = np.asarray(ids)
    lut = np.zeros(int(ids.max()) + 1 if len(ids) else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    labels = np.asarray(labels)
    return lut[np.minimum(labels, len(lut) - 1)] * (labels < len(lut))


def dtype_for_max(top: int) -> np.dtype:
    """The smallest unsigned type holding values up to ``top`` (uint8, uint16 or uint32)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise GlandsegError(f"label value {top} does not fit in uint32")


def labels_dtype(labels: Array) -> np.dtype:
    """The smallest unsigned type that holds ``labels`` (uint8, uint16 or uint32)."""
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise GlandsegError(f"labels must be non-negative, found minimum {labels.min()}")
    return dtype_for_max(int(labels.max()) if labels.size else 0)


def paste_labels(full: np.ndarray, part: np.ndarray, offset: tuple[int, int],
                 inside: np.ndarray | None = None) -> np.ndarray:
    """``full`` with ``part`` pasted at ``offset`` (row, column): where ``inside`` (default:
    all of ``part``) the pixels become ``part``'s, its objects numbered after ``full``'s
    largest id, so none takes an id an object outside still has; outside, ``full`` stays as
    it was. Returns a new array of the smallest type that holds it (a region's corrections
    going into the whole image's mask).

    >>> paste_labels(np.array([[1, 1, 0, 2]]), np.array([[0, 5]]), (0, 1)).tolist()
    [[1, 0, 3, 2]]
    """
    full, part = np.asarray(full), np.asarray(part)
    y0, x0 = (int(v) for v in offset)
    h, w = part.shape
    if y0 < 0 or x0 < 0 or y0 + h > full.shape[0] or x0 + w > full.shape[1]:
        raise GlandsegError(f"labels of shape {part.shape} at {(y0, x0)} do not lie inside "
                            f"an image of shape {full.shape}")
    inside = np.ones(part.shape, bool) if inside is None else np.asarray(inside, bool)
    ids = np.unique(part[inside & (part > 0)])
    base = int(full.max(initial=0))
    out = full.astype(dtype_for_max(base + len(ids)), copy=True)
    new = relabel(part, ids)
    out[y0: y0 + h, x0: x0 + w][inside] = np.where(new > 0, new + base, 0)[inside]
    return out


def mixed_neighbourhood(labels: np.ndarray, size: int) -> np.ndarray:
    """Pixels whose ``size`` x ``size`` window holds two or more different object ids
    (background ignored): where objects touch, or nearly touch.

    >>> m = np.array([[1, 1, 0, 0, 2, 2]])
    >>> mixed_neighbourhood(m, 3).astype(int).tolist()
    [[0, 0, 0, 0, 0, 0]]
    >>> mixed_neighbourhood(m, 5).astype(int).tolist()
    [[0, 0, 1, 1, 0, 0]]
    """
    from scipy import ndimage as ndi

    ids = np.asarray(labels).astype(np.int64)
    # background reads as one more than any id (scipy's filters pass through float64, so
    # int64's maximum would not survive as a sentinel)
    big = int(ids.max(initial=0)) + 1
    hi = ndi.maximum_filter(ids, size)
    lo = ndi.minimum_filter(np.where(ids > 0, ids, big), size)
    return (lo < big) & (hi != lo)


__all__ = ["as_instances", "dtype_for_max", "labels_dtype", "mixed_neighbourhood",
           "paste_labels", "relabel"]
