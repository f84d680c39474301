"""Stages 1-3 of a slide: each block segmented on its own (:func:`run_block`), links
between neighbouring blocks' objects (:func:`link_block`), and global ids
(:func:`resolve`). Each is a task on its own (:mod:`napari_glandseg.slides.cohort`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._files import atomic_path
from .plan import SlidePlan, open_source

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
    levels, _ = open_source(plan.source)
    pred = plan.job.predictor
    # a lazy slide's pixels are read in this thread: inside a dask.distributed task, dask's
    # default would send every small read through the scheduler (measured 4x slower)
    with dask.config.set(scheduler="synchronous"):
        classes, prob = pred(levels, box, plan.scale, plan.image_stats)
    # the route's post-processing step (pipeline.objects_of), as a whole-image run's
    if classes.any():
        from ..pipeline import objects_of

        out = objects_of(classes, plan.job.post, class_map=pred.class_map)
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
    h = max(1, plan.job.params.overlap // 2)
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
        for ia, ib in _matches(sa, sb, plan.job.params.join_iou):
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
    for blk, s in stats.items():
        sl = slice(offsets[blk], offsets[blk] + len(s["count"]))
        count[sl] = s["count"]
        sums[sl] = np.stack([s["sum_y"], s["sum_x"], s["sum_p"]], 1)
        hist[sl] = s["hist"]
        bbox[sl] = np.where(s["count"][:, None] > 0, s["bbox"], bbox[sl])
        count[offsets[blk]] = 0  # id 0 of every block is background
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
    luts: dict[str, Any] = {f"{iy}_{ix}": node_gid[offsets[(iy, ix)]: offsets[(iy, ix)] +
                                    len(stats[(iy, ix)]["count"])].copy()
            for iy, ix in stats}
    for lut in luts.values():
        if len(lut):
            lut[0] = 0
    with atomic_path(plan.work / "luts.npz", ".npz") as tmp:
        np.savez(tmp, **luts)
    g = node_gid
    m = len(keep) + 1
    out: dict[str, np.ndarray] = {"area": np.bincount(g, weights=count, minlength=m)[1:]}
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
