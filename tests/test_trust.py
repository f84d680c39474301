"""Every number on screen belongs to the image and object beside it: the layers follow the
image on show, hover reads the object under the cursor, fine-tune is judged on independent
truth, class models get per-class rows, corrections never overwrite the truth by default."""

import shutil

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

PLUGIN = "napari-glandseg"
STEMS = ("testA_5_crop", "train_1_crop")


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def _wait(qtbot, worker, timeout=60000):
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


@pytest.fixture
def dataset(tmp_path, data_dir):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for stem in STEMS:
        shutil.copy(data_dir / f"glas/{stem}.png", tmp_path / "images" / f"{stem}.png")
        shutil.copy(data_dir / f"glas/{stem}_instances.png", tmp_path / "masks" / f"{stem}.png")
    return tmp_path


@pytest.fixture
def session(make_napari_viewer, fg_model_factory, dataset):
    name = fg_model_factory("allfg-trust", class_names=["background", "gland"],
                            postprocess={"split": "none", "min_size": 0})
    viewer = make_napari_viewer()
    load = _dock(viewer, "Load")
    _dock(viewer, "Model").select(name)
    seg, cmp = _dock(viewer, "Segment"), _dock(viewer, "Compare")
    seg.tile.setValue(64)
    load.open_dataset(dataset)
    return viewer, load, seg, cmp


def test_after_next_segment_and_compare_take_the_image_on_show(session, qtbot):
    viewer, load, seg, cmp = session
    assert seg.image_box.currentText() == STEMS[0]
    _wait(qtbot, seg.run())
    first = seg.last_layers[0]
    assert first.metadata["source_image"] == STEMS[0]
    first.paint((3, 3), 0)  # a correction: the layer is kept (hidden) on Next
    load.next()
    # the boxes follow the image on show: never the hidden one of the previous image
    assert seg.image_box.currentText() == STEMS[1]
    assert cmp.truth_box.currentText() == f"{STEMS[1]} [truth]"
    assert not first.visible
    _wait(qtbot, seg.run())
    second = seg.last_layers[0]
    assert second.metadata["source_image"] == STEMS[1]
    assert cmp.pred_box.currentText() == second.name  # the new result, of this image
    _wait(qtbot, cmp.compute())
    truth = np.asarray(viewer.layers[f"{STEMS[1]} [truth]"].data)
    # all-foreground: one object covering every true object, scored against this image
    assert cmp.metrics["n_true"] == len(np.unique(truth)) - 1
    # the first image's result chosen beside this image's truth: the scores shown leave
    # with the choice (they were of the second result), and Compare is refused in one line
    assert cmp.metric_table.rowCount() > 0
    cmp.pred_box.setCurrentText(first.name)
    assert cmp.metrics is None and cmp.metric_table.rowCount() == 0
    assert f"were of {second.name!r}" in cmp.status.text()
    assert cmp.compute() is None
    cmp.pred_box.setCurrentText(second.name)
    _wait(qtbot, cmp.compute())
    # back to the first image: its kept correction is offered again, and the scores of
    # the second image are no longer shown beside it
    load.previous()
    assert seg.image_box.currentText() == STEMS[0]
    assert cmp.pred_box.currentText() == first.name
    assert cmp.metrics is None and cmp.metric_table.rowCount() == 0
    assert "its scores are cleared" in cmp.status.text() or \
        f"press Compare for {STEMS[0]!r}" in cmp.status.text()
    assert first.visible and not viewer.layers[f"{STEMS[0]} [truth]"].visible


def test_compare_keeps_the_result_a_user_chose_beside_its_scores(session, qtbot):
    viewer, load, seg, cmp = session
    _wait(qtbot, seg.run())
    first = seg.last_layers[0]
    _wait(qtbot, seg.run())
    assert cmp.pred_box.currentText() == seg.last_layers[0].name != first.name
    cmp.pred_box.setCurrentText(first.name)  # the older result, on purpose
    _wait(qtbot, cmp.compute())
    # its overlay came in as a layer of this image: the box stays where the scores are from
    assert any(la.name.startswith(f"compare {first.name}") for la in viewer.layers)
    assert cmp.pred_box.currentText() == first.name
    assert cmp.metrics is not None and cmp.metric_table.rowCount() > 0
    # another result chosen: the first one's scores are not left beside its name
    cmp.pred_box.setCurrentText(seg.last_layers[0].name)
    assert cmp.metrics is None and cmp.metric_table.rowCount() == 0
    assert f"were of {first.name!r}" in cmp.status.text()


