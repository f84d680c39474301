"""Metric values computed by hand on tiny arrays, and agreement with MONAI."""

import math

import numpy as np
import pytest
import torch

from napari_glandseg.errors import GlandsegError
from napari_glandseg.metrics import (
    IOU_THRESHOLDS,
    KEYS,
    Overlap,
    aji,
    average_precision,
    evaluate,
    match,
    pixel_metrics,
)


def _two_truth_one_pred():
    truth = np.zeros((6, 6), np.uint16)
    truth[1:3, 1:3] = 1  # 4 px
    truth[3:5, 3:6] = 2  # 6 px
    pred = np.zeros((6, 6), np.int32)
    pred[1:3, 1:3] = 7  # exactly truth object 1
    return pred, truth


def test_hand_computed_values():
    m = evaluate(*_two_truth_one_pred())
    assert set(KEYS) <= set(m)
    # pixels: TP 4, FP 0, FN 6, TN 26
    assert m["dice"] == pytest.approx(8 / 14)
    assert m["iou"] == pytest.approx(4 / 10)
    assert m["accuracy"] == pytest.approx(30 / 36)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(0.4)
    # objects: one TP, one FN
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    assert m["object_f1"] == pytest.approx(2 / 3)
    # object Dice: 0.5 * (0.4 * 1 + 0.6 * 0 + 1.0 * 1)
    assert m["object_dice"] == pytest.approx(0.7)
    # Hausdorff: G2 has no overlap -> nearest object S1; HD(G2, S1) = |(4,5)-(2,2)| = sqrt(13)
    assert m["object_hausdorff"] == pytest.approx(0.5 * 0.6 * math.sqrt(13))
    assert m["aji"] == pytest.approx(4 / 10)  # C = 4, U = 4 + 6
    assert m["pq"] == pytest.approx(2 / 3) and m["sq"] == 1.0
    assert m["map"] == pytest.approx(0.5)  # TP 1 / (TP 1 + FP 0 + FN 1) at every threshold


def test_single_object_split_in_two():
    truth = np.zeros((6, 6), np.uint8)
    truth[1:5, 1:5] = 1  # 16 px
    pred = np.zeros((6, 6), np.uint8)
    pred[1:5, 1:3] = 1
    pred[1:5, 3:5] = 2  # two halves of 8 px
    m = evaluate(pred, truth)
    assert m["dice"] == 1.0
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 1)  # each half covers exactly 50%, not more
    assert m["object_f1"] == 0.0
    assert m["object_dice"] == pytest.approx(2 / 3)
    assert m["aji"] == pytest.approx(8 / 24)
    assert m["pq"] == 0.0 and m["map"] == 0.0


def test_empty_cases():
    truth = np.zeros((5, 5), np.uint8)
    truth[1:3, 1:3] = 1
    empty = np.zeros((5, 5), np.uint8)
    m = evaluate(empty, truth)  # nothing predicted
    assert (m["dice"], m["iou"], m["recall"], m["precision"]) == (0.0, 0.0, 0.0, 1.0)
    assert m["object_f1"] == 0 and m["object_dice"] == 0 and m["aji"] == 0
    assert m["pq"] == 0 and m["map"] == 0 and m["object_hausdorff"] == math.inf
    m = evaluate(truth, empty)  # nothing to find
    assert (m["dice"], m["precision"], m["recall"]) == (0.0, 0.0, 1.0)
    assert m["object_f1"] == 0 and m["aji"] == 0 and m["pq"] == 0 and m["map"] == 0
    m = evaluate(empty, empty)
    assert all(m[k] == 1.0 for k in KEYS if k != "object_hausdorff")
    assert m["object_hausdorff"] == 0.0


def test_binary_masks_become_connected_objects():
    truth = np.zeros((8, 8), bool)
    truth[0:2, 0:2] = truth[5:7, 5:7] = True
    m = evaluate(truth.astype(np.uint8), truth)
    assert m["n_true"] == 2 and m["object_f1"] == 1.0 and m["aji"] == 1.0


