"""One per-file pipeline: read -> segment -> post-process -> write (Qt-free).

The command line's ``glandseg segment`` runs it for every file, and the Segment widget can run
it on a layer's data (``out_dir=None``: nothing is written, the result comes back). There is
one copy of each step, so a file gives the same labels whichever way it is segmented.

- **read**: :func:`napari_glandseg.io.read_image`; a file that does not state its pixel size
  takes ``FileParams.pixel_size_um`` (``--pixel-size`` for PNG/JPEG).
- **segment**: :func:`napari_glandseg.inference.iter_segment` (window by window; a slide's
  result goes into a zarr store, beside the outputs when writing).
- **post-process**: the model card's settings with any overrides (:func:`postprocess_for`),
  always applied when the card or the caller gives some: instance labels for binary and
  interior/boundary models (:func:`~napari_glandseg.postprocessing.postprocess`), a cleaned
  class map for class models (:func:`~napari_glandseg.postprocessing.clean_class_map`). A
  large result is post-processed window by window, so memory stays bounded.
- **write**: probabilities, the objects CSV and any extra writers first, the labels last; each
  file is written atomically with the umask's permissions, so an existing labels file always
  means a finished file (a rerun skips it) and a crash or full disk leaves no truncated file.

Segment-then-post-process is :func:`iter_objects` (blocking twin :func:`objects_from_image`):
the one route from pixels to objects, which the file pipeline, the Segment widget, training's
validation (:func:`napari_glandseg.training.iter_validation_rows`), tuning
(:func:`napari_glandseg.tune.iter_tune`) and slides' blocks (:func:`napari_glandseg.slides.
run_block`) all run; its post-processing step alone is :func:`objects_of` (the Post-process
widget, tuning's candidates), with the settings :func:`postprocess_for` derives from the card.

:func:`iter_segment_file` is the generator (yields :class:`~napari_glandseg.progress.Progress`,
returns a :class:`FileResult`); :func:`segment_file` is its blocking twin.
:func:`iter_segment_files` runs a batch that goes on past a bad file and reports each failure.

Examples
--------
>>> import numpy as np, tempfile
>>> from napari_glandseg.models import ModelCard, Model, build_model
>>> card = ModelCard(name="demo", architecture="base_cnn", in_channels=3, num_classes=1,
...                  arch_kwargs={"widths": [4, 8]}, postprocess={"min_size": 5})
>>> model = Model(build_model("base_cnn", 3, 1, widths=[4, 8]).eval(), card)
>>> res = segment_file(np.zeros((64, 80, 3), np.uint8), model,
...                    FileParams(segment=SegmentParams(tile_size=64)))
>>> res.labels.shape, res.postprocess.min_size
((64, 80), 5)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ._types import Array, Box, Levels, MutableArray, PathType, as_levels
from .enums import Split
from .errors import GlandsegError
from .inference import SegmentParams, SegmentResult, iter_segment
from .postprocessing import (
    PostprocessParams,
    clean_class_map,
    iter_postprocess_windows,
    object_table,
    postprocess,
    write_csv,
)
from .progress import Progress, run_to_end
from .scale import WorkingScale

if TYPE_CHECKING:
    import pandas as pd

    from .autoscale import ScaleEstimate
    from .inference import ImageStats
    from .io import ImageData
    from .models import Model, ModelCard

#: Output file names: ``<stem><suffix>``.
OUTPUT_SUFFIXES = {"labels": "_labels.tif", "probabilities": "_probabilities.tif",
                   "objects": "_objects.csv"}

#: An extra output step: called with the :class:`FileResult` (labels still readable) before
#: the labels file is written; returns the files it wrote (by name).
Writer = Callable[["FileResult"], dict]


@dataclass
class FileParams:
    """Settings for :func:`iter_segment_file`.

    Attributes
    ----------
    out_dir : str or Path or None
        Folder for the outputs; None writes nothing (the result is returned).
    segment : SegmentParams
    postprocess : PostprocessParams, dict, "card" or None
        ``"card"`` (default): the model card's settings; a dict: settings over the card's;
        None: the labels are the network's classes as predicted (:func:`postprocess_for`).
    pixel_size_um : float or None
        um/px of inputs whose file does not say it (PNG, JPEG); a file's own value wins.
    probabilities, objects_csv : bool
        Also write ``<stem>_probabilities.tif`` (float32, C x Y x X) and
        ``<stem>_objects.csv`` (one row per object).
    overwrite : bool
        Replace existing outputs (otherwise a file whose labels exist is skipped).
    writers : list of Writer
        Extra output steps (e.g. GeoJSON), run after the built-in ones, before the labels.
    window, halo : int
        Window side and context for post-processing a large result piece by piece.
    auto_scale : bool
        For an image whose pixel size nobody gives (neither its file nor ``pixel_size_um``),
        estimate it from the image (:mod:`napari_glandseg.autoscale`) when the card has a
        scale reference, instead of taking the training data's; the estimate is in
        ``FileResult.scale_estimate``.
    """

    out_dir: str | Path | None = None
    segment: SegmentParams = field(default_factory=SegmentParams)
    postprocess: PostprocessParams | str | None = "card"
    pixel_size_um: float | None = None
    probabilities: bool = False
    objects_csv: bool = False
    overwrite: bool = False
    writers: list = field(default_factory=list)
    window: int = 2048
    auto_scale: bool = True
    halo: int = 256

    def __post_init__(self):
        if isinstance(self.segment, dict):
            self.segment = SegmentParams(**self.segment)
        if isinstance(self.postprocess, dict):
            from_entry(self.postprocess)  # bad settings are named now, not mid-run
        elif self.postprocess is not None and not isinstance(self.postprocess,
                                                             PostprocessParams | str):
            raise GlandsegError(f"postprocess must be PostprocessParams, a dict, 'card' or "
                                f"None, got {self.postprocess!r}")
        if isinstance(self.postprocess, str) and self.postprocess != "card":
            raise GlandsegError(f"postprocess must be PostprocessParams, a dict, 'card' or "
                                f"None, got {self.postprocess!r}")
        px = self.pixel_size_um
        if px is not None and (isinstance(px, bool) or not isinstance(px, int | float)
                               or not math.isfinite(px) or px <= 0):
            raise GlandsegError(f"pixel size must be a positive number of um/px, got {px!r}")
        if self.halo < 0 or self.window < 64:
            raise GlandsegError(f"window must be >= 64 and halo >= 0, got {self.window}, "
                                f"{self.halo}")
        if self.out_dir is not None:
            self.out_dir = Path(self.out_dir)


@dataclass
class FileResult:
    """What :func:`iter_segment_file` returns.

    ``labels`` is a NumPy array, or for a large result a zarr array in ``segment.store_path``
    (removed after writing when ``out_dir`` was given; then ``labels`` is None).
    """

    path: Path | None
    labels: MutableArray | None
    segment: SegmentResult
    postprocess: PostprocessParams | None = None
    table: pd.DataFrame | None = None
    n_objects: int | None = None
    outputs: dict = field(default_factory=dict)
    image: Array | None = None  # the segmented image (level), for writers that need pixels
    max_label: int | None = None  # known largest label of a large result
    scale_estimate: ScaleEstimate | None = None  # when the scale was estimated

    @property
    def pixel_size_um(self) -> float | None:
        return self.segment.pixel_size_um

    def metadata(self) -> dict:
        """The segmentation's settings (:meth:`SegmentResult.metadata`), the source file and
        the post-processing used."""
        meta = self.segment.metadata()
        meta["source_path"] = None if self.path is None else str(self.path)
        meta["postprocess"] = None if self.postprocess is None else {
            k: getattr(v, "value", v) for k, v in asdict(self.postprocess).items()}
        return meta


def postprocess_for(card: ModelCard | None,
                    post: PostprocessParams | dict | str | None = "card",
                    **overrides: Any) -> PostprocessParams | None:
    """The post-processing that turns ``card``'s network output into objects: the one
    owner of it, so that the CLI, the Segment and Post-process widgets, training's
    checkpoint selection, tuning and slides all make the same objects.

    Parameters
    ----------
    card : ModelCard or None
    post : "card", dict, PostprocessParams or None
        ``"card"``: the card's entry; a dict: settings over the card's entry; a
        :class:`~napari_glandseg.postprocessing.PostprocessParams`: these, as they are;
        None: none (the network's labels as they are).
    **overrides
        Single settings over the result (None values are ignored), e.g. ``--split``.

    Returns
    -------
    PostprocessParams or None
        None when nothing gives a setting. Settings an entry leaves out take
        :class:`~napari_glandseg.postprocessing.PostprocessParams`' defaults except
        ``split``, which is ``"none"``: an entry that names no split splits nothing.

    >>> from napari_glandseg.models import ModelCard
    >>> card = ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1,
    ...                  postprocess={"min_size": 50, "split": "distance"})
    >>> postprocess_for(card, min_size=10).min_size, postprocess_for(card).split.value
    (10, 'distance')
    >>> postprocess_for(card, {"min_size": 5}).split.value, postprocess_for(card, None)
    ('distance', None)
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(post, PostprocessParams):
        return replace(post, **given) if given else post
    if post is None and not given:
        return None
    entry = dict(card.postprocess) if card is not None and post is not None else {}
    if isinstance(post, dict):
        entry.update(post)
    elif post is not None and post != "card":
        raise GlandsegError(f"postprocess must be PostprocessParams, a dict, 'card' or None, "
                            f"got {post!r}")
    entry.update(given)
    return from_entry(entry) if entry else None


