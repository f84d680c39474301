"""From a mask or class map to separate objects, and a table of them (Qt-free).

Built on scikit-image and scipy: hole filling and small-object removal
(``skimage.morphology``), connected components (``skimage.measure.label``), and the watershed
(``skimage.segmentation.watershed``) with markers from the distance transform's h-maxima or
local peaks, or from the model's own interior class when it predicts
background / interior / boundary.

Examples
--------
Two touching disks are one connected object; the watershed splits them:

>>> import numpy as np
>>> yy, xx = np.mgrid[:60, :100]
>>> mask = ((yy - 30) ** 2 + (xx - 30) ** 2 < 400) | ((yy - 30) ** 2 + (xx - 62) ** 2 < 400)
>>> len(np.unique(postprocess(mask, split="none"))) - 1
1
>>> len(np.unique(postprocess(mask, split="distance"))) - 1
2
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

from ._files import atomic_path
from ._types import Array, MutableArray, PathType
from .enums import MAX_LEVELS, Split  # noqa: F401  (defined with the other modes)
from .errors import GlandsegError, OutputExistsError, as_enum

if TYPE_CHECKING:
    import pandas as pd

    from .progress import Progress


@dataclass
class PostprocessParams:
    """Settings for :func:`postprocess`.

    Attributes
    ----------
    fill_holes : bool
        Fill holes up to ``max_hole_size`` pixels (0: any size).
    max_hole_size : int
    min_size : int
        Remove objects smaller than this many pixels (before and after splitting).
    split : Split
    h : float
        Height of the distance-transform maxima that seed objects (``distance``).
    min_distance : int
        Minimum distance between seeds (``peaks``).
    marker_level : int
        The lowest distance level that seeds objects (``levels``): each connected region at
        or above it is one object's seed. Higher splits touching objects more readily and
        can lose small ones (whose top level is lower, where the network is unsure).
    level_h : float
        Height, in levels, of the maxima of the smoothed levels map that seed objects
        (``level_peaks``): lower splits more.
    smooth : float
        Gaussian sigma in pixels of the smoothing of the levels map (``level_peaks``; 0:
        none). Smoothing turns the map's flat steps into hills with one top each.
    """

    fill_holes: bool = True
    max_hole_size: int = 0
    min_size: int = 30
    split: Split = Split.DISTANCE
    h: float = 2.0
    min_distance: int = 7
    marker_level: int = 2
    level_h: float = 0.8
    smooth: float = 2.0

    def __post_init__(self):
        self.split = as_enum(Split, self.split, "split")
        for name in ("max_hole_size", "min_size", "min_distance", "marker_level"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or v < 0:
                raise GlandsegError(f"{name} must be a non-negative integer, got {v!r}")
        for name in ("h", "level_h"):
            if not getattr(self, name) > 0:
                raise GlandsegError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.smooth >= 0:
            raise GlandsegError(f"smooth must be 0 or more pixels, got {self.smooth!r}")
        if not 1 <= self.marker_level <= MAX_LEVELS:
            raise GlandsegError(f"marker_level must be in 1..{MAX_LEVELS}, got "
                                f"{self.marker_level!r}")


def _remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    from skimage import morphology

    if min_size <= 1:
        return mask
    try:  # scikit-image >= 0.26 counts the largest size removed
        return morphology.remove_small_objects(mask, max_size=min_size - 1)
    except TypeError:
        return morphology.remove_small_objects(mask, min_size=min_size)


def _fill_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    if max_size <= 0:
        return ndi.binary_fill_holes(mask)
    from skimage import morphology

    try:
        return morphology.remove_small_holes(mask, max_size=max_size)
    except TypeError:
        return morphology.remove_small_holes(mask, area_threshold=max_size + 1)


def postprocess(labels: np.ndarray, params: PostprocessParams | None = None, *,
                objects: bool = False, **kwargs: Any) -> np.ndarray:
    """Turn a prediction into instance labels.

    Parameters
    ----------
    labels : array-like, (Y, X)
        A binary mask, instance labels, a background / interior / boundary class map
        (0/1/2) for ``split="boundary"``, or a distance-levels map (0 background, 1..L
        levels rising towards each object's centre) for ``split="levels"`` or
        ``"level_peaks"``.
    params : PostprocessParams, optional
        Or its fields as keywords.
    objects : bool
        ``labels`` already holds separate objects (a Segment result, corrected labels):
        where two of them touch they stay apart, and the split can only divide an object
        further. Otherwise the union of the labels is split afresh.

    Returns
    -------
    ndarray, (Y, X), int32
        Objects numbered 1..n; the input is not changed.
    """
    if params is None:
        params = PostprocessParams(**kwargs)
    elif kwargs:
        params = replace(params, **kwargs)
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise GlandsegError(f"labels must be 2D (Y, X), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise GlandsegError(f"labels must be integers or booleans, got dtype {arr.dtype}")
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    fg = arr > 0
    if params.fill_holes:
        fg = _fill_holes(fg, params.max_hole_size)
    whole = None
    if objects:  # cut the lines where two objects meet; they are given back at the end
        whole = fg
        fg = fg & ~_contacts(arr)
    fg = _remove_small_objects(fg, params.min_size)
    if params.split is Split.NONE:
        out = label(fg, connectivity=2)
    else:
        if params.split in (Split.LEVELS, Split.LEVEL_PEAKS) and arr.max() > MAX_LEVELS:
            raise GlandsegError(f"split '{params.split.value}' needs a distance-levels map "
                                f"(labels 0..L, L <= {MAX_LEVELS}), got labels up to "
                                f"{int(arr.max())}")
        # what is flooded downhill: the smoothed levels map (level peaks), else the distance
        # to the background
        if params.split is Split.LEVEL_PEAKS:
            dist = ndi.gaussian_filter(arr.astype(np.float64), params.smooth) \
                if params.smooth > 0 else arr.astype(np.float64)
        else:
            dist = ndi.distance_transform_edt(fg)
        if params.split is Split.LEVEL_PEAKS:
            from skimage.morphology import h_maxima

            # one seed per hill of the smoothed map
            markers = label(h_maxima(dist, params.level_h) & fg, connectivity=2)
        elif params.split is Split.LEVELS:
            # flood downhill from each seed region; the distance transform orders the pixels
            # of one level (between 0 and 1, so it never outweighs a level step)
            seeds = _remove_small_objects((arr >= params.marker_level) & fg,
                                          max(params.min_size // 4, 1))
            markers = label(seeds, connectivity=1)
            dist = arr.astype(np.float64) + dist / (dist.max() + 1.0)
        elif params.split is Split.BOUNDARY:
            if arr.max() > 2:
                raise GlandsegError(f"split 'boundary' needs a background/interior/boundary "
                                    f"map (labels 0/1/2), got labels up to {int(arr.max())}")
            interior = _remove_small_objects(arr == 1, max(params.min_size // 4, 1))
            markers = label(interior, connectivity=1)
        elif params.split is Split.DISTANCE:
            from skimage.morphology import h_maxima

            markers = label(h_maxima(dist, params.h) & fg, connectivity=2)
        else:
            from skimage.feature import peak_local_max

            comps = label(fg, connectivity=2)
            peaks = peak_local_max(dist, min_distance=max(params.min_distance, 1),
                                   labels=comps, exclude_border=False)
            markers = np.zeros(arr.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        out = watershed(-dist, markers, mask=fg)
        # objects the markers missed (no maximum inside) keep their connected component
        missed = fg & (out == 0)
        if missed.any():
            extra = label(missed, connectivity=2)
            out = np.where(missed, extra + out.max() * (extra > 0), out)
    if params.split is not Split.NONE and params.min_size > 1:
        # pieces cut off by the watershed can be small: drop them object by object
        sizes = np.bincount(out.ravel())
        small = sizes < params.min_size
        small[0] = False
        out[small[out]] = 0
    if whole is not None:
        from skimage.segmentation import expand_labels

        out = np.where(whole, expand_labels(out, 2), 0)
    return relabel_sequential(out.astype(np.int32))[0]


def _contacts(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object with a pixel of another object among their 8 neighbours."""
    from .labels import mixed_neighbourhood

    return (labels > 0) & mixed_neighbourhood(labels, 3)


def clean_class_map(labels: np.ndarray, params: PostprocessParams | None = None,
                    **kwargs: Any) -> np.ndarray:
    """Clean a class map (0 = background, 1..K-1 = classes) and keep its classes.

    :func:`postprocess` numbers objects and so forgets which class each pixel had; a model
    that predicts classes (not interior/boundary) needs its classes kept. Here connected
    foreground regions (any class) smaller than ``min_size`` become background, and holes
    (background enclosed by foreground, up to ``max_hole_size``) take the class of the
    nearest foreground pixel, so a nucleus inside a cell is never painted over.

    >>> m = np.zeros((7, 7), np.uint8); m[1:6, 1:6] = 1; m[3, 3] = 0; m[2, 2] = 2
    >>> out = clean_class_map(m, min_size=2)
    >>> int(out[3, 3]), int(out[2, 2]), sorted(np.unique(out).tolist())
    (1, 2, [0, 1, 2])
    """
    if params is None:
        params = PostprocessParams(**kwargs)
    elif kwargs:
        params = replace(params, **kwargs)
    arr = np.asarray(labels)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise GlandsegError(f"a class map must be 2D integers, got {arr.dtype} {arr.shape}")
    fg = arr > 0
    kept = _remove_small_objects(fg, params.min_size)
    out = np.where(kept, arr, 0).astype(arr.dtype)
    if params.fill_holes:
        holes = _fill_holes(kept, params.max_hole_size) & ~kept
        if holes.any():
            _, (iy, ix) = ndi.distance_transform_edt(~kept, return_indices=True)
            out[holes] = out[iy[holes], ix[holes]]
    return out


def iter_postprocess_windows(src: Array, dst: MutableArray, params: PostprocessParams,
                             window: int = 2048, halo: int = 256, class_map: bool = False,
                             image: Array | None = None, pixel_size_um: float | None = None,
                             table: bool = True, objects: bool = False,
                             ) -> Generator[Progress, None, tuple[int, pd.DataFrame | None]]:
    """Post-process a label array too large for memory, window by window; a generator that
    yields a Progress per window and returns ``(n_objects, table)``.

    Each window is read with ``halo`` pixels of context on every side and post-processed
    with :func:`postprocess` (or, with ``class_map``, cleaned by :func:`clean_class_map`
    and its connected regions numbered). An object belongs to the window its centroid lies
    in; it is written whole (halo included) into ``dst`` with the next global id, over
    background only. An object larger than the halo can thus be cut (give a larger halo;
    :mod:`napari_glandseg.slides` joins objects across blocks exactly).

    Parameters
    ----------
    src : array-like (Y, X)
        Labels (zarr, dask or NumPy); read one window at a time.
    dst : array-like (Y, X), uint32
        Written one window at a time; must start as zeros.
    image : array-like (Y, X[, C]), optional
        Same grid as ``src``: gives the table its ``mean_intensity``.
    objects : bool
        ``src`` holds separate objects, which stay apart (:func:`postprocess`).

    Returns
    -------
    n_objects : int
    table : pandas.DataFrame or None
        :func:`object_table`'s columns, centroids in the full array's coordinates (plus a
        ``class`` column with ``class_map``); None when ``table`` is False (and no
        ``class_map``, which needs it).
    """
    import pandas as pd
    from skimage.measure import label as cc_label

    from .progress import Progress

    h, w = src.shape
    boxes = [(y, x) for y in range(0, h, window) for x in range(0, w, window)]
    n, tables = 0, []
    for done, (y, x) in enumerate(boxes, 1):
        y0, x0 = max(0, y - halo), max(0, x - halo)
        y1, x1 = min(h, y + window + halo), min(w, x + window + halo)
        block = np.asarray(src[y0:y1, x0:x1])
        if class_map:
            classes = clean_class_map(block, params)
            lab = cc_label(classes > 0, connectivity=2)
        else:
            classes, lab = None, postprocess(block, params, objects=objects)
        if lab.max():
            ids = np.arange(1, int(lab.max()) + 1)
            cy, cx = np.array(ndi.center_of_mass(lab > 0, lab, ids)).reshape(-1, 2).T
            cy, cx = np.floor(cy).astype(int) + y0, np.floor(cx).astype(int) + x0
            own = ids[(cy >= y) & (cy < y + window) & (cx >= x) & (cx < x + window)]
            lut = np.zeros(len(ids) + 1, np.uint32)
            lut[own] = np.arange(n + 1, n + len(own) + 1, dtype=np.uint32)
            mine = lut[lab]
            if len(own):
                out = np.asarray(dst[y0:y1, x0:x1])
                free = (out == 0) & (mine > 0)
                out[free] = mine[free]
                dst[y0:y1, x0:x1] = out
            if len(own) and (table or class_map):
                region = None if image is None else np.asarray(image[y0:y1, x0:x1])
                t = object_table(mine, region, pixel_size_um)
                t["centroid_y"] += y0
                t["centroid_x"] += x0
                if class_map:
                    assert classes is not None  # a class map's windows keep their classes
                    counts = np.zeros((len(own) + 1, int(classes.max()) + 1), np.int64)
                    np.add.at(counts, (mine[mine > 0] - n, classes[mine > 0]), 1)
                    t["class"] = counts[t["label"].to_numpy() - n].argmax(1)
                tables.append(t)
            n += len(own)
        yield Progress(done, len(boxes), f"post-processing window {done}/{len(boxes)}")
    if not (table or class_map):
        return n, None
    out_table = pd.concat(tables, ignore_index=True) if tables else object_table(
        np.zeros((1, 1), np.uint8), None, pixel_size_um)
    if class_map and "class" not in out_table:
        out_table["class"] = np.zeros(len(out_table), int)
    return n, out_table


OBJECT_COLUMNS = ("label", "area", "perimeter", "eccentricity", "solidity", "centroid_y",
                  "centroid_x", "mean_intensity")


def object_table(labels: np.ndarray, image: Array | None = None,
                 pixel_size_um: float | None = None) -> pd.DataFrame:
    """One row per object: label, area, perimeter, eccentricity, solidity, centroid, mean
    intensity (of the grey level, or the mean of the RGB channels).

    Areas and perimeters are in pixels; with ``pixel_size_um`` the columns ``area_um2`` and
    ``perimeter_um`` are added. Returns a pandas DataFrame (napari's ``features``).
    """
    import pandas as pd
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    props = ["label", "area", "perimeter", "eccentricity", "solidity", "centroid"]
    intensity = None
    if image is not None:
        intensity = np.asarray(image, dtype=np.float32)
        if intensity.ndim == 3:
            intensity = intensity[..., :3].mean(-1)
        if intensity.shape != labels.shape:
            raise GlandsegError(f"image has shape {intensity.shape} but labels have "
                                f"{labels.shape}")
        props.append("intensity_mean")
    table = regionprops_table(labels, intensity_image=intensity, properties=props)
    df = pd.DataFrame(table).rename(columns={"centroid-0": "centroid_y",
                                             "centroid-1": "centroid_x",
                                             "intensity_mean": "mean_intensity"})
    if "mean_intensity" not in df:
        df["mean_intensity"] = np.nan
    df = df[list(OBJECT_COLUMNS)]
    if pixel_size_um:
        df["area_um2"] = df["area"] * pixel_size_um**2
        df["perimeter_um"] = df["perimeter"] * pixel_size_um
    return df


def write_csv(table: pd.DataFrame, path: PathType, overwrite: bool = False) -> Path:
    """Write a table to CSV atomically (refuses to replace a file unless ``overwrite``)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(p)
    with atomic_path(p) as tmp:
        table.to_csv(tmp, index=False)
    return p