def test_multiclass_pixel_metrics():
    truth = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 2], [2, 2, 0]])
    m = pixel_metrics(pred, truth, classes=3)
    assert m["per_class"][1]["dice"] == pytest.approx(2 / 3)  # TP 1, FN 1
    assert m["per_class"][2]["dice"] == pytest.approx(4 / 5)  # TP 2, FP 1
    assert m["dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["accuracy"] == pytest.approx(5 / 6)


def test_multiclass_dataset_pools_each_class_over_images():
    from napari_glandseg.metrics import evaluate_dataset

    truth = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 2], [2, 2, 0]])
    # second image: class 1 all found, class 2 missed entirely
    truth2, pred2 = np.array([[1, 2, 2]]), np.array([[1, 0, 0]])
    rows, s = evaluate_dataset([("a", pred, truth), ("b", pred2, truth2)], classes=3,
                               hausdorff=False)
    # class 1: TP 1+1, FP 0, FN 1 -> 4/5; class 2: TP 2, FP 1, FN 2 -> 4/7
    assert s["per_class"][1]["dice"] == pytest.approx(4 / 5)
    assert s["per_class"][2]["dice"] == pytest.approx(4 / 7)
    assert rows[0]["dice_class_2"] == pytest.approx(4 / 5) and rows[1]["dice_class_2"] == 0
    # top-level pixel metrics pool foreground vs background: TP 4+1, FP 0, FN 0+2
    assert s["dice"] == pytest.approx(10 / 12)


def test_bad_inputs_are_named():
    with pytest.raises(GlandsegError, match=r"\(2, 2\).*\(3, 3\)"):
        evaluate(np.zeros((2, 2), int), np.zeros((3, 3), int))
    with pytest.raises(GlandsegError, match="dtype float64"):
        evaluate(np.zeros((2, 2)), np.zeros((2, 2), int))


def _random_instances(rng, shape=(64, 64), n=12):
    img = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(3, 9, 2)
        img[y:y + h, x:x + w] = i
    return img


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_monai(seed):
    from monai.metrics import compute_iou
    from monai.metrics.meandice import compute_dice
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    rng = np.random.default_rng(seed)
    truth = _random_instances(rng)
    pred = truth.copy()
    pred[rng.random(pred.shape) < 0.05] = 0
    pred = np.roll(pred, rng.integers(-2, 3), axis=int(rng.integers(0, 2)))
    ours = evaluate(pred, truth, hausdorff=False)

    def onehot(a):
        return torch.from_numpy(np.stack([a == 0, a > 0])[None].astype(np.float32))

    dice = compute_dice(onehot(pred), onehot(truth), include_background=False)
    iou = compute_iou(onehot(pred), onehot(truth), include_background=False)
    assert ours["dice"] == pytest.approx(float(dice), abs=1e-6)
    assert ours["iou"] == pytest.approx(float(iou), abs=1e-6)
    pq = compute_panoptic_quality(torch.from_numpy(pred), torch.from_numpy(truth),
                                  metric_name="pq", match_iou_threshold=0.5)
    assert ours["pq"] == pytest.approx(float(pq), abs=1e-4)


def test_overlap_matrix_counts():
    pred = np.array([[0, 5, 5], [9, 9, 0]])
    truth = np.array([[3, 3, 0], [3, 0, 0]])
    ov = Overlap.of(pred, truth)
    assert ov.pred_ids.tolist() == [5, 9] and ov.true_ids.tolist() == [3]
    assert ov.inter.toarray().tolist() == [[1], [1]]
    assert ov.pred_areas.tolist() == [2, 2] and ov.true_areas.tolist() == [3]
    assert aji(ov) == pytest.approx(1 / (4 + 2))  # best S (first, IoU 1/4) then unused S: 2


def _strip(*spans, length=40):
    """A 1-row label image with each (start, stop) span labelled 1, 2, ... in order."""
    out = np.zeros((1, length), np.int32)
    for i, (a, b) in enumerate(spans, 1):
        out[0, a:b] = i
    return out


def test_a_match_above_half_is_never_traded_for_two_below():
    # T1 = C|A (29 px), P1 = A|B (29 px) share A (20 px): IoU 20/38 = 0.526 > 0.5.
    # The cross pairs P1-T2 and P2-T1 have IoU 9/29 = 0.31 each, total 0.62 > 0.526, so
    # maximising total IoU first (then thresholding) finds no match at all.
    truth = _strip((0, 29), (29, 38))
    pred = _strip((9, 38), (0, 9))
    m = evaluate(pred, truth, hausdorff=False)
    iou = 20 / 38
    assert m["sq"] == pytest.approx(iou) and m["dq"] == pytest.approx(0.5)
    assert m["pq"] == pytest.approx(iou / 2)
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    monai = compute_panoptic_quality(torch.from_numpy(pred), torch.from_numpy(truth),
                                     metric_name="pq", match_iou_threshold=0.5)
    assert m["pq"] == pytest.approx(float(monai), abs=1e-4)
    # mAP: at 0.5 one TP of (2 + 2 - 1); above 0.526 none
    assert m["map"] == pytest.approx((1 / 3) / len(IOU_THRESHOLDS))