def from_entry(entry: dict) -> PostprocessParams:
    """The settings of a card's ``postprocess`` entry (see :func:`postprocess_for`: an
    entry that names no split splits nothing)."""
    return PostprocessParams(**{"split": "none", **entry})


def entry_of(params: PostprocessParams | None) -> dict:
    """A card entry (plain values) that :func:`from_entry` turns back into ``params``;
    ``{}`` for None."""
    return {} if params is None else {k: getattr(v, "value", v)
                                      for k, v in asdict(params).items()}


def connected_components() -> PostprocessParams:
    """The objects of labels given no post-processing: connected foreground, nothing
    filled or removed."""
    return PostprocessParams(split=Split.NONE, min_size=0, fill_holes=False)


@dataclass
class Objects:
    """What :func:`objects_of` returns: ``labels``, objects numbered 1..n; ``classes``, a
    class model's cleaned class map (else None); ``table``, one row per object (with
    ``class`` for class models) when asked for."""

    labels: np.ndarray
    classes: np.ndarray | None = None
    table: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0


def objects_of(labels: np.ndarray, post: PostprocessParams | None, *, class_map: bool = False,
               objects: bool = False, image: Array | None = None,
               pixel_size_um: float | None = None, table: bool = False) -> Objects:
    """The post-processing step of the route from image to objects (:func:`iter_objects`),
    on labels already there: a network's classes (a slide's block, tuning's candidates)
    or a Labels layer (the Post-process widget).

    ``post`` None: connected components. ``class_map``: a class model's labels, cleaned
    (:func:`~napari_glandseg.postprocessing.clean_class_map`) with their classes kept and
    their connected regions numbered; otherwise
    :func:`~napari_glandseg.postprocessing.postprocess` (``objects``: the labels already
    hold separate objects). ``table``: measure the objects (``image`` gives intensities).
    """
    arr = np.asarray(labels)
    post = post or connected_components()
    classes = None
    if class_map:
        from skimage.measure import label as cc_label

        classes = clean_class_map(arr, post)
        inst = cc_label(classes > 0, connectivity=2)
    else:
        inst = postprocess(arr, post, objects=objects)
    out = Objects(inst, classes)
    if table:
        out.table = object_table(inst, _pixels(image), pixel_size_um)
        if class_map:
            out.table = _with_class(out.table, inst, classes)
    return out


