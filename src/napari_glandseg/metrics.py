"""Pixel and object metrics, as the segmentation challenges define them (Qt-free).

One sparse overlap table (pixel counts of every pair of predicted and true objects that touch,
built with one ``np.unique``) serves all object metrics. Matching at IoU > 0.5 needs no
assignment (each object has at most one such partner); below 0.5 scipy's Hungarian
``linear_sum_assignment`` maximises the number of matches first, as cellpose does.

Inputs are label images of the same shape and any integer dtype. Instance labels (one id per
object) are used as they are; a binary mask (values 0/1 only) is split into objects by
8-connected components first.

Examples
--------
>>> import numpy as np
>>> truth = np.zeros((6, 6), int); truth[1:3, 1:3] = 1; truth[3:5, 3:6] = 2
>>> pred = np.zeros((6, 6), int); pred[1:3, 1:3] = 7
>>> m = evaluate(pred, truth)
>>> round(m["dice"], 4), round(m["object_f1"], 4), round(m["aji"], 4), round(m["pq"], 4)
(0.5714, 0.6667, 0.4, 0.6667)
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import GlandsegError
from .labels import as_instances, relabel

if TYPE_CHECKING:
    from scipy.sparse import csr_array

    from .progress import Progress

IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)
KEYS = ("dice", "iou", "accuracy", "precision", "recall", "object_f1", "object_dice",
        "object_hausdorff", "aji", "pq", "map")


# --------------------------------------------------------------------------------------------
# inputs


def _check_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise GlandsegError(f"prediction has shape {pred.shape} but ground truth has "
                            f"shape {truth.shape}")
    for name, a in (("prediction", pred), ("ground truth", truth)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise GlandsegError(f"{name} must be integer labels, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise GlandsegError(f"{name} has negative labels (minimum {a.min()})")
    return pred, truth


@dataclass
class Overlap:
    """Pixel counts shared by predicted and true objects, stored sparsely.

    Only pairs that share at least one pixel are kept (``rows``, ``cols``, ``counts``: index
    into ``pred_ids`` and ``true_ids``, and the shared pixels), so memory grows with the
    number of touching pairs, not with (objects)^2: 22,500 objects on each side need a few
    MB, where a dense matrix needed 3.8 GiB.
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_areas: np.ndarray
    true_areas: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> Overlap:
        p_ids, p = np.unique(pred, return_inverse=True)
        t_ids, t = np.unique(truth, return_inverse=True)
        p, t = p.ravel(), t.ravel()
        # make 0 (background) index 0 even when absent
        if p_ids[0] != 0:
            p_ids, p = np.concatenate([[0], p_ids]), p + 1
        if t_ids[0] != 0:
            t_ids, t = np.concatenate([[0], t_ids]), t + 1
        n_t = len(t_ids)
        both = (p > 0) & (t > 0)
        keys, counts = np.unique(p[both].astype(np.int64) * n_t + t[both], return_counts=True)
        rows, cols = np.divmod(keys, n_t)
        return cls(p_ids[1:], t_ids[1:], np.bincount(p, minlength=len(p_ids))[1:],
                   np.bincount(t, minlength=n_t)[1:], rows - 1, cols - 1, counts)

    @property
    def inter(self) -> csr_array:
        """The intersections as a scipy sparse ``(n_pred, n_true)`` matrix."""
        from scipy.sparse import csr_array

        return csr_array((self.counts, (self.rows, self.cols)),
                         shape=(len(self.pred_ids), len(self.true_ids)))

    def iou(self) -> np.ndarray:
        """IoU of each stored pair (aligned with ``rows`` and ``cols``)."""
        union = self.pred_areas[self.rows] + self.true_areas[self.cols] - self.counts
        return self.counts / np.maximum(union, 1)

    def dice(self) -> np.ndarray:
        """Dice of each stored pair."""
        return 2 * self.counts / (self.pred_areas[self.rows] + self.true_areas[self.cols])

    def best(self, values: np.ndarray, by: str) -> np.ndarray:
        """For each predicted (``by="pred"``) or true object, the index of the stored pair
        with the largest ``values`` (ties: the lowest partner index), or -1 when it touches
        nothing."""
        own, other, n = ((self.rows, self.cols, len(self.pred_ids)) if by == "pred" else
                         (self.cols, self.rows, len(self.true_ids)))
        out = np.full(n, -1, np.int64)
        if len(own):
            order = np.lexsort((-other, values, own))
            last = np.r_[own[order][1:] != own[order][:-1], True]
            out[own[order][last]] = order[last]
        return out


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (pred index, truth index) of a one-to-one matching of a dense IoU matrix with
    IoU > ``threshold``: as many pairs as possible, then the largest total IoU of them.

    The number of pairs above the threshold is maximised first, as cellpose's
    ``_true_positive`` does: maximising total IoU and thresholding afterwards can drop a
    pair above the threshold in favour of two below it. From 0.5 up each object can have at
    most one partner above the threshold, so no assignment is needed.
    """
    iou = np.asarray(iou, float)
    if iou.size == 0:
        return np.zeros(0, int), np.zeros(0, int)
    if threshold >= 0.5:
        rows, cols = np.nonzero(iou > threshold)
        return rows, cols
    from scipy.optimize import linear_sum_assignment

    above = iou > threshold
    # one per match, plus less than one in all for the matches' IoU (cellpose's cost, with
    # pairs below the threshold counting nothing)
    cost = -(above * (1 + iou / (2 * max(1, min(iou.shape)))))
    rows, cols = linear_sum_assignment(cost)
    keep = above[rows, cols]
    return rows[keep], cols[keep]


# --------------------------------------------------------------------------------------------
# pixel metrics


def pixel_metrics(pred: np.ndarray, truth: np.ndarray, classes: int | None = None) -> dict:
    """Dice, IoU (Jaccard), accuracy, precision and recall of pixels.

    Binary (``classes`` None): foreground is any label > 0 on each side.
    Multi-class (``classes`` = K > 2, labels 0..K-1): per class 1..K-1 and their mean under
    ``per_class`` and the top-level keys; accuracy is over all pixels.

    Definitions (TP, FP, FN, TN counted in pixels): Dice = 2TP / (2TP + FP + FN);
    IoU = TP / (TP + FP + FN); precision = TP / (TP + FP); recall = TP / (TP + FN);
    accuracy = (TP + TN) / N. A ratio with 0 / 0 is 1 (nothing to find, nothing found).
    """
    pred, truth = _check_pair(pred, truth)
    if classes is None or classes <= 2:
        return _binary_counts_to_metrics(*_counts(pred > 0, truth > 0))
    per = {}
    for c in range(1, classes):
        per[c] = _binary_counts_to_metrics(*_counts(pred == c, truth == c))
    out: dict = {k: float(np.mean([per[c][k] for c in per])) for k in
                 ("dice", "iou", "precision", "recall")}
    out["accuracy"] = float((pred == truth).mean()) if pred.size else 1.0
    out["per_class"] = per
    return out


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(t)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(a, b) -> float:
    return 1.0 if b == 0 else a / b


def _binary_counts_to_metrics(tp, fp, fn, tn) -> dict:
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn),
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn)}


# --------------------------------------------------------------------------------------------
# object metrics


def object_f1(ov: Overlap) -> dict:
    """GlaS object-level F1 (Sirinukunwattana et al., MedIA 2017).

    A predicted object is a true positive when it covers more than 50% of the ground-truth
    object it overlaps most; other predicted objects are false positives and ground-truth
    objects without a true positive are false negatives. F1 = 2TP / (2TP + FP + FN).
    """
    n_p, n_t = len(ov.pred_ids), len(ov.true_ids)
    best = ov.best(ov.counts, "pred")
    k = best[best >= 0]
    hit = ov.counts[k] / ov.true_areas[ov.cols[k]] > 0.5
    tp = len(np.unique(ov.cols[k][hit]))
    fp, fn = n_p - tp, n_t - tp
    return {"tp": tp, "fp": fp, "fn": fn, "object_f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def object_status(pred: np.ndarray | None, truth: np.ndarray | None,
                  ov: Overlap | None = None) -> list[dict]:
    """Each object's fate under the GlaS object-F1 rule, for overlays and object tables.

    Returns one dict per predicted object (``side="pred"``, ``status`` TP or FP) and per
    missed true object (``side="truth"``, ``status="FN"``), with ``id``, ``area``, the best
    overlapping object on the other side (``match``, 0 if none) and their ``iou``. ``ov``:
    the overlap table of these instances, when the caller has it.

    >>> truth = np.array([[1, 1, 0, 2]]); pred = np.array([[5, 5, 0, 0]])
    >>> [(o["side"], o["id"], o["status"]) for o in object_status(pred, truth)]
    [('pred', 5, 'TP'), ('truth', 2, 'FN')]
    """
    if ov is None:
        pred, truth = _check_pair(pred, truth)
        ov = Overlap.of(as_instances(pred), as_instances(truth))
    iou = ov.iou()
    out, hit = [], set()
    for i, k in enumerate(ov.best(ov.counts, "pred")):
        j = ov.cols[k] if k >= 0 else -1
        ok = k >= 0 and ov.counts[k] / ov.true_areas[j] > 0.5
        if ok:
            hit.add(int(j))
        out.append({"side": "pred", "id": int(ov.pred_ids[i]), "status": "TP" if ok else "FP",
                    "area": int(ov.pred_areas[i]),
                    "match": int(ov.true_ids[j]) if k >= 0 else 0,
                    "iou": float(iou[k]) if k >= 0 else 0.0})
    for j, k in enumerate(ov.best(ov.counts, "truth")):
        if j not in hit:
            out.append({"side": "truth", "id": int(ov.true_ids[j]), "status": "FN",
                        "area": int(ov.true_areas[j]),
                        "match": int(ov.pred_ids[ov.rows[k]]) if k >= 0 else 0,
                        "iou": float(iou[k]) if k >= 0 else 0.0})
    return out


def merges_and_splits(ov: Overlap) -> tuple[dict, dict]:
    """Predicted objects that merge true ones, and true objects split between predictions.

    A predicted object *merges* when it covers more than half of each of two or more true
    objects; a true object is *split* when two or more predicted objects lie more than half
    inside it. Returns ``({pred id: [true ids]}, {true id: [pred ids]})``. (Object F1 counts
    a merge as one TP, which is why Compare shows it apart.)
    """
    covers = ov.counts / ov.true_areas[ov.cols] > 0.5
    inside = ov.counts / ov.pred_areas[ov.rows] > 0.5
    merged: dict = {}
    for r, c in zip(ov.rows[covers], ov.cols[covers], strict=True):
        merged.setdefault(int(ov.pred_ids[r]), []).append(int(ov.true_ids[c]))
    split: dict = {}
    for r, c in zip(ov.rows[inside], ov.cols[inside], strict=True):
        split.setdefault(int(ov.true_ids[c]), []).append(int(ov.pred_ids[r]))
    return ({k: v for k, v in merged.items() if len(v) > 1},
            {k: v for k, v in split.items() if len(v) > 1})


def object_dice(ov: Overlap) -> float:
    """GlaS object Dice: 0.5 * (sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(G*(S_j), S_j)),

    with w_i = |G_i| / sum|G|, v_j = |S_j| / sum|S|, and S*(G_i) the predicted object that
    overlaps G_i most (Dice 0 when none does), G*(S_j) likewise. 1 when both are empty,
    0 when exactly one is.
    """
    g, s = ov.true_areas, ov.pred_areas
    if len(g) == 0 or len(s) == 0:
        return float(len(g) == len(s))
    dice = np.append(ov.dice(), 0.0)  # index -1: no partner, Dice 0
    d_g = dice[ov.best(ov.counts, "truth")]
    d_s = dice[ov.best(ov.counts, "pred")]
    return float(0.5 * ((g / g.sum()) @ d_g + (s / s.sum()) @ d_s))


def object_hausdorff(pred: np.ndarray, truth: np.ndarray, ov: Overlap) -> float:
    """GlaS object Hausdorff: the object-Dice weighting applied to Hausdorff distances.

    Each object is paired with the object on the other side it overlaps most or, when it
    overlaps none, the nearest one (smallest Hausdorff distance), as the challenge code does.
    0 when both sides are empty; infinite when exactly one is.

    Each object's pixel coordinates are read once, from its own bounding box, and a pair's
    distance comes from two nearest-neighbour queries (the exact Euclidean Hausdorff
    distance of the two pixel sets, as :func:`skimage.metrics.hausdorff_distance`). For an
    object that overlaps nothing, candidates are tried nearest first by a lower bound (the
    distance from each of its four extreme pixels to the other object's bounding box, and
    back): the search stops when the bound passes the best distance found, so the answer is
    the exact minimum without measuring every pair.
    """
    g, s = ov.true_areas, ov.pred_areas
    if len(g) == 0 or len(s) == 0:
        return 0.0 if len(g) == len(s) else float("inf")
    p_side, t_side = _PixelSets(pred, ov.pred_ids), _PixelSets(truth, ov.true_ids)
    cache: dict = {}

    def hd(i, j):
        if (i, j) not in cache:
            cache[(i, j)] = max(t_side.tree(j).query(p_side.coords(i))[0].max(),
                                p_side.tree(i).query(t_side.coords(j))[0].max())
        return cache[(i, j)]

    def nearest(own: _PixelSets, k: int, other: _PixelSets, pair) -> float:
        bound = np.maximum(_to_boxes(own.extremes(k), other.boxes),
                           _to_boxes(other.all_extremes(), own.boxes[k:k + 1]).T[0])
        best = float("inf")
        for m in np.argsort(bound, kind="stable"):
            if bound[m] >= best:
                break
            best = min(best, pair(m))
        return best

    best_g, best_s = ov.best(ov.counts, "truth"), ov.best(ov.counts, "pred")
    h_g = np.array([hd(ov.rows[k], j) if k >= 0 else
                    nearest(t_side, j, p_side, lambda i, j=j: hd(i, j))
                    for j, k in enumerate(best_g)])
    h_s = np.array([hd(i, ov.cols[k]) if k >= 0 else
                    nearest(p_side, i, t_side, lambda j, i=i: hd(i, j))
                    for i, k in enumerate(best_s)])
    return float(0.5 * ((g / g.sum()) @ h_g + (s / s.sum()) @ h_s))


class _PixelSets:
    """The pixel coordinates of each object of a label image (read lazily from its bounding
    box), their KD-trees, bounding boxes and extreme pixels, for Hausdorff distances."""

    def __init__(self, labels: np.ndarray, ids: np.ndarray):
        from scipy.ndimage import find_objects

        self.labels, self.ids = labels, ids
        self.slices = find_objects(relabel(labels, ids))
        self.boxes = np.array([[sl[0].start, sl[1].start, sl[0].stop - 1, sl[1].stop - 1]
                               for sl in self.slices], float).reshape(-1, 4)
        self._coords: dict = {}
        self._trees: dict = {}
        self._extremes: np.ndarray | None = None

    def coords(self, k: int) -> np.ndarray:
        if k not in self._coords:
            sl = self.slices[k]
            yx = np.argwhere(self.labels[sl] == self.ids[k])
            self._coords[k] = (yx + [sl[0].start, sl[1].start]).astype(float)
        return self._coords[k]

    def tree(self, k: int):
        if k not in self._trees:
            from scipy.spatial import cKDTree

            self._trees[k] = cKDTree(self.coords(k))
        return self._trees[k]

    def extremes(self, k: int) -> np.ndarray:
        """(4, 2): the object's topmost, bottommost, leftmost and rightmost pixels."""
        c = self.coords(k)
        return c[[c[:, 0].argmin(), c[:, 0].argmax(), c[:, 1].argmin(), c[:, 1].argmax()]]

    def all_extremes(self) -> np.ndarray:
        """(n, 4, 2): :meth:`extremes` of every object (computed once)."""
        if self._extremes is None:
            self._extremes = np.stack([self.extremes(k) for k in range(len(self.ids))])
        return self._extremes


