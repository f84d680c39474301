"""Whole slides block by block: tissue mask, block plan, stitched objects, OME-Zarr output.

Qt-free. A slide is cut into square blocks (``block_size`` pixels at the segmentation's
resolution) read with a halo of ``overlap`` pixels on each side. Each block is segmented and
post-processed on its own (:func:`napari_glandseg.pipeline.iter_objects`, the route every
run takes, at the level :func:`napari_glandseg.scale.resolve` chooses), so memory is
bounded by one block whatever the slide's size, and blocks are independent tasks
(:mod:`napari_glandseg.slides.cohort` runs the same functions on dask.distributed).

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

The modules, in the order a slide goes through them: :mod:`~napari_glandseg.slides.tissue`
(which blocks hold tissue), :mod:`~napari_glandseg.slides.predictors` (a block's classes and
probability), :mod:`~napari_glandseg.slides.plan` (settings, the job, a slide's plan),
:mod:`~napari_glandseg.slides.blocks` (stages 1-3: blocks, links, global ids),
:mod:`~napari_glandseg.slides.output` (stages 4-5: OME-Zarr, table, GeoJSON; reading back),
:mod:`~napari_glandseg.slides.segment` (one slide in this process) and
:mod:`~napari_glandseg.slides.cohort` (many slides on dask.distributed).

Examples
--------
>>> import numpy as np, tempfile
>>> from napari_glandseg.slides import ClassMapPredictor, SlideParams, segment_slide
>>> img = np.zeros((300, 300), np.uint8); img[100:200, 40:260] = 1   # crosses 2 blocks
>>> out = tempfile.TemporaryDirectory()
>>> res = segment_slide(img, out.name, predictor=ClassMapPredictor(),
...                     params=SlideParams(block_size=128, overlap=32, tissue=False),
...                     post={"split": "none", "min_size": 1})
>>> res.n_objects, res.labels_shape
(1, (300, 300))
>>> out.cleanup()
"""

from __future__ import annotations

from .blocks import link_block, resolve, run_block
from .output import (
    LABEL_NAME,
    TABLE_COLUMNS,
    SlideResult,
    create_store,
    finish_slide,
    labels_layer_data,
    measure_block,
    object_table,
    read_labels,
    write_block,
)
from .plan import SlideJob, SlideParams, SlidePlan, open_source, plan_slide
from .predictors import ClassMapPredictor, ModelPredictor, Predictor
from .segment import iter_segment_slide, segment_slide
from .tissue import TissueMask, tissue_mask

__all__ = [
    "LABEL_NAME", "TABLE_COLUMNS", "ClassMapPredictor", "ModelPredictor", "Predictor",
    "SlideJob", "SlideParams", "SlidePlan", "SlideResult", "TissueMask", "create_store",
    "finish_slide", "iter_segment_slide", "labels_layer_data", "link_block", "measure_block",
    "object_table", "open_source", "plan_slide", "read_labels", "resolve", "run_block",
    "segment_slide", "tissue_mask", "write_block",
]