def test_match_below_half_maximises_the_number_of_matches():
    iou = np.array([[0.45, 0.40], [0.35, 0.0]])
    # at 0.38 one pair at most: the one with the larger IoU (0.45), although the pairs
    # (0,1) + (1,0) have the larger total IoU
    rows, cols = match(iou, 0.38)
    assert list(zip(rows, cols, strict=True)) == [(0, 0)]
    rows, cols = match(iou, 0.3)  # two pairs are possible only as (0,1) and (1,0)
    assert sorted(zip(rows, cols, strict=True)) == [(0, 1), (1, 0)]
    assert average_precision(Overlap.of(*_overlap_case()), thresholds=[0.3])["ap"][0.3] == 1.0


def _overlap_case():
    # P1 covers 45% of T1's union with it and 40% with T2; P2 35% with T1
    truth = _strip((0, 20), (20, 40))
    pred = _strip((10, 30), (0, 10))
    return pred, truth


def _dense_reference(pred, truth):
    """Object F1, object Dice and AJI from a dense overlap matrix (the textbook loops)."""
    p_ids, t_ids = np.unique(pred)[1:], np.unique(truth)[1:]
    inter = np.array([[np.sum((pred == p) & (truth == t)) for t in t_ids] for p in p_ids])
    s = np.array([np.sum(pred == p) for p in p_ids])
    g = np.array([np.sum(truth == t) for t in t_ids])
    tp = len({int(inter[i].argmax()) for i in range(len(s))
              if inter[i].max() / g[inter[i].argmax()] > 0.5})
    f1 = 2 * tp / (len(s) + len(g))
    dice = 2 * inter / (s[:, None] + g[None, :])
    d_g = [dice[inter[:, j].argmax(), j] if inter[:, j].max() else 0 for j in range(len(g))]
    d_s = [dice[i, inter[i].argmax()] if inter[i].max() else 0 for i in range(len(s))]
    od = 0.5 * (g @ d_g / g.sum() + s @ d_s / s.sum())
    iou = inter / (s[:, None] + g[None, :] - inter)
    c = u = 0
    used = set()
    for j in range(len(g)):
        i = iou[:, j].argmax()
        if inter[i, j]:
            c += inter[i, j]
            u += g[j] + s[i] - inter[i, j]
            used.add(i)
        else:
            u += g[j]
    u += sum(s[i] for i in range(len(s)) if i not in used)
    return f1, od, c / u


@pytest.mark.parametrize("seed", range(4))
def test_sparse_overlap_agrees_with_dense_loops(seed):
    rng = np.random.default_rng(seed)
    truth = _random_instances(rng, n=15)
    pred = np.roll(_random_instances(rng, n=15), 2, axis=1)
    m = evaluate(pred, truth, hausdorff=False)
    f1, od, a = _dense_reference(pred, truth)
    assert m["object_f1"] == pytest.approx(f1)
    assert m["object_dice"] == pytest.approx(od)
    assert m["aji"] == pytest.approx(a)


