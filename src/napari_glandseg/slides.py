"""Whole slides block by block: tissue mask, block plan, stitched objects, OME-Zarr output.

Qt-free. A slide is cut into square blocks (``block_size`` pixels at the segmentation's
resolution) read with a halo of ``overlap`` pixels on each side. Each block is segmented and
post-processed on its own (:func:`napari_glandseg.pipeline.iter_objects`, the route every
run takes, at the level :func:`napari_glandseg.scale.working_scale` chooses), so memory is
bounded by one block whatever the slide's size, and blocks are independent tasks
(:mod:`napari_glandseg.distributed` runs the same functions on dask.distributed).

Joining objects across block faces (as cellpose's distributed segmentation does, with one
change against over-merging):

1. every block keeps its labels over its whole padded box, numbered locally 1..n;
2. for each pair of neighbouring blocks (faces and corners), both blocks' labels are compared
   in a band of ``overlap`` pixels centred on the shared face, where each block saw at least
   ``overlap / 2`` pixels of context. Two objects are linked when their intersection over
   union *in that band* is at least ``join_iou`` (0.5): the same object seen by both blocks
   agrees pixel for pixel there, while two different objects that merely touch across the
   face share few or no pixels, so a 1-pixel touch never links them (plain face adjacency
   does, which is the over-merging cellpose users report);
3. the links form a graph whose connected components (``scipy.sparse.csgraph``) are the
   slide's objects, numbered 1..N globally;
4. each block writes its core (the halo trimmed) with the global ids into the OME-Zarr
   labels and into every pyramid level (nearest-neighbour 2x steps; the levels' chunks are
   aligned to blocks, so no two blocks write the same chunk).

An object is neither cut nor over-merged as long as the overlap is larger than the objects
(known trap: objects larger than the halo are seen differently by two blocks).

Outputs for a slide ``name``: ``name.ome.zarr`` (NGFF 0.5: ``labels/glandseg`` with a
multiscale pyramid, scale in um), ``name_objects.csv`` (one row per object: area, perimeter,
centroid in um, class, mean probability) and, when ``napari_glandseg.geojson`` is available,
``name_objects.geojson``. Work files (one compressed file per finished block, the marker a
rerun uses to skip it) live in ``name.glandseg-work/`` until the slide is finished.

Examples
--------
>>> import numpy as np, tempfile
>>> from napari_glandseg.slides import SlideParams, segment_slide
>>> img = np.zeros((300, 300), np.uint8); img[100:200, 40:260] = 1   # crosses 2 blocks
>>> res = segment_slide(img, tempfile.mkdtemp(), predictor=ClassMapPredictor(),
...                     params=SlideParams(block_size=128, overlap=32, tissue=False),
...                     post={"split": "none", "min_size": 1})
>>> res.n_objects, res.labels_shape
(1, (300, 300))
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ._files import atomic_path
from .errors import GlandsegError, OutputExistsError
from .postprocessing import PostprocessParams
from .progress import Progress
from .scale import WorkingScale

if TYPE_CHECKING:
    from .inference import ImageStats

LABEL_NAME = "glandseg"
#: Columns of the per-object table (lengths in um, areas in um^2; px columns when no scale).
TABLE_COLUMNS = ("label", "class", "area_um2", "perimeter_um", "centroid_y_um",
                 "centroid_x_um", "mean_probability", "area_px", "bbox_y0", "bbox_x0",
                 "bbox_y1", "bbox_x1")


@dataclass
class SlideParams:
    """Settings for block-wise slide segmentation.

    Attributes
    ----------
    block_size : int
        Side of a block's core in pixels at the segmentation's resolution; a multiple of 64.
    overlap : int
        Halo read around each block, in pixels; should exceed the largest object's size.
    tissue : bool
        Skip blocks without tissue (Otsu on a low-resolution level; colour images only).
    tissue_side : int
        Longest side of the image the tissue mask is computed on.
    join_iou : float
        IoU, in the band around a shared face, above which two blocks' objects are one.
    chunk_size : int
        Largest zarr chunk side of the output labels (chunks never straddle blocks).
    """

    block_size: int = 2048
    overlap: int = 256
    tissue: bool = True
    tissue_side: int = 2048
    join_iou: float = 0.5
    chunk_size: int = 1024

    def __post_init__(self):
        if not isinstance(self.block_size, int) or self.block_size < 64 or self.block_size % 64:
            raise GlandsegError(f"block_size must be a multiple of 64 (>= 64), got "
                                f"{self.block_size!r}")
        if not isinstance(self.overlap, int) or not 2 <= self.overlap <= self.block_size // 2:
            raise GlandsegError(f"overlap must be an integer in [2, block_size/2 = "
                                f"{self.block_size // 2}], got {self.overlap!r}")
        if not 0 < self.join_iou < 1:
            raise GlandsegError(f"join_iou must be in (0, 1), got {self.join_iou!r}")
        if self.tissue_side < 64:
            raise GlandsegError(f"tissue_side must be >= 64, got {self.tissue_side!r}")


# --------------------------------------------------------------------------------------------
# tissue detection


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

    def any_in(self, box, margin: int = 1) -> bool:
        """Whether the full-resolution box ``(y0, x0, y1, x1)`` holds tissue."""
        y0, x0, y1, x1 = box
        d = self.downsample
        r0, c0 = max(0, int(y0 / d) - margin), max(0, int(x0 / d) - margin)
        r1, c1 = math.ceil(y1 / d) + margin, math.ceil(x1 / d) + margin
        return bool(self.mask[r0:r1, c0:c1].any())


#: Glass is brighter than this (0-255 grey); a bright Otsu class darker than this is tissue.
GLASS_GREY = 200


def tissue_mask(image, max_side: int = 2048) -> TissueMask:
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

    levels = list(image) if isinstance(image, list | tuple) else [image]
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
            from .postprocessing import _remove_small_objects

            mask = _remove_small_objects(mask, max(1, mask.size // 2000))
            mask = ndi.binary_dilation(mask, iterations=2)
    return TissueMask(mask=mask, downsample=float(downsample), threshold=threshold)


# --------------------------------------------------------------------------------------------
# predictors: what turns a box of the slide into classes and a foreground probability


@runtime_checkable
class Predictor(Protocol):
    """What turns a box of a slide into classes and a foreground probability: the plan
    asks it for the working scale and the whole slide's statistics once, then each block
    calls it with both."""

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> tuple: ...

    @property
    def class_map(self) -> bool:
        """True: the classes are kept and their regions are the objects; False: the
        foreground is split into objects by the post-processing."""
        ...

    def geometry(self, levels, file_px: float | None,
                 user_px: float | None = None) -> WorkingScale:
        """The pyramid level and rescale the blocks are segmented at."""
        ...

    def image_stats(self, levels, working: WorkingScale) -> ImageStats | None:
        """The whole slide's stains and normalisation statistics (None: not needed)."""
        ...

    def __call__(self, levels, box, working: WorkingScale,
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

    def geometry(self, levels, file_px, user_px=None) -> WorkingScale:
        """Full resolution as it is (:func:`~napari_glandseg.scale.resolve` without a
        model)."""
        from .scale import resolve

        return resolve(levels, None, file_px, user_px)

    def image_stats(self, levels, working) -> None:
        return None

    def __call__(self, levels, box, working=None, stats=None):
        y0, x0, y1, x1 = box
        classes = np.asarray(levels[0][y0:y1, x0:x1])
        return classes, (classes > 0).astype(np.float32)


@lru_cache(maxsize=4)
def _cached_model(name: str):
    from .models import load_model

    return load_model(name)


@dataclass
class ModelPredictor:
    """Segment a box with a model (by store name or checkpoint file, loaded once per worker)
    and :func:`napari_glandseg.inference.segment`."""

    model: str
    seg: object = None  # SegmentParams

    @property
    def card(self):
        return _cached_model(self.model).card

    @property
    def num_classes(self) -> int:
        return max(2, self.card.num_classes)

    @property
    def class_map(self) -> bool:
        """A class model: its classes are kept, its regions are the objects."""
        return self.card.num_classes > 1 and not self.card.boundary_class

    @property
    def class_names(self):
        names = list(self.card.class_names)
        return tuple(names if len(names) >= 2 else ["background", *names])

    def geometry(self, levels, file_px, user_px=None) -> WorkingScale:
        """The pyramid level and rescale inference reads the slide at
        (:func:`~napari_glandseg.scale.resolve`, the one owner of that choice; a slide is
        taken at the card's scale when nobody gives its own, never estimated)."""
        from .inference import SegmentParams
        from .scale import resolve

        seg = self.seg or SegmentParams()
        return resolve(levels, self.card, file_px, user_px, rescale=seg.rescale,
                       scale=seg.scale)

    def image_stats(self, levels, working):
        """The whole slide's stains and normalisation statistics, read once from a grid of
        tiles of the level the blocks are segmented on
        (:func:`~napari_glandseg.inference.image_stats`); None when the card uses
        neither stain normalisation nor an image-level normalisation and the slide is 8-bit
        (other dtypes need the whole slide's value range, preprocess.value_range)."""
        from .inference import SegmentParams, image_stats
        from .preprocess import IMAGE_LEVEL

        card, seg = self.card, self.seg or SegmentParams()
        if not ((card.stain_normalization and seg.stain_normalization)
                or getattr(card.normalization, "value", card.normalization) in IMAGE_LEVEL
                or np.dtype(levels[0].dtype) != np.uint8):
            return None
        return image_stats(levels, _cached_model(self.model), params=seg, working=working)

    def __call__(self, levels, box, working=None, stats=None):
        """The network's classes and foreground probability over ``box`` (pixels of
        ``working``'s level, the :class:`~napari_glandseg.scale.WorkingScale` of
        :meth:`geometry`, handed through to inference as it is), through the route from
        image to objects (:func:`napari_glandseg.pipeline.iter_objects`)."""
        from .pipeline import FileParams, objects_from_image

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

    def seg_params(self):
        """The inference settings, with probabilities (a block's table needs them)."""
        from dataclasses import replace

        from .inference import SegmentParams

        return replace(self.seg or SegmentParams(), return_probabilities=True)


def _fit(a: np.ndarray, hw) -> np.ndarray:
    """``a``, which must have shape ``hw``: a block segmented at another size than planned
    is an error, never cropped or padded into place."""
    if tuple(a.shape[:2]) != tuple(hw):
        raise RuntimeError(f"a block came back with shape {tuple(a.shape[:2])}, planned "
                           f"{tuple(hw)}: the plan and inference chose different levels")
    return a


# --------------------------------------------------------------------------------------------
# the plan of a slide


@dataclass
class SlidePlan:
    """Everything a worker needs to run one block of one slide (small and picklable).

    ``shape`` is the labels' ``(Y, X)`` at the segmentation's resolution (pyramid level
    ``level``, ``downsample`` full-resolution pixels per pixel); ``todo`` lists the blocks
    ``(iy, ix)`` with tissue; the others are left empty.
    """

    source: object
    name: str
    out: str
    shape: tuple
    level: int
    downsample: float
    pixel_size_um: float | None
    image_pixel_size_um: float | None
    params: SlideParams
    post: PostprocessParams
    predictor: Predictor
    grid: tuple
    todo: list
    n_levels: int
    class_names: tuple = ()
    tissue_fraction: float | None = None
    geojson: bool = True
    info: dict = field(default_factory=dict)
    #: the whole slide's stains / normalisation statistics (ModelPredictor.image_stats),
    #: shared by every block so that blocks are normalised alike
    image_stats: ImageStats | None = None
    #: the level and rescale the blocks are segmented at
    scale: WorkingScale | None = None

    @property
    def geojson_path(self) -> Path:
        return Path(self.out) / f"{self.name}_objects.geojson"

    @property
    def store(self) -> Path:
        return Path(self.out) / f"{self.name}.ome.zarr"

    @property
    def work(self) -> Path:
        return Path(self.out) / f"{self.name}.glandseg-work"

    @property
    def table_path(self) -> Path:
        return Path(self.out) / f"{self.name}_objects.csv"

    @property
    def done_marker(self) -> Path:
        return self.store / "glandseg_done.json"

    def core(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        b = self.params.block_size
        return (iy * b, ix * b, min(self.shape[0], (iy + 1) * b),
                min(self.shape[1], (ix + 1) * b))

    def padded(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = self.core(iy, ix)
        h = self.params.overlap
        return (max(0, y0 - h), max(0, x0 - h), min(self.shape[0], y1 + h),
                min(self.shape[1], x1 + h))

    def block_file(self, iy: int, ix: int) -> Path:
        return self.work / f"block_{iy}_{ix}.npz"

    def stats_file(self, iy: int, ix: int) -> Path:
        """Written last by a block: its existence marks the block finished."""
        return self.work / f"stats_{iy}_{ix}.npz"

    def blocks(self) -> list[tuple[int, int]]:
        return [(iy, ix) for iy in range(self.grid[0]) for ix in range(self.grid[1])]


def open_source(source):
    """The image levels of a path (opened once per process) or of an array / list."""
    if isinstance(source, str | Path):
        return _open_path(str(source))
    return list(source) if isinstance(source, list | tuple) else [source]


@lru_cache(maxsize=8)
def _open_path(path: str):
    if Path(path).is_dir() and path.rstrip("/").endswith(".zarr"):
        return _open_zarr(path)
    from .io import read_image

    img = read_image(path, as_labels=False)
    levels = img.data if img.multiscale else [img.data]
    return levels, img.pixel_size_um


def _open_zarr(path: str):
    """A zarr array, a group of levels ``0, 1, ...``, or an OME-Zarr image (NGFF
    multiscales; channel axis moved last, singleton t/z dropped) as lazy levels + um/px."""
    import dask.array as da
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise GlandsegError(f"{path}: not a zarr store ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Array):
        return [da.from_zarr(node)], None
    attrs = dict(node.attrs)
    ms = (attrs.get("ome") or attrs).get("multiscales")
    px = None
    if ms:
        axes = [a["name"] if isinstance(a, dict) else a for a in ms[0].get("axes", [])]
        levels = [da.from_zarr(node[d["path"]]) for d in ms[0]["datasets"]]
        if axes and len(axes) == levels[0].ndim:
            for name in ("t", "z"):
                if name in axes and levels[0].shape[axes.index(name)] == 1:
                    i = axes.index(name)
                    levels = [lv[(slice(None),) * i + (0,)] for lv in levels]
                    axes.pop(i)
            if "c" in axes and axes.index("c") != len(axes) - 1:
                levels = [da.moveaxis(lv, axes.index("c"), -1) for lv in levels]
            unit = next((a.get("unit") for a in ms[0]["axes"] if isinstance(a, dict)
                         and a.get("name") == "x"), None)
            scale = ms[0]["datasets"][0]["coordinateTransformations"][0].get("scale")
            if unit == "micrometer" and scale:
                px = float(scale[-1])
    else:
        keys = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
        if not keys:
            raise GlandsegError(f"{path}: a zarr group without image levels")
        levels = [da.from_zarr(node[k]) for k in keys]
    return levels, px


def plan_slide(source, out, predictor, params: SlideParams | None = None,
               post: PostprocessParams | dict | None = None, name: str | None = None,
               pixel_size_um: float | None = None, overwrite: bool = False) -> SlidePlan:
    """Plan a slide: output geometry, block grid, tissue mask, blocks to run.

    ``source`` is a file path (read with :func:`napari_glandseg.io.read_image`) or an
    array / multiscale list; ``pixel_size_um`` is its um/px when its file does not say it.
    The level and scale are :func:`napari_glandseg.scale.working_scale`'s, the ones
    inference reads at. Raises :class:`GlandsegError` when the outputs exist and
    ``overwrite`` is False (a half-finished run is resumed instead).
    """
    from .pipeline import connected_components, from_entry

    params = params or SlideParams()
    if isinstance(post, dict):
        post = from_entry(post)
    post = post or connected_components()
    file_px = None
    if isinstance(source, str | Path):
        levels, file_px = open_source(source)
        name = name or Path(source).stem
        source = str(source)
    else:
        levels = open_source(source)
        name = name or "image"
    out = Path(out)
    plan_store = out / f"{name}.ome.zarr"
    if plan_store.exists() and overwrite:
        shutil.rmtree(plan_store)
        shutil.rmtree(out / f"{name}.glandseg-work", ignore_errors=True)
    elif (plan_store / "glandseg_done.json").exists():
        raise OutputExistsError(plan_store)
    # the level and scale inference reads: one choice (scale.resolve), handed to every block
    ws = predictor.geometry(levels, file_px, pixel_size_um)
    level, ds, out_px = ws.level, ws.downsample, ws.output_pixel_size_um
    shape = ws.level_shape(levels[0].shape, levels[level].shape)
    b = params.block_size
    grid = (math.ceil(shape[0] / b), math.ceil(shape[1] / b))
    n_levels = 1
    while (max(shape) >> (n_levels - 1)) > 256 and (b >> n_levels) >= 16 and n_levels < 8:
        n_levels += 1
    plan = SlidePlan(source=source, name=name, out=str(out), shape=shape, level=level,
                     downsample=ds, pixel_size_um=out_px, image_pixel_size_um=ws.pixel_size_um,
                     params=params, post=post, predictor=predictor, grid=grid, todo=[],
                     n_levels=n_levels, class_names=tuple(predictor.class_names), scale=ws)
    colour = levels[0].ndim == 3 and levels[0].shape[-1] in (3, 4)
    tm = None
    if params.tissue and colour:
        t0 = time.perf_counter()
        import dask

        # read in this thread: inside a dask.distributed task (the Slides widget, --workers)
        # the lazy pyramid cannot be sent through the scheduler
        with dask.config.set(scheduler="synchronous"):
            tm = tissue_mask(levels, params.tissue_side)
        plan.tissue_fraction = tm.fraction
        plan.info["tissue_seconds"] = time.perf_counter() - t0
    elif params.tissue:
        plan.info["tissue"] = "off: not a colour image"
    for iy, ix in plan.blocks():
        if tm is None or tm.any_in(tuple(v * ds for v in plan.core(iy, ix))):
            plan.todo.append((iy, ix))
    if plan.todo:
        import dask

        with dask.config.set(scheduler="synchronous"):  # as the tissue mask above
            plan.image_stats = predictor.image_stats(levels, ws)
    _check_resume(plan)
    return plan


def _check_resume(plan: SlidePlan) -> None:
    """Record the settings in the work folder; a rerun with other settings must not mix its
    blocks with the old ones."""
    key = {"shape": list(plan.shape), "level": plan.level,
           "block_size": plan.params.block_size, "overlap": plan.params.overlap,
           "post": {k: str(v) for k, v in asdict(plan.post).items()},
           "predictor": repr(plan.predictor) if isinstance(plan.predictor, ModelPredictor)
           else type(plan.predictor).__name__}
    f = plan.work / "settings.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != key:
            changed = sorted(k for k in key if old.get(k) != key[k])
            raise GlandsegError(f"{plan.work}: an unfinished run with other settings "
                                f"({', '.join(changed)}); pass overwrite to start again")
        return
    plan.work.mkdir(parents=True, exist_ok=True)
    with atomic_path(f, ".json") as tmp:
        Path(tmp).write_text(json.dumps(key))


# --------------------------------------------------------------------------------------------
# stage 1: one block


def run_block(plan: SlidePlan, iy: int, ix: int) -> bool:
    """Segment and post-process block ``(iy, ix)`` over its padded box; keep its local labels
    and per-object sums (core pixels only). Returns False when a previous run finished it."""
    marker = plan.stats_file(iy, ix)
    if marker.exists():
        return False
    import dask

    box = plan.padded(iy, ix)
    src = open_source(plan.source)
    levels = src[0] if isinstance(plan.source, str) else src
    pred = plan.predictor
    # a lazy slide's pixels are read in this thread: inside a dask.distributed task, dask's
    # default would send every small read through the scheduler (measured 4x slower)
    with dask.config.set(scheduler="synchronous"):
        classes, prob = pred(levels, box, plan.scale, plan.image_stats)
    # the route's post-processing step (pipeline.objects_of), as a whole-image run's
    if classes.any():
        from .pipeline import objects_of

        out = objects_of(classes, plan.post, class_map=pred.class_map)
        labels, classes = out.labels, (classes if out.classes is None else out.classes)
    else:
        labels = np.zeros(classes.shape, np.int32)
    dtype = np.uint16 if labels.max() < 2**16 else np.uint32
    with atomic_path(plan.block_file(iy, ix), ".npz") as tmp:
        np.savez_compressed(tmp, labels=labels.astype(dtype))
    stats = _block_stats(plan, iy, ix, labels, classes, prob)
    with atomic_path(marker, ".npz") as tmp:
        np.savez(tmp, **stats)
    return True


def _block_stats(plan, iy, ix, labels, classes, prob) -> dict:
    """Per local id: core pixel count, sums of y, x and probability, class histogram, bbox."""
    py0, px0 = plan.padded(iy, ix)[:2]
    y0, x0, y1, x1 = plan.core(iy, ix)
    core = labels[y0 - py0: y1 - py0, x0 - px0: x1 - px0]
    n = int(labels.max()) + 1
    flat = core.ravel().astype(np.int64)
    yy, xx = np.indices(core.shape)
    count = np.bincount(flat, minlength=n)
    sum_y = np.bincount(flat, weights=(yy + y0).ravel(), minlength=n)
    sum_x = np.bincount(flat, weights=(xx + x0).ravel(), minlength=n)
    cprob = prob[y0 - py0: y1 - py0, x0 - px0: x1 - px0].ravel()
    sum_p = np.bincount(flat, weights=cprob, minlength=n)
    k = len(plan.class_names) or 2
    ccls = np.minimum(classes[y0 - py0: y1 - py0, x0 - px0: x1 - px0].ravel(), k - 1)
    hist = np.bincount(flat * k + ccls, minlength=n * k).reshape(n, k)
    bbox = np.zeros((n, 4), np.int64)
    from scipy import ndimage as ndi

    for i, sl in enumerate(ndi.find_objects(core), 1):
        if sl is not None:
            bbox[i] = (sl[0].start + y0, sl[1].start + x0, sl[0].stop + y0, sl[1].stop + x0)
    return {"count": count, "sum_y": sum_y, "sum_x": sum_x, "sum_p": sum_p, "hist": hist,
            "bbox": bbox}


def _load_labels(plan, iy, ix) -> np.ndarray | None:
    f = plan.block_file(iy, ix)
    if not f.exists():
        return None
    with np.load(f) as z:
        return z["labels"]


# --------------------------------------------------------------------------------------------
# stage 2: links across faces


#: Forward neighbours of a block: right, down, down-right, down-left (each pair once).
_NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))


def link_block(plan: SlidePlan, iy: int, ix: int) -> list[tuple]:
    """Links ``((iy, ix, id), (jy, jx, id))`` between block ``(iy, ix)``'s objects and its
    forward neighbours' (same object in both: IoU >= join_iou in the band on their face)."""
    a = _load_labels(plan, iy, ix)
    if a is None:
        return []
    links = []
    h = max(1, plan.params.overlap // 2)
    ay0, ax0 = plan.padded(iy, ix)[:2]
    for dy, dx in _NEIGHBOURS:
        jy, jx = iy + dy, ix + dx
        if not (0 <= jy < plan.grid[0] and 0 <= jx < plan.grid[1]):
            continue
        b = _load_labels(plan, jy, jx)
        if b is None:
            continue
        by0, bx0 = plan.padded(jy, jx)[:2]
        # the band: h pixels either side of the shared face (or corner)
        cy0, cx0, cy1, cx1 = plan.core(iy, ix)
        ny0, nx0 = plan.core(jy, jx)[:2]
        if dy:
            ys = (ny0 - h, ny0 + h)
        else:
            ys = (max(cy0, ay0, by0), min(cy1, ay0 + a.shape[0], by0 + b.shape[0]))
        if dx == 1:
            xs = (nx0 - h, nx0 + h)
        elif dx == -1:
            xs = (cx0 - h, cx0 + h)
        else:
            xs = (max(cx0, ax0, bx0), min(cx1, ax0 + a.shape[1], bx0 + b.shape[1]))
        ys = (max(ys[0], ay0, by0), min(ys[1], ay0 + a.shape[0], by0 + b.shape[0]))
        xs = (max(xs[0], ax0, bx0), min(xs[1], ax0 + a.shape[1], bx0 + b.shape[1]))
        if ys[1] <= ys[0] or xs[1] <= xs[0]:
            continue
        sa = a[ys[0] - ay0: ys[1] - ay0, xs[0] - ax0: xs[1] - ax0].ravel()
        sb = b[ys[0] - by0: ys[1] - by0, xs[0] - bx0: xs[1] - bx0].ravel()
        for ia, ib in _matches(sa, sb, plan.params.join_iou):
            links.append(((iy, ix, int(ia)), (jy, jx, int(ib))))
    return links


def _matches(sa: np.ndarray, sb: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Pairs of ids of two label strips covering the same pixels whose IoU >= ``min_iou``."""
    both = (sa > 0) & (sb > 0)
    if not both.any():
        return []
    ida, na = np.unique(sa[sa > 0], return_counts=True)
    idb, nb = np.unique(sb[sb > 0], return_counts=True)
    pairs, inter = np.unique(np.stack([sa[both], sb[both]]).astype(np.int64), axis=1,
                             return_counts=True)
    area_a = na[np.searchsorted(ida, pairs[0])]
    area_b = nb[np.searchsorted(idb, pairs[1])]
    iou = inter / (area_a + area_b - inter)
    keep = iou >= min_iou
    return list(zip(pairs[0][keep].tolist(), pairs[1][keep].tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# stage 3: global ids


def resolve(plan: SlidePlan, links: list) -> dict:
    """Join linked objects into global ids 1..N (connected components of the link graph).

    Writes ``luts.npz`` (per block: local id -> global id) into the work folder and returns
    the per-object sums (area, centroid, probability, class histogram, bbox) by global id.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets, stats, start = {}, {}, 0
    for iy, ix in plan.blocks():
        f = plan.stats_file(iy, ix)
        if not f.exists():
            continue
        with np.load(f) as z:
            stats[(iy, ix)] = {k: z[k] for k in z.files}
        offsets[(iy, ix)] = start
        start += len(stats[(iy, ix)]["count"])
    n = start
    rows = [offsets[a[:2]] + a[2] for a, b in links if a[:2] in offsets and b[:2] in offsets]
    cols = [offsets[b[:2]] + b[2] for a, b in links if a[:2] in offsets and b[:2] in offsets]
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    k = len(plan.class_names) or 2
    count = np.zeros(n, np.int64)
    sums = np.zeros((n, 3))
    hist = np.zeros((n, k), np.int64)
    bbox = np.tile(np.array([np.iinfo(np.int64).max] * 2 + [-1, -1]), (n, 1))
    for key, s in stats.items():
        sl = slice(offsets[key], offsets[key] + len(s["count"]))
        count[sl] = s["count"]
        sums[sl] = np.stack([s["sum_y"], s["sum_x"], s["sum_p"]], 1)
        hist[sl] = s["hist"]
        bbox[sl] = np.where(s["count"][:, None] > 0, s["bbox"], bbox[sl])
        count[offsets[key]] = 0  # id 0 of every block is background
    # component sums; components with no core pixel (seen only in halos) get no id
    n_comp = int(comp.max()) + 1 if n else 0
    c_count = np.bincount(comp, weights=count, minlength=n_comp)
    keep = np.flatnonzero(c_count > 0)
    # number components in order of first appearance (block order), as a whole-image run would
    first = np.full(n_comp, n, np.int64)
    np.minimum.at(first, comp[count > 0], np.flatnonzero(count > 0))
    keep = keep[np.argsort(first[keep], kind="stable")]
    global_id = np.zeros(n_comp, np.int64)
    global_id[keep] = np.arange(1, len(keep) + 1)
    node_gid = global_id[comp] if n else np.zeros(0, np.int64)
    luts = {f"{iy}_{ix}": node_gid[offsets[(iy, ix)]: offsets[(iy, ix)] +
                                    len(stats[(iy, ix)]["count"])].copy()
            for iy, ix in stats}
    for lut in luts.values():
        if len(lut):
            lut[0] = 0
    with atomic_path(plan.work / "luts.npz", ".npz") as tmp:
        np.savez(tmp, **luts)
    g = node_gid
    m = len(keep) + 1
    out = {"area": np.bincount(g, weights=count, minlength=m)[1:]}
    for j, key in enumerate(("sum_y", "sum_x", "sum_p")):
        out[key] = np.bincount(g, weights=sums[:, j] * (count > 0), minlength=m)[1:]
    out["hist"] = np.zeros((m, k))
    np.add.at(out["hist"], g, hist)
    out["hist"] = out["hist"][1:]
    bb = np.tile(np.array([np.iinfo(np.int64).max] * 2 + [-1, -1]), (m, 1))
    live = count > 0
    np.minimum.at(bb[:, 0], g[live], bbox[live, 0])
    np.minimum.at(bb[:, 1], g[live], bbox[live, 1])
    np.maximum.at(bb[:, 2], g[live], bbox[live, 2])
    np.maximum.at(bb[:, 3], g[live], bbox[live, 3])
    out["bbox"] = bb[1:]
    # an object's class: its most frequent non-background class
    h = out["hist"]
    out["class_index"] = (h[:, 1:].argmax(1) + 1 if h.shape[1] > 1
                          else np.zeros(len(h), int)).astype(int)
    return out


# --------------------------------------------------------------------------------------------
# stage 4: the OME-Zarr labels, block by block


def _level_chunk(plan: SlidePlan, lv: int) -> int:
    return math.gcd(plan.params.block_size >> lv, plan.params.chunk_size)


def create_store(plan: SlidePlan) -> None:
    """Create ``name.ome.zarr`` with empty label arrays for every pyramid level and the NGFF
    metadata (written by ome-zarr-py: multiscales with um scales, image-label)."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

    fmt = FormatV05()
    root = zarr.open_group(str(plan.store), mode="a", zarr_format=3)
    labels_grp = root.require_group("labels")
    grp = labels_grp.require_group(LABEL_NAME)
    px = plan.pixel_size_um or 1.0
    datasets = []
    for lv in range(plan.n_levels):
        shape = tuple(math.ceil(s / 2**lv) for s in plan.shape)
        c = _level_chunk(plan, lv)
        if str(lv) not in grp:
            grp.create_array(str(lv), shape=shape, chunks=(c, c), dtype="uint32",
                             fill_value=0, dimension_names=("y", "x"))
        datasets.append({"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": [px * 2**lv, px * 2**lv]}]})
    unit = "micrometer" if plan.pixel_size_um else None
    axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
    write_multiscales_metadata(grp, datasets, fmt=fmt, axes=axes, name=LABEL_NAME)
    if "labels" not in (labels_grp.attrs.get("ome") or {}):
        write_label_metadata(labels_grp, LABEL_NAME, fmt=fmt,
                             source={"image": "../../"})
    meta = {"source": str(plan.source) if isinstance(plan.source, str) else None,
            "pyramid_level": plan.level, "downsample": plan.downsample,
            "pixel_size_um": plan.pixel_size_um, "class_names": list(plan.class_names),
            "block_size": plan.params.block_size, "overlap": plan.params.overlap}
    root.attrs["glandseg"] = meta


def write_block(plan: SlidePlan, iy: int, ix: int) -> None:
    """Write block ``(iy, ix)``'s core, with global ids, into every pyramid level."""
    import zarr

    lab = _load_labels(plan, iy, ix)
    if lab is None:
        return  # no tissue: the store's fill value (0) stands
    with np.load(plan.work / "luts.npz") as z:
        lut = z[f"{iy}_{ix}"].astype(np.uint32)
    py0, px0 = plan.padded(iy, ix)[:2]
    y0, x0, y1, x1 = plan.core(iy, ix)
    core = lut[lab[y0 - py0: y1 - py0, x0 - px0: x1 - px0]]
    grp = zarr.open_group(str(plan.store / "labels" / LABEL_NAME), mode="r+")
    for lv in range(plan.n_levels):
        s = 2**lv
        grp[str(lv)][y0 // s: math.ceil(y1 / s), x0 // s: math.ceil(x1 / s)] = core[::s, ::s]


# --------------------------------------------------------------------------------------------
# stage 5: measurements and the table


def measure_block(plan: SlidePlan, iy: int, ix: int, objects: dict) -> dict:
    """Perimeters (px) and GeoJSON features of the objects whose bounding box starts in this
    block's core, from the written labels over the union of their bounding boxes.

    Returns ``{"perimeter": {id: px}, "features": [...]}`` (QuPath GeoJSON features in
    level-0 pixels, through :func:`napari_glandseg.geojson.labels_to_geojson`).
    """
    from skimage.measure import regionprops_table

    y0, x0, y1, x1 = plan.core(iy, ix)
    bb = objects["bbox"]
    own = np.flatnonzero((bb[:, 0] >= y0) & (bb[:, 0] < y1) & (bb[:, 1] >= x0)
                         & (bb[:, 1] < x1))
    if not len(own):
        return {"perimeter": {}, "features": []}
    import zarr

    arr = zarr.open_array(str(plan.store / "labels" / LABEL_NAME / "0"), mode="r")
    r0, c0 = int(bb[own, 0].min()), int(bb[own, 1].min())
    r1, c1 = int(bb[own, 2].max()), int(bb[own, 3].max())
    crop = np.asarray(arr[r0:r1, c0:c1]).astype(np.int64)
    crop = np.where(np.isin(crop, own + 1), crop, 0)
    t = regionprops_table(crop, properties=("label", "perimeter"))
    perimeter = dict(zip(t["label"].tolist(), t["perimeter"].tolist(), strict=True))
    features = []
    if plan.geojson:
        from .geojson import labels_to_geojson

        names = list(plan.class_names) or ["background", "foreground"]
        cls = {int(i) + 1: int(objects["class_index"][i]) for i in own}
        features = labels_to_geojson(
            crop, classes=cls, class_names=names, pixel_size_um=plan.image_pixel_size_um,
            offset=(r0 * plan.downsample, c0 * plan.downsample), downsample=plan.downsample,
            object_type="detection")["features"]
    return {"perimeter": perimeter, "features": features}


def object_table(plan: SlidePlan, objects: dict, perimeters: dict):
    """One row per object (see :data:`TABLE_COLUMNS`); lengths in um when the scale is known."""
    import pandas as pd

    area = objects["area"]
    n = len(area)
    px = plan.pixel_size_um or 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = objects["sum_y"] / area
        cx = objects["sum_x"] / area
        mp = objects["sum_p"] / area
    names = list(plan.class_names) or ["background", "foreground"]
    cls = [names[i] for i in objects["class_index"]]
    per = np.array([perimeters.get(i, np.nan) for i in range(1, n + 1)], float)
    bb = objects["bbox"]
    df = pd.DataFrame({
        "label": np.arange(1, n + 1), "class": cls, "area_um2": area * px**2,
        "perimeter_um": per * px, "centroid_y_um": (cy + 0.5) * px,
        "centroid_x_um": (cx + 0.5) * px, "mean_probability": mp, "area_px": area.astype(int),
        "bbox_y0": bb[:, 0], "bbox_x0": bb[:, 1], "bbox_y1": bb[:, 2], "bbox_x1": bb[:, 3]})
    return df[list(TABLE_COLUMNS)]


@dataclass
class SlideResult:
    """What :func:`segment_slide` returns."""

    name: str
    store: Path
    table: Path
    n_objects: int
    labels_shape: tuple
    pixel_size_um: float | None
    blocks: int
    blocks_run: int
    blocks_skipped_tissue: int
    seconds: float
    geojson: Path | None = None
    info: dict = field(default_factory=dict)


def finish_slide(plan: SlidePlan, objects: dict, measures: list, blocks_run: int,
                 seconds: float, keep_work: bool = False) -> SlideResult:
    """Write the table (and the GeoJSON), mark the store finished, drop the work folder.
    ``measures`` are :func:`measure_block`'s results."""
    from .postprocessing import write_csv

    perimeters = {k: v for m in measures for k, v in m["perimeter"].items()}
    table = object_table(plan, objects, perimeters)
    write_csv(table, plan.table_path, overwrite=True)
    geojson = None
    if plan.geojson:
        from .geojson import write_geojson

        geojson = plan.geojson_path
        write_geojson(geojson, {"type": "FeatureCollection",
                                "features": [f for m in measures for f in m["features"]]},
                      overwrite=True)
    n_blocks = plan.grid[0] * plan.grid[1]
    result = SlideResult(
        name=plan.name, store=plan.store, table=plan.table_path, n_objects=len(table),
        labels_shape=plan.shape, pixel_size_um=plan.pixel_size_um, blocks=n_blocks,
        blocks_run=blocks_run, blocks_skipped_tissue=n_blocks - len(plan.todo),
        seconds=seconds, geojson=geojson,
        info={**plan.info, "tissue_fraction": plan.tissue_fraction})
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    with atomic_path(plan.done_marker, ".json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, default=str))
    if not keep_work:
        shutil.rmtree(plan.work, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# one slide in this process


def iter_segment_slide(
    source,
    out,
    model: str | None = None,
    *,
    predictor=None,
    params: SlideParams | None = None,
    seg=None,
    post: PostprocessParams | dict | None = None,
    name: str | None = None,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    keep_work: bool = False,
) -> Generator[Progress, None, SlideResult]:
    """Segment one slide block by block in this process, yielding Progress per block.

    Parameters
    ----------
    source : path or array-like or list
        A slide/image file, or an array (multiscale list) already open.
    out : path
        Output folder: ``name.ome.zarr``, ``name_objects.csv`` go there.
    model : str, optional
        Store name or checkpoint (or give ``predictor``).
    predictor : Predictor, optional
        ``predictor(levels, box, working, stats) -> (classes, foreground probability)``
        with its ``geometry`` and ``image_stats`` (:class:`Predictor`), e.g.
        :class:`ClassMapPredictor`.
    seg : SegmentParams, optional
        Inference settings for ``model``.
    post : PostprocessParams or dict, optional
        The model card's post-processing by default; a dict gives settings over the card's
        (:func:`napari_glandseg.pipeline.postprocess_for`).
    pixel_size_um : float, optional
        um/px of a source whose file does not say it (an array, a PNG); a file's own wins.

    A rerun after an interruption skips the blocks already finished.
    """
    t0 = time.perf_counter()
    predictor, post = _predictor_and_post(model, predictor, seg, post)
    plan = plan_slide(source, out, predictor, params, post, name=name,
                      pixel_size_um=pixel_size_um, overwrite=overwrite)
    total = len(plan.todo) * 2 + len(plan.blocks()) + 1
    done, ran = 0, 0
    for iy, ix in plan.todo:
        ran += run_block(plan, iy, ix)
        done += 1
        yield Progress(done, total, f"{plan.name}: block {done}/{len(plan.todo)}",
                       time.perf_counter() - t0)
    links = [lk for iy, ix in plan.todo for lk in link_block(plan, iy, ix)]
    objects = resolve(plan, links)
    create_store(plan)
    for iy, ix in plan.todo:
        write_block(plan, iy, ix)
        done += 1
        yield Progress(done, total, f"{plan.name}: writing", time.perf_counter() - t0)
    measures = [measure_block(plan, iy, ix, objects) for iy, ix in plan.blocks()]
    done += len(measures)
    result = finish_slide(plan, objects, measures, ran, time.perf_counter() - t0, keep_work)
    yield Progress(total, total, f"{plan.name}: {result.n_objects} objects",
                   time.perf_counter() - t0)
    return result


def segment_slide(source, out, model: str | None = None, **kwargs) -> SlideResult:
    """Blocking twin of :func:`iter_segment_slide`."""
    from .progress import run_to_end

    return run_to_end(iter_segment_slide(source, out, model, **kwargs))


def _predictor_and_post(model, predictor, seg, post):
    """The predictor, and the post-processing of its objects: a model's card's with the
    caller's settings over it (:func:`napari_glandseg.pipeline.postprocess_for`, as every
    route has it); connected components when nothing gives any."""
    from .pipeline import connected_components, postprocess_for

    card = None
    if predictor is None:
        if model is None:
            raise GlandsegError("give a model (store name or file) or a predictor")
        predictor = ModelPredictor(str(model), seg)
        card = predictor.card
    return predictor, postprocess_for(card, "card" if post is None else post) or \
        connected_components()


# --------------------------------------------------------------------------------------------
# reading the result back


def read_labels(store, level: int = 0):
    """The labels of a finished ``.ome.zarr`` as a lazy multiscale list (dask arrays, full
    resolution first) and their um/px (None when unknown)."""
    import dask.array as da
    import zarr

    store = Path(store)
    try:
        grp = zarr.open_group(str(store / "labels" / LABEL_NAME), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise GlandsegError(f"{store}: no glandseg labels (labels/{LABEL_NAME})") from None
    ms = grp.attrs["ome"]["multiscales"][0]
    levels = [da.from_zarr(grp[d["path"]]) for d in ms["datasets"]][level:]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    unit = ms.get("axes", [{}])[-1].get("unit")
    return levels, (float(scale) if unit == "micrometer" else None)


def labels_layer_data(store) -> tuple:
    """A napari LayerDataTuple for a finished store (multiscale Labels, scale in um)."""
    levels, px = read_labels(store)
    kwargs = {"name": f"{Path(store).name.removesuffix('.ome.zarr')} [labels]",
              "multiscale": True, "metadata": {"source_path": str(store)}}
    if px:
        kwargs["scale"] = (px, px)
        kwargs["metadata"]["pixel_size_um"] = px
    return (levels, kwargs, "labels")


__all__ = [
    "ClassMapPredictor", "ModelPredictor", "SlideParams", "SlidePlan", "SlideResult",
    "TissueMask", "iter_segment_slide", "labels_layer_data", "plan_slide", "read_labels",
    "segment_slide", "tissue_mask",
]