def _to_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For points ``(..., P, 2)`` and boxes ``(B, 4)`` (y0, x0, y1, x1, inclusive): the
    largest over the points of each point's distance to each box, shape ``(..., B)`` (a
    lower bound of the Hausdorff distance of the points' object to anything in the box)."""
    p = points[..., None, :, :]  # (..., 1, P, 2)
    lo, hi = boxes[:, None, :2], boxes[:, None, 2:]  # (B, 1, 2)
    gap = np.maximum(np.maximum(lo - p, p - hi), 0.0)  # (..., B, P, 2)
    return np.sqrt((gap ** 2).sum(-1)).max(-1)


def aji(ov: Overlap) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017).

    For each ground-truth object G_i, take the predicted S_j with the highest IoU; add
    |G_i & S_j| to C and |G_i | S_j| to U (just |G_i| when no prediction touches it). Then
    add the areas of predicted objects never chosen to U. AJI = C / U; 1 when both are empty.
    """
    g, s = ov.true_areas, ov.pred_areas
    if len(g) == 0 and len(s) == 0:
        return 1.0
    if len(s) == 0 or len(g) == 0:
        return 0.0
    best = ov.best(ov.iou(), "truth")
    k = best[best >= 0]
    c = ov.counts[k].sum()
    u = g.sum() + (s[ov.rows[k]] - ov.counts[k]).sum()
    unused = np.setdiff1d(np.arange(len(s)), ov.rows[k])
    u += s[unused].sum()
    return float(c / u)


def panoptic_quality(ov: Overlap) -> dict:
    """Panoptic quality (Kirillov et al. 2019) with IoU > 0.5 matching: PQ = DQ x SQ.

    DQ = TP / (TP + FP/2 + FN/2); SQ = mean IoU of matched pairs. 1 when both are empty.
    Above 0.5 an object has at most one partner, so every pair above it is a match.
    """
    iou = ov.iou()
    matched = iou[iou > 0.5]
    tp = len(matched)
    fp, fn = len(ov.pred_ids) - tp, len(ov.true_ids) - tp
    if tp + fp + fn == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    sq = float(matched.mean()) if tp else 0.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": dq * sq, "dq": dq, "sq": sq}


def average_precision(ov: Overlap,
                      thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS) -> dict:
    """Mean average precision as the 2018 Data Science Bowl defined it.

    At each IoU threshold t in 0.5:0.05:0.95, precision(t) = TP / (TP + FP + FN) with
    one-to-one matches of IoU > t; mAP is their mean. 1 when both are empty. (A threshold
    below 0.5 is matched with :func:`match` on the touching pairs.)
    """
    iou = ov.iou()
    n_p, n_t = len(ov.pred_ids), len(ov.true_ids)
    if n_p == 0 and n_t == 0:
        return {"map": 1.0, "ap": {float(t): 1.0 for t in thresholds}}
    ap = {}
    for t in thresholds:
        if t >= 0.5:
            tp = int((iou > t).sum())
        else:
            from scipy.sparse import csr_array

            dense = csr_array((iou, (ov.rows, ov.cols)), shape=(n_p, n_t)).toarray()
            tp = len(match(dense, t)[0])
        ap[float(t)] = tp / (n_p + n_t - tp)
    return {"map": float(np.mean(list(ap.values()))), "ap": ap}


# --------------------------------------------------------------------------------------------
# everything at once


def object_scores(ov: Overlap) -> dict:
    """The object scores checkpoints and post-processing are chosen on, for one image:
    ``object_f1`` (with its counts ``tp, fp, fn``), ``object_dice``, ``aji`` and ``pq``
    (with ``dq, sq``). :func:`summarise_objects` aggregates them over images."""
    out = dict(object_f1(ov))
    out["object_dice"] = object_dice(ov)
    out["aji"] = aji(ov)
    out.update(panoptic_quality(ov))
    return out


def summarise_objects(rows: list[dict]) -> dict:
    """Object scores of many images as :data:`AGGREGATION` says: ``object_f1`` pooled over
    all objects (TP/FP/FN summed, as GlaS), ``object_dice``, ``aji`` and ``pq`` averaged
    per image; ``objects`` is the mean of object F1 and object Dice (what glands are
    selected on). ``rows``: dicts from :func:`object_scores` or :func:`evaluate`."""
    rows = list(rows)
    if not rows:
        raise GlandsegError("no images to evaluate")
    out = {"object_f1": _pooled_object_f1(rows)}
    for k in ("object_dice", "aji", "pq"):
        out[k] = float(np.mean([r[k] for r in rows]))
    out["objects"] = (out["object_f1"] + out["object_dice"]) / 2
    return out


def _pooled_object_f1(rows) -> float:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def evaluate(pred: np.ndarray, truth: np.ndarray, classes: int | None = None,
             hausdorff: bool = True) -> dict:
    """Every metric for one image.

    Parameters
    ----------
    pred, truth : array-like, (Y, X) integer labels
        Instance labels, binary masks (split into connected objects for object metrics), or,
        with ``classes``, class maps 0..classes-1.
    classes : int, optional
        For multi-class maps: pixel metrics per class (under ``per_class``) and their mean;
        object metrics then use the foreground (label > 0) split into connected objects.
    hausdorff : bool
        Compute the object Hausdorff distance (the slowest metric).

    Returns
    -------
    dict
        ``dice, iou, accuracy, precision, recall`` (pixels), ``object_f1, object_dice,
        object_hausdorff`` (GlaS), ``aji``, ``pq`` (with ``dq, sq``), ``map`` (DSB 2018), and
        the counts ``tp, fp, fn`` of the object F1.
    """
    pred, truth = _check_pair(pred, truth)
    p_inst, t_inst = _instances(pred, truth, classes)
    return _evaluate(pred, truth, classes, hausdorff, p_inst, t_inst,
                     Overlap.of(p_inst, t_inst))


def _instances(pred, truth, classes):
    """The objects object metrics count: instance labels as they are (binary masks split
    into connected objects); for class maps the foreground's connected objects."""
    if classes is not None and classes > 2:
        return as_instances(pred > 0), as_instances(truth > 0)
    return as_instances(pred), as_instances(truth)