def outputs_for(path: PathType, out_dir: PathType, params: FileParams) -> dict[str, Path]:
    """The files :func:`iter_segment_file` writes for input ``path``, by name."""
    stem = Path(path).stem
    names = ["labels"] + (["probabilities"] if params.probabilities else []) + \
        (["objects"] if params.objects_csv else [])
    return {k: Path(out_dir) / f"{stem}{OUTPUT_SUFFIXES[k]}" for k in names}


def segment_file(source: PathType | ImageData | Levels, model: Model,
                 params: FileParams | None = None, **kwargs: Any) -> FileResult:
    """Blocking twin of :func:`iter_segment_file`."""
    return run_to_end(iter_segment_file(source, model, params, **kwargs))


def iter_segment_file(source: PathType | ImageData | Levels, model: Model,
                      params: FileParams | None = None, region: Box | None = None,
                      pixel_size_um: float | None = None,
                      ) -> Generator[Progress, None, FileResult]:
    """Read, segment, post-process and (with ``params.out_dir``) write one image.

    Parameters
    ----------
    source : str, Path, ImageData or array-like
        A file, an already read image, or pixels (a NumPy/dask/zarr array or a pyramid list).
    model : Model
    params : FileParams, optional
    region : (y0, x0, y1, x1), optional
        Full-resolution box to segment (see :func:`~napari_glandseg.inference.iter_segment`).
    pixel_size_um : float, optional
        The pixels' um/px when ``source`` is not a file (a file's own value wins otherwise).

    Raises
    ------
    GlandsegError
        Bad input; the message starts with the file's name.
    """
    from .io import ImageData, read_image

    params = params or FileParams()
    path = Path(source) if isinstance(source, str | os.PathLike) else None
    if isinstance(source, ImageData):
        path = source.path
    try:
        data: Levels
        if isinstance(source, ImageData):
            data, px = source.data, source.pixel_size_um or pixel_size_um
        elif path is not None:
            img = read_image(path, as_labels=False)
            data, px = img.data, img.pixel_size_um or pixel_size_um
        else:
            data, px = cast(Levels, source), pixel_size_um
        return (yield from _run(path, data, px, model, params, region))
    except GlandsegError as exc:
        if path is None or str(exc).startswith(str(path)):
            raise
        raise GlandsegError(f"{path}: {exc}") from exc


