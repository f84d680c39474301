"""The working scale: which pyramid level an image is segmented on, and how much it is
rescaled to reach the model's pixel size (Qt-free).

One owner of that choice, so that every route reads the same pixels: inference
(:func:`~napari_glandseg.inference.iter_segment` and
:func:`~napari_glandseg.inference.image_stats`), the per-file pipeline (CLI and Segment
widget), slides block by block (``--ome-zarr``, the Slides widget, dask.distributed), and
whatever runs on them (validation, tuning).

The image's pixel size comes from its file; a user's value (``--pixel-size``) stands in for
a file that does not say it; an image of unknown scale is taken to be at the scale of the
model's training data (the card's ``data_pixel_size_um``). The level chosen is the coarsest
whose pixels are not coarser than the model's (10% slack), and the rest of the way is a
rescale (none within 10%).

Examples
--------
>>> import numpy as np
>>> from napari_glandseg.models import ModelCard
>>> card = ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1,
...                  pixel_size_um=1.0, data_pixel_size_um=0.5)
>>> levels = [np.zeros((400, 600, 3)), np.zeros((200, 300, 3)), np.zeros((100, 150, 3))]
>>> ws = working_scale(levels, card)            # unknown size: the card's data scale
>>> ws.level, ws.downsample, ws.scale, ws.output_pixel_size_um
(1, 2.0, 1.0, None)
>>> ws = working_scale(levels, card, 0.25)      # the file says 0.25 um/px
>>> ws.level, ws.scale, ws.output_pixel_size_um
(2, 1.0, 1.0)
>>> resolve(levels, card, user_px=0.5).level    # the user's size, for a file without one
1

:func:`resolve` is what the routes call: it adds the user's pixel size and, where nobody
says the image's scale, the estimate of :mod:`napari_glandseg.autoscale`; inference then
takes the :class:`WorkingScale` as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ._types import Array, Box, Levels, as_levels

if TYPE_CHECKING:
    from .autoscale import ScaleEstimate
    from .models.card import ModelCard

#: A level (or a rescale) within this fraction of the model's pixel size counts as it.
SLACK = 0.1


@dataclass(frozen=True)
class WorkingScale:
    """Where and how an image is segmented (see :func:`working_scale`).

    Attributes
    ----------
    level : int
        Pyramid level read (0: full resolution).
    downsample : float
        Full-resolution pixels per pixel of ``level``.
    scale : float
        Model pixels per pixel of ``level`` (1.0: no rescale).
    pixel_size_um : float or None
        The image's full-resolution um/px when known (its file's, or the user's).
    assumed_pixel_size_um : float or None
        ``pixel_size_um``, or for an image of unknown size the card's data scale.
    estimate : ScaleEstimate or None
        What automatic scale found, when it chose the rescale (:func:`resolve`).
    """

    level: int = 0
    downsample: float = 1.0
    scale: float = 1.0
    pixel_size_um: float | None = None
    assumed_pixel_size_um: float | None = None
    estimate: ScaleEstimate | None = field(default=None, compare=False)

    @property
    def output_pixel_size_um(self) -> float | None:
        """um/px of the labels (the level's); None when the image's size is not known."""
        return self.pixel_size_um * self.downsample if self.pixel_size_um else None

    def to_level(self, box: Box, level_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """A full-resolution box ``(y0, x0, y1, x1)`` in the level's pixels (at least one
        pixel, inside ``level_shape``)."""
        y0, x0, y1, x1 = box
        d = self.downsample
        ly0, lx0 = int(y0 / d), int(x0 / d)
        ly1 = max(ly0 + 1, min(int(level_shape[0]), math.ceil(y1 / d)))
        lx1 = max(lx0 + 1, min(int(level_shape[1]), math.ceil(x1 / d)))
        return ly0, lx0, ly1, lx1

    def to_full(self, box: Box, full_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """The full-resolution box that :meth:`to_level` maps back to exactly ``box`` (a box
        of the level's pixels inside :meth:`level_shape`), whatever the float rounding."""
        d = self.downsample
        y0, x0 = (math.ceil(v * d - 1e-6) for v in box[:2])
        y1, x1 = (min(int(n), math.floor(v * d + 1e-6))
                  for v, n in zip(box[2:], full_shape[:2], strict=True))
        # float rounding (v * d just below or above an integer): step to the exact pixel
        y0 += (int(y0 / d) < box[0]) - (y0 > 0 and int((y0 - 1) / d) >= box[0])
        x0 += (int(x0 / d) < box[1]) - (x0 > 0 and int((x0 - 1) / d) >= box[1])
        y1 += (y1 < full_shape[0] and math.ceil(y1 / d) < box[2]) - (math.ceil(y1 / d) > box[2])
        x1 += (x1 < full_shape[1] and math.ceil(x1 / d) < box[3]) - (math.ceil(x1 / d) > box[3])
        return y0, x0, y1, x1

    def level_shape(self, full_shape: Sequence[int],
                    level_shape: Sequence[int]) -> tuple[int, int]:
        """The labels' shape of a whole-image run: the level's pixels that full-resolution
        boxes reach (a level whose sides were rounded otherwise than its height can have a
        column more)."""
        box = self.to_level((0, 0, int(full_shape[0]), int(full_shape[1])), level_shape)
        return box[2], box[3]


def working_scale(levels: Levels, card: ModelCard | None, pixel_size_um: float | None = None,
                  default_pixel_size_um: float | None = None, *, rescale: bool = True,
                  scale: float | None = None) -> WorkingScale:
    """The pyramid level and rescale at which ``card``'s model segments an image.

    Parameters
    ----------
    levels : array or list of arrays
        The image, or its pyramid (full resolution first); only shapes are read.
    card : ModelCard or None
        Its ``pixel_size_um`` (the model's working scale) and ``data_pixel_size_um`` (the
        scale assumed for images of unknown size); None: full resolution as it is (a
        predictor without a model).
    pixel_size_um : float, optional
        The image's full-resolution um/px as its file states it.
    default_pixel_size_um : float, optional
        The user's um/px for an image whose file does not say it (``--pixel-size``).
    rescale : bool
        False: segment the chosen level as it is (no rescale to the model's scale).
    scale : float, optional
        Model pixels per full-resolution pixel given by the caller; replaces the rescale
        the pixel sizes imply (the level is chosen as usual).
    """
    levels = as_levels(levels)
    known = pixel_size_um or default_pixel_size_um or None
    assumed = assumed_pixel_size(card, known)
    model_px = card.pixel_size_um if card is not None else None
    level, ds = 0, 1.0
    if len(levels) > 1 and assumed and model_px:
        h0 = levels[0].shape[0]
        for i, lvl in enumerate(levels):
            d = h0 / lvl.shape[0]
            if assumed * d <= model_px * (1 + SLACK):
                level, ds = i, d
    factor = 1.0
    if scale is not None:
        factor = scale * ds
    elif rescale and assumed and model_px:
        factor = assumed * ds / model_px
        if abs(factor - 1) < SLACK:
            factor = 1.0
    return WorkingScale(level=level, downsample=ds, scale=factor, pixel_size_um=known,
                        assumed_pixel_size_um=assumed)


def assumed_pixel_size(card: ModelCard | None, known: float | None = None) -> float | None:
    """The um/px an image is taken to be at: ``known`` (its file's or the user's), else the
    scale of the card's training images (``data_pixel_size_um``), else None (unknown)."""
    return known or (card.data_pixel_size_um if card is not None else None) or None


def card_estimates(card: ModelCard | None) -> bool:
    """Whether ``card``'s model can estimate an image's scale: its card has a scale
    reference, :mod:`napari_glandseg.autoscale`'s yardstick."""
    return card is not None and bool(card.scale_reference)


def estimate_unused(card: ModelCard) -> str:
    """Why estimating an image's scale does nothing for ``card``'s model, in words, and
    which scale is used instead ("" when it can estimate; :func:`card_estimates`,
    :func:`assumed_pixel_size` and :func:`working_scale` are the rules it words)."""
    if card_estimates(card):
        return ""
    assumed = assumed_pixel_size(card)
    if assumed and card.pixel_size_um:
        return (f"not used by {card.name}: its card has no scale reference; an image "
                f"without a pixel size is taken to be at {assumed:g} um/px, as its "
                "training images (give Pixel size for another)")
    return (f"not used by {card.name}: its card has no scale reference; images are "
            "segmented at their own scale")


def can_estimate(card: ModelCard | None, image: Array | None, file_px: float | None = None,
                 user_px: float | None = None, scale: float | None = None) -> bool:
    """Whether :func:`resolve` with ``auto`` estimates the scale: nobody gives it (no file
    or user pixel size, no explicit rescale), the card can (:func:`card_estimates`), and the
    image is in memory (a slide or a lazy array is taken at the card's scale, as its blocks
    are, so both routes agree)."""
    return (file_px is None and user_px is None and scale is None and card_estimates(card)
            and isinstance(image, np.ndarray))


def resolve(levels: Levels, card: ModelCard | None, file_px: float | None = None,
            user_px: float | None = None, *, auto: bool = False,
            image: Array | None = None, rescale: bool = True,
            scale: float | None = None) -> WorkingScale:
    """The working scale of one run: the one place where the file's pixel size, the
    user's, the automatic estimate and an explicit rescale meet.

    Parameters
    ----------
    levels : array or list of arrays
        The image, or its pyramid (full resolution first).
    card : ModelCard or None
        The model's card (None: full resolution as it is).
    file_px : float, optional
        The image's um/px as its file states it.
    user_px : float, optional
        The user's um/px for an image whose file does not say it (``--pixel-size``).
    auto : bool
        Estimate the scale from ``image`` when nobody gives it (:func:`can_estimate`,
        :func:`napari_glandseg.autoscale.estimate_scale`); the estimate is kept in the
        result's ``estimate``.
    image : array, optional
        The pixels the estimate reads (default: ``levels`` when it is one array).
    rescale, scale
        As :func:`working_scale` (``SegmentParams.rescale`` / ``SegmentParams.scale``).
    """
    if image is None and not isinstance(levels, list | tuple):
        image = as_levels(levels)[0]
    estimate = None
    if auto and card is not None and image is not None and \
            can_estimate(card, image, file_px, user_px, scale):
        from .autoscale import estimate_scale

        estimate = estimate_scale(image, card)
        if estimate.pixel_size_um is not None:
            user_px = estimate.pixel_size_um
        elif estimate.factor != 1.0:
            scale = estimate.scale
    ws = working_scale(levels, card, file_px, user_px, rescale=rescale, scale=scale)
    return replace(ws, estimate=estimate) if estimate is not None else ws


__all__ = ["WorkingScale", "can_estimate", "resolve", "working_scale"]