def test_correct_stays_on_the_layer_a_user_chose(session, qtbot):
    viewer, load, seg, cmp = session
    corr = _dock(viewer, "Correct")
    _wait(qtbot, seg.run())
    first = seg.last_layers[0]
    _wait(qtbot, seg.run())
    assert corr.labels_box.currentText() == seg.last_layers[0].name != first.name
    corr.labels_box.setCurrentText(first.name)  # correcting the older result
    cmp.pred_box.setCurrentText(first.name)
    _wait(qtbot, cmp.compute())  # an overlay of the image comes in
    assert corr.labels_box.currentText() == first.name


def test_after_next_no_stroke_edits_the_truth_unasked(session, qtbot):
    """Next shows an image with no result yet: the only Labels of it is its truth, so the
    layer boxes stand on it. A Correct stroke asks before it edits the truth, once."""
    viewer, load, seg, cmp = session
    corr = _dock(viewer, "Correct")
    _wait(qtbot, seg.run())
    load.next()
    truth = viewer.layers[f"{STEMS[1]} [truth]"]
    before = np.asarray(truth.data).copy()
    assert corr.labels_box.currentText() == truth.name
    assert f"no result of {STEMS[1]!r} yet" in cmp.status.text().lower()
    asked = []
    corr.confirm = lambda q: (asked.append(q), False)[1]
    corr.set_tool("delete")
    obj = tuple(np.argwhere(before > 0)[0])
    assert corr.click(obj) is None and len(asked) == 1 and "ground truth" in asked[0]
    np.testing.assert_array_equal(truth.data, before)  # refused: untouched
    assert corr.relabel() is None and len(asked) == 2
    corr.confirm = lambda q: (asked.append(q), True)[1]
    assert corr.click(obj) is not None and len(asked) == 3  # the user said yes
    assert not (np.asarray(truth.data) == before[obj]).any()
    assert corr.relabel() is not None and len(asked) == 3  # asked once per layer


def test_compare_refuses_a_pair_of_two_images_in_one_line(session, notes):
    viewer, load, seg, cmp = session
    viewer.add_labels(np.ones((64, 64), np.uint8), name="small",
                      metadata={"glandseg_role": "objects", "source_image": STEMS[0]})
    cmp.pred_box.setCurrentText("small")
    cmp.truth_box.setCurrentText(f"{STEMS[0]} [truth]")
    assert cmp.compute() is None
    assert notes[-1][0] == "error" and "not of the same image" in notes[-1][1]
    viewer.add_labels(np.ones((256, 256), np.uint8), name="other",
                      metadata={"glandseg_role": "objects", "source_image": "elsewhere"})
    cmp.pred_box.setCurrentText("other")
    assert cmp.compute() is None and "choose the pair of one image" in notes[-1][1]


def test_hover_shows_the_object_under_the_cursor_after_deleting_and_merging(
        make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 60, 3), np.uint8), name="img")
    labels = np.zeros((40, 60), np.int32)
    labels[2:10, 2:10] = 1          # area 64
    labels[2:20, 20:40] = 1         # area 360
    labels[25:35, 45:55] = 1        # area 100: a mask, split into objects 1, 2, 3
    layer = viewer.add_labels(labels, name="img [m objects]",
                              metadata={"glandseg_role": "prediction",
                                        "source_image": "img"})
    post = _dock(viewer, "Post-process")
    post.labels_box.setCurrentText(layer.name)
    post.split_box.setCurrentText("none")
    post.min_size.setValue(0)
    worker = post.apply()
    _wait(qtbot, worker)
    objects = post.last_layer

    def hover(y, x):
        return objects.get_status((y, x), world=True)["coordinates"]

    assert "area: 360" in hover(10, 30)  # label 2's own row, not row 2 (label 3's)
    assert "area: 100" in hover(30, 50)
    assert "area:" not in hover(38, 2)  # background: no object's measurements
    # deleting an object: the others still show their own rows
    corr = _dock(viewer, "Correct")
    corr.labels_box.setCurrentText(objects.name)
    corr.set_tool("delete")
    corr.click((5, 5))
    post.refresh_features([objects])
    assert "area: 360" in hover(10, 30) and "area: 100" in hover(30, 50)


