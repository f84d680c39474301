"""Object tools and the review queue (napari_glandseg.correct) on hand-made and real labels."""

import numpy as np
import pytest
from skimage import io

from napari_glandseg import correct as C
from napari_glandseg.errors import GlandsegError


def _dumbbell():
    """Two disks (left centre x=20, right x=60) joined by a thin neck at x=40."""
    yy, xx = np.mgrid[:40, :80]
    lab = np.zeros((40, 80), np.int32)
    lab[(yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2] = 5
    lab[(yy - 20) ** 2 + (xx - 60) ** 2 < 15 ** 2] = 5
    lab[18:23, 20:60] = 5
    lab[2:6, 74:78] = 9  # a bystander
    return lab


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_merge_joins_ids_closes_gap_and_touches_only_its_box():
    lab = np.zeros((30, 40), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 17:27] = 2  # a 2-pixel background gap at x = 15, 16
    lab[25:28, 35:38] = 3
    edit = C.merge(lab, [2, 1])
    out = edit.apply(lab.copy())
    assert set(np.unique(out)) == {0, 2, 3}  # first id wins
    assert (out[6:14, 15:17] == 2).all()  # the gap is closed (corners stay round)
    assert edit.kept == [2] and edit.removed == [1]
    assert (out[25:28, 35:38] == 3).all()
    y0, x0, y1, x1 = edit.box
    assert y1 <= 20 and x1 <= 32  # the crop stays around the two objects
    (ys, xs), values = edit.changes()
    again = lab.copy()
    again[ys, xs] = values
    assert (again == out).all()
    no_gap = C.merge(lab, [1, 2], close_gap=0).apply(lab.copy())
    assert (no_gap[5:15, 15:17] == 0).all()
    with pytest.raises(GlandsegError, match="at least 2"):
        C.merge(lab, [1, 1])
    with pytest.raises(GlandsegError, match="not in the labels"):
        C.merge(lab, [1, 7])


def test_delete_removes_only_that_object():
    lab = _dumbbell()
    out = C.delete(lab, 5).apply(lab.copy())
    assert not (out == 5).any() and (out == 9).sum() == 16
    with pytest.raises(GlandsegError, match="positive"):
        C.delete(lab, 0)


def test_split_line_across_the_neck():
    lab = _dumbbell()
    edit = C.split_line(lab, [(5, 40), (35, 40)])
    out = edit.apply(lab.copy())
    assert edit.kept == [5, 10]  # new id = max + 1
    assert (out[lab == 5] > 0).all()  # the cut's pixels join a piece, no gap is left
    left, right = out[:, :39], out[:, 41:]
    assert set(np.unique(left[lab[:, :39] == 5])) == {int(out[20, 20])}
    assert set(np.unique(right[lab[:, 41:] == 5])) == {int(out[20, 60])}
    assert out[20, 20] != out[20, 60]
    # the line picks the object it crosses; a line ending inside does not cut it
    with pytest.raises(GlandsegError, match="does not cut object 5"):
        C.split_line(lab, [(5, 40), (19, 40)])
    with pytest.raises(GlandsegError, match="crosses no object"):
        C.split_line(lab, [(0, 0), (0, 5)])


def test_split_line_along_a_diagonal():
    """An 8-connected diagonal line still parts the object (pieces are 4-connected)."""
    lab = np.zeros((30, 30), np.int32)
    lab[5:25, 5:25] = 1
    out = C.split_line(lab, [(2, 2), (27, 27)]).apply(lab.copy())
    assert out[20, 8] != out[8, 20] and {out[20, 8], out[8, 20]} == {1, 2}
    assert (out[lab == 1] > 0).all()


def test_split_seeds_follows_the_neck_and_the_probability_valley():
    lab = _dumbbell()
    out = C.split_seeds(lab, [(20, 12), (20, 66)]).apply(lab.copy())
    a, b = out[20, 20], out[20, 60]
    assert a != b and {a, b} == {5, 10}
    cut = np.flatnonzero(out[20] == a).max()
    assert 35 <= cut <= 45  # at the neck, not next to a seed

    # a plain rectangle: the distance map has no neck, the probability has a valley at x=30
    rect = np.zeros((20, 60), np.int32)
    rect[5:15, 5:55] = 1
    prob = np.ones((20, 60), np.float32)
    prob[:, 29:32] = 0.1
    out = C.split_seeds(rect, [(10, 10), (10, 50)], probabilities=prob).apply(rect.copy())
    boundary = np.flatnonzero(out[10] == out[10, 10]).max()
    assert 27 <= boundary <= 32
    with pytest.raises(GlandsegError, match="inside one object"):
        C.split_seeds(lab, [(20, 12), (0, 0)])


def test_add_object_grows_a_missed_object_from_probabilities_even_a_faint_one():
    yy, xx = np.mgrid[:120, :120]
    truth = (yy - 60) ** 2 + (xx - 60) ** 2 < 20 ** 2
    lab = np.zeros((120, 120), np.int32)
    lab[5:20, 5:20] = 1
    for level in (0.95, 0.2):  # a clear and a faint (missed) object
        prob = np.where(truth, level, 0.02).astype(np.float32)
        edit = C.add_object(lab, (55, 62), probabilities=prob)
        out = edit.apply(lab.copy())
        assert edit.kept == [2]
        assert _iou(out == 2, truth) > 0.9
        assert (out[5:20, 5:20] == 1).all()
    # class maps (background, interior, boundary): foreground is 1 - background
    probs = np.stack([np.where(truth, 0.1, 0.9), np.where(truth, 0.8, 0.05),
                      np.full(truth.shape, 0.05)]).astype(np.float32)
    out = C.add_object(lab, (60, 60), probabilities=probs).apply(lab.copy())
    assert _iou(out == 2, truth) > 0.9
    with pytest.raises(GlandsegError, match="on object 1"):
        C.add_object(lab, (10, 10), probabilities=prob)
    # growth is bounded by the radius
    flat = np.ones((120, 120), np.float32)
    edit = C.add_object(lab, (60, 60), probabilities=flat, radius=10)
    assert edit.n_changed <= 21 * 21


def test_add_object_does_not_leak_into_a_plateau():
    """A region that runs to the window's edge is grown again at a higher level."""
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 100) ** 2 + (xx - 100) ** 2 < 15 ** 2
    prob = np.full((200, 200), 0.02, np.float32)
    prob[40:200, 40:200] = 0.5  # a half-sure plateau reaching beyond the window
    prob[disk] = 0.9
    lab = np.zeros((200, 200), np.int32)
    lab[0:10, 0:10] = 1
    out = C.add_object(lab, (100, 100), probabilities=prob, radius=60).apply(lab.copy())
    assert _iou(out == 2, disk) > 0.9