def _evaluate(pred, truth, classes, hausdorff, p_inst, t_inst, ov) -> dict:
    out = pixel_metrics(pred, truth, classes)
    scores = object_scores(ov)
    for k in ("tp", "fp", "fn", "object_f1", "object_dice"):  # the CSV's column order
        out[k] = scores.pop(k)
    out["object_hausdorff"] = object_hausdorff(p_inst, t_inst, ov) if hausdorff else float("nan")
    out.update(scores)
    out["map"] = average_precision(ov)["map"]
    out["n_pred"], out["n_true"] = len(ov.pred_ids), len(ov.true_ids)
    return out


#: overlay values of :func:`iter_compare`: each pixel's fate (class maps: TP is the right
#: class, "wrong class" a foreground pixel given another foreground class)
STATUS_VALUE = {"TP": 1, "FP": 2, "FN": 3, "wrong class": 4}


@dataclass
class Comparison:
    """What :func:`iter_compare` returns.

    Attributes
    ----------
    metrics : dict
        :func:`evaluate`'s scores, with ``merged`` and ``split`` counts.
    rows : list of dict
        One per true object (``status`` TP, missed, merged or split, with ``note``) and one
        per prediction matched to nothing and no part of a split or merge (FP). Each has
        ``side`` and ``id`` (the object to show), ``truth``, ``prediction`` (ids as text),
        ``iou`` and ``area``.
    overlay : ndarray
        Per pixel :data:`STATUS_VALUE` (TP and FP predictions, missed truth; for class maps
        the right class, a false or missed foreground pixel, or the wrong class).
    outlines : ndarray
        Predicted objects that merge truths or split one, with their own ids (0 elsewhere),
        for outlines; ``merged`` and ``split`` say which ids are which.
    merged, split : dict
        As :func:`merges_and_splits`.
    """

    metrics: dict
    rows: list
    overlay: np.ndarray
    outlines: np.ndarray
    merged: dict
    split: dict


