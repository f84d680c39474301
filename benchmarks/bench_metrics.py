"""Metric speed on 1000x1000 label images with ~500 objects on each side.

    python benchmarks/bench_metrics.py [--objects 500] [--repeats 3]

Compares the sparse overlap table (one np.unique) with a naive per-object-pair loop in the
same run, then times the whole of ``evaluate`` with and without the object Hausdorff distance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_glandseg.metrics import Overlap, evaluate


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


if __name__ == "__main__":
    main()