def objects_from_image(image: Levels, model: Model, params: FileParams | None = None,
                       **kwargs: Any) -> FileResult:
    """Blocking twin of :func:`iter_objects`."""
    return run_to_end(iter_objects(image, model, params, **kwargs))


def iter_objects(image: Levels, model: Model, params: FileParams | None = None,
                 region: Box | None = None, pixel_size_um: float | None = None,
                 stats: ImageStats | None = None, in_memory: bool = False,
                 working: WorkingScale | None = None,
                 ) -> Generator[Progress, None, FileResult]:
    """The one route from pixels to objects: segment
    (:func:`~napari_glandseg.inference.iter_segment`, at the level and scale
    :func:`~napari_glandseg.scale.working_scale` chooses), then post-process as the card
    implies (:func:`postprocess_for`, :func:`objects_of`). The per-file pipeline, the
    Segment widget, training's validation, tuning and slides' blocks all run it.

    Parameters
    ----------
    image : array-like or list of array-like
        Pixels, or a pyramid (full resolution first).
    model : Model
    params : FileParams, optional
        ``segment``, ``postprocess`` (``"card"``, a dict over the card's, settings or None),
        ``pixel_size_um`` (for pixels of unknown size), ``objects_csv`` (measure them),
        ``window`` / ``halo``. ``out_dir`` only says where a large result's store goes.
    region : (y0, x0, y1, x1), optional
        Full-resolution box; read with the context around it, on the whole image's tile grid.
    pixel_size_um : float, optional
        The pixels' um/px as their file says (``params.pixel_size_um`` stands in when None).
    stats : ImageStats, optional
        The whole image's normalisation (a slide's block).
    in_memory : bool
        Return NumPy arrays: a lazy input's zarr store is read and removed, and its labels
        post-processed whole (a block, a validation image), not window by window.
    working : WorkingScale, optional
        The level and rescale, decided already (a slide's plan); default:
        :func:`napari_glandseg.scale.resolve` of the file's pixel size, the user's
        (``params.pixel_size_um``) and, for a whole image in memory, automatic scale.

    Returns
    -------
    FileResult
        ``labels``: the objects (a class model's cleaned class map; the network's labels
        when there is no post-processing and no table); ``segment``: the network's
        classes (``segment.labels``), probabilities and uncertainty; ``table``,
        ``n_objects``.
    """
    params = params or FileParams()
    seg = params.segment
    if params.probabilities and not seg.return_probabilities:
        seg = replace(seg, return_probabilities=True)
    if params.out_dir is not None:
        seg = replace(seg, store_dir=str(params.out_dir))
    if working is None:
        working = yield from _working_scale(image, model.card, params, pixel_size_um, stats)
    estimate = working.estimate
    res = yield from iter_segment(image, model, region=region, params=seg, stats=stats,
                                  working=working)
    if estimate is not None:
        res.info["scale_estimate"] = estimate.describe()
    card = model.card
    if stats is None and card.appearance:  # a whole image (not a slide's block)
        from .domain import warning

        res.info["appearance"] = warning(image, card)
    class_map = card.class_map
    post = postprocess_for(card, params.postprocess)
    result = FileResult(path=None, labels=res.labels, segment=res, postprocess=post,
                        scale_estimate=estimate,
                        image=_image_level(image, res))
    if in_memory:
        read_into_memory(result)
    try:
        if res.store_path is None:
            _post_in_memory(result, class_map, params.objects_csv)
        else:
            yield from _post_windows(result, class_map, params)
    except BaseException:  # failed or cancelled (the generator closed): no store is left
        res.discard()
        raise
    return result  # a large result's store is the caller's (the file pipeline removes it)