def iter_compare(pred: np.ndarray, truth: np.ndarray,
                 classes: int | None = None) -> Generator[Progress, None, Comparison]:
    """Score a prediction against the truth for Compare, yielding a Progress per step;
    returns a :class:`Comparison`. One overlap table serves every object metric, the
    object rows, the merges and splits."""
    from .progress import Progress

    pred, truth = _check_pair(pred, truth)
    yield Progress(0, 4, "matching objects…")
    p_inst, t_inst = _instances(pred, truth, classes)
    ov = Overlap.of(p_inst, t_inst)
    yield Progress(1, 4, "scoring (pixels, objects, Hausdorff, AJI, PQ, mAP)…")
    metrics = _evaluate(pred, truth, classes, True, p_inst, t_inst, ov)
    yield Progress(2, 4, "finding merged and split objects…")
    status = object_status(None, None, ov)
    merged, split = merges_and_splits(ov)
    metrics["merged"], metrics["split"] = len(merged), len(split)
    rows = _object_rows(ov, status, merged, split)
    yield Progress(3, 4, "drawing the overlay…")
    lut_p = np.zeros(int(p_inst.max(initial=0)) + 1, np.uint8)
    lut_t = np.zeros(int(t_inst.max(initial=0)) + 1, np.uint8)
    for o in status:
        (lut_p if o["side"] == "pred" else lut_t)[o["id"]] = STATUS_VALUE[o["status"]]
    overlay = lut_p[p_inst]
    fn = lut_t[t_inst]
    overlay[(overlay == 0) & (fn > 0)] = STATUS_VALUE["FN"]
    if classes is not None and classes > 2:  # per pixel and class, not per object
        overlay = np.zeros(pred.shape, np.uint8)
        fg_p, fg_t = pred > 0, truth > 0
        overlay[fg_p & fg_t & (pred == truth)] = STATUS_VALUE["TP"]
        overlay[fg_p & ~fg_t] = STATUS_VALUE["FP"]
        overlay[~fg_p & fg_t] = STATUS_VALUE["FN"]
        overlay[fg_p & fg_t & (pred != truth)] = STATUS_VALUE["wrong class"]
        merged, split = {}, {}
    outlined = sorted(set(merged) | {p for ps in split.values() for p in ps})
    keep = np.zeros_like(lut_p, dtype=bool)
    keep[outlined] = True
    outlines = np.where(keep[p_inst], p_inst, 0)
    yield Progress(4, 4, "done")
    return Comparison(metrics, rows, overlay, outlines, merged, split)


