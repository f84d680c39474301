"""Stages 4-5 of a slide: the OME-Zarr labels written block by block, measurements, the
table and GeoJSON (:func:`finish_slide`); and reading a finished store back."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._files import atomic_path
from .._types import Array, PathType
from ..errors import GlandsegError
from .blocks import _load_labels
from .plan import SlidePlan

if TYPE_CHECKING:
    import pandas as pd

LABEL_NAME = "glandseg"
#: Columns of the per-object table (lengths in um, areas in um^2; px columns when no scale).
TABLE_COLUMNS = ("label", "class", "area_um2", "perimeter_um", "centroid_y_um",
                 "centroid_x_um", "mean_probability", "area_px", "bbox_y0", "bbox_x0",
                 "bbox_y1", "bbox_x1")


# --------------------------------------------------------------------------------------------
# stage 4: the OME-Zarr labels, block by block


def _level_chunk(plan: SlidePlan, lv: int) -> int:
    return math.gcd(plan.job.params.block_size >> lv, plan.job.params.chunk_size)


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
    ome: Any = labels_grp.attrs.get("ome") or {}
    if "labels" not in ome:
        write_label_metadata(labels_grp, LABEL_NAME, fmt=fmt,
                             source={"image": "../../"})
    meta = {"source": str(plan.source) if isinstance(plan.source, str) else None,
            "pyramid_level": plan.level, "downsample": plan.downsample,
            "pixel_size_um": plan.pixel_size_um, "class_names": list(plan.class_names),
            "block_size": plan.job.params.block_size, "overlap": plan.job.params.overlap}
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
        arr = grp[str(lv)]
        assert isinstance(arr, zarr.Array)
        arr[y0 // s: math.ceil(y1 / s), x0 // s: math.ceil(x1 / s)] = core[::s, ::s]


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
        from ..geojson import labels_to_geojson

        names = list(plan.class_names) or ["background", "foreground"]
        cls = {int(i) + 1: int(objects["class_index"][i]) for i in own}
        features = labels_to_geojson(
            crop, classes=cls, class_names=names, pixel_size_um=plan.image_pixel_size_um,
            offset=(r0 * plan.downsample, c0 * plan.downsample), downsample=plan.downsample,
            object_type="detection")["features"]
    return {"perimeter": perimeter, "features": features}


def object_table(plan: SlidePlan, objects: dict, perimeters: dict) -> pd.DataFrame:
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
    from ..postprocessing import write_csv

    perimeters = {k: v for m in measures for k, v in m["perimeter"].items()}
    table = object_table(plan, objects, perimeters)
    write_csv(table, plan.table_path, overwrite=True)
    geojson = None
    if plan.geojson:
        from ..geojson import write_geojson

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
# reading the result back


def read_labels(store: PathType, level: int = 0) -> tuple[list[Array], float | None]:
    """The labels of a finished ``.ome.zarr`` as a lazy multiscale list (dask arrays, full
    resolution first) and their um/px (None when unknown)."""
    import dask.array as da
    import zarr

    store = Path(store)
    try:
        grp = zarr.open_group(str(store / "labels" / LABEL_NAME), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise GlandsegError(f"{store}: no glandseg labels (labels/{LABEL_NAME})") from None
    ome: Any = grp.attrs["ome"]
    ms = ome["multiscales"][0]
    levels = [da.from_zarr(grp[d["path"]]) for d in ms["datasets"]][level:]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    unit = ms.get("axes", [{}])[-1].get("unit")
    return levels, (float(scale) if unit == "micrometer" else None)


def labels_layer_data(store: PathType) -> tuple[list[Array], dict[str, Any], str]:
    """A napari LayerDataTuple for a finished store (multiscale Labels, scale in um)."""
    levels, px = read_labels(store)
    metadata: dict[str, Any] = {"source_path": str(store)}
    kwargs: dict[str, Any] = {"name": f"{Path(store).name.removesuffix('.ome.zarr')} [labels]",
                              "multiscale": True, "metadata": metadata}
    if px:
        # in micrometres from the start, as the reader gives the slide: a layer whose units
        # change after it is added leaves napari's canvas with mixed units (no scale bar)
        kwargs["scale"] = (px, px)
        kwargs["units"] = ("um", "um")
        metadata["pixel_size_um"] = px
    return (levels, kwargs, "labels")