def test_split_seeds_shares_a_convex_object():
    """A disk has one basin: the two seeds share it instead of one taking nearly all."""
    yy, xx = np.mgrid[:60, :60]
    lab = ((yy - 30) ** 2 + (xx - 30) ** 2 < 25 ** 2).astype(np.int32)
    out = C.split_seeds(lab, [(30, 12), (30, 40)]).apply(lab.copy())
    sizes = np.bincount(out.ravel())[1:]
    assert len(sizes) == 2 and sizes.min() > 0.3 * sizes.sum()


def test_add_object_from_the_image_alone():
    yy, xx = np.mgrid[:100, :100]
    truth = (yy - 50) ** 2 + (xx - 45) ** 2 < 14 ** 2
    rng = np.random.default_rng(0)
    image = np.where(truth, 70, 210) + rng.normal(0, 8, truth.shape)
    image = np.repeat(image[..., None], 3, -1).clip(0, 255).astype(np.uint8)
    lab = np.zeros((100, 100), np.int32)
    out = C.add_object(lab, (50, 45), image=image, radius=40).apply(lab.copy())
    assert _iou(out == 1, truth) > 0.85
    with pytest.raises(GlandsegError, match="probability map or the image"):
        C.add_object(lab, (50, 45))


def test_fill_holes_keeps_objects_inside():
    lab = np.zeros((20, 20), np.int32)
    lab[2:18, 2:18] = 4
    lab[6:9, 6:9] = 0  # a hole
    lab[11:14, 11:14] = 7  # an object inside
    out = C.fill_holes(lab, 4).apply(lab.copy())
    assert (out[6:9, 6:9] == 4).all() and (out[11:14, 11:14] == 7).all()


def test_relabel_numbers_objects_in_order():
    lab = np.zeros((10, 10), np.uint16)
    lab[0, 0], lab[5, 5], lab[9, 9] = 40, 7, 1000
    edit = C.relabel(lab)
    out = edit.apply(lab.copy())
    assert out[0, 0] == 2 and out[5, 5] == 1 and out[9, 9] == 3 and out.dtype == np.uint16
    assert edit.removed == [7, 40, 1000]


def test_new_ids_must_fit_the_dtype():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:10, 2:18] = 255
    with pytest.raises(GlandsegError, match="up to 255"):
        C.split_line(lab, [(0, 10), (19, 10)])


