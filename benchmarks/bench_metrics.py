"""Metric speed on 1000x1000 label images with ~500 objects on each side.

    python benchmarks/bench_metrics.py [--objects 500] [--repeats 3]

Compares the sparse overlap table (one np.unique) with a naive per-object-pair loop in the
same run, then times the whole of ``evaluate`` with and without the object Hausdorff distance,
and Compare's whole job (``metrics.iter_compare``) against the previous object Hausdorff (every
pair measured with skimage on a crop of the label images, an unmatched object against every
object on the other side), checking the values agree to 1e-9. Half the predictions are
shifted far away so that many objects overlap nothing (the slow case of the old search).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_glandseg.metrics import Overlap, evaluate, iter_compare, object_hausdorff
from napari_glandseg.progress import run_to_end


def random_instances(rng, n, shape=(1000, 1000), r=(8, 20)):
    from skimage.segmentation import expand_labels

    img = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    img[ys, xs] = np.arange(1, n + 1)
    return expand_labels(img, distance=int(rng.integers(*r)))


def naive_overlap(pred, truth):
    p_ids, t_ids = np.unique(pred)[1:], np.unique(truth)[1:]
    out = np.zeros((len(p_ids), len(t_ids)), np.int64)
    for i, p in enumerate(p_ids):
        pm = pred == p
        hit = np.unique(truth[pm])
        for t in hit[hit > 0]:
            out[i, np.searchsorted(t_ids, t)] = np.count_nonzero(pm & (truth == t))
    return out


def previous_object_hausdorff(pred, truth, ov):
    """The implementation Compare used before (kept here as the baseline)."""
    from scipy.ndimage import find_objects
    from skimage.metrics import hausdorff_distance

    from napari_glandseg.labels import relabel

    g, s = ov.true_areas, ov.pred_areas
    p_boxes = find_objects(relabel(pred, ov.pred_ids))
    t_boxes = find_objects(relabel(truth, ov.true_ids))
    cache = {}

    def hd(i, j):
        if (i, j) not in cache:
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                        for a, b in zip(p_boxes[i], t_boxes[j], strict=True))
            cache[(i, j)] = hausdorff_distance(pred[box] == ov.pred_ids[i],
                                               truth[box] == ov.true_ids[j])
        return cache[(i, j)]

    best_g, best_s = ov.best(ov.counts, "truth"), ov.best(ov.counts, "pred")
    h_g = np.array([hd(ov.rows[k], j) if k >= 0 else min(hd(i, j) for i in range(len(s)))
                    for j, k in enumerate(best_g)])
    h_s = np.array([hd(i, ov.cols[k]) if k >= 0 else min(hd(i, j) for j in range(len(g)))
                    for i, k in enumerate(best_s)])
    return float(0.5 * ((g / g.sum()) @ h_g + (s / s.sum()) @ h_s))


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    truth = random_instances(rng, args.objects)
    pred = np.roll(random_instances(np.random.default_rng(0), args.objects), 3, axis=1)
    n_p, n_t = len(np.unique(pred)) - 1, len(np.unique(truth)) - 1
    fast = best_of(lambda: Overlap.of(pred, truth), args.repeats)
    naive = best_of(lambda: naive_overlap(pred, truth), 1)
    assert np.array_equal(Overlap.of(pred, truth).inter.toarray(), naive_overlap(pred, truth))
    no_hd = best_of(lambda: evaluate(pred, truth, hausdorff=False), args.repeats)
    with_hd = best_of(lambda: evaluate(pred, truth), 1)
    print(f"1000x1000, {n_p} predicted and {n_t} true objects")
    print("| step | seconds | vs naive overlap loop |")
    print("|---|---:|---:|")
    print(f"| overlap table (sparse) | {fast:.3f} | {fast / naive:.4f}x |")
    print(f"| naive per-object loop | {naive:.3f} | 1.00x |")
    print(f"| evaluate, all but Hausdorff | {no_hd:.3f} | {no_hd / naive:.4f}x |")
    print(f"| evaluate, with object Hausdorff | {with_hd:.3f} | {with_hd / naive:.4f}x |")

    # Compare's job, and the object Hausdorff against the previous search, same run
    moved = pred.copy()
    far = np.isin(moved, np.unique(moved)[1::2])
    moved = np.where(far, 0, moved)
    moved[np.roll(far, 40, axis=0) & (moved == 0)] = np.roll(pred, 40, axis=0)[
        np.roll(far, 40, axis=0) & (moved == 0)]
    ov = Overlap.of(moved, truth)
    t_new = best_of(lambda: object_hausdorff(moved, truth, ov), 1)
    t_old = best_of(lambda: previous_object_hausdorff(moved, truth, ov), 1)
    new, old = object_hausdorff(moved, truth, ov), previous_object_hausdorff(moved, truth, ov)
    assert abs(new - old) < 1e-9, (new, old)
    t_compare = best_of(lambda: run_to_end(iter_compare(moved, truth)), 1)
    unmatched = int((ov.best(ov.counts, "truth") < 0).sum())
    print(f"\nobject Hausdorff with {unmatched} unmatched true objects: {t_new:.2f} s against "
          f"{t_old:.2f} s before ({t_new / t_old:.3f}x; values agree: {new:.6f})")
    print(f"Compare's whole job (every metric, rows, overlay): {t_compare:.2f} s")


if __name__ == "__main__":
    main()