def _object_rows(ov: Overlap, status: list, merged: dict, split: dict) -> list:
    """One row per true object and one per unmatched prediction (see :class:`Comparison`)."""
    iou = ov.iou()
    pair_iou = {(int(ov.pred_ids[r]), int(ov.true_ids[c])): float(v)
                for r, c, v in zip(ov.rows, ov.cols, iou, strict=True)}
    tp_of = {o["match"]: o["id"] for o in status if o["side"] == "pred" and o["status"] == "TP"}
    merged_into = {t: p for p, ts in merged.items() for t in ts}
    pieces = {p for ps in split.values() for p in ps}
    best = ov.best(ov.counts, "truth")
    rows = []
    for j, t in enumerate(ov.true_ids):
        t = int(t)
        row = {"side": "truth", "id": t, "truth": str(t), "area": int(ov.true_areas[j])}
        if t in split:
            ps = split[t]
            row.update(status="split", prediction=", ".join(map(str, ps)),
                       iou=max(pair_iou.get((p, t), 0.0) for p in ps),
                       note=f"split into {', '.join(map(str, ps))}")
        elif t in merged_into:
            p = merged_into[t]
            others = [x for x in merged[p] if x != t]
            row.update(status="merged", prediction=str(p), iou=pair_iou.get((p, t), 0.0),
                       note=f"merged with {', '.join(map(str, others))} in prediction {p}")
        elif t in tp_of:
            p = tp_of[t]
            row.update(status="TP", prediction=str(p), iou=pair_iou.get((p, t), 0.0),
                       note="")
        else:
            k = best[j]
            p = int(ov.pred_ids[ov.rows[k]]) if k >= 0 else 0
            row.update(status="missed", prediction=str(p) if p else "",
                       iou=pair_iou.get((p, t), 0.0),
                       note=f"best overlap: prediction {p}" if p else "nothing found here")
        rows.append(row)
    for o in status:
        if o["side"] == "pred" and o["status"] == "FP" and o["id"] not in pieces and \
                o["id"] not in merged:
            rows.append({"side": "pred", "id": o["id"], "truth": "", "prediction": str(o["id"]),
                         "area": o["area"], "status": "FP", "iou": o["iou"],
                         "note": "matches no true object"})
    return rows


