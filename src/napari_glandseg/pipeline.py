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
import shutil
from collections.abc import Callable, Generator, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

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
    postprocess : PostprocessParams, "card" or None
        ``"card"`` (default): the model card's settings (:func:`postprocess_for`); None: the
        labels are the network's classes as predicted.
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
    halo: int = 256

    def __post_init__(self):
        if isinstance(self.segment, dict):
            self.segment = SegmentParams(**self.segment)
        if isinstance(self.postprocess, dict):
            self.postprocess = PostprocessParams(**self.postprocess)
        if isinstance(self.postprocess, str) and self.postprocess != "card":
            raise GlandsegError(f"postprocess must be PostprocessParams, 'card' or None, got "
                                f"{self.postprocess!r}")
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
    labels: object
    segment: SegmentResult
    postprocess: PostprocessParams | None = None
    table: object = None
    n_objects: int | None = None
    outputs: dict = field(default_factory=dict)
    image: object = None  # the segmented image (level), for writers that need pixels
    max_label: int | None = None  # known largest label of a large result

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


def postprocess_for(card, split=None, min_size=None, **overrides) -> PostprocessParams | None:
    """The post-processing a model's card asks for, with the caller's overrides (None values
    are ignored); None when neither gives any setting.

    >>> from napari_glandseg.models import ModelCard
    >>> card = ModelCard(name="c", architecture="unet", in_channels=3, num_classes=1,
    ...                  postprocess={"min_size": 50, "split": "distance"})
    >>> postprocess_for(card, min_size=10).min_size, postprocess_for(card).split.value
    (10, 'distance')
    """
    given = {k: v for k, v in {"split": split, "min_size": min_size, **overrides}.items()
             if v is not None}
    if not card.postprocess and not given:
        return None
    return PostprocessParams(**{"split": "none", **card.postprocess, **given})


def outputs_for(path, out_dir, params: FileParams) -> dict[str, Path]:
    """The files :func:`iter_segment_file` writes for input ``path``, by name."""
    stem = Path(path).stem
    names = ["labels"] + (["probabilities"] if params.probabilities else []) + \
        (["objects"] if params.objects_csv else [])
    return {k: Path(out_dir) / f"{stem}{OUTPUT_SUFFIXES[k]}" for k in names}


def segment_file(source, model, params: FileParams | None = None, **kwargs) -> FileResult:
    """Blocking twin of :func:`iter_segment_file`."""
    return run_to_end(iter_segment_file(source, model, params, **kwargs))


def iter_segment_file(source, model, params: FileParams | None = None, region=None,
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
        if path is not None and not isinstance(source, ImageData):
            source = read_image(path, as_labels=False)
        if isinstance(source, ImageData):
            data = source.data
            px = source.pixel_size_um or pixel_size_um or params.pixel_size_um
        else:
            data, px = source, pixel_size_um or params.pixel_size_um
        return (yield from _run(path, data, px, model, params, region))
    except GlandsegError as exc:
        if path is None or str(exc).startswith(str(path)):
            raise
        raise GlandsegError(f"{path}: {exc}") from exc


def _run(path, data, px, model, params: FileParams, region):
    out_dir = params.out_dir
    outputs = outputs_for(path or "image", out_dir, params) if out_dir is not None else {}
    if out_dir is not None:
        _check_writable(out_dir)
    seg = params.segment
    if params.probabilities and not seg.return_probabilities:
        seg = replace(seg, return_probabilities=True)
    if out_dir is not None:
        seg = replace(seg, store_dir=str(out_dir))
    res = yield from iter_segment(data, model, pixel_size_um=px, region=region, params=seg)
    card = model.card
    class_map = card.num_classes > 1 and not card.boundary_class
    post = postprocess_for(card) if params.postprocess == "card" else params.postprocess
    image = _image_level(data, res)
    result = FileResult(path=path, labels=res.labels, segment=res, postprocess=post,
                        outputs=outputs, image=image)
    returned = False
    try:
        if res.store_path is None:
            _post_in_memory(result, class_map, params.objects_csv)
        else:
            yield from _post_windows(result, class_map, params)
        if out_dir is not None:
            yield Progress(0, 1, "writing")
            _write_outputs(result, params)
            yield Progress(1, 1, "written")
        returned = out_dir is None  # the caller shows the store, then removes it
    finally:  # after writing, a failure or a cancel (the generator closed) it goes here
        if res.store_path is not None and not returned:
            shutil.rmtree(res.store_path, ignore_errors=True)
            result.labels = None
    return result


def _image_level(data, res: SegmentResult):
    """The pixels under the result's labels (the pyramid level and region segmented)."""
    levels = data if isinstance(data, list | tuple) else [data]
    level = levels[res.info.get("level", 0)]
    y0, x0 = (int(round(v / res.downsample)) for v in res.offset)
    h, w = res.labels.shape
    return level[y0: y0 + h, x0: x0 + w]


def _post_in_memory(result: FileResult, class_map: bool, table: bool) -> None:
    labels = np.asarray(result.labels)
    post = result.postprocess
    if class_map:
        if post is not None:
            labels = clean_class_map(labels, post)
        result.labels = labels
        if table:
            from skimage.measure import label as cc_label

            inst = cc_label(labels > 0, connectivity=2)
            result.table = _with_class(object_table(inst, _pixels(result.image),
                                                    result.pixel_size_um), inst, labels)
            result.n_objects = int(inst.max())
        return
    if post is not None:
        labels = postprocess(labels, post)
        result.n_objects = int(labels.max())
    elif table:  # no post-processing asked for, but objects are: connected components
        labels = postprocess(labels, split="none", min_size=0, fill_holes=False)
        result.n_objects = int(labels.max())
    result.labels = labels
    if table:
        result.table = object_table(labels, _pixels(result.image), result.pixel_size_um)


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
    if post is None:
        post = PostprocessParams(split="none", min_size=0, fill_holes=False)
    import zarr

    src = result.labels
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


def segment_files(files: Iterable, model, params: FileParams,
                  on_file: Callable | None = None) -> BatchReport:
    """Blocking twin of :func:`iter_segment_files`."""
    return run_to_end(iter_segment_files(files, model, params, on_file))


def iter_segment_files(files: Iterable, model, params: FileParams,
                       on_file: Callable | None = None):
    """Segment many files with :func:`iter_segment_file`; a bad file is recorded and the
    batch goes on. Yields each file's Progress with ``metrics={"file": i, "files": n,
    "name": ...}``; returns a :class:`BatchReport`. ``on_file(event, path, detail)`` hears
    ``"skip"``, ``"done"`` (detail: the :class:`FileResult`) and ``"fail"`` (the reason) as
    they happen."""
    if params.out_dir is None:
        raise GlandsegError("a batch needs an output folder")
    _check_writable(params.out_dir)
    files = [Path(f) for f in files]
    report = BatchReport()
    tell = on_file or (lambda *a: None)
    for i, f in enumerate(files, 1):
        dest = outputs_for(f, params.out_dir, params)["labels"]
        if dest.exists() and not params.overwrite:
            report.skipped.append(f)
            tell("skip", f, dest)
            continue
        info = {"file": i, "files": len(files), "name": f.name}
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


__all__ = ["BatchReport", "FileParams", "FileResult", "OUTPUT_SUFFIXES", "Writer",
           "iter_segment_file", "iter_segment_files", "outputs_for", "postprocess_for",
           "segment_file", "segment_files"]
