"""The types the core's signatures share (for readers and the type checker; nothing here
runs).

An image is whatever NumPy can read window by window: a NumPy array, a dask array (a lazy
slide level), a zarr array (a store), or a tifffile/OpenSlide-backed array. The core only
ever asks for its shape, dtype and a slice of it, so :class:`Array` is that, structurally.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any, Protocol, TypeAlias, cast, runtime_checkable


@runtime_checkable
class Array(Protocol):
    """An image, mask or label array: NumPy, dask, zarr (what the core slices and reads)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def ndim(self) -> int: ...

    def __getitem__(self, key: Any, /) -> Any: ...


@runtime_checkable
class MutableArray(Array, Protocol):
    """An array the core writes into window by window (NumPy, zarr)."""

    def __setitem__(self, key: Any, value: Any, /) -> None: ...


#: An image, or its pyramid as a list (full resolution first).
Levels: TypeAlias = "Array | Sequence[Array]"

#: A file or folder: a string or a path.
PathType: TypeAlias = "str | PathLike[str]"

#: A box ``(y0, x0, y1, x1)`` in pixels.
Box: TypeAlias = "tuple[int, int, int, int]"


def as_levels(image: Levels) -> list[Array]:
    """An image or its pyramid as the list of levels, full resolution first: the one place
    that tells a multiscale list from one array.

    >>> import numpy as np
    >>> a = np.zeros((4, 4))
    >>> len(as_levels(a)), len(as_levels([a, a[::2, ::2]]))
    (1, 2)
    """
    if isinstance(image, list | tuple):
        return list(image)
    return [cast(Array, image)]


__all__ = ["Array", "Box", "Levels", "MutableArray", "PathType", "as_levels"]
