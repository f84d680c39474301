"""Does an image look like the images a model was trained on? (Qt-free)

A model segments what resembles its training images; on other tissue, another stain or
another modality it still returns objects, and nothing on screen says they mean little.
This module gives each image a small appearance vector and a card its training images'
reference, so every route can warn when an image lies far outside it.

The vector, on a view of the image of about 512 px on its longest side (so a slide and a
crop of it are comparable): the mean and spread of the optical density of each channel over
the tissue, the mean and spread of the saturation, the tissue fraction, and the mean local
contrast at two sizes (texture). The reference holds the training images' mean and spread of
each entry; an image's distance is its largest deviation in spreads, and it is flagged when
the distance exceeds :data:`MARGIN` times the largest distance of a training image itself
(no tuning on any test image). Measured on the bundled models' validation images:
:func:`rate` in ``benchmarks/bench_domain.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ._types import Levels, as_levels
from .errors import GlandsegError

if TYPE_CHECKING:
    from .models.card import ModelCard

FEATURES = ("od_mean_0", "od_mean_1", "od_mean_2", "od_std_0", "od_std_1", "od_std_2",
            "saturation_mean", "saturation_std", "tissue_fraction", "contrast_3px",
            "contrast_9px")
#: how far beyond the farthest training image an image may lie before it is flagged
MARGIN = 1.3
#: the side (px) of the view the vector is measured on
VIEW = 512


def _view(image) -> np.ndarray:
    """An RGB view of about :data:`VIEW` px on its longest side, as 8-bit values: a pyramid's
    smallest level that is still that large, subsampled."""
    from .preprocess import standardise

    levels = as_levels(image)
    level = levels[0]
    for lv in levels:
        if max(lv.shape[:2]) >= VIEW:
            level = lv
    h, w = level.shape[:2]
    step = max(1, int(max(h, w) // VIEW))
    view = np.asarray(level[::step, ::step])
    view = standardise(view)
    if view.ndim == 2:
        view = np.stack([view] * 3, -1)
    return np.asarray(view[..., :3], np.float32)


def appearance(image: Levels) -> np.ndarray:
    """The appearance vector of an image (a NumPy or lazy array, or a pyramid's levels),
    ordered as :data:`FEATURES`."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2hsv

    view = _view(image)
    od = -np.log((view + 1.0) / 256.0)
    tissue = od.mean(-1) > 0.15
    if tissue.sum() < 100:  # no stained tissue to speak of: the whole view
        tissue = np.ones(tissue.shape, bool)
    t = od[tissue]
    sat = rgb2hsv(view / 255.0)[..., 1][tissue]
    g = od.mean(-1)
    contrast = [float(np.sqrt(np.maximum(ndi.uniform_filter(g * g, s)
                                         - ndi.uniform_filter(g, s) ** 2, 0))[tissue].mean())
                for s in (3, 9)]
    return np.r_[t.mean(0), t.std(0), sat.mean(), sat.std(), tissue.mean(), contrast]


def reference(images: Iterable[Levels]) -> dict:
    """A card's ``appearance`` entry from its training images: the mean and spread of each
    entry of the vector and the flagging threshold."""
    feats = np.array([appearance(im) for im in images])
    if len(feats) < 2:
        raise GlandsegError("an appearance reference needs at least two training images")
    mean, spread = feats.mean(0), feats.std(0)
    spread = np.maximum(spread, 0.05 * np.abs(mean) + 1e-3)  # never a zero spread
    own = np.abs((feats - mean) / spread).max(1)
    return {"features": list(FEATURES), "mean": [round(float(x), 6) for x in mean],
            "spread": [round(float(x), 6) for x in spread],
            "threshold": round(float(MARGIN * own.max()), 3), "images": len(feats)}


def distance(image: Levels, entry: dict) -> float:
    """An image's distance from a card's reference: its largest deviation, in spreads."""
    check_entry(entry)
    f = appearance(image)
    return float(np.abs((f - np.asarray(entry["mean"])) / np.asarray(entry["spread"])).max())


def warning(image: Levels, card: ModelCard) -> str | None:
    """One line when ``image`` looks unlike ``card``'s training images (None otherwise, and
    for a card without a reference)."""
    entry = getattr(card, "appearance", None)
    if not entry:
        return None
    d = distance(image, entry)
    if d <= entry["threshold"]:
        return None
    return (f"this image looks unlike {card.name}'s training images (colour and texture "
            f"{d:.1f} spreads from them, its own lie within {entry['threshold']:.1f}): "
            "check the objects, or choose a model made for this tissue and stain")


def check_entry(entry: dict) -> None:
    """A card's ``appearance`` entry must be well formed (a card is read from files anyone
    can edit)."""
    try:
        ok = (list(entry["features"]) == list(FEATURES)
              and len(entry["mean"]) == len(entry["spread"]) == len(FEATURES)
              and all(float(s) > 0 for s in entry["spread"])
              and float(entry["threshold"]) > 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise GlandsegError("card field appearance is malformed: features, mean, spread "
                            f"({len(FEATURES)} values each, spreads positive) and a positive "
                            "threshold are needed")


__all__ = ["FEATURES", "MARGIN", "appearance", "check_entry", "distance", "reference",
           "warning"]