def test_compare_scores_a_class_model_per_class_with_its_names(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="smear")
    truth = np.zeros((40, 40), np.uint8)
    truth[5:35, 5:35] = 1
    truth[15:25, 15:25] = 2
    pred = truth.copy()
    pred[15:25, 15:20] = 1  # half the nucleus called cytoplasm
    viewer.add_labels(pred, name="smear [wbc: cytoplasm red, nucleus green]", metadata={
        "glandseg_role": "prediction", "source_image": "smear", "class_model": True,
        "class_names": ["background", "cytoplasm", "nucleus"]})
    viewer.add_labels(truth, name="smear [truth]",
                      metadata={"glandseg_role": "truth", "source_image": "smear"})
    cmp = _dock(viewer, "Compare")
    assert cmp.pred_box.currentText().startswith("smear [wbc")  # a class map is a result
    _wait(qtbot, cmp.compute())
    rows = {cmp.metric_table.item(r, 0).text(): float(cmp.metric_table.item(r, 1).text())
            for r in range(cmp.metric_table.rowCount())}
    nucleus = 2 * 50 / (50 + 100)
    assert rows["dice nucleus"] == pytest.approx(nucleus, abs=1e-4)
    assert rows["dice cytoplasm"] == pytest.approx(2 * 800 / (800 + 850), abs=1e-4)
    assert rows["mean Dice (foreground classes)"] == pytest.approx(
        (nucleus + 2 * 800 / 1650) / 2, abs=1e-4)
    assert "object_f1" not in rows
    from napari_glandseg.metrics import STATUS_VALUE

    overlay = next(la for la in viewer.layers if "wrong class orange" in la.name).data
    assert (overlay[15:25, 15:20] == STATUS_VALUE["wrong class"]).all()
    assert (overlay[15:25, 20:25] == STATUS_VALUE["TP"]).all() and overlay[0, 0] == 0
    assert not any("outlines" in la.name for la in viewer.layers)
    assert "nucleus 0.667" in cmp.status.text() and "Found: cytoplasm, nucleus" in \
        cmp.status.text()


def test_compare_overlay_hides_prediction_and_truth_and_restores_them(session, qtbot):
    viewer, load, seg, cmp = session
    _wait(qtbot, seg.run())
    pred = seg.last_layers[0]
    truth = viewer.layers[f"{STEMS[0]} [truth]"]
    truth.visible = True
    _wait(qtbot, cmp.compute())
    overlay = next(la for la in viewer.layers if la.name.startswith(f"compare {pred.name} (TP"))
    outline = next(la for la in viewer.layers if "outlines" in la.name)
    assert overlay.visible and outline.contour > 0
    assert not pred.visible and not truth.visible
    overlay.visible = False
    assert pred.visible and truth.visible
    overlay.visible = True
    assert not pred.visible
    viewer.layers.remove(overlay)
    assert pred.visible and truth.visible
    # the object table: one row per true object, its note in view
    statuses = [cmp.object_table.item(r, 1).text() for r in range(cmp.object_table.rowCount())]
    headers = [cmp.object_table.horizontalHeaderItem(c).text()
               for c in range(cmp.object_table.columnCount())]
    assert headers[:2] == ["truth", "status"]
    n_true = len(np.unique(truth.data)) - 1
    assert sum(cmp.object_table.item(r, 0).text() != "" for r in range(len(statuses))) == \
        n_true
    # all-foreground: one object merging the glands, said in the status column itself
    assert any(st.startswith("merged with ") for st in statuses)