def test_tools_on_real_labels_round_trip(data_dir):
    """Delete a real GlaS gland and add it back with one click on a probability map."""
    truth = io.imread(data_dir / "glas" / "train_1_crop_instances.png").astype(np.int32)
    from scipy import ndimage as ndi

    prob = ndi.gaussian_filter((truth > 0).astype(np.float32), 2)
    gone = C.delete(truth, 1).apply(truth.copy())
    ys, xs = np.nonzero(ndi.distance_transform_edt(truth == 1) > 5)
    out = C.add_object(gone, (ys[len(ys) // 2], xs[len(xs) // 2]), probabilities=prob)
    new = out.apply(gone.copy())
    assert _iou(new == out.kept[0], truth == 1) > 0.9


def _scene():
    """Twelve similar squares; object 3 is unsure, 7 is tiny, 11 is concave."""
    lab = np.zeros((120, 160), np.int32)
    k = 0
    for r in range(3):
        for c in range(4):
            k += 1
            lab[10 + 35 * r: 35 + 35 * r, 10 + 38 * c: 35 + 38 * c] = k
    lab[lab == 7] = 0
    lab[50:56, 90:96] = 7
    lab[80:95, 125:140] = 0  # bite out of 12 -> concave? (12 is at r=2, c=3)
    prob = np.where(lab > 0, 0.97, 0.02).astype(np.float32)
    prob[lab == 3] = 0.6
    unc = np.where(lab > 0, 0.01, 0.0).astype(np.float32)
    unc[lab == 5] = 0.3
    return lab, prob, unc


def test_each_ranking_signal_puts_its_odd_object_first():
    lab, prob, unc = _scene()

    def first(**weights):
        w = {k: 0.0 for k in C.SIGNALS}
        w.update(weights)
        table = C.rank_objects(lab, prob, unc, weights=C.ReviewWeights(**w))
        return int(table["label"].iloc[0])

    assert first(uncertainty=1) == 5
    assert first(low_probability=1) == 3
    assert first(weak_boundary=1) == 3
    assert first(odd_size=1) == 7
    assert first(odd_shape=1) == 12
    table = C.rank_objects(lab, prob, unc)
    assert set(table["label"].iloc[:4]) == {3, 5, 7, 12}
    assert table["rank"].tolist() == list(range(12))
    row = table.set_index("label").loc[7]
    assert (row["y0"], row["x0"], row["y1"], row["x1"]) == (50, 90, 56, 96)


def test_ranking_a_region_reports_full_coordinates_and_boundary_class():
    lab, prob, unc = _scene()
    table = C.rank_objects(lab, prob, region=(40, 0, 120, 160))
    assert 1 not in set(table["label"])  # object 1 lies above the region
    assert table.set_index("label").loc[7, "y0"] == 50
    # boundary class of a 3-class map: a weak outline ranks first
    probs = np.stack([1 - prob, prob, np.zeros_like(prob)])
    probs[2][np.isin(lab, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]) & (lab > 0)] = 0.9
    w = C.ReviewWeights(uncertainty=0, low_probability=0, odd_size=0, odd_shape=0)
    table = C.rank_objects(lab, probs, boundary_class=2, weights=w)
    assert int(table["label"].iloc[0]) == 3


def test_odd_size_is_judged_within_each_class():
    lab = np.zeros((60, 200), np.int32)
    classes = np.zeros_like(lab)
    for k in range(5):  # five big objects of class 1, five small ones of class 2
        lab[5:25, 5 + 38 * k: 25 + 38 * k] = k + 1
        classes[5:25, 5 + 38 * k: 25 + 38 * k] = 1
        lab[40:44, 5 + 38 * k: 9 + 38 * k] = k + 6
        classes[40:44, 5 + 38 * k: 9 + 38 * k] = 2
    lab[40:50, 157:167] = 10  # a class-2 object much bigger than its peers
    classes[40:50, 157:167] = 2
    w = C.ReviewWeights(uncertainty=0, low_probability=0, weak_boundary=0, odd_shape=0)
    table = C.rank_objects(lab, classes=classes, weights=w)
    assert int(table["label"].iloc[0]) == 10
    assert table.set_index("label").loc[10, "class"] == 2


def test_review_queue_walks_marks_and_counts():
    lab, prob, unc = _scene()
    q = C.ReviewQueue(C.rank_objects(lab, prob, unc))
    first = q.next()
    assert first["label"] == int(q.table["label"].iloc[0]) and q.position == 0
    q.mark("accepted")
    q.next()
    q.mark("corrected")
    assert q.previous()["label"] == first["label"]
    assert q.summary() == "2 of 12 reviewed"
    assert q.next_unreviewed()["label"] == int(q.table["label"].iloc[2])
    q.mark("", label=first["label"])
    assert q.summary() == "1 of 12 reviewed"
    with pytest.raises(GlandsegError, match="unknown review state"):
        q.mark("maybe")
    for _ in range(20):
        q.next()
    assert q.position == 11  # stays on the last object


def test_tools_are_qt_free_and_exported():
    import subprocess
    import sys

    code = ("import sys, napari_glandseg as g\n"
            "g.merge; g.split_line; g.split_seeds; g.add_object; g.fill_holes\n"
            "g.rank_objects; g.ReviewQueue; g.labels_to_geojson; g.geojson_to_labels\n"
            "print([m for m in ('qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari', 'magicgui')"
            " if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
