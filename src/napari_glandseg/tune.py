"""Choose post-processing on validation images, by object scores (Qt-free).

A model's card carries the post-processing that turns its class map into objects (how to
split touching objects, minimum size, holes). The right settings depend on the model and on
the user's images, so they are chosen on validation pairs, never on test images:
:func:`iter_tune` segments each validation image once, runs every candidate setting on the
result, scores the objects against the truth, and returns the table and the best setting;
:func:`tune` blocks. ``glandseg tune`` and the Post-process widget call it, and
:func:`save_tuned` writes the winner into a copy of the model.

Examples
--------
>>> import numpy as np
>>> grid = candidate_grid({"split": "distance", "h": 4.0, "min_size": 40}, boundary=False)
>>> sorted({g.split.value for g in grid})
['distance', 'none', 'peaks']
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GlandsegError, as_enum
from .postprocessing import PostprocessParams, Split
from .progress import Progress, run_to_end
from .training import Selection

if TYPE_CHECKING:
    from .models import Model
    from .training import TrainingPair

#: What tuning maximises: the scores training selects checkpoints on
#: (:class:`~napari_glandseg.training.Selection`) but ``pixel_dice`` and ``class_dice``,
#: which have no objects;
#: ``auto`` takes the score the model's checkpoint was selected on, else ``objects``.
TuneMetric = Selection


@dataclass
class TuneResult:
    """The candidates scored (``table``: one dict per setting, best first), the best
    setting as card entry (``best``) and its ``score`` by ``metric``, and the card's own
    setting's score (``current_score``) for comparison."""

    metric: str
    best: dict
    score: float
    current_score: float
    table: list = field(default_factory=list)
    n_images: int = 0


def _card_metric(card) -> TuneMetric:
    selected = str(card.metrics.get("selected_on", "")).removeprefix("val_")
    try:
        m = TuneMetric(selected)
    except ValueError:
        return TuneMetric.OBJECTS
    return TuneMetric.OBJECTS if m is TuneMetric.AUTO else m


def candidate_grid(current: dict | PostprocessParams | None,
                   boundary: bool, levels: int = 0) -> list[PostprocessParams]:
    """Settings to try around the card's ``current`` ones (a card entry, read as
    :func:`~napari_glandseg.pipeline.postprocess_for` reads it, or settings): connected
    components, the distance watershed over a range of ``h``, distance peaks over a range of
    minimum distances, for background / interior / boundary models the boundary-class
    split, and for models of ``levels`` distance levels the levels split seeded at each
    level from 2 to the top and the level-peaks split over a range of smoothing and
    heights, each with minimum sizes from a quarter to four times the
    current one and hole filling on or off."""
    from .pipeline import from_entry

    if isinstance(current, dict):
        current = from_entry(current) if current else None
    cur = current or PostprocessParams()
    base = max(cur.min_size, 10)
    sizes = sorted({0, base // 4, base // 2, base, base * 2, base * 4})
    holes = [(True, cur.max_hole_size), (False, 0)]
    out = []
    for min_size in sizes:
        for fill, hole in holes:
            common: dict[str, Any] = dict(min_size=int(min_size), fill_holes=fill,
                                          max_hole_size=int(hole))
            out.append(PostprocessParams(split=Split.NONE, **common))
            for h in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0):
                out.append(PostprocessParams(split=Split.DISTANCE, h=h, **common))
            for d in (3, 5, 7, 10, 15, 20, 30):
                out.append(PostprocessParams(split=Split.PEAKS, min_distance=d, **common))
            if boundary:
                out.append(PostprocessParams(split=Split.BOUNDARY, **common))
            for level in range(2, levels + 1):
                out.append(PostprocessParams(split=Split.LEVELS, marker_level=level, **common))
            if levels:
                for smooth in (1.0, 2.0, 3.0):
                    for level_h in (0.5, 0.8, 1.2):
                        out.append(PostprocessParams(split=Split.LEVEL_PEAKS, smooth=smooth,
                                                     level_h=level_h, **common))
    if cur not in out:
        out.append(cur)
    return out


#: A card entry's keys: those every setting has, and each split's own parameters (written
#: only for that split). :func:`_entry` and :func:`setting_keys` read both, so a new
#: split's parameters are added here once.
COMMON_KEYS = ("split", "min_size", "fill_holes", "max_hole_size")
SPLIT_KEYS = {Split.DISTANCE: ("h",), Split.PEAKS: ("min_distance",),
              Split.LEVELS: ("marker_level",), Split.LEVEL_PEAKS: ("level_h", "smooth")}


def _entry(p: PostprocessParams) -> dict:
    d = asdict(p)
    d["split"] = p.split.value
    keep = {*COMMON_KEYS, *SPLIT_KEYS.get(p.split, ())}
    return {k: v for k, v in d.items() if k in keep}


#: Settings within this much of the best score by the chosen metric count as tied (a few
#: validation images cannot tell them apart); the tie goes to the best mean of all four
#: object scores, so a minimum size that keeps AJI and removes specks is preferred.
TIE = 0.002

#: The object scores a near-tie is broken on.
ALL_OBJECT_SCORES = ("object_f1", "object_dice", "aji", "pq")


def choose(rows: list[dict], key: str, tie: float = TIE) -> list[dict]:
    """Rows ordered best first by ``key``, the chosen one first: of those within ``tie``
    of the best ``key``, the one with the highest mean of :data:`ALL_OBJECT_SCORES`."""
    rows = sorted(rows, key=lambda r: -r[key])
    if not rows:
        return rows
    near = [r for r in rows if r[key] >= rows[0][key] - tie]
    best = max(near, key=lambda r: (float(np.mean([r[k] for k in ALL_OBJECT_SCORES])),
                                    r[key]))
    return [best, *[r for r in rows if r is not best]]


#: the validation images a scoring worker process holds (set once, by :func:`_hold`)
_HELD: list = []


def _hold(predictions: list) -> None:
    _HELD[:] = predictions


def _score(params: PostprocessParams, predictions: list | None = None) -> list[dict]:
    """One setting's object scores on each validation image (``predictions``: class map
    and truth pairs; in a worker process, those it holds)."""
    from .metrics import Overlap, object_scores
    from .pipeline import objects_of

    return [object_scores(Overlap.of(objects_of(labels, params).labels, truth))
            for labels, truth in (_HELD if predictions is None else predictions)]


def default_workers(n_settings: int) -> int:
    """One scoring process per CPU core this process may use, at most one per setting."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_settings))


@contextmanager
def _main_script_hidden():
    """Spawned workers need nothing from the caller's script (what they run is in this
    module), but spawn runs that script again in each worker unless it is guarded by
    ``if __name__ == "__main__"``: a napari script without the guard would open a window
    per worker. While the workers start, ``__main__`` does not say where it came from."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__")
             if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