def test_save_corrections_of_a_result_never_replaces_the_truth_by_default(session, qtbot,
                                                                          dataset, notes):
    viewer, load, seg, cmp = session
    truth_file = dataset / "masks" / f"{STEMS[0]}.png"
    before = truth_file.read_bytes()
    _wait(qtbot, seg.run())
    seg.last_layers[0].paint((3, 3), 0)
    (path,) = load.save_corrections()
    assert path == dataset / "corrected" / f"{STEMS[0]}.tif"
    assert truth_file.read_bytes() == before  # the truth is untouched
    assert str(path) in notes[-1][1]  # the toast names the full path
    from napari_glandseg.training import pairs_from_folder

    pairs = pairs_from_folder(dataset, mask_folder="corrected")
    assert [p.name for p in pairs] == [STEMS[0]]


def test_finetune_validates_on_other_images_truth_and_says_so(session, qtbot, notes):
    viewer, load, seg, cmp = session
    _wait(qtbot, seg.run())
    seg.last_layers[0].paint((3, 3), 0)  # a corrected result: trained on, never scored on
    ft = _dock(viewer, "Fine-tune")
    for i in range(ft.pairs_list.count()):
        item = ft.pairs_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if "objects" in item.text()
                           else Qt.CheckState.Unchecked)
    ft.name_edit.setText("ft-honest")
    ft.base_box.setCurrentText("allfg-trust")
    ft.epochs.setValue(1)
    ft.steps.setValue(1)
    ft.patch.setValue(64)
    ft.batch.setValue(2)
    _wait(qtbot, ft.start(), timeout=120000)
    result, before, after, looks = ft.result
    assert [r["name"] for r in after] == [STEMS[1]]  # the other image's truth file
    assert looks == {}
    text = ft.status.text()
    assert f"Trained on 1 image(s) ({STEMS[0]} (corrected))" in text
    assert f"validated on {STEMS[1]} (file) (held out)" in text
    assert "before" in text and "after" in text
    # one figure per model: training's own score (at the working scale) is not shown too
    assert "Kept epoch 1, the best on the held-out truth" in text
    assert "validation score" not in text


def test_finetune_without_independent_truth_scores_nothing_and_shows_both(
        make_napari_viewer, fg_model_factory, qtbot, notes):
    name = fg_model_factory("allfg-blind", class_names=["background", "gland"],
                            postprocess={"split": "none", "min_size": 0})
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    _dock(viewer, "Model").select(name)
    ft = _dock(viewer, "Fine-tune")
    ft.name_edit.setText("ft-blind")
    ft.base_box.setCurrentText(name)
    ft.epochs.setValue(1)
    ft.steps.setValue(1)
    ft.patch.setValue(64)
    ft.batch.setValue(2)
    _wait(qtbot, ft.start(), timeout=120000)
    result, before, after, looks = ft.result
    assert before == after == [] and set(looks) == {"before", "after"}
    assert "nothing was scored" in ft.status.text()
    shown = [la for la in viewer.layers if la.metadata.get("glandseg_role") in
             ("before", "after")]
    assert len(shown) == 2 and all(la.metadata["source_image"] == "glas_testA_5"
                                   for la in shown)
    assert "stays selected" in ft.status.text()  # nothing says the new one is better
    torch.manual_seed(0)


def test_merging_objects_that_do_not_touch_asks_first(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = np.zeros((40, 120), np.int32)
    labels[5:15, 5:15], labels[5:15, 16:30], labels[5:15, 100:110] = 1, 2, 3
    layer = viewer.add_labels(labels.copy(), name="objs", metadata={"glandseg_role": "objects"})
    w = _dock(viewer, "Correct")
    w.labels_box.setCurrentText("objs")
    asked = []
    w.confirm = lambda q: (asked.append(q), False)[1]
    w.set_tool("merge")
    w.click((10, 10))
    assert w.click((10, 105)) is None and len(asked) == 1  # 85 px apart: asked, refused
    assert "85 px of background" in asked[0]
    np.testing.assert_array_equal(layer.data, labels)  # nothing changed
    assert w.click((10, 20)) is not None and len(asked) == 1  # touching: no question
    assert not (layer.data == 2).any()
    w.confirm = lambda q: True
    assert w.click((10, 105)) is not None  # asked, and the user said yes
    assert not (layer.data == 3).any()
