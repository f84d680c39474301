"""Metric values computed by hand on tiny arrays, and agreement with MONAI."""

import math

import numpy as np
import pytest
import torch

from napari_glandseg.errors import GlandsegError
from napari_glandseg.metrics import KEYS, Overlap, aji, evaluate, pixel_metrics


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
    assert ov.inter.tolist() == [[1], [1]]
    assert ov.pred_areas.tolist() == [2, 2] and ov.true_areas.tolist() == [3]
    assert aji(ov) == pytest.approx(1 / (4 + 2))  # best S (first, IoU 1/4) then unused S: 2
