"""Where a layer lies on an image: the pyramid level at its pixel size, its offset there,
and the image's pixels under it (Fine-tune pairs, Save corrections)."""

from __future__ import annotations

import numpy as np


def level_of(image, labels) -> int | None:
    """The level of ``image`` (its pyramid, or the image itself) whose pixel size is
    ``labels``'s: a model that works at a coarser scale segments a slide on a coarser
    pyramid level. None when there is none."""
    ratio = np.asarray(labels.scale[-2:], float) / np.asarray(image.scale[-2:], float)
    factors = (np.asarray(image.downsample_factors)[:, -2:] if image.multiscale
               else np.ones((1, 2)))
    for i, f in enumerate(factors):
        if np.allclose(f, ratio, rtol=1e-2):
            return i
    return None


def level_data(image, level: int):
    return image.data[level] if image.multiscale else image.data


def offset_in(image, labels, level: int = 0) -> np.ndarray:
    """Where ``labels[0, 0]`` lies in ``image``'s pixels of pyramid ``level``."""
    corner = image.world_to_data(labels.data_to_world(np.zeros(labels.ndim)))
    f = np.asarray(image.downsample_factors)[level, -2:] if image.multiscale else 1.0
    return np.round(np.asarray(corner)[-2:] / f).astype(int)


def image_under(image, labels, start, shape) -> np.ndarray:
    """The pixels of ``image`` under ``labels[start:start + shape]``, read on the image's
    level at the labels' pixel size (full resolution, or the pyramid level a coarser model
    segmented)."""
    level = level_of(image, labels) or 0
    off = offset_in(image, labels, level) + np.asarray(start)
    data = level_data(image, level)
    return np.asarray(data[off[0]:off[0] + shape[0], off[1]:off[1] + shape[1]])