def test_many_objects_need_little_memory():
    # 150 x 150 = 22,500 objects on each side: a dense overlap matrix needed 3.8 GiB
    import tracemalloc

    truth = np.arange(1, 22_501, dtype=np.int32).reshape(150, 150).repeat(2, 0).repeat(2, 1)
    pred = np.roll(truth, 1, axis=1)
    tracemalloc.start()
    m = evaluate(pred, truth, hausdorff=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert m["n_pred"] == m["n_true"] == 22_500
    assert m["object_f1"] == 0.0 and m["pq"] == 0.0  # every object is half shifted: IoU 1/3
    assert peak < 200 * 2**20, f"evaluate used {peak / 2**20:.0f} MiB"


def test_all_foreground_masks():
    full = np.ones((20, 30), np.uint8)
    m = evaluate(full, full)
    assert m["n_true"] == m["n_pred"] == 1
    assert all(m[k] == 1.0 for k in KEYS if k != "object_hausdorff")
    assert m["object_hausdorff"] == 0.0
    half = full.copy()
    half[:, 15:] = 0
    m = evaluate(half, full)
    assert m["dice"] == pytest.approx(2 / 3) and m["pq"] == 0.0 and m["tp"] == 0


def test_object_summary_pools_f1_over_objects_and_averages_the_rest():
    # image a: 3 glands found exactly; image b: 1 gland of 1 found but 3 false objects.
    # Pooled F1 = 2*4 / (2*4 + 3 + 0) = 8/11; the mean of per-image F1s would be (1 + 0.4)/2.
    a = np.zeros((40, 40), np.int32)
    a[2:10, 2:10], a[15:25, 15:25], a[30:38, 30:38] = 1, 2, 3
    b_true = np.zeros((40, 40), np.int32)
    b_true[5:20, 5:20] = 1
    b_pred = b_true.copy()
    b_pred[25:28, 25:28], b_pred[30:33, 2:5], b_pred[35:38, 35:38] = 2, 3, 4
    from napari_glandseg.metrics import evaluate_dataset, summarise_objects

    rows, summary = evaluate_dataset([("a", a, a), ("b", b_pred, b_true)], hausdorff=False)
    s = summarise_objects(rows)
    assert s["object_f1"] == pytest.approx(8 / 11) == summary["object_f1"]
    for k in ("object_dice", "aji", "pq"):
        assert s[k] == pytest.approx(np.mean([r[k] for r in rows])) == summary[k]
    assert s["objects"] == pytest.approx((s["object_f1"] + s["object_dice"]) / 2)
    with pytest.raises(GlandsegError, match="no images"):
        summarise_objects([])


# one overlap table for Compare; Hausdorff by nearest-first search (issue: numbers to trust)


def _slow_object_hausdorff(pred, truth):
    """The GlaS definition measured pair by pair with skimage (every candidate tried)."""
    from skimage.metrics import hausdorff_distance

    from napari_glandseg.metrics import Overlap

    ov = Overlap.of(pred, truth)
    g, s = ov.true_areas, ov.pred_areas

    def hd(i, j):
        return hausdorff_distance(pred == ov.pred_ids[i], truth == ov.true_ids[j])

    bg, bs = ov.best(ov.counts, "truth"), ov.best(ov.counts, "pred")
    h_g = [hd(ov.rows[k], j) if k >= 0 else min(hd(i, j) for i in range(len(s)))
           for j, k in enumerate(bg)]
    h_s = [hd(i, ov.cols[k]) if k >= 0 else min(hd(i, j) for j in range(len(g)))
           for i, k in enumerate(bs)]
    return 0.5 * ((g / g.sum()) @ h_g + (s / s.sum()) @ h_s)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_object_hausdorff_equals_the_pairwise_definition(seed):
    from skimage.segmentation import expand_labels

    from napari_glandseg.metrics import Overlap, object_hausdorff

    rng = np.random.default_rng(seed)

    def objects(n):
        img = np.zeros((96, 96), np.int32)
        img[rng.integers(0, 96, n), rng.integers(0, 96, n)] = np.arange(1, n + 1)
        return expand_labels(img, 3)

    truth, pred = objects(12), objects(9)  # many objects overlap nothing: nearest search
    fast = object_hausdorff(pred, truth, Overlap.of(pred, truth))
    assert fast == pytest.approx(_slow_object_hausdorff(pred, truth), abs=1e-9)
    # a ring object (a hole in it: the farthest point is inside, not on the outline)
    ring = np.zeros((40, 40), np.int32)
    ring[5:35, 5:35] = 1
    ring[12:28, 12:28] = 0
    far = np.zeros((40, 40), np.int32)
    far[36:39, 0:3] = 2
    fast = object_hausdorff(far, ring, Overlap.of(far, ring))
    assert fast == pytest.approx(_slow_object_hausdorff(far, ring), abs=1e-9)


def test_compare_rows_one_per_true_object_and_split_pieces_are_not_false_positives():
    from napari_glandseg.metrics import evaluate, iter_compare
    from napari_glandseg.progress import run_to_end

    truth = np.zeros((30, 60), np.int32)
    truth[2:10, 2:10], truth[2:10, 12:20], truth[15:28, 5:40], truth[20:25, 50:55] = 1, 2, 3, 4
    pred = np.zeros_like(truth)
    pred[2:10, 2:20] = 7                      # merges truths 1 and 2
    pred[15:28, 5:22], pred[15:28, 23:40] = 8, 9  # truth 3 split in two
    pred[0:2, 40:45] = 11                     # matches nothing
    out = run_to_end(iter_compare(pred, truth))
    by_truth = {r["truth"]: r for r in out.rows if r["side"] == "truth"}
    assert set(by_truth) == {"1", "2", "3", "4"}  # each true object once
    assert by_truth["3"]["status"] == "split" and by_truth["3"]["note"] == "split into 8, 9"
    assert {by_truth["1"]["status"], by_truth["2"]["status"]} == {"merged"}
    assert by_truth["1"]["note"] == "merged with 2 in prediction 7"
    assert by_truth["4"]["status"] == "missed"
    fps = [r for r in out.rows if r["side"] == "pred"]
    assert [r["id"] for r in fps] == [11]  # split pieces 8, 9 and merge 7 are not FP rows
    assert out.metrics["merged"] == 1 and out.metrics["split"] == 1
    # the outlines hold exactly the merging and split predictions, by their own ids
    assert set(np.unique(out.outlines)) == {0, 7, 8, 9}
    # the scores are evaluate's, to the last digit
    ref = evaluate(pred, truth)
    assert all(out.metrics[k] == ref[k] or (math.isnan(ref[k]) and math.isnan(out.metrics[k]))
               for k in ref)
