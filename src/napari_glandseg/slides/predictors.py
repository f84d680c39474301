"""Predictors: what turns a box of a slide into classes and a foreground probability.

Every predictor follows :class:`Predictor`; the plan asks it once for the working scale and
the whole slide's statistics, and each block calls it with both."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from .._types import Array, Box
from ..scale import WorkingScale

if TYPE_CHECKING:
    from ..inference import ImageStats, SegmentParams
    from ..models import Model, ModelCard


@runtime_checkable
class Predictor(Protocol):
    """What turns a box of a slide into classes and a foreground probability: the plan
    asks it for the working scale and the whole slide's statistics once, then each block
    calls it with both."""

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...

    @property
    def class_map(self) -> bool:
        """True: the classes are kept and their regions are the objects; False: the
        foreground is split into objects by the post-processing."""
        ...

    @property
    def identity(self) -> str:
        """What a rerun must match to take over an unfinished run's blocks."""
        ...

    def geometry(self, levels: Sequence[Array], file_px: float | None,
                 user_px: float | None = None) -> WorkingScale:
        """The pyramid level and rescale the blocks are segmented at."""
        ...

    def image_stats(self, levels: Sequence[Array],
                    working: WorkingScale) -> ImageStats | None:
        """The whole slide's stains and normalisation statistics (None: not needed)."""
        ...

    def appearance(self, levels: Sequence[Array]) -> str | None:
        """One line when the slide looks unlike the model's training images (None: it
        does not, or the predictor cannot say)."""
        ...

    def __call__(self, levels: Sequence[Array], box: Box, working: WorkingScale,
                 stats: ImageStats | None) -> tuple[np.ndarray, np.ndarray]:
        """Classes and foreground probability over ``box`` (pixels of ``working``'s
        level)."""
        ...


class ClassMapPredictor:
    """The image is already a class map (or mask): classes = the image, probability = 1
    on foreground. For tests and for re-stitching an existing prediction."""

    num_classes = 2
    class_names = ("background", "foreground")
    class_map = False  # foreground, split into objects by the post-processing
    identity = "ClassMapPredictor"

    def geometry(self, levels: Sequence[Array], file_px: float | None,
                 user_px: float | None = None) -> WorkingScale:
        """Full resolution as it is (:func:`~napari_glandseg.scale.resolve` without a
        model)."""
        from ..scale import resolve

        return resolve(levels, None, file_px, user_px)

    def image_stats(self, levels: Sequence[Array], working: WorkingScale) -> None:
        return None

    def appearance(self, levels: Sequence[Array]) -> None:
        return None

    def __call__(self, levels: Sequence[Array], box: Box, working: WorkingScale | None = None,
                 stats: ImageStats | None = None) -> tuple[np.ndarray, np.ndarray]:
        y0, x0, y1, x1 = box
        classes = np.asarray(levels[0][y0:y1, x0:x1])
        return classes, (classes > 0).astype(np.float32)


@lru_cache(maxsize=4)
def _cached_model(name: str) -> Model:
    from ..models import load_model

    return load_model(name)


@dataclass
class ModelPredictor:
    """Segment a box with a model (by store name or checkpoint file, loaded once per worker)
    and :func:`napari_glandseg.inference.segment`."""

    model: str
    seg: SegmentParams | None = None

    @property
    def card(self) -> ModelCard:
        return _cached_model(self.model).card

    @property
    def num_classes(self) -> int:
        return max(2, self.card.num_classes)

    @property
    def identity(self) -> str:
        return repr(self)

    @property
    def class_map(self) -> bool:
        """A class model: its classes are kept, its regions are the objects."""
        return self.card.class_map

    @property
    def class_names(self) -> tuple[str, ...]:
        names = list(self.card.class_names)
        return tuple(names if len(names) >= 2 else ["background", *names])

    def geometry(self, levels: Sequence[Array], file_px: float | None,
                 user_px: float | None = None) -> WorkingScale:
        """The pyramid level and rescale inference reads the slide at
        (:func:`~napari_glandseg.scale.resolve`, the one owner of that choice; a slide is
        taken at the card's scale when nobody gives its own, never estimated)."""
        from ..inference import SegmentParams
        from ..scale import resolve

        seg = self.seg or SegmentParams()
        return resolve(levels, self.card, file_px, user_px, rescale=seg.rescale,
                       scale=seg.scale)

    def image_stats(self, levels: Sequence[Array],
                    working: WorkingScale) -> ImageStats | None:
        """The whole slide's stains and normalisation statistics, read once from a grid of
        tiles of the level the blocks are segmented on
        (:func:`~napari_glandseg.inference.image_stats`); None when the card uses
        neither stain normalisation nor an image-level normalisation and the slide is 8-bit
        (other dtypes need the whole slide's value range, preprocess.value_range)."""
        from ..inference import SegmentParams, image_stats
        from ..preprocess import IMAGE_LEVEL

        card, seg = self.card, self.seg or SegmentParams()
        if not ((card.stain_normalization and seg.stain_normalization)
                or getattr(card.normalization, "value", card.normalization) in IMAGE_LEVEL
                or np.dtype(levels[0].dtype) != np.uint8):
            return None
        return image_stats(levels, _cached_model(self.model), params=seg, working=working)

    def __call__(self, levels: Sequence[Array], box: Box, working: WorkingScale | None = None,
                 stats: ImageStats | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The network's classes and foreground probability over ``box`` (pixels of
        ``working``'s level, the :class:`~napari_glandseg.scale.WorkingScale` of
        :meth:`geometry`, handed through to inference as it is), through the route from
        image to objects (:func:`napari_glandseg.pipeline.iter_objects`)."""
        from ..pipeline import FileParams, objects_from_image

        working = working or self.geometry(levels, None)
        params = FileParams(segment=self.seg_params(), postprocess=None)
        y0, x0, y1, x1 = box
        region = working.to_full(box, levels[0].shape)
        res = objects_from_image(levels, _cached_model(self.model), params, region=region,
                                 stats=stats, in_memory=True, working=working).segment
        classes = _fit(np.asarray(res.labels), (y1 - y0, x1 - x0))
        probs = np.asarray(res.probabilities, np.float32)
        fg = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
        return classes, _fit(fg, (y1 - y0, x1 - x0))

    def appearance(self, levels: Sequence[Array]) -> str | None:
        """:func:`napari_glandseg.domain.warning` on the slide (a pyramid level of about
        512 px), as Segment says it of an image."""
        from ..domain import warning

        return warning(list(levels), self.card)

    def seg_params(self) -> SegmentParams:
        """The inference settings, with probabilities (a block's table needs them)."""
        from dataclasses import replace

        from ..inference import SegmentParams

        return replace(self.seg or SegmentParams(), return_probabilities=True)


def _fit(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``a``, which must have shape ``hw``: a block segmented at another size than planned
    is an error, never cropped or padded into place."""
    if tuple(a.shape[:2]) != tuple(hw):
        raise RuntimeError(f"a block came back with shape {tuple(a.shape[:2])}, planned "
                           f"{tuple(hw)}: the plan and inference chose different levels")
    return a