def mask_to_polygons(result: FileResult, polygons: Sequence[np.ndarray]) -> None:
    """Keep only what lies inside ``polygons`` (full-resolution pixel coordinates of the
    image, as a Shapes ROI gives them) in an in-memory result: the classes, the objects,
    the probability and uncertainty maps (nothing is claimed outside the ROI); objects cut
    by a polygon are measured again, a class map's objects kept when still inside."""
    from skimage.draw import polygon2mask

    from .postprocessing import object_table

    res = result.segment
    labels = np.asarray(res.labels)  # an in-memory result
    h, w = labels.shape
    inside = np.zeros((h, w), bool)
    for poly in polygons:
        inside |= polygon2mask((h, w), (np.asarray(poly) - np.asarray(res.offset))
                               / res.downsample)
    res.labels = np.where(inside, labels, 0).astype(labels.dtype)
    if res.probabilities is not None:
        probs = np.where(inside, np.asarray(res.probabilities), 0).astype(np.float32)
        if probs.shape[0] > 1:
            probs[0][~inside] = 1.0  # background, for a softmax model
        res.probabilities = probs
    if res.uncertainty is not None:
        res.uncertainty = np.where(inside, np.asarray(res.uncertainty), 0).astype(np.float32)
    objects = None
    if result.labels is not None:  # the objects (or the classes themselves)
        kept_in = np.asarray(result.labels)
        objects = np.where(inside, kept_in, 0).astype(kept_in.dtype)
    result.labels = objects
    table = result.table
    if table is not None and objects is not None:
        if "class" in table:  # a class map's objects: keep those still inside
            from skimage.measure import label as cc_label

            kept = np.unique(cc_label(objects > 0, connectivity=2))
            result.table = table[table["label"].isin(kept[kept > 0])].reset_index(drop=True)
        else:  # objects cut by the polygon are measured again
            image = None if result.image is None else np.asarray(result.image)
            result.table = object_table(objects, image, res.pixel_size_um)