#: Settings are scored in worker processes only when the first one, scored here, says the
#: rest would take longer than this (seconds): starting a worker costs about 2-3 s
SPAWN_AFTER_S = 20.0


def _scored(grid: list[PostprocessParams], predictions: list,
            workers: int) -> Generator[tuple[int, list[dict]], None, None]:
    """Each setting's index and scores as it is done. Post-processing and scoring are
    single-threaded numpy / scipy / scikit-image work, so on a long grid a setting per core
    is what makes tuning use the machine: the first setting is scored in this process and,
    when the rest would take more than :data:`SPAWN_AFTER_S`, up to ``workers`` processes
    score the others. They are spawned (not forked from a process with torch and Qt
    threads) and get the images once; closing the generator (Cancel) drops the settings
    not started."""
    t0 = time.perf_counter()
    yield 0, _score(grid[0], predictions)
    rest = range(1, len(grid))
    if workers <= 1 or (time.perf_counter() - t0) * len(rest) < SPAWN_AFTER_S:
        for j in rest:
            yield j, _score(grid[j], predictions)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(min(workers, len(rest)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_hold, initargs=(predictions,))
    try:
        with _main_script_hidden():  # the workers start as the settings are submitted
            futures = {pool.submit(_score, grid[j]): j for j in rest}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def iter_tune(model: Model, pairs: list[TrainingPair],
              metric: TuneMetric | str = TuneMetric.AUTO,
              grid: list[PostprocessParams] | None = None, tile_size: int = 512,
              tie: float = TIE, workers: int | None = None
              ) -> Generator[Progress, None, TuneResult]:
    """Search post-processing on validation ``pairs``, yielding Progress; returns a
    :class:`TuneResult`.

    Parameters
    ----------
    model : Model
        Binary or background / interior / boundary model (class-map models have no
        object split to tune).
    pairs : list of TrainingPair
        Validation images with instance (or binary) truth, at their own pixel size. Never
        test images.
    metric : TuneMetric
    grid : list of PostprocessParams, optional
        Default :func:`candidate_grid` around the card's settings.
    tie : float
        Scores within ``tie`` of the best are a tie, broken by :func:`choose`.
    workers : int, optional
        Processes that score the settings; default :func:`default_workers` (one per core),
        1: in this process. The table does not depend on it.
    """
    from .inference import SegmentParams
    from .metrics import as_instances, summarise_objects
    from .pipeline import FileParams, objects_from_image, postprocess_for

    metric = as_enum(TuneMetric, metric, "metric")
    if metric in (Selection.PIXEL_DICE, Selection.CLASS_DICE):
        raise GlandsegError("tuning scores objects: choose objects, object_f1, object_dice, "
                            f"aji or pq, not {metric.value}")
    card = model.card
    if card.class_map:
        raise GlandsegError(f"{card.name}: a class-map model has no object split to tune")
    if not pairs:
        raise GlandsegError("tuning needs at least one validation pair")
    if metric is TuneMetric.AUTO:
        metric = _card_metric(card)
    # the card's objects as every route makes them (pipeline.postprocess_for)
    card_post = postprocess_for(card)
    grid = list(grid) if grid is not None else \
        candidate_grid(card_post, card.boundary_class, card.levels)
    if not grid:
        raise GlandsegError("tuning needs at least one setting to try")
    t0 = time.perf_counter()
    total = len(pairs) + len(grid)
    predictions, groups = [], []
    # segmented once each (the route from image to objects, without post-processing) ...
    seg = FileParams(segment=SegmentParams(tile_size=tile_size, return_probabilities=False),
                     postprocess=None)
    for i, p in enumerate(pairs):
        res = objects_from_image(p.image, model, seg, in_memory=True,
                                 pixel_size_um=getattr(p, "pixel_size_um", None))
        predictions.append((np.asarray(res.segment.labels), as_instances(p.mask)))
        groups.append(getattr(p, "group", None))
        yield Progress(i + 1, total, f"segmented {i + 1}/{len(pairs)}",
                       time.perf_counter() - t0)
    # ... then its post-processing step per candidate, as many at once as there are workers
    n_workers = default_workers(len(grid)) if workers is None else max(1, int(workers))
    done: dict[int, list[dict]] = {}
    scored = _scored(grid, predictions, n_workers)
    try:
        for j, scores in scored:
            done[j] = scores
            yield Progress(len(pairs) + len(done), total, f"setting {len(done)}/{len(grid)}",
                           time.perf_counter() - t0)
    finally:  # Cancel closes this generator: the workers go with it
        scored.close()
    rows = []
    named = sorted({g for g in groups if g})
    for j, params in enumerate(grid):  # in the grid's order, however the workers finished
        s = summarise_objects(done[j])
        # groups of images (GlaS benign / malignant) apart, and the worse of them
        for g in named:
            s[f"objects[{g}]"] = summarise_objects(
                [r for r, gr in zip(done[j], groups, strict=True) if gr == g])["objects"]
        s["objects_worst"] = min((s[f"objects[{g}]"] for g in named), default=s["objects"])
        rows.append({**_entry(params), **s})
    key = metric.value
    current = _entry(card_post) if card_post is not None else None
    current_score = next((r[key] for r in rows if current and _same(r, current)), float("nan"))
    rows = choose(rows, key, tie)
    best = {k: v for k, v in rows[0].items() if k in setting_keys(rows[0])}
    return TuneResult(key, best, rows[0][key], current_score, rows, len(pairs))


def setting_keys(row: dict) -> set:
    """The keys of a row that are post-processing settings (not scores)."""
    return {*COMMON_KEYS, *(k for keys in SPLIT_KEYS.values() for k in keys)} & set(row)


def _same(row: dict, entry: dict) -> bool:
    return all(row.get(k) == v for k, v in entry.items())


def tune(model: Model, pairs: list[TrainingPair], metric: TuneMetric | str = TuneMetric.AUTO,
         grid: list[PostprocessParams] | None = None, tile_size: int = 512,
         tie: float = TIE, workers: int | None = None) -> TuneResult:
    """Blocking twin of :func:`iter_tune`."""
    return run_to_end(iter_tune(model, pairs, metric, grid, tile_size, tie, workers))


def save_tuned(model: Model, result: TuneResult, name: str, data: str = "") -> Path:
    """Write ``model`` with the tuned post-processing into the store as ``name`` (a copy:
    the original model is never changed; an existing ``name`` is refused). Returns the
    path."""
    from .models import check_model_name, list_models, save_checkpoint, user_dir

    check_model_name(name)
    if any(m.name == name for m in list_models()):
        raise GlandsegError(f"a model named {name!r} exists; choose another name")
    card = copy.deepcopy(model.card)
    card.name = name
    card.postprocess = dict(result.best)
    card.metrics = {**card.metrics, "tuned_on": data or f"{result.n_images} validation images",
                    f"tuned_{result.metric}": round(float(result.score), 4)}
    return save_checkpoint(user_dir() / f"{name}.safetensors", model.net, card)