# --------------------------------------------------------------------------------------------
# datasets

PIXEL_KEYS = ("dice", "iou", "accuracy", "precision", "recall")
#: How :func:`summarise` aggregates each metric over images.
AGGREGATION = {
    "dice": "pooled over all pixels (also mean per image as *_image_mean)",
    "iou": "pooled over all pixels", "accuracy": "pooled over all pixels",
    "precision": "pooled over all pixels", "recall": "pooled over all pixels",
    "object_f1": "pooled TP/FP/FN over all images (GlaS)",
    "object_dice": "mean of per-image values (GlaS evaluation scripts)",
    "object_hausdorff": "mean of per-image values (GlaS evaluation scripts)",
    "aji": "mean of per-image values (MoNuSeg)", "pq": "mean of per-image values",
    "map": "mean of per-image values (DSB 2018)",
}


def evaluate_dataset(items: Iterable[tuple[str, np.ndarray, np.ndarray]],
                     classes: int | None = None,
                     hausdorff: bool = True) -> tuple[list[dict], dict]:
    """Evaluate many images (blocking); see :func:`iter_evaluate_dataset`."""
    from .progress import run_to_end

    return run_to_end(iter_evaluate_dataset(items, classes=classes, hausdorff=hausdorff))


def iter_evaluate_dataset(items: Iterable[tuple[str, np.ndarray, np.ndarray]],
                          classes: int | None = None, hausdorff: bool = True,
                          total: int | None = None,
                          ) -> Generator[Progress, None, tuple[list[dict], dict]]:
    """Evaluate many images, yielding a Progress after each; returns ``(rows, summary)``.

    Parameters
    ----------
    items : iterable of (name, pred, truth)
        Arrays, or zero-argument callables returning them (read lazily, one at a time).
    total : int, optional
        Number of items, for the progress record (``len(items)`` when it has one).

    Returns
    -------
    rows : list of dict
        One per image: ``name`` and every key of :func:`evaluate`.
    summary : dict
        Each metric aggregated as :data:`AGGREGATION` says, with ``<key>_std`` (standard
        deviation of per-image values), ``n_images``, and ``best``/``worst`` image by Dice.
        With ``classes`` > 2 also ``per_class``: class -> pixel metrics pooled over all
        images (the top-level pixel metrics are then foreground vs background).
    """
    import time

    from .progress import Progress

    total = total if total is not None else (len(items) if isinstance(items, Sized) else 0)
    rows, pooled, t0 = [], np.zeros(4, np.int64), time.perf_counter()
    per_class = {c: np.zeros(4, np.int64) for c in range(1, classes or 0)} \
        if classes and classes > 2 else {}
    for name, pred, truth in items:
        pred, truth = (a() if callable(a) else a for a in (pred, truth))
        pred, truth = _check_pair(pred, truth)
        m = evaluate(pred, truth, classes=classes, hausdorff=hausdorff)
        for c, cm in m.pop("per_class", {}).items():
            m[f"dice_class_{c}"] = cm["dice"]
        rows.append({"name": name, **m})
        pooled += _counts(pred > 0, truth > 0)
        for c in per_class:
            per_class[c] += _counts(pred == c, truth == c)
        yield Progress(len(rows), max(total, len(rows)), name, time.perf_counter() - t0)
    summary = summarise(rows, pooled)
    if per_class:
        summary["per_class"] = {c: _binary_counts_to_metrics(*[int(v) for v in counts])
                                for c, counts in per_class.items()}
    return rows, summary


