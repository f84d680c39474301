"""The plan of a slide: settings (:class:`SlideParams`), what a run does to every slide
(:class:`SlideJob`), and the output geometry, block grid and blocks with tissue
(:class:`SlidePlan`, made by :func:`plan_slide`)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import atomic_path
from .._types import Array, Levels, PathType, as_levels
from ..errors import GlandsegError, OutputExistsError
from ..postprocessing import PostprocessParams
from ..scale import WorkingScale
from .predictors import ModelPredictor, Predictor
from .tissue import tissue_mask

if TYPE_CHECKING:
    from ..inference import ImageStats, SegmentParams


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


@dataclass
class SlidePlan:
    """Everything a worker needs to run one block of one slide (small and picklable).

    ``shape`` is the labels' ``(Y, X)`` at the segmentation's resolution (pyramid level
    ``level``, ``downsample`` full-resolution pixels per pixel); ``todo`` lists the blocks
    ``(iy, ix)`` with tissue; the others are left empty.
    """

    source: str | Levels
    name: str
    out: str
    shape: tuple
    level: int
    downsample: float
    pixel_size_um: float | None
    image_pixel_size_um: float | None
    job: SlideJob
    #: the level and rescale the blocks are segmented at
    scale: WorkingScale
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
        b = self.job.params.block_size
        return (iy * b, ix * b, min(self.shape[0], (iy + 1) * b),
                min(self.shape[1], (ix + 1) * b))

    def padded(self, iy: int, ix: int) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = self.core(iy, ix)
        h = self.job.params.overlap
        return (max(0, y0 - h), max(0, x0 - h), min(self.shape[0], y1 + h),
                min(self.shape[1], x1 + h))

    def block_file(self, iy: int, ix: int) -> Path:
        return self.work / f"block_{iy}_{ix}.npz"

    def stats_file(self, iy: int, ix: int) -> Path:
        """Written last by a block: its existence marks the block finished."""
        return self.work / f"stats_{iy}_{ix}.npz"

    def blocks(self) -> list[tuple[int, int]]:
        return [(iy, ix) for iy in range(self.grid[0]) for ix in range(self.grid[1])]


def open_source(source: PathType | Levels) -> tuple[list[Array], float | None]:
    """The image levels (full resolution first) and um/px (None when unknown) of a path
    (opened once per process), or of an array / multiscale list (um/px unknown)."""
    if isinstance(source, str | os.PathLike):
        return _open_path(str(source))
    return as_levels(source), None


@lru_cache(maxsize=8)
def _open_path(path: str) -> tuple[list[Array], float | None]:
    if Path(path).is_dir() and path.rstrip("/").endswith(".zarr"):
        return _open_zarr(path)
    from ..io import read_image

    img = read_image(path, as_labels=False)
    data: Any = img.data  # a multiscale list, or one array
    return as_levels(data), img.pixel_size_um


def _open_zarr(path: str) -> tuple[list[Array], float | None]:
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
    attrs: dict[str, Any] = dict(node.attrs)
    ms: Any = (attrs.get("ome") or attrs).get("multiscales")
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


@dataclass
class SlideJob:
    """What a run does to every slide it is given, one slide (:func:`iter_segment_slide`)
    or a cohort (:func:`~napari_glandseg.slides.cohort.iter_segment_cohort`): small and
    picklable, planned per slide by :func:`plan_slide`.

    Attributes
    ----------
    predictor : Predictor
        What turns a block into classes and a foreground probability.
    post : PostprocessParams
        The post-processing of a block's classes into objects.
    params : SlideParams
        Blocks, overlap, tissue detection.
    pixel_size_um : float or None
        um/px of a slide whose file does not say it (a file's own wins).
    overwrite : bool
        Replace a finished slide's outputs (otherwise planning it raises
        :class:`~napari_glandseg.errors.OutputExistsError`; an unfinished one is resumed).
    """

    predictor: Predictor
    post: PostprocessParams
    params: SlideParams = field(default_factory=SlideParams)
    pixel_size_um: float | None = None
    overwrite: bool = False

    @classmethod
    def make(cls, model: str | None = None, *, predictor: Predictor | None = None,
             seg: SegmentParams | None = None, post: PostprocessParams | dict | None = None,
             params: SlideParams | None = None, pixel_size_um: float | None = None,
             overwrite: bool = False) -> SlideJob:
        """The job of a model (store name or checkpoint, with inference settings ``seg``)
        or of a ``predictor``. Its objects' post-processing is the model card's with
        ``post`` over it (:func:`napari_glandseg.pipeline.postprocess_for`, as every route
        has it; a dict gives settings over the card's); connected components when nothing
        gives any."""
        from ..pipeline import connected_components, postprocess_for

        card = None
        if predictor is None:
            if model is None:
                raise GlandsegError("give a model (store name or file) or a predictor")
            mp = ModelPredictor(str(model), seg)
            card, predictor = mp.card, mp
        chosen = postprocess_for(card, "card" if post is None else post)
        return cls(predictor=predictor, post=chosen or connected_components(),
                   params=params or SlideParams(), pixel_size_um=pixel_size_um,
                   overwrite=overwrite)


def plan_slide(source: PathType | Levels, out: PathType, job: SlideJob,
               name: str | None = None) -> SlidePlan:
    """Plan a slide: output geometry, block grid, tissue mask, blocks to run.

    ``source`` is a file path (read with :func:`napari_glandseg.io.read_image`) or an
    array / multiscale list; ``job.pixel_size_um`` is its um/px when its file does not say
    it. The level and scale are the predictor's
    (:func:`napari_glandseg.scale.resolve`), the ones inference reads at. Raises
    :class:`~napari_glandseg.errors.OutputExistsError` when the outputs exist and
    ``job.overwrite`` is False (a half-finished run is resumed instead).
    """
    params, predictor = job.params, job.predictor
    levels, file_px = open_source(source)
    if isinstance(source, str | os.PathLike):
        name = name or Path(source).stem
        source = str(source)
    else:
        name = name or "image"
    out = Path(out)
    plan_store = out / f"{name}.ome.zarr"
    if plan_store.exists() and job.overwrite:
        shutil.rmtree(plan_store)
        shutil.rmtree(out / f"{name}.glandseg-work", ignore_errors=True)
    elif (plan_store / "glandseg_done.json").exists():
        raise OutputExistsError(plan_store)
    # the level and scale inference reads: one choice (scale.resolve), handed to every block
    ws = predictor.geometry(levels, file_px, job.pixel_size_um)
    level, ds, out_px = ws.level, ws.downsample, ws.output_pixel_size_um
    shape = ws.level_shape(levels[0].shape, levels[level].shape)
    b = params.block_size
    grid = (math.ceil(shape[0] / b), math.ceil(shape[1] / b))
    n_levels = 1
    while (max(shape) >> (n_levels - 1)) > 256 and (b >> n_levels) >= 16 and n_levels < 8:
        n_levels += 1
    plan = SlidePlan(source=source, name=name, out=str(out), shape=shape, level=level,
                     downsample=ds, pixel_size_um=out_px, image_pixel_size_um=ws.pixel_size_um,
                     job=job, grid=grid, todo=[], n_levels=n_levels,
                     class_names=tuple(predictor.class_names), scale=ws)
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
        y0, x0, y1, x1 = plan.core(iy, ix)
        if tm is None or tm.any_in((y0 * ds, x0 * ds, y1 * ds, x1 * ds)):
            plan.todo.append((iy, ix))
    if plan.todo:
        import dask

        with dask.config.set(scheduler="synchronous"):  # as the tissue mask above
            plan.image_stats = predictor.image_stats(levels, ws)
            looks = predictor.appearance(levels)
        if looks:
            plan.info["appearance"] = looks
    _check_resume(plan)
    return plan


def _check_resume(plan: SlidePlan) -> None:
    """Record the settings in the work folder; a rerun with other settings must not mix its
    blocks with the old ones."""
    key = {"shape": list(plan.shape), "level": plan.level,
           "block_size": plan.job.params.block_size, "overlap": plan.job.params.overlap,
           "post": {k: str(v) for k, v in asdict(plan.job.post).items()},
           "predictor": plan.job.predictor.identity}
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
