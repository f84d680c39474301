"""The pathologist's workflow end to end, driven through the docked widgets as a user would.

Two flows (issue 13): the sample (model -> segment into objects -> edit -> compare -> save
corrections -> fine-tune from the selected model -> segment with the new model) and a slide
(open the SVS -> segment a polygon ROI -> post-process -> fine-tune inside the ROI -> save ->
File > Open). Each step asserts on the layers and values a user would see.
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_glandseg.gui import PLUGIN, open_viewer
from napari_glandseg.models import list_models


def _wait(qtbot, worker, timeout=120000):
    assert worker is not None, "the widget refused to start"
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def _widgets(viewer):
    return {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[1]
            for n in ("Load", "Model", "Segment", "Post-process", "Compare", "Fine-tune")}


def _pairs(ft):
    return {ft.pairs_list.item(i).text(): ft.pairs_list.item(i).checkState() ==
            Qt.CheckState.Checked for i in range(ft.pairs_list.count())}


def _tick_only(ft, suffix):
    for i in range(ft.pairs_list.count()):
        item = ft.pairs_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text().endswith(suffix)
                           else Qt.CheckState.Unchecked)


def test_sample_workflow(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = open_viewer(sample="glas", viewer=make_napari_viewer())
    w = _widgets(viewer)
    image, truth = viewer.layers["glas_testA_5"], viewer.layers["glas_testA_5 [truth]"]
    # the sample opens with its model, and Fine-tune starts from that model
    assert w["Model"].selection.model.name == "glands-he"
    assert w["Fine-tune"].base_box.currentText() == "glands-he"
    assert w["Fine-tune"].name_edit.text() == "glands-he-tuned"
    card = w["Model"].card_view.toHtml()
    assert "glands-he" in card and "<table" in card  # formatted, not key=value lines

    # Segment gives glands as objects (one label per gland), not a one-colour class map
    seg = w["Segment"]
    _wait(qtbot, seg.run())
    (objects,) = seg.last_layers
    assert objects.name == "glas_testA_5 [glands-he objects]"
    assert objects.metadata["glandseg_role"] == "objects"
    assert objects.metadata["source_image"] == image.name
    assert len(np.unique(objects.data)) - 1 >= 2 and len(objects.features) >= 2
    assert "[glands-he]" not in " ".join(la.name for la in viewer.layers)  # no class map
    assert "objects" in seg.status.text()

    # the other widgets default to the new objects, never to the truth
    assert w["Post-process"].labels_box.currentText() == objects.name
    assert w["Compare"].pred_box.currentText() == objects.name
    assert w["Compare"].truth_box.currentText() == truth.name

    # a hand correction: the objects layer becomes an edited, unsaved training pair
    new_id = int(objects.data.max()) + 1
    objects.paint((20, 20), new_id)
    assert objects.metadata["edited"] and objects.metadata["unsaved"]
    qtbot.waitUntil(lambda: _pairs(w["Fine-tune"]).get(f"{image.name} ⇐ {objects.name}"))

    _wait(qtbot, w["Compare"].compute())  # in the background
    m = w["Compare"].metrics
    assert m is not None and 0 < m["object_f1"] <= 1 and m["n_pred"] == new_id
    assert {"merged", "split"} <= set(m)

    # Save corrections: the sample has no folder of its own, so into a chosen one
    written = w["Load"].save_corrections(folder=tmp_path / "corrections")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "corrections/images/glas_testA_5.png", "corrections/masks/glas_testA_5.tif"]
    from napari_glandseg.io import find_pairs, read_pair

    (pair,) = find_pairs(tmp_path / "corrections")  # the layout Load and train read
    _, saved = read_pair(pair)
    np.testing.assert_array_equal(saved.data, objects.data)
    assert not w["Load"].unsaved()

    # Fine-tune from the selected model on the corrected objects only
    ft = w["Fine-tune"]
    _tick_only(ft, objects.name)
    ft.epochs.setValue(1)
    ft.steps.setValue(1)
    ft.patch.setValue(64)
    ft.batch.setValue(2)
    assert ft.params().base_model == "glands-he"
    _wait(qtbot, ft.start())
    result, before, after, looks = ft.result
    # its only truth is of the image it trains on: nothing independent to score on, so
    # nothing is scored; the old and new results are shown where the labels lie
    assert before == after == [] and set(looks) == {"before", "after"}
    assert "glands-he-tuned" in {m.name for m in list_models()}
    assert "No independent ground truth" in ft.status.text()
    shown = {la.metadata.get("glandseg_role"): la for la in viewer.layers
             if la.metadata.get("glandseg_role") in ("before", "after")}
    assert shown["after"].visible and not shown["before"].visible
    assert shown["after"].data.shape == objects.data.shape
    # a model nobody showed to be better is kept in the store, not selected, until asked
    assert w["Model"].selection.model.name == "glands-he" and ft.use_new_btn.isVisibleTo(ft)
    ft.use_new_btn.click()
    assert w["Model"].selection.model.name == "glands-he-tuned"
    # the next run is never given the name of a model that exists
    assert ft.name_edit.text() == "glands-he-tuned-2"
    ft.name_edit.setText("glands-he-tuned")
    assert ft.start() is None and "never replaced" in notes[-1][1]
    assert ft.name_edit.text() == "glands-he-tuned-2"
    # empty labels are refused with a message, not trained on
    viewer.add_labels(np.zeros((256, 256), np.uint8), name="empty",
                      metadata={"source_image": image.name, "glandseg_role": "truth"})
    _tick_only(ft, "empty")
    assert ft.start() is None and "'empty' are empty" in notes[-1][1]

    # Segment again, with the new model
    _wait(qtbot, seg.run())
    assert seg.last_layers[0].name == "glas_testA_5 [glands-he-tuned objects]"
    assert [n for n in notes if n[0] == "error"] == [
        n for n in notes if n[0] == "error" and ("never replaced" in n[1] or "empty" in n[1])]


def test_slide_workflow(make_napari_viewer, qtbot, tmp_path, data_dir, notes, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8)), name="another image")
    w = _widgets(viewer)
    w["Model"].select("glands-he")
    (slide,) = w["Load"].open_files([data_dir / "wsi/cmu_small_region.svs"])
    px = slide.scale[-1]
    assert slide.multiscale and px == pytest.approx(0.499)
    # a triangle (level-0 pixels 2600..2800 x 1500..1700), drawn in world (um) coordinates
    tri = np.array([[2600, 1500], [2600, 1700], [2800, 1500]], float)
    viewer.add_shapes([tri * px], shape_type="polygon", name="roi")

    seg = w["Segment"]
    seg.image_box.setCurrentText(slide.name)
    seg.region_box.setCurrentText("shapes ROI")
    seg.shapes_box.setCurrentText("roi")
    seg.tile.setValue(256)
    seg.tta.setChecked(True)
    seg.keep_classes.setChecked(True)
    seg.show_probs.setChecked(True)
    stores = set(Path(tempfile.gettempdir()).glob("glandseg-*.zarr"))
    import napari._vispy.canvas as canvas

    canvas_warnings = []
    monkeypatch.setattr(canvas, "show_warning", canvas_warnings.append)
    _wait(qtbot, seg.run())
    objects, classes, probability, uncertainty = seg.last_layers
    # every result is made in the slide's micrometres (a pixel-unit layer in a um world
    # makes napari drop the scale bar's unit and warn)
    for layer in seg.last_layers:
        assert [str(u) for u in layer.units] == ["micrometer"] * 2, layer.name
    assert canvas_warnings == []  # made in um, not fixed up after the canvas drew them
    # glands-he works at 1.24 um/px: the slide is read on the pyramid level nearest that
    # without being coarser (d = 2 here, 0.998 um/px), and the results lie there
    d = int(round(classes.scale[-1] / px))
    assert slide.downsample_factors[1][-1] == pytest.approx(d, rel=1e-2)
    lo, hi = 2600 // d, -(-2801 // d)  # the ROI's rows on that level
    n = hi - lo
    assert objects.metadata["glandseg_role"] == "objects" and not objects.multiscale
    assert uncertainty.name.endswith("uncertainty") and uncertainty.data.shape == (n, n)
    assert classes.data.shape == (n, n)
    assert tuple(classes.translate) == pytest.approx((2600 * px, 1500 * px), rel=1e-2)
    assert classes.metadata["pixel_size_um"] == pytest.approx(px * d, rel=1e-2)  # in um
    # masked to the polygon, not its bounding box: nothing below the diagonal
    yy, xx = np.mgrid[:n, :n]
    outside = yy + xx > n + 1
    assert not classes.data[outside].any() and not objects.data[outside].any()
    assert not probability.data[outside].any() and not uncertainty.data[outside].any()
    assert set(Path(tempfile.gettempdir()).glob("glandseg-*.zarr")) == stores  # none left

    # Post-process (in the background) picks the newest prediction, never truth
    pp = w["Post-process"]
    pp.labels_box.setCurrentText(classes.name)
    assert pp.image_box.currentText() == slide.name  # measured on the image it came from
    _wait(qtbot, pp.apply())
    post = pp.last_layer
    assert "area_um2" in post.features and tuple(post.translate) == tuple(classes.translate)

    # an edit, then fine-tune inside the ROI of the slide (the image under the labels)
    post.paint((60, 40), int(post.data.max()) + 1)
    post.brush_size = 30
    post.paint((40, 60), int(post.data.max()))
    ft = w["Fine-tune"]
    qtbot.waitUntil(lambda: _pairs(ft).get(f"{slide.name} ⇐ {post.name}"))  # by source image
    _tick_only(ft, post.name)
    ft.roi_box.setCurrentText("roi")
    ft.base_box.setCurrentText("glands-he")
    ft.epochs.setValue(1)
    ft.steps.setValue(1)
    ft.patch.setValue(64)
    ft.batch.setValue(2)
    (pair,) = ft.pairs()
    assert pair.image.shape == (n, n, 3) and pair.mask.shape == (n, n)
    # the image under the labels, read on the level the labels lie on
    c0 = 1500 // d
    np.testing.assert_array_equal(pair.image, np.asarray(slide.data[1 if d == 2 else 0][
        lo:hi, c0:c0 + n]))
    _wait(qtbot, ft.start())
    # no truth of another image: nothing scored; the old and new models' results on the
    # corrected region lie where its labels lie, on the slide
    shown = {la.metadata.get("glandseg_role"): la for la in viewer.layers
             if la.metadata.get("glandseg_role") in ("before", "after")}
    assert set(shown) == {"before", "after"} and shown["after"].data.shape == (n, n)
    assert tuple(shown["after"].translate) == pytest.approx(tuple(classes.translate))
    assert shown["after"].metadata["source_image"] == slide.name

    # Save with the plugin's writer and reopen with File > Open: Labels at the slide's um/px
    path = tmp_path / "roi_objects.tif"
    post.save(str(path), plugin=PLUGIN)
    (back,) = viewer.open(str(path), plugin=PLUGIN)
    assert type(back).__name__ == "Labels" and back.scale[-1] == pytest.approx(px * d, rel=1e-2)
    np.testing.assert_array_equal(back.data, post.data)
    assert tuple(back.translate) == pytest.approx(tuple(post.translate))  # where it was
    assert [n for n in notes if n[0] == "error"] == []


def test_slide_result_stores_go_with_their_layer(make_napari_viewer, qtbot, data_dir,
                                                 monkeypatch):
    import napari_glandseg.widgets.segment as segment

    monkeypatch.setattr(segment, "LARGE_PIXELS", 0)  # keep even a small result lazy
    viewer = make_napari_viewer()
    w = _widgets(viewer)
    w["Model"].select("glands-he")
    w["Load"].open_files([data_dir / "wsi/cmu_small_region.svs"])
    viewer.add_shapes([np.array([[0, 0], [0, 100], [100, 100], [100, 0]])], name="roi")
    seg = w["Segment"]
    seg.region_box.setCurrentText("shapes ROI")
    seg.objects.setChecked(False)
    _wait(qtbot, seg.run())
    (layer,) = seg.last_layers
    store = Path(layer.metadata["store_path"])
    assert store.is_dir()
    viewer.layers.remove(layer)
    assert not store.exists()
    # and when the widget goes with its window, the layer still open
    _wait(qtbot, seg.run())
    store = Path(seg.last_layers[0].metadata["store_path"])
    assert store.is_dir()
    seg.destroyed.emit()  # what deleting the widget with its window does
    assert not store.exists()


def test_cancel_with_tta_stops_within_one_pass(make_napari_viewer, qtbot, data_dir, notes,
                                               monkeypatch):
    import napari_glandseg.inference as inf

    passes = []
    real = inf._run
    monkeypatch.setattr(inf, "_run", lambda *a: (passes.append(1), real(*a))[1])
    viewer = make_napari_viewer()
    w = _widgets(viewer)
    w["Model"].select("glands-he")
    w["Load"].open_files([data_dir / "wsi/cmu_small_region.svs"])
    viewer.add_shapes([np.array([[0, 0], [0, 300], [300, 300], [300, 0]]) * 0.499], name="roi")
    seg = w["Segment"]
    seg.region_box.setCurrentText("shapes ROI")
    seg.tile.setValue(128)
    seg.tta.setChecked(True)
    n_layers = len(viewer.layers)
    worker = seg.run()
    at_cancel = []
    worker.yielded.connect(lambda p: at_cancel or (at_cancel.append(len(passes)), seg.cancel()))
    _wait(qtbot, worker)
    assert len(passes) - at_cancel[0] <= 1  # one network pass, not the 8 of a TTA batch
    assert len(viewer.layers) == n_layers
    assert seg.status.text() == "Cancelled: nothing was added"  # no stale "tile 4/30"


def test_region_run_matches_the_whole_image_run(data_dir):
    """The halo: a 256x256 region reads its surroundings, so it gets the whole run's labels."""
    from napari_glandseg.inference import segment
    from napari_glandseg.io import read_image
    from napari_glandseg.models import load_model

    img = read_image(data_dir / "wsi/cmu_small_region.svs")
    crop = np.asarray(img.data[0][2300:2900, 1300:1900])
    model = load_model("glands-he")
    kw = {"pixel_size_um": img.pixel_size_um, "tile_size": 256, "return_probabilities": False}
    # at the image's own scale the region runs the whole run's tiles: the same labels
    whole = np.asarray(segment(crop, model, rescale=False, **kw).labels)
    part = np.asarray(segment(crop, model, region=(200, 200, 456, 456), rescale=False,
                              **kw).labels)
    assert (whole[200:456, 200:456] > 0).any()  # something to compare
    assert (part != whole[200:456, 200:456]).mean() < 0.001
    # resampled to the model's 1.24 um/px, the window's own resampling moves some edges
    whole = np.asarray(segment(crop, model, **kw).labels)
    part = np.asarray(segment(crop, model, region=(200, 200, 456, 456), **kw).labels)
    assert (part != whole[200:456, 200:456]).mean() < 0.05