def summarise(rows: list[dict], pooled: Sequence[int] | np.ndarray | None = None) -> dict:
    """Aggregate per-image rows as :data:`AGGREGATION` says (the top-level keys).

    Both aggregations are also given whole, for tables that must say which is which:
    ``image_mean`` (every key, mean of per-image values) and ``pooled`` (pixel metrics over
    all pixels and the object F1 over all objects: the keys that can be pooled).
    """
    if not rows:
        raise GlandsegError("no images to evaluate")
    summary: dict = {"n_images": len(rows)}
    for k in KEYS:
        vals = np.array([r[k] for r in rows], float)
        summary[k] = float(np.mean(vals))
        summary[f"{k}_std"] = float(np.std(vals))
    summary["image_mean"] = {k: summary[k] for k in KEYS}
    summary["dice_image_mean"] = summary["dice"]
    summary["pooled"] = {}
    if pooled is not None:
        summary["pooled"].update(_binary_counts_to_metrics(*[int(v) for v in pooled]))
    summary["pooled"]["object_f1"] = _pooled_object_f1(rows)
    summary.update(summary["pooled"])
    by_dice = sorted(rows, key=lambda r: r["dice"])
    summary["worst"] = [r["name"] for r in by_dice[:3]]
    summary["best"] = [r["name"] for r in by_dice[::-1][:3]]
    summary["aggregation"] = AGGREGATION
    return summary
