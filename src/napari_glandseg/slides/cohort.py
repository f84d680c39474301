"""Cohorts of slides on dask.distributed: the block tasks of :mod:`napari_glandseg.slides`.

Qt-free. :func:`iter_segment_cohort` plans every slide, then submits its blocks as tasks
(segment + post-process one padded block), the face links, one small resolve task (global
ids), the block writes into the OME-Zarr pyramid, the measurements, and a finishing task
per slide. Tasks carry a slide's path and a small plan, never pixels: every worker opens the
slide and loads the model itself (once per process), so the scheduler only moves ids and
per-object sums. It yields one :class:`~napari_glandseg.progress.Progress` over the cohort's
blocks and returns a :class:`CohortResult`.

- By default the cluster is a :class:`distributed.LocalCluster` started here and closed at
  the end (``workers`` processes, one thread each); ``scheduler="tcp://HOST:8786"`` uses a
  running one (e.g. from dask-jobqueue on SLURM; see the README).
- A slide that fails (unreadable file, a block raising) is reported with its error while
  the other slides finish.
- A rerun resumes: finished slides are skipped, and in a half-done slide the blocks whose
  marker (``stats_IY_IX.npz`` in the slide's work folder) exists are not run again.

Examples
--------
>>> import numpy as np, tempfile
>>> from napari_glandseg.slides import ClassMapPredictor, SlideParams
>>> img = np.zeros((256, 256), np.uint8); img[60:200, 60:200] = 1
>>> out = tempfile.TemporaryDirectory()
>>> res = segment_cohort([img], out.name, predictor=ClassMapPredictor(),
...                      params=SlideParams(block_size=128, overlap=32, tissue=False),
...                      post={"split": "none", "min_size": 1},
...                      cohort=CohortParams(workers=1, processes=False))
>>> [r.n_objects for r in res.done], res.failed
([1], [])
>>> out.cleanup()
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._types import Levels, PathType
from ..errors import GlandsegError, require
from ..postprocessing import PostprocessParams
from ..progress import Progress, run_to_end
from .blocks import link_block, resolve, run_block
from .output import SlideResult, create_store, finish_slide, measure_block, write_block
from .plan import SlideJob, SlideParams, SlidePlan, plan_slide

if TYPE_CHECKING:
    from ..inference import SegmentParams
    from .predictors import Predictor


@dataclass
class CohortParams:
    """Where the tasks run.

    Attributes
    ----------
    workers : int
        Worker processes of the embedded LocalCluster (ignored with ``scheduler``).
    threads_per_worker : int
        Threads per worker; torch uses its own threads inside a task, so 1 is best on CPUs.
    processes : bool
        Workers in separate processes (True) or threads of this process (False: for tests
        and notebooks; no pickling of the tasks).
    scheduler : str or None
        Address of a running scheduler, e.g. ``tcp://HOST:8786``.
    memory_limit : str
        Per-worker memory limit of the LocalCluster (dask's syntax, e.g. ``"4GB"``).
    """

    workers: int = 2
    threads_per_worker: int = 1
    processes: bool = True
    scheduler: str | None = None
    memory_limit: str = "auto"

    def __post_init__(self):
        if not isinstance(self.workers, int) or self.workers < 1:
            raise GlandsegError(f"workers must be a positive integer, got {self.workers!r}")
        if self.scheduler is not None and not str(self.scheduler).strip():
            raise GlandsegError("scheduler must be an address such as tcp://HOST:8786")


@dataclass
class CohortResult:
    """What :func:`segment_cohort` returns: finished slides, failures ``(slide, error)``,
    slides skipped because a previous run finished them."""

    done: list[SlideResult] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


# task bodies (module-level so that workers can unpickle them)


def _plan_task(source: PathType | Levels, out: str, job: SlideJob, name: str) -> SlidePlan:
    return plan_slide(source, out, job, name=name)


def _block_task(plan: SlidePlan, iy: int, ix: int) -> bool:
    return run_block(plan, iy, ix)


def _link_task(plan: SlidePlan, iy: int, ix: int, *_deps) -> list:
    return link_block(plan, iy, ix)


def _resolve_task(plan: SlidePlan, *links) -> dict:
    objects = resolve(plan, [lk for part in links for lk in part])
    create_store(plan)
    return objects


def _write_task(plan: SlidePlan, iy: int, ix: int, _objects) -> None:
    write_block(plan, iy, ix)


def _measure_task(plan: SlidePlan, iy: int, ix: int, objects, *_writes) -> dict:
    return measure_block(plan, iy, ix, objects)


def _finish_task(plan: SlidePlan, objects, blocks_run, t0, *measures) -> SlideResult:
    return finish_slide(plan, objects, list(measures), int(sum(blocks_run)),
                        time.time() - t0)


def _name_of(source, i: int) -> str:
    return Path(source).stem if isinstance(source, str | Path) else f"image{i}"


def open_client(cohort: CohortParams) -> tuple[Any, Any]:
    """A dask.distributed Client: on ``cohort.scheduler``, or on a new LocalCluster. Returns
    ``(client, cluster_or_None)``; close both when done."""
    require("distributed", "distributed", "segmenting on dask workers")
    from distributed import Client, LocalCluster

    if cohort.scheduler:
        try:
            return Client(cohort.scheduler, timeout="20s"), None
        except OSError as exc:
            raise GlandsegError(f"cannot reach the dask scheduler at {cohort.scheduler}: "
                                f"{exc}") from None
    import dask

    with dask.config.set(worker_environment(cohort.workers)):
        cluster = LocalCluster(n_workers=cohort.workers,
                               threads_per_worker=cohort.threads_per_worker,
                               processes=cohort.processes, memory_limit=cohort.memory_limit,
                               dashboard_address=None)
    return Client(cluster), cluster


def worker_environment(workers: int, cores: int | None = None) -> dict:
    """dask config for worker processes that run torch: glibc's own malloc trimming, and
    ``cores / workers`` threads each.

    dask's default ``MALLOC_TRIM_THRESHOLD_`` of 64 KiB (good for pandas workloads) returns
    memory to the system after every large free: torch's CPU convolutions ran 2.3x slower
    with it here (benchmarks/bench_slides.py), as did its default of one OpenMP thread per
    worker when a worker has more cores.
    """
    import os

    import dask

    threads = str(max(1, (cores or os.cpu_count() or 1) // max(1, workers)))
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    env.update({"MALLOC_TRIM_THRESHOLD_": str(2**30), "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads})
    return {"distributed.nanny.pre-spawn-environ": env}


def iter_segment_cohort(
    slides: Sequence[PathType | Levels],
    out: PathType,
    model: str | None = None,
    *,
    predictor: Predictor | None = None,
    params: SlideParams | None = None,
    seg: SegmentParams | None = None,
    post: PostprocessParams | dict | None = None,
    cohort: CohortParams | None = None,
    overwrite: bool = False,
    client: Any = None,
    pixel_size_um: float | None = None,
) -> Generator[Progress, None, CohortResult]:
    """Segment many slides block by block on dask.distributed.

    Parameters
    ----------
    slides : list
        Slide/image paths (or arrays, with ``processes=False``).
    out : path
        Output folder: one ``NAME.ome.zarr``, ``NAME_objects.csv`` and
        ``NAME_objects.geojson`` per slide.
    model, predictor, params, seg, post
        As :func:`napari_glandseg.slides.iter_segment_slide`.
    cohort : CohortParams, optional
        Where to run (default: a LocalCluster of 2 worker processes).
    client : distributed.Client, optional
        Use this client (and leave it open).
    pixel_size_um : float, optional
        um/px of slides whose files do not say it (``--pixel-size``).

    Yields one Progress over all blocks of all slides (its total grows as slides are
    planned); returns a :class:`CohortResult`. Closing the generator cancels the tasks.
    """
    require("distributed", "distributed", "segmenting on dask workers")
    from distributed import as_completed

    cohort = cohort or CohortParams()
    job = SlideJob.make(model, predictor=predictor, seg=seg, post=post, params=params,
                        pixel_size_um=pixel_size_um, overwrite=overwrite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = CohortResult()
    names = [_name_of(s, i) for i, s in enumerate(slides)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise GlandsegError(f"two slides would write the same outputs: {', '.join(dup)}")
    todo = []
    for s, name in zip(slides, names, strict=True):
        if not overwrite and (out / f"{name}.ome.zarr" / "glandseg_done.json").exists():
            result.skipped.append(str(s) if isinstance(s, str | Path) else name)
        else:
            todo.append((s, name))
    own = client is None
    cluster = None
    if own:
        client, cluster = open_client(cohort)
    result.info["dashboard"] = getattr(client, "dashboard_link", None)
    futures: dict = {}  # future -> (slide name, kind)
    slide_futs: dict[str, list] = {}
    label_of = {}
    total, done = 0, 0
    units: dict[str, list] = {}
    try:
        ac = as_completed()
        for s, name in todo:
            src = str(s) if isinstance(s, str | Path) else s
            label_of[name] = str(s) if isinstance(s, str | Path) else name
            f = client.submit(_plan_task, src, str(out), job, name, key=f"plan-{name}",
                              pure=False)
            futures[f] = (name, "plan")
            slide_futs[name] = [f]
            ac.add(f)
            total += 1
            units[name] = [1, 0]  # progress units (planned, counted) of this slide
        failed = set()
        for f in ac:
            name, kind = futures.pop(f)
            if name in failed:
                continue
            if f.status == "error" or f.status == "cancelled":
                failed.add(name)
                exc = f.exception() if f.status == "error" else "cancelled"
                result.failed.append((label_of[name], f"{type(exc).__name__}: {exc}"
                                      if isinstance(exc, BaseException) else str(exc)))
                # dropping our references releases its waiting tasks (the scheduler forgets
                # them); its units leave the progress total
                slide_futs.pop(name, None)
                total -= units[name][0] - units[name][1]
                yield Progress(done, total, f"{name}: failed", time.time() - t0)
                continue
            units[name][1] += 1
            if kind == "plan":
                plan = f.result()
                new = _submit_slide(client, plan, t0)
                for g, k in new:
                    if k in ("block", "finish"):
                        futures[g] = (name, k)
                        ac.add(g)
                slide_futs[name] = [g for g, _ in new]
                total += len(plan.todo) + 1
                units[name][0] += len(plan.todo) + 1
                done += 1
            elif kind == "block":
                done += 1
            elif kind == "finish":
                result.done.append(f.result())
                done += 1
                slide_futs.pop(name, None)
            yield Progress(done, total, f"{name}: {kind}", time.time() - t0)
    finally:
        # released futures are cancelled by the scheduler when no client wants them
        futures.clear()
        slide_futs.clear()
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    order = {name: i for i, name in enumerate(names)}
    result.done.sort(key=lambda r: order.get(r.name, 0))  # input order, not finishing order
    result.failed.sort(key=lambda f: order.get(_name_of(f[0], 0), 0))
    result.seconds = time.time() - t0
    return result


def _submit_slide(client, plan: SlidePlan, t0: float) -> list:
    """Submit one planned slide's task graph; returns ``[(future, kind)]``."""
    key = f"{plan.name}"
    blocks = {b: client.submit(_block_task, plan, *b, key=f"block-{key}-{b[0]}-{b[1]}",
                               pure=False) for b in plan.todo}
    out = [(f, "block") for f in blocks.values()]
    links = []
    for (iy, ix), f in blocks.items():
        deps = [f] + [blocks[(iy + dy, ix + dx)] for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))
                      if (iy + dy, ix + dx) in blocks]
        links.append(client.submit(_link_task, plan, iy, ix, *deps,
                                   key=f"link-{key}-{iy}-{ix}", pure=False))
    objects = client.submit(_resolve_task, plan, *links, key=f"resolve-{key}", pure=False)
    writes = [client.submit(_write_task, plan, iy, ix, objects, key=f"write-{key}-{iy}-{ix}",
                            pure=False) for iy, ix in plan.todo]
    measures = [client.submit(_measure_task, plan, iy, ix, objects, *writes,
                              key=f"measure-{key}-{iy}-{ix}", pure=False)
                for iy, ix in plan.todo]
    ran = client.submit(lambda *r: list(r), *blocks.values(), key=f"ran-{key}", pure=False)
    finish = client.submit(_finish_task, plan, objects, ran, t0, *measures,
                           key=f"finish-{key}", pure=False)
    out += [(g, "task") for g in (*links, objects, *writes, *measures, ran)]
    out.append((finish, "finish"))
    return out


def segment_cohort(slides: Sequence[PathType | Levels], out: PathType, model: str | None = None,
                   **kwargs: Any) -> CohortResult:
    """Blocking twin of :func:`iter_segment_cohort`."""
    return run_to_end(iter_segment_cohort(slides, out, model, **kwargs))


__all__ = ["CohortParams", "CohortResult", "iter_segment_cohort", "open_client",
           "segment_cohort", "worker_environment"]
