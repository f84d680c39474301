"""One slide in this process: :func:`iter_segment_slide` runs a plan's stages in order."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .._types import Levels, PathType
from ..postprocessing import PostprocessParams
from ..progress import Progress
from .blocks import link_block, resolve, run_block
from .output import SlideResult, create_store, finish_slide, measure_block, write_block
from .plan import SlideJob, SlideParams, plan_slide

if TYPE_CHECKING:
    from ..inference import SegmentParams
    from .predictors import Predictor


def iter_segment_slide(
    source: PathType | Levels,
    out: PathType,
    model: str | None = None,
    *,
    predictor: Predictor | None = None,
    params: SlideParams | None = None,
    seg: SegmentParams | None = None,
    post: PostprocessParams | dict | None = None,
    name: str | None = None,
    pixel_size_um: float | None = None,
    overwrite: bool = False,
    keep_work: bool = False,
    job: SlideJob | None = None,
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

    overwrite : bool
        Replace the outputs of a finished run of this slide.
    keep_work : bool
        Keep the work folder (the blocks' files) after the slide is finished.
    job : SlideJob, optional
        All of ``model`` .. ``overwrite`` at once (:meth:`SlideJob.make`), as a cohort
        hands it to each of its slides.

    A rerun after an interruption skips the blocks already finished.
    """
    t0 = time.perf_counter()
    if job is None:
        job = SlideJob.make(model, predictor=predictor, seg=seg, post=post, params=params,
                            pixel_size_um=pixel_size_um, overwrite=overwrite)
    plan = plan_slide(source, out, job, name=name)
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


def segment_slide(source: PathType | Levels, out: PathType, model: str | None = None,
                  **kwargs: Any) -> SlideResult:
    """Blocking twin of :func:`iter_segment_slide`."""
    from ..progress import run_to_end

    return run_to_end(iter_segment_slide(source, out, model, **kwargs))