def _working_scale(image, card, params: FileParams, file_px, stats):
    """:func:`napari_glandseg.scale.resolve` for one run, saying when it estimates the
    scale. A slide's block (``stats`` given) is never estimated on its own: it runs at its
    plan's scale, as the whole slide does."""
    from .scale import can_estimate, resolve

    seg = params.segment
    auto = params.auto_scale and stats is None
    if auto and can_estimate(card, image, file_px, params.pixel_size_um, seg.scale):
        yield Progress(0, 1, "estimating the image's scale")
    return resolve(image, card, file_px, params.pixel_size_um, auto=auto,
                   rescale=seg.rescale, scale=seg.scale)


def read_into_memory(result: FileResult) -> None:
    """Replace a result's zarr arrays (its labels, the network's classes, probabilities and
    uncertainty) by NumPy arrays and remove its store (a result small enough for memory)."""
    res = result.segment
    if res.store_path is None:
        return
    same = result.labels is res.labels
    # the objects first: they may live in the same store
    labels = None if result.labels is None or same else np.asarray(result.labels)
    res.to_memory()
    result.labels = res.labels if same else labels


def _run(path, data, px, model, params: FileParams, region):
    out_dir = params.out_dir
    outputs = outputs_for(path or "image", out_dir, params) if out_dir is not None else {}
    if out_dir is not None:
        _check_writable(Path(out_dir))
    result = yield from iter_objects(data, model, params, region=region, pixel_size_um=px)
    result.path, result.outputs = path, outputs
    res = result.segment
    try:
        if out_dir is not None:
            yield Progress(0, 1, "writing")
            _write_outputs(result, params)
            yield Progress(1, 1, "written")
    finally:
        if out_dir is not None and res.store_path is not None:
            res.discard()
            result.labels = None
    return result


def _image_level(data, res: SegmentResult):
    """The pixels under the result's labels (the pyramid level and region segmented)."""
    levels = as_levels(data)
    level = levels[res.info.get("level", 0)]
    y0, x0 = (int(round(v / res.downsample)) for v in res.offset)
    h, w = res.labels.shape
    return level[y0: y0 + h, x0: x0 + w]


def _post_in_memory(result: FileResult, class_map: bool, table: bool) -> None:
    post = result.postprocess
    if post is None and not table:  # the network's labels, as they are
        result.labels = np.asarray(result.labels)
        return
    out = objects_of(np.asarray(result.labels), post, class_map=class_map,
                     image=result.image, pixel_size_um=result.pixel_size_um, table=table)
    result.labels = out.classes if class_map else out.labels
    result.n_objects, result.table = out.n, out.table


def _pixels(image):
    return None if image is None else np.asarray(image)


def _with_class(table, inst, classes):
    counts = np.zeros((int(inst.max()) + 1, int(classes.max()) + 1), np.int64)
    np.add.at(counts, (inst[inst > 0], classes[inst > 0]), 1)
    table["class"] = counts[table["label"].to_numpy()].argmax(1)
    return table


def _post_windows(result: FileResult, class_map: bool, params: FileParams):
    post = result.postprocess
    if post is None and not params.objects_csv:
        return
    post = post or connected_components()
    import zarr

    src: Any = result.labels  # the zarr labels of a large result
    root = zarr.open_group(result.segment.store_path, mode="r+")
    dst = root.create_array("instances", shape=src.shape, dtype="uint32", fill_value=0,
                            chunks=src.chunks)
    n, table = yield from iter_postprocess_windows(
        src, dst, post, window=params.window, halo=params.halo, class_map=class_map,
        image=result.image if params.objects_csv else None,
        pixel_size_um=result.pixel_size_um, table=params.objects_csv)
    result.n_objects = n
    if class_map:
        # the labels file keeps the classes: write them back from the cleaned objects
        _classes_from_instances(dst, table, src)
        result.labels = src
    else:
        result.labels, result.max_label = dst, n
    result.table = table if params.objects_csv else None


