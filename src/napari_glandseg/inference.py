"""Tiled inference: normalise -> windows -> tiles -> batches -> blend -> labels.

Qt-free. :func:`iter_segment` is a generator that yields :class:`Progress` after every batch and
returns a :class:`SegmentResult`; :func:`segment` runs it to the end. Stopping the generator
(``close()``, or napari's ``worker.quit()``) ends the work at the next batch and leaves nothing
half-written behind.

How an image of any size is handled:

- The image (a NumPy, dask or zarr array, or a multiscale list of them) is read window by
  window (``window_size`` pixels plus a halo of half a tile on each side), so memory is
  bounded by the window, never the image.
- Each window is cut into tiles of at most ``tile_size`` overlapping by at least ``overlap``
  (as few as ``tile_size`` needs, each only as large as their count needs); tile
  predictions (probabilities) are blended with a Gaussian or cosine window, so no seams
  show.
- Only the window's centre is kept; labels (and, on request, probabilities) are written into
  an in-memory array or, for large images, a zarr store that napari shows lazily.
- When the image's pixel size differs from the model card's, each window is resampled to the
  model's scale and the probabilities back; with a pyramid, the level nearest the model's scale
  is read instead.

Examples
--------
>>> import numpy as np
>>> from napari_glandseg.models import ModelCard, build_model, Model
>>> card = ModelCard(name="demo", architecture="base_cnn", in_channels=3, num_classes=1,
...                  arch_kwargs={"widths": [4, 8]})
>>> model = Model(build_model("base_cnn", 3, 1, widths=[4, 8]).eval(), card)
>>> image = np.zeros((100, 150, 3), np.uint8)
>>> result = segment(image, model, tile_size=64, overlap=0.25)
>>> result.labels.shape, result.probabilities.shape
((100, 150), (1, 100, 150))
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._types import Box, Levels, MutableArray, as_levels
from .enums import Blend  # noqa: F401  (defined with the other modes)
from .errors import GlandsegError
from .models import Model, ModelCard, describe_device, resolve_device
from .params import SegmentParams  # noqa: F401  (defined torch-free, for the CLI)
from .precision import Precision, autocast_dtype
from .precision import resolve as resolve_precision
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, to_standard, value_range  # noqa: F401  (and the 3 below: old names)
from .preprocess import norm_stats as _norm_stats
from .preprocess import normalise as _normalise
from .progress import Progress, run_to_end
from .scale import WorkingScale, working_scale

if TYPE_CHECKING:
    from .stain import MacenkoStains

#: Images with more pixels than this (or lazy inputs) get their labels in a zarr store.
LARGE_PIXELS = 64 * 2**20


@dataclass
class SegmentResult:
    """What :func:`segment` returns.

    Attributes
    ----------
    labels : ndarray or zarr array, (Y, X), uint8
        Class labels, 0 = background (binary models: 0/1).
    probabilities : ndarray or zarr array, (C, Y, X), or None
        Foreground probability (C = 1) for binary models, class probabilities otherwise.
    uncertainty : ndarray or None, (Y, X)
        With TTA: mean over classes of the standard deviation across the 8 augmentations.
    offset : (int, int)
        Where ``labels[0, 0]`` lies in the full-resolution image (for a region).
    pixel_size_um : float or None
        Pixel size of the output (the chosen pyramid level's).
    downsample : float
        Full-resolution pixels per output pixel (1 unless a coarser pyramid level was used).
    store_path : str or None
        The zarr folder holding a large result. The result owns it: :meth:`discard`
        removes it, :meth:`to_memory` reads it into NumPy and removes it, and ``with``
        removes it on leaving the block.
    params : SegmentParams or None
        The settings this result was made with (what a layer's metadata should record).
    model : str
        The model card's name.
    """

    labels: MutableArray
    probabilities: MutableArray | None = None
    uncertainty: MutableArray | None = None
    offset: tuple = (0, 0)
    pixel_size_um: float | None = None
    downsample: float = 1.0
    store_path: str | None = None
    device: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    params: SegmentParams | None = None
    model: str = ""

    def discard(self) -> None:
        """Remove the zarr store of a large result (its arrays go with it); nothing for a
        result in memory."""
        if self.store_path is not None:
            remove_store(self.store_path)
            self.store_path = None

    def to_memory(self) -> SegmentResult:
        """Read a large result's arrays into NumPy and remove its store (a result small
        enough for memory); returns itself."""
        if self.store_path is not None:
            self.labels = np.asarray(self.labels)
            if self.probabilities is not None:
                self.probabilities = np.asarray(self.probabilities, np.float32)
            if self.uncertainty is not None:
                self.uncertainty = np.asarray(self.uncertainty, np.float32)
            self.discard()
        return self

    def __enter__(self) -> SegmentResult:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def metadata(self) -> dict:
        """What to record with the result (a napari layer's metadata, a sidecar): model,
        settings, output pixel size, device and time, all plain values."""
        params = {} if self.params is None else {
            k: getattr(v, "value", v) for k, v in vars(self.params).items()}
        return {"model": self.model, "params": params, "pixel_size_um": self.pixel_size_um,
                "downsample": self.downsample, "offset": tuple(self.offset),
                "seconds": self.seconds, "device": self.device}


@dataclass(frozen=True)
class Window:
    """One window of a tiled run, in pixels of the level read, relative to the region.

    Attributes
    ----------
    core : (y, x, h, w)
        The labels it writes.
    read : (y0, x0, y1, x1)
        What it reads: the core and a halo of context (half a tile) around it.
    model_shape : (h, w)
        ``read`` rescaled to the model's scale.
    tiles : list of (y, x, h, w)
        The network's tiles over ``model_shape``.
    """

    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]
    model_shape: tuple[int, int]
    tiles: list


def remove_store(path: str) -> None:
    """Remove a result's temporary zarr store: the one place such a store is deleted
    (:meth:`SegmentResult.discard`, :meth:`Output.discard`, and the widgets' layers that
    show one)."""
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Output:
    """Where a run writes its result while it runs, in memory or, for a large image, in a
    temporary zarr store: the one owner of those arrays until they become a
    :class:`SegmentResult` (as MONAI's ``Merger`` is for its sliding windows).

    Make one with :meth:`allocate`; :meth:`write` puts a window's blended core in place
    (labels, probabilities when asked for, TTA uncertainty); :meth:`discard` removes an
    unfinished run's store; :meth:`result` hands the arrays and the store to a result.
    """

    labels: Any
    probabilities: Any = None
    uncertainty: Any = None
    store_path: str | None = None
    threshold: float = 0.5

    @classmethod
    def allocate(cls, h: int, w: int, n: int, params: SegmentParams, *,
                 large: bool) -> Output:
        """Arrays for an ``h x w`` result of ``n`` probability channels: NumPy, or (``large``)
        a zarr store in ``params.store_dir`` chunked as the windows are written."""
        tta = bool(params.tta)
        if not large:
            return cls(labels=np.zeros((h, w), np.uint8),
                       probabilities=(np.zeros((n, h, w), np.float32)
                                      if params.return_probabilities else None),
                       uncertainty=np.zeros((h, w), np.float32) if tta else None,
                       threshold=params.threshold)
        import zarr

        path = tempfile.mkdtemp(prefix="glandseg-", suffix=".zarr", dir=params.store_dir)
        c = min(1024, params.window_size)
        root = zarr.open_group(path, mode="w")

        def array(name, shape, dtype):
            return root.create_array(name, shape=shape, chunks=(1,) * (len(shape) - 2)
                                     + (c, c), dtype=dtype, fill_value=0)

        return cls(labels=array("labels", (h, w), "uint8"),
                   probabilities=(array("probabilities", (n, h, w), "float16")
                                  if params.return_probabilities else None),
                   uncertainty=array("uncertainty", (h, w), "float16") if tta else None,
                   store_path=path, threshold=params.threshold)

    def write(self, core: tuple[int, int, int, int], probs: np.ndarray,
              uncertainty: np.ndarray | None = None) -> None:
        """Write a window's core ``(y, x, h, w)``: ``probs`` ``(C, h, w)`` become labels
        (threshold, or argmax over classes) and, when kept, probabilities."""
        y, x, h, w = core
        self.labels[y: y + h, x: x + w] = _to_labels(probs, self.threshold)
        if self.probabilities is not None:
            self.probabilities[:, y: y + h, x: x + w] = probs.astype(
                self.probabilities.dtype, copy=False)
        if self.uncertainty is not None and uncertainty is not None:
            self.uncertainty[y: y + h, x: x + w] = uncertainty.astype(
                self.uncertainty.dtype, copy=False)

    def discard(self) -> None:
        """Remove the store of a run that did not finish (nothing for memory)."""
        if self.store_path is not None:
            remove_store(self.store_path)
            self.store_path = None

    def result(self, **kwargs) -> SegmentResult:
        """The finished arrays as a :class:`SegmentResult`, which owns the store from now
        on; ``kwargs`` are its other fields."""
        return SegmentResult(labels=self.labels, probabilities=self.probabilities,
                             uncertainty=self.uncertainty, store_path=self.store_path,
                             **kwargs)


# --------------------------------------------------------------------------------------------
# public entry points


def segment(image: Levels, model: Model, pixel_size_um: float | None = None,
            region: Box | None = None, params: SegmentParams | None = None,
            stats: ImageStats | None = None, **kwargs: Any) -> SegmentResult:
    """Segment ``image`` with ``model`` (blocking). See :func:`iter_segment`."""
    return run_to_end(iter_segment(image, model, pixel_size_um=pixel_size_um, region=region,
                                   params=params, stats=stats, **kwargs))


def iter_segment(
    image: Levels,
    model: Model,
    pixel_size_um: float | None = None,
    region: Box | None = None,
    params: SegmentParams | None = None,
    stats: ImageStats | None = None,
    working: WorkingScale | None = None,
    **kwargs: Any,
) -> Generator[Progress, None, SegmentResult]:
    """Segment an image tile by tile, yielding :class:`Progress` after each batch.

    Parameters
    ----------
    image : array-like or list of array-like
        ``(Y, X)`` grey or ``(Y, X, C)`` colour; NumPy, dask or zarr; a list is a multiscale
        pyramid, full resolution first.
    model : Model
        From :func:`napari_glandseg.load_model`; its card gives channels, classes,
        normalisation and input scale.
    pixel_size_um : float, optional
        The image's um/px (full resolution). With the card's, sets the pyramid level and the
        rescale factor (:func:`~napari_glandseg.scale.working_scale`); ignored when
        ``working`` is given.
    region : (y0, x0, y1, x1), optional
        Full-resolution bounding box to segment; the result's ``offset`` is ``(y0, x0)``.
    params : SegmentParams, optional
        Or pass its fields as keywords.
    stats : ImageStats, optional
        The whole image's stains and normalisation statistics (:func:`image_stats`), for a
        region that is one part of a larger image (a slide's block); default: estimated
        from the region itself.
    working : WorkingScale, optional
        The level and rescale decided by the caller (:func:`napari_glandseg.scale.resolve`,
        which also weighs the user's pixel size and automatic scale), taken as it is.

    Returns
    -------
    SegmentResult
    """
    if params is None:
        params = SegmentParams(**kwargs)
    elif kwargs:
        params = replace(params, **kwargs)
    card = model.card
    levels = as_levels(image)
    base_shape = _check_image(levels[0], card.in_channels)
    y0, x0, y1, x1 = _check_region(region, base_shape[:2])

    # the level read and the rescale to the model's scale: the caller's (scale.resolve),
    # or scale.working_scale's (an image of unknown scale is taken to be at the training
    # data's, the card's)
    ws = working or working_scale(levels, card, pixel_size_um, rescale=params.rescale,
                                  scale=params.scale)
    level, downsample, scale = ws.level, ws.downsample, ws.scale
    data = levels[level]
    ly0, lx0, ly1, lx1 = ws.to_level((y0, x0, y1, x1), data.shape)
    out_px = ws.output_pixel_size_um

    device = resolve_device(params.device)
    model = model.on(device)  # its instance there: a shared model is never moved
    precision = resolve_precision(params.precision, device)
    channels_last = True if params.channels_last is None else params.channels_last
    if stats is None:
        stats = _estimate_stats(data, (ly0, lx0, ly1, lx1), card, params)
    stain, stain_note = stats.mapping(card, params), stats.stain_note
    # the whole image's value range (preprocess.value_range), the same for every window
    vrange = stats.value_range or value_range(data, (ly0, lx0, ly1, lx1))
    norm = stats.norm

    out_h, out_w = ly1 - ly0, lx1 - lx0
    large = not isinstance(data, np.ndarray) or out_h * out_w > LARGE_PIXELS
    output = Output.allocate(out_h, out_w, card.num_classes, params, large=large)

    halo = params.tile_size // 2
    grid = _grid(out_h, out_w, params.window_size, 0)
    plans: list[Window] = []
    for wy, wx, wh, ww in grid:
        # the halo reaches past a region's edge into the image around it (context), so a
        # region gets the labels the whole-image run gives there
        ry0, rx0 = max(-ly0, wy - halo), max(-lx0, wx - halo)
        ry1 = min(data.shape[0] - ly0, wy + wh + halo)
        rx1 = min(data.shape[1] - lx0, wx + ww + halo)
        # at least one model pixel, however small the image and the scale
        mh, mw = max(1, round((ry1 - ry0) * scale)), max(1, round((rx1 - rx0) * scale))
        tiles = _tile_grid(mh, mw, params.tile_size, params.overlap)
        aligned = None
        if region is not None and len(grid) == 1:
            aligned = _aligned_plan(data.shape[:2], (ly0, lx0, ly1, lx1), scale, params)
        if aligned is not None:
            (ry0, rx0, ry1, rx1), (mh, mw), tiles = aligned
        plans.append(Window((wy, wx, wh, ww), (ry0, rx0, ry1, rx1), (mh, mw), tiles))
    total = sum(len(w.tiles) for w in plans)
    state = {"batch": params.batch_size, "done": 0, "t0": time.perf_counter()}
    info = {"level": level, "scale": scale, "tiles": total, "precision": precision,
            "batch_size": params.batch_size, "stain": stain_note}

    finished = False
    try:
        for win in plans:
            (wy, wx, wh, ww), (ry0, rx0, ry1, rx1) = win.core, win.read
            (mh, mw), tiles = win.model_shape, win.tiles
            raw = to_standard(data[ly0 + ry0: ly0 + ry1, lx0 + rx0: lx0 + rx1], vrange)
            if stain is not None:
                raw = stain(raw)
            if scale != 1.0:
                x = _resize(_normalise(raw, card.normalization, norm), (mh, mw))

                def tile_of(y, x0, th, tw, x=x):
                    return x[:, y: y + th, x0: x0 + tw]
            else:  # normalise tile by tile: the window stays in its (small) standard dtype

                def tile_of(y, x0, th, tw, raw=raw):
                    return _normalise(raw[y: y + th, x0: x0 + tw], card.normalization, norm)
            wprob, wunc = yield from _predict_window(
                tile_of, (mh, mw), tiles, model, params, device, precision, channels_last,
                state, total)
            if scale != 1.0:
                wprob = _resize(wprob, (ry1 - ry0, rx1 - rx0))
                if wunc is not None:
                    wunc = _resize(wunc[None], (ry1 - ry0, rx1 - rx0))[0]
            cy, cx = wy - ry0, wx - rx0
            output.write(win.core, wprob[:, cy: cy + wh, cx: cx + ww],
                         None if wunc is None else wunc[cy: cy + wh, cx: cx + ww])
        finished = True
    finally:
        if not finished:
            output.discard()

    info["batch_size_used"] = state["batch"]
    return output.result(
        offset=(y0, x0), pixel_size_um=out_px, downsample=downsample,
        device=describe_device(device), seconds=time.perf_counter() - state["t0"], info=info,
        params=params, model=card.name)


# --------------------------------------------------------------------------------------------
# validation and set-up


def _check_image(arr, in_channels: int) -> tuple:
    shape = tuple(getattr(arr, "shape", ()))
    if len(shape) == 3 and shape[-1] == 4:  # RGBA: the alpha channel is dropped
        shape = shape[:-1] + (3,)
    if len(shape) == 2:
        channels = 1
    elif len(shape) == 3 and shape[-1] in (1, 3):
        channels = shape[-1]
    else:
        raise GlandsegError(
            f"image has shape {shape}; expected a 2D grey (Y, X) or colour (Y, X, 3) image. "
            "For a stack, segment one plane (move the slider and use the current view)."
        )
    if channels != in_channels:
        want = "an RGB" if in_channels == 3 else "a greyscale"
        have = "RGB" if channels == 3 else "greyscale"
        raise GlandsegError(
            f"the model expects {want} image ({in_channels} channel(s)) but the image is "
            f"{have}; choose a model made for {have} images"
        )
    if min(shape[:2]) < 1:
        raise GlandsegError(f"image has an empty side: shape {shape}")
    return shape


def _check_region(region, hw) -> tuple[int, int, int, int]:
    if region is None:
        return 0, 0, hw[0], hw[1]
    try:
        y0, x0, y1, x1 = (int(round(v)) for v in region)
    except (TypeError, ValueError):
        raise GlandsegError(f"region must be (y0, x0, y1, x1), got {region!r}") from None
    y0, x0 = max(0, y0), max(0, x0)
    y1, x1 = min(hw[0], y1), min(hw[1], x1)
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise GlandsegError(f"region {tuple(region)} does not overlap the image of size {hw}")
    return y0, x0, y1, x1


def _aligned_plan(hw, box, scale, params):
    """For a region of an image that the whole-image run reads as one window: that run's
    tiles which touch the region, the extent they read (relative to the region's corner)
    and the model-pixel size of that extent. The region then gets the same tiles, context
    and blending as the whole-image run, hence the same labels (up to sub-pixel
    resampling when the image is rescaled). None when the whole run would use several
    windows."""
    h, w = hw
    if max(h, w) > params.window_size:
        return None
    y0, x0, y1, x1 = box
    mh_all, mw_all = max(1, round(h * scale)), max(1, round(w * scale))
    tiles = [t for t in _tile_grid(mh_all, mw_all, params.tile_size, params.overlap)
             if t[0] < y1 * scale and t[0] + t[2] > y0 * scale
             and t[1] < x1 * scale and t[1] + t[3] > x0 * scale]
    my0, mx0 = min(t[0] for t in tiles), min(t[1] for t in tiles)
    my1, mx1 = max(t[0] + t[2] for t in tiles), max(t[1] + t[3] for t in tiles)
    if scale == 1.0:
        ey0, ex0, ey1, ex1 = my0, mx0, my1, mx1
    else:
        ey0, ex0 = math.floor(my0 / scale), math.floor(mx0 / scale)
        ey1, ex1 = min(h, math.ceil(my1 / scale)), min(w, math.ceil(mx1 / scale))
    ey0, ex0 = min(ey0, y0), min(ex0, x0)
    ey1, ex1 = max(ey1, y1), max(ex1, x1)
    mh, mw = max(1, round((ey1 - ey0) * scale)), max(1, round((ex1 - ex0) * scale))
    oy, ox = round(ey0 * scale), round(ex0 * scale)
    local = [(min(max(0, ty - oy), max(0, mh - th)), min(max(0, tx - ox), max(0, mw - tw)),
              min(th, mh), min(tw, mw)) for ty, tx, th, tw in tiles]
    return (ey0 - y0, ex0 - x0, ey1 - y0, ex1 - x0), (mh, mw), local


def _grid(h: int, w: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Windows ``(y, x, th, tw)`` of ``size`` covering ``h x w``; the last one on each axis
    is flush with the edge, and an image smaller than ``size`` is one window of its own
    size."""

    def starts(n):
        if n <= size:
            return [0], n
        step = max(1, int(size * (1 - overlap)))
        s = list(range(0, n - size, step)) + [n - size]
        return s, size

    ys, th = starts(h)
    xs, tw = starts(w)
    return [(y, x, th, tw) for y in ys for x in xs]


#: Tiles are cut to a multiple of this: the built-in networks take multiples of 16 or 32
#: (a network pads any other size to its own multiple).
TILE_MULTIPLE = 32


def _tile_grid(h: int, w: int, size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tiles ``(y, x, th, tw)`` covering ``h x w``: as many as :func:`_grid` cuts of ``size``
    overlapping by ``overlap``, but each only as large as that count needs (a multiple of
    :data:`TILE_MULTIPLE`, at most ``size``), evenly spaced, neighbours sharing at least
    ``overlap`` of ``size``. A 1000 px side in tiles of 512 is three tiles of 448, not
    three of 512 of which the last repeats three quarters of the second: 0.77x the pixels
    through the network, the same seams blended. An image smaller than ``size`` is one
    tile of its own size."""

    def axis(n):
        if n <= size:
            return [0], n
        step = max(1, int(size * (1 - overlap)))
        k = -(-(n - size) // step) + 1  # the tiles _grid cuts
        shared = size - step  # the overlap each pair of neighbours keeps at least
        t = -(-(n + (k - 1) * shared) // k)
        t = min(size, -(-t // TILE_MULTIPLE) * TILE_MULTIPLE)
        return [round(i * (n - t) / (k - 1)) for i in range(k)], t

    ys, th = axis(h)
    xs, tw = axis(w)
    return [(y, x, th, tw) for y in ys for x in xs]


# --------------------------------------------------------------------------------------------
# normalisation and resampling


@dataclass(frozen=True)
class ImageStats:
    """What an image is normalised with, estimated once for the whole of it: the raw values
    that mean black and white (``value_range``, :func:`~napari_glandseg.preprocess.value_range`:
    what makes any dtype segment as its 8-bit equal; None: estimated from the region), the
    source H&E stains of the card's stain normalisation (``stains``; None: none, or too
    little tissue, ``stain_note`` says which) and the per-channel statistics of an
    image-level normalisation (``norm``; None for the fixed ones). Every tile of a
    :func:`segment` run uses one estimate; a slide's blocks share one from
    :func:`image_stats`, so blocks match at their seams. Small and picklable (dask workers
    receive it)."""

    stains: MacenkoStains | None = None
    norm: tuple[np.ndarray, np.ndarray] | None = None
    stain_note: str = "none"
    value_range: tuple | None = None

    def mapping(self, card: ModelCard,
                params: SegmentParams) -> Callable[[np.ndarray], np.ndarray] | None:
        """The per-tile stain mapping (raw RGB -> RGB on the card's reference), or None."""
        if self.stains is None or not (card.stain_normalization and params.stain_normalization):
            return None
        from .stain import MacenkoStains, apply_macenko

        source, reference = self.stains, MacenkoStains.from_card(card.stain_normalization)
        return lambda raw: apply_macenko(raw, source, reference)


def _estimate_stats(data, box, card, params) -> ImageStats:
    """:class:`ImageStats` of ``data[box]``: the value range of the whole of ``data`` (a
    region of a 16-bit image is mapped as the whole image is), the stains of the region in
    its standard form, then the normalisation statistics of the stain-normalised region
    (each from a subsample). An image with too little stained tissue to estimate stains is
    segmented without stain normalisation, with a warning."""
    vrange = value_range(data)
    stains, note = None, "none"
    if card.stain_normalization and params.stain_normalization:
        import warnings

        from .stain import fit_macenko

        y0, x0, y1, x1 = box
        step = max(1, int(math.sqrt((y1 - y0) * (x1 - x0) / 2**20)))  # fit_macenko's sample
        try:
            sample = to_standard(data[y0:y1:step, x0:x1:step], vrange)
            stains, note = fit_macenko(sample), "macenko"
        except GlandsegError as exc:
            note = f"skipped: {exc}"
            warnings.warn(f"stain normalisation {note}", stacklevel=4)
    mapping = ImageStats(stains, None, note).mapping(card, params)

    def standard(sample):
        sample = to_standard(sample, vrange)
        return sample if mapping is None else mapping(sample)

    return ImageStats(stains, _norm_stats(data, box, card.normalization, standard), note,
                      vrange)


def image_stats(image: Levels, model: Model, pixel_size_um: float | None = None,
                params: SegmentParams | None = None, grid: int = 8,
                tile: int = 256, working: WorkingScale | None = None) -> ImageStats:
    """Stains and normalisation statistics of a whole (multiscale) image, estimated once on
    the pyramid level :func:`segment` reads for ``model`` (stains and percentiles change
    when pixels are averaged into a coarser level), from a ``grid`` x ``grid`` mosaic of
    ``tile`` px tiles spread over it: a few MB read, whatever the slide's size, instead of
    per block from each block's own pixels (which normalises a pale block and a dark block
    differently, so objects change at the seams). Pass the result to :func:`segment` as
    ``stats`` for each region, with the same ``working`` scale (its level is read here)."""
    params = params or SegmentParams()
    levels = as_levels(image)
    card = model.card
    ws = working or working_scale(levels, card, pixel_size_um, rescale=params.rescale,
                                  scale=params.scale)
    data = levels[ws.level]
    h, w = int(data.shape[0]), int(data.shape[1])
    if h * w <= (grid * tile) ** 2:
        return _estimate_stats(data, (0, 0, h, w), card, params)
    th, tw = min(tile, h), min(tile, w)
    ys = np.linspace(0, h - th, grid).astype(int)
    xs = np.linspace(0, w - tw, grid).astype(int)
    mosaic = np.concatenate([np.concatenate([np.asarray(data[y:y + th, x:x + tw])
                                             for x in xs], axis=1) for y in ys], axis=0)
    return _estimate_stats(mosaic, (0, 0, mosaic.shape[0], mosaic.shape[1]), card, params)


def _resize(x: np.ndarray, hw) -> np.ndarray:
    """Bilinear resize of a (C, Y, X) float array to (C, *hw), anti-aliased when shrinking."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    out = torch.nn.functional.interpolate(t, size=tuple(hw), mode="bilinear",
                                          align_corners=False, antialias=t.shape[-1] > hw[1])
    return out[0].numpy()


# --------------------------------------------------------------------------------------------
# tiles and batches


@lru_cache(maxsize=16)
def blend_window(th: int, tw: int, mode: Blend) -> np.ndarray:
    """The weight of each pixel of a ``th x tw`` tile when overlapping tiles are averaged.

    Gaussian: sigma = size/8 (MONAI's ``sigma_scale=0.125``); cosine: a Hann window; both
    floored at 1e-3 so image edges covered by one tile keep their prediction.
    """
    mode = Blend(mode)
    if mode is Blend.CONSTANT:
        return np.ones((th, tw), np.float32)

    def profile(n):
        i = np.arange(n, dtype=np.float32) + 0.5
        if mode is Blend.GAUSSIAN:
            sigma = n / 8
            return np.exp(-0.5 * ((i - n / 2) / sigma) ** 2)
        return np.sin(np.pi * i / n) ** 2

    w = np.outer(profile(th), profile(tw))
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


_TTA = [(k, flip) for flip in (False, True) for k in range(4)]


def _run(net, batch: torch.Tensor, precision: str, device: torch.device) -> torch.Tensor:
    dtype = autocast_dtype(precision)
    with torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                        enabled=dtype is not None):
        return net(batch).float()


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _forward(model, batch, params, device, precision, channels_last):
    """(N, C, h, w) float32 tensor -> probabilities (N, K, h, w) and TTA std (N, h, w)."""
    batch = batch.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    if params.tta:
        return run_to_end(_tta_passes(model, batch, precision, device))
    with torch.inference_mode():
        return _probabilities(_run(model.inference_net, batch, precision, device)).cpu(), None


def _tta_passes(model, batch, precision, device):
    """The 8 flips/rotations of a (prepared) batch, yielding None after each pass, so that
    a caller can stop between passes (Cancel with TTA on a slide: one pass, not eight).
    Returns the mean probabilities and the mean over classes of their std."""
    outs = []
    for k, flip in _TTA:
        with torch.inference_mode():
            b = torch.flip(batch, (-1,)) if flip else batch
            b = torch.rot90(b, k, (-2, -1))
            p = _probabilities(_run(model.inference_net, b, precision, device))
            p = torch.rot90(p, -k, (-2, -1))
            outs.append(torch.flip(p, (-1,)) if flip else p)
        if len(outs) < len(_TTA):
            yield None
    stack = torch.stack(outs)
    return stack.mean(0).cpu(), stack.std(0).mean(1).cpu()


def _forward_steps(model, batch, params, device, precision, channels_last, state, total):
    """:func:`_forward`, yielding Progress between the TTA passes (none without TTA)."""
    if not params.tta:
        return _forward(model, batch, params, device, precision, channels_last)
    batch = batch.to(device, non_blocking=True)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    passes = _tta_passes(model, batch, precision, device)
    i = 0
    while True:
        try:
            next(passes)
        except StopIteration as stop:
            return stop.value
        i += 1
        yield Progress(state["done"], total,
                       f"tile {state['done']}/{total}, TTA pass {i}/{len(_TTA)}",
                       time.perf_counter() - state["t0"])


def _predict_window(tile_of, shape, tiles, model, params, device, precision, channels_last,
                    state, total):
    """Blend tile probabilities over one window; yields Progress after each batch.

    ``tile_of(y, x, h, w)`` returns the normalised (C, h, w) float32 tile.
    """
    h, w = shape
    n_out = model.card.num_classes
    acc = np.zeros((n_out, h, w), np.float32)
    unc = np.zeros((h, w), np.float32) if params.tta else None
    norm = np.zeros((h, w), np.float32)
    i = 0
    while i < len(tiles):
        chunk = tiles[i: i + state["batch"]]
        batch = torch.from_numpy(np.stack([tile_of(*t) for t in chunk]))
        try:
            probs, std = yield from _forward_steps(model, batch, params, device, precision,
                                                   channels_last, state, total)
        except torch.OutOfMemoryError:
            if state["batch"] == 1:
                raise GlandsegError(
                    f"GPU out of memory even with one {params.tile_size}px tile; lower "
                    "tile_size or use the CPU") from None
            torch.cuda.empty_cache()
            state["batch"] = max(1, state["batch"] // 2)
            yield Progress(state["done"], total,
                           f"GPU out of memory: retrying with batch size {state['batch']}",
                           time.perf_counter() - state["t0"])
            continue
        probs = probs.numpy()
        for j, (y, x0, th, tw) in enumerate(chunk):
            wgt = blend_window(th, tw, params.blend)
            acc[:, y: y + th, x0: x0 + tw] += probs[j] * wgt
            norm[y: y + th, x0: x0 + tw] += wgt
            if unc is not None:
                unc[y: y + th, x0: x0 + tw] += std[j].numpy() * wgt
        i += len(chunk)
        state["done"] += len(chunk)
        yield Progress(state["done"], total, f"tile {state['done']}/{total}",
                       time.perf_counter() - state["t0"])
    acc /= norm
    if unc is not None:
        unc /= norm
    return acc, unc


def _to_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    if probs.shape[0] == 1:
        return (probs[0] > threshold).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


__all__ = [
    "Blend", "Output", "Precision", "Progress", "SegmentParams", "SegmentResult", "Window",
    "blend_window",
    "iter_segment", "segment",
]
