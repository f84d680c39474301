"""Tissue versus glass on a low-resolution level: which blocks of a slide hold tissue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._types import Levels, as_levels


@dataclass
class TissueMask:
    """A low-resolution tissue mask: ``mask[i, j]`` covers ``downsample`` x ``downsample``
    full-resolution pixels. ``threshold`` is the Otsu grey level (None when the image has no
    bright glass, in which case everything is tissue)."""

    mask: np.ndarray
    downsample: float
    threshold: float | None

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, box: tuple[float, float, float, float], margin: int = 1) -> bool:
        """Whether the full-resolution box ``(y0, x0, y1, x1)`` holds tissue."""
        y0, x0, y1, x1 = box
        d = self.downsample
        r0, c0 = max(0, int(y0 / d) - margin), max(0, int(x0 / d) - margin)
        r1, c1 = math.ceil(y1 / d) + margin, math.ceil(x1 / d) + margin
        return bool(self.mask[r0:r1, c0:c1].any())


#: Glass is brighter than this (0-255 grey); a bright Otsu class darker than this is tissue.
GLASS_GREY = 200


def tissue_mask(image: Levels, max_side: int = 2048) -> TissueMask:
    """Tissue versus glass by Otsu's threshold on the grey level of a low-resolution level.

    Parameters
    ----------
    image : array-like or list of array-like
        ``(Y, X, 3)`` colour (NumPy, dask or zarr) or a multiscale list, full resolution
        first; the finest level whose longest side is at most ``max_side`` is read (or a
        strided view of the coarsest).

    Returns
    -------
    TissueMask
        Holes (gland lumens) filled, specks smaller than 1/2000 of the image removed, and
        grown by 2 low-resolution pixels so that tissue edges are kept.

    >>> img = np.full((400, 400, 3), 240, np.uint8); img[100:300, 50:200] = (150, 60, 120)
    >>> tm = tissue_mask(img, max_side=100)
    >>> tm.downsample, tm.any_in((120, 60, 280, 190)), tm.any_in((0, 250, 400, 400))
    (4.0, True, False)
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    levels = as_levels(image)
    full_h = levels[0].shape[0]
    pick = next((lv for lv in levels if max(lv.shape[:2]) <= max_side), levels[-1])
    step = max(1, math.ceil(max(pick.shape[:2]) / max_side))
    low = np.asarray(pick[::step, ::step])
    if low.ndim == 3:
        low = low[..., :3].astype(np.float32)
        grey = low @ np.array([0.299, 0.587, 0.114], np.float32) if low.shape[-1] == 3 \
            else low[..., 0]
    else:
        grey = low.astype(np.float32)
    if low.dtype.kind == "f" and grey.max() <= 1.0:
        grey = grey * 255
    elif np.issubdtype(np.asarray(pick[:1, :1]).dtype, np.integer):
        top = np.iinfo(np.asarray(pick[:1, :1]).dtype).max
        grey = grey * (255.0 / top)
    downsample = full_h / grey.shape[0]
    threshold = None
    mask = np.ones(grey.shape, bool)
    if grey.size and grey.max() > grey.min():
        t = float(threshold_otsu(grey))
        bright = grey > t
        if bright.any() and float(grey[bright].mean()) >= GLASS_GREY:
            threshold = t
            mask = ~bright
            mask = ndi.binary_fill_holes(mask)
            from ..postprocessing import _remove_small_objects

            mask = _remove_small_objects(mask, max(1, mask.size // 2000))
            mask = ndi.binary_dilation(mask, iterations=2)
    return TissueMask(mask=mask, downsample=float(downsample), threshold=threshold)