def _classes_from_instances(instances, table, out) -> None:
    """Rewrite a class map from window-cleaned instances and each object's class."""
    lut = np.zeros(int(table["label"].max()) + 1 if len(table) else 1, np.uint8)
    if len(table):
        lut[table["label"].to_numpy()] = table["class"].to_numpy()
    step = 2048
    h, w = instances.shape
    for y in range(0, h, step):
        for x in range(0, w, step):
            out[y: y + step, x: x + step] = lut[np.asarray(instances[y: y + step,
                                                                     x: x + step])]


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GlandsegError(f"cannot create output folder {out_dir}: {exc.strerror}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise GlandsegError(f"cannot write to output folder {out_dir} (permission denied)")


def _write_outputs(result: FileResult, params: FileParams) -> None:
    from .io import write_labels, write_probabilities

    out, px = result.outputs, result.pixel_size_um
    res = result.segment
    if "probabilities" in out and res.probabilities is not None:
        write_probabilities(out["probabilities"], res.probabilities, pixel_size_um=px)
    if "objects" in out:
        write_csv(result.table, out["objects"], overwrite=True)
    for writer in params.writers:
        result.outputs.update(writer(result) or {})
    # last: an existing labels file means the whole file is done
    assert result.labels is not None  # discarded only after writing
    write_labels(out["labels"], result.labels, overwrite=True, pixel_size_um=px,
                 max_label=result.max_label)


# --------------------------------------------------------------------------------------------
# batches


@dataclass
class BatchReport:
    """What :func:`iter_segment_files` did: files segmented, skipped (outputs exist) and
    failed, each failure with its one-line reason."""

    done: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list = field(default_factory=list)  # (path, reason)


def segment_files(files: Iterable[PathType], model: Model, params: FileParams,
                  on_file: Callable | None = None) -> BatchReport:
    """Blocking twin of :func:`iter_segment_files`."""
    return run_to_end(iter_segment_files(files, model, params, on_file))


def iter_segment_files(files: Iterable[PathType], model: Model, params: FileParams,
                       on_file: Callable | None = None,
                       ) -> Generator[Progress, None, BatchReport]:
    """Segment many files with :func:`iter_segment_file`; a bad file is recorded and the
    batch goes on. Yields each file's Progress with ``metrics={"file": i, "files": n,
    "name": ...}``; returns a :class:`BatchReport`. ``on_file(event, path, detail)`` hears
    ``"skip"``, ``"done"`` (detail: the :class:`FileResult`) and ``"fail"`` (the reason) as
    they happen."""
    if params.out_dir is None:
        raise GlandsegError("a batch needs an output folder")
    _check_writable(Path(params.out_dir))
    paths = [Path(f) for f in files]
    report = BatchReport()
    tell = on_file or (lambda *a: None)
    for i, f in enumerate(paths, 1):
        dest = outputs_for(f, params.out_dir, params)["labels"]
        if dest.exists() and not params.overwrite:
            report.skipped.append(f)
            tell("skip", f, dest)
            continue
        info = {"file": i, "files": len(paths), "name": f.name}
        gen = iter_segment_file(f, model, params)
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                yield replace(p, metrics={**(p.metrics or {}), **info})
        except (KeyboardInterrupt, GeneratorExit):
            gen.close()
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
            reason = str(exc) if isinstance(exc, GlandsegError | OSError) else \
                f"{type(exc).__name__}: {exc}"
            if isinstance(exc, OSError) and exc.filename:
                reason = f"{exc.filename}: {exc.strerror or exc}"
            if not reason.startswith(str(f)):
                reason = f"{f}: {reason}"
            report.failed.append((f, reason))
            tell("fail", f, reason)
            continue
        report.done.append(f)
        tell("done", f, result)
    return report


__all__ = ["BatchReport", "FileParams", "FileResult", "OUTPUT_SUFFIXES", "Objects", "Writer",
           "connected_components", "entry_of", "from_entry", "iter_objects",
           "iter_segment_file", "iter_segment_files", "objects_from_image", "objects_of",
           "outputs_for", "postprocess_for", "read_into_memory", "segment_file",
           "segment_files"]
