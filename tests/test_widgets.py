"""Widgets driven as a user would: opened through the manifest on a real viewer."""

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_glandseg.inference import SegmentParams
from napari_glandseg.models import ModelCard, build_model, import_model, save_checkpoint
from napari_glandseg.widgets.compare import OUTLINE_LEGEND, OVERLAY_LEGEND, SPLIT_COLOUR

PLUGIN = "napari-glandseg"


def _camera(viewer):
    """napari >= 0.9 keeps the camera under viewer.scene (viewer.camera is deprecated)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


@pytest.fixture
def dataset(tmp_path, data_dir):
    for stem in ("testA_5_crop", "train_1_crop"):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        shutil.copy(data_dir / f"glas/{stem}.png", tmp_path / "images" / f"{stem}.png")
        shutil.copy(data_dir / f"glas/{stem}_instances.png", tmp_path / "masks" / f"{stem}.png")
    return tmp_path


def test_load_dataset_steps_without_piling_up_layers(make_napari_viewer, dataset, notes):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Load")
    pairs = w.open_dataset(dataset)
    assert len(pairs) == 2 and w.pair_list.count() == 2
    assert [layer.name for layer in viewer.layers] == ["testA_5_crop", "testA_5_crop [truth]"]
    truth = viewer.layers["testA_5_crop [truth]"]
    assert truth.data.dtype == np.uint16 and len(np.unique(truth.data)) == 9
    assert not w.prev_btn.isEnabled() and w.next_btn.isEnabled()
    w.next_btn.click()
    assert [layer.name for layer in viewer.layers] == ["train_1_crop", "train_1_crop [truth]"]
    w.pair_list.setCurrentRow(0)  # picking from the list works too
    assert viewer.layers[0].name == "testA_5_crop"
    assert notes == []


def test_edited_truth_is_kept_when_stepping(make_napari_viewer, dataset, notes):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Load")
    w.open_dataset(dataset)
    truth = viewer.layers["testA_5_crop [truth]"]
    truth.paint((5, 5), 3)  # the user corrects the mask
    viewer.add_labels(np.ones((256, 256), np.uint8), name="pred",
                      metadata={"source_image": "testA_5_crop"})  # a prediction of it
    w.next()
    shown = [la.name for la in viewer.layers if la.visible]
    assert shown == ["train_1_crop", "train_1_crop [truth]"]  # the prediction went too
    # the edit and its image are kept, hidden, so Fine-tune can still pair them
    assert not truth.visible and "testA_5_crop" in viewer.layers and "pred" not in viewer.layers
    assert any("Save corrections" in m for level, m in notes if level == "warning")
    w.previous()  # back: the edited truth is shown, not the file's
    assert viewer.layers["testA_5_crop [truth]"] is truth and truth.visible
    assert truth.data[5, 5] == 3 and len(viewer.layers) == 2
    # Save corrections writes it where Load reads it (after confirming the replacement)
    assert w.save_corrections() == [] and "exists" in notes[-1][1]
    (path,) = w.save_corrections(overwrite=True)
    assert path == dataset / "masks" / "testA_5_crop.png"
    assert iio.imread(path)[5, 5] == 3 and not w.unsaved()


def test_a_class_map_truth_is_drawn_in_its_models_class_colours(make_napari_viewer, data_dir):
    """A truth of the chosen class-map model's classes (the MRI sample, a WBC mask opened
    in Load) is drawn in that model's colours, as its prediction is: one organ, one colour.
    Instance truths, and any truth under a model that does not take classes, keep napari's
    cycling colours."""
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_glandseg.models import load_model

    def colour(layer, value):
        return layer.colormap.map(np.array([value]))[0][:3]

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "mri")
    truth = viewer.layers[-1]
    card = load_model("organs-mri").card
    assert isinstance(truth.colormap, DirectLabelColormap)
    for c in (1, 2, 3):
        np.testing.assert_allclose(colour(truth, c), transform_color(card.class_colours[c])[0][:3])
    model, load = _dock(viewer, "Model"), _dock(viewer, "Load")
    model.select("glands-he")  # not a class model: a mask opens in cycling colours
    files = [data_dir / "wbc/dataset1_001.png", data_dir / "wbc/dataset1_001_mask.png"]
    plain = load.open_files(files)[-1]
    assert not isinstance(plain.colormap, DirectLabelColormap)
    model.select("wbc")
    mask = load.open_files(files)[-1]
    assert mask.metadata["glandseg_role"] == "truth"
    wbc = load_model("wbc").card
    np.testing.assert_allclose(colour(mask, 2), transform_color(wbc.class_colours[2])[0][:3])
    instances = load.open_files([data_dir / "glas/testA_5_crop.png",
                                 data_dir / "glas/testA_5_crop_instances.png"])[-1]
    assert not isinstance(instances.colormap, DirectLabelColormap)  # 8 glands > 2 classes
    # opened before the class model was chosen: it takes the colours when it is chosen
    np.testing.assert_allclose(colour(plain, 1), transform_color(wbc.class_colours[1])[0][:3])
    assert not isinstance(instances.colormap, DirectLabelColormap)


def test_load_reports_bad_input_and_keeps_going(make_napari_viewer, tmp_path, data_dir, notes):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Load")
    (tmp_path / "empty").mkdir()
    assert w.open_dataset(tmp_path / "empty") == []
    assert notes[-1][0] == "error" and "no images found" in notes[-1][1]

    (tmp_path / "broken.png").write_bytes(b"not an image")
    layers = w.open_files([tmp_path / "broken.png", data_dir / "wbc/dataset1_001.png",
                           data_dir / "wbc/dataset1_001_mask.png"])
    assert [layer.name for layer in layers] == ["dataset1_001", "dataset1_001 [truth]"]
    assert layers[1].metadata["source_image"] == "dataset1_001"  # paired with its image
    assert "broken.png: not an image" in notes[-1][1]  # not "pip install imageio[pyav]"
    # a mask of another size is refused, not loaded as truth
    iio.imwrite(tmp_path / "dataset1_001_mask.png", np.zeros((10, 12), np.uint8))
    assert w.open_files([tmp_path / "dataset1_001_mask.png"]) == []
    assert "(10, 12)" in notes[-1][1] and "not loaded" in notes[-1][1]

    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    shutil.copy(data_dir / "glas/train_1_crop.png", bad / "images" / "a.png")
    iio.imwrite(bad / "masks" / "a.png", np.zeros((10, 12), np.uint8))
    w.open_dataset(bad)
    assert "(10, 12)" in notes[-1][1] and "(256, 256)" in notes[-1][1]
    assert viewer.layers[-1].name == "a"  # the image is still shown

    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(data_dir / "glas/train_1_crop.png", only / "x.png")
    w.open_dataset(only)
    assert notes[-1][0] == "warning" and "no masks" in notes[-1][1]


def test_load_svs_multiscale(make_napari_viewer, data_dir):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Load")
    (layer,) = w.open_files([data_dir / "wsi/cmu_small_region.svs"])
    assert layer.multiscale and layer.rgb and layer.data[0].shape == (2967, 2220, 3)
    assert layer.scale[-1] == pytest.approx(0.499)
    # the slide's micrometres get a scale bar in um, kept when pixel-unit layers (the
    # user's shapes, predictions) join; once hidden by the user it stays hidden
    assert viewer.scale_bar.visible
    assert [str(u) for u in viewer.layers.extent.units] == ["micrometer"] * 2
    viewer.add_shapes(scale=layer.scale)
    viewer.add_labels(np.zeros((10, 10), np.uint8), scale=layer.scale)
    assert [str(u) for u in viewer.layers.extent.units] == ["micrometer"] * 2
    viewer.scale_bar.visible = False
    w.open_files([data_dir / "wsi/cmu_small_region.svs"])
    assert not viewer.scale_bar.visible


def test_model_card_says_what_the_model_is_for_and_groups_its_figures(make_napari_viewer):
    """The card listed ~35 unsorted metrics (and "val dice" twice); a pathologist needs what
    the model is for and its key figures on validation and test images."""
    viewer = make_napari_viewer()
    w = _dock(viewer, "Model")
    w.select("glands-he")
    lines = w.card_view.toPlainText().splitlines()  # a table cell per line
    text = "\n".join(lines)
    assert lines[lines.index("use it for") + 1] == "Glands in colon H&E (20x)"
    assert "0.62 um/px (a 20x scan)" in text and "RGB images" in text
    val = lines[lines.index("validation (20 images)") + 1]
    # key figures, objects first, each once
    assert val.index("object F1") < val.index("object Dice") < val.index("AJI") < \
        val.index(", Dice 0.")
    assert "held-out test (measured once) (60 images)" in lines
    # benign and malignant glands scored apart: the worse group is not hidden in the mean
    malignant = lines[lines.index("validation, malignant (8 images)") + 1]
    assert "object F1 0.892" in malignant and "object Dice 0.825" in malignant
    assert "held-out test (measured once), benign (33 images)" in lines
    # validation and test, each whole and by group; "during training" figures not repeated
    assert "during training" not in text and text.count("object F1") == 6
    assert all(line.count("object F1") <= 1 for line in lines)
    w.select("nuclei-he")
    assert "0.25 um/px (a 40x scan)" in w.card_view.toPlainText()
    # a smear model's figure at other magnifications (no pixel size, automatic scale)
    w.select("wbc")
    lines = w.card_view.toPlainText().splitlines()
    rescaled = lines[lines.index("validation rescaled, no pixel size given") + 1]
    assert rescaled == "0.33x to 3x with automatic scale: cell Dice 0.957 or better"
    # a class map's figure per class, the one organs are judged by
    w.select("organs-mri")
    lines = w.card_view.toPlainText().splitlines()
    assert lines[lines.index("validation, Dice per class") + 1] == \
        "large bowel 0.535, small bowel 0.630, stomach 0.553"
    assert lines[lines.index("chosen on") + 1] == "val Dice per class, mean 0.573 at epoch 14"


def test_model_widget_lists_store_and_shares_selection(make_napari_viewer, tmp_path, notes):
    card = ModelCard(name="tiny-glands", architecture="unet", in_channels=3, num_classes=1,
                     arch_kwargs={"features": [4, 4, 8, 8, 16, 4]},
                     class_names=["background", "gland"], description="test glands",
                     pixel_size_um=0.62, licence="BSD-3-Clause", data_licence="research only")
    path = save_checkpoint(tmp_path / "t.safetensors",
                           build_model("unet", 3, 1, features=[4, 4, 8, 8, 16, 4]), card)
    import_model(path)
    viewer = make_napari_viewer()
    w = _dock(viewer, "Model")
    assert w.model_box.count() >= 1
    w.model_box.setCurrentIndex(w.model_box.findData("tiny-glands"))
    text = w.card_view.toPlainText()
    assert "U-Net" in text and "0.62 um/px" in text and "research only" in text
    assert w.selection.model.name == "tiny-glands"
    assert w.device_label.text().startswith("CPU" if not torch.cuda.is_available() else "CUDA")
    from napari_glandseg.widgets._state import selection_for

    assert selection_for(viewer) is w.selection  # other widgets see the same choice
    if not torch.cuda.is_available():
        assert not w.set_device("cuda")
        assert "no CUDA GPU" in notes[-1][1] and w.device_box.currentText() == "auto"
    assert w.export("tiny-glands", tmp_path / "copy.safetensors")
    from napari_glandseg.models import user_dir

    stored = (user_dir() / "tiny-glands.safetensors").read_bytes()
    assert (tmp_path / "copy.safetensors").read_bytes() == stored
    assert w.delete("tiny-glands")
    # the selection falls back to the first model left (the bundled one)
    assert w.selection.model is not None and w.selection.model.name == "glands-he"
    assert w.model_box.findData("tiny-glands") == -1


@pytest.fixture
def all_foreground_model(fg_model_factory):
    return fg_model_factory("allfg", class_names=["background", "gland"])


def _segment_setup(make_napari_viewer, model_name):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    _dock(viewer, "Model").select(model_name)
    w = _dock(viewer, "Segment")
    w.image_box.setCurrentText("glas_testA_5")
    w.tile.setValue(64)
    return viewer, w


def test_segment_widget_runs_in_background_and_adds_labels(make_napari_viewer, qtbot,
                                                           all_foreground_model, notes):
    viewer, w = _segment_setup(make_napari_viewer, all_foreground_model)
    w.show_probs.setChecked(True)
    from napari.utils import progress

    seen, bars = [], []
    worker = w.run()
    worker.yielded.connect(seen.append)
    worker.yielded.connect(lambda p: bars.append(
        [b.desc for b in progress._all_instances if "GlandSeg" in str(b.desc)]))
    assert not w.run_btn.isEnabled() and w.cancel_btn.isEnabled()
    w.tile.setValue(128)  # changed mid-run: the layer must record what the run used
    w.show_probs.setChecked(False)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    layer = viewer.layers["glas_testA_5 [allfg]"]
    assert layer.data.shape == (522, 775) and layer.data.min() == 1
    assert layer.metadata["model"] == "allfg" and layer.metadata["params"]["tile_size"] == 64
    assert "pixel_size_um" in layer.metadata
    assert "glas_testA_5 [allfg] probability" in viewer.layers
    assert seen and seen[-1].done == seen[-1].total
    # one bar in napari's activity dock, never two
    assert bars and all(b == ["GlandSeg: segmenting"] for b in bars)
    assert not [b for b in progress._all_instances if "GlandSeg" in str(b.desc)]  # closed
    assert w.run_btn.isEnabled() and not w.cancel_btn.isEnabled()
    # a second run never overwrites the first layer
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    assert "run 2: glas_testA_5 [allfg]" in viewer.layers
    # ... and shows the new result alone: the first run's layers are hidden, not removed
    assert viewer.layers["run 2: glas_testA_5 [allfg]"].visible and not layer.visible
    assert "layer(s) of this image hidden (its truth, earlier results" in w.status.text()
    assert viewer.layers["glas_testA_5"].visible  # the image itself stays
    assert not viewer.layers["glas_testA_5 [truth]"].visible  # the truth is hidden too
    # ... but not a layer with unsaved edits, nor the results of another image
    other = viewer.add_labels(np.zeros((4, 4), np.uint8), name="other [allfg objects]",
                              metadata={"source_image": "other", "glandseg_role": "objects"})
    edited = viewer.layers["run 2: glas_testA_5 [allfg]"]
    edited.metadata["unsaved"] = True
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    assert edited.visible and other.visible
    assert [n for n in notes if n[0] == "error"] == []


def test_segment_cancel_adds_nothing(make_napari_viewer, qtbot, all_foreground_model, notes,
                                    monkeypatch):
    import napari_glandseg.inference as inf

    calls = []
    real_forward = inf._forward
    import time

    # a batch takes 20 ms, as a real one would take longer: the job cannot end before the
    # first progress record reaches the (busy) main thread
    monkeypatch.setattr(inf, "_forward", lambda *a: (calls.append(1), time.sleep(0.02),
                                                     real_forward(*a))[2])
    viewer, w = _segment_setup(make_napari_viewer, all_foreground_model)
    w.batch.setValue(1)
    n_layers = len(viewer.layers)
    worker = w.run()
    at_cancel = []
    worker.yielded.connect(lambda p: at_cancel or (at_cancel.append(len(calls)), w.cancel()))
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert len(viewer.layers) == n_layers
    assert len(calls) - at_cancel[0] <= 1  # stopped within one batch of Cancel
    assert len(calls) < 25  # of 25 tiles
    assert ("info", "segmentation cancelled") in notes


def test_segment_roi_and_field_of_view(make_napari_viewer, qtbot, all_foreground_model):
    viewer, w = _segment_setup(make_napari_viewer, all_foreground_model)
    viewer.add_shapes([[[40, 50], [40, 150], [120, 150], [120, 50]]], shape_type="rectangle",
                      name="roi")
    w.region_box.setCurrentText("shapes ROI")
    w.shapes_box.setCurrentText("roi")
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    layer = w.last_layers[0]
    assert tuple(layer.translate) == (40, 50) and layer.data.shape == (81, 101)
    assert layer.data.all()

    _camera(viewer).center = (128, 128)
    _camera(viewer).zoom = 8
    w.region_box.setCurrentText("current field of view")
    image = viewer.layers["glas_testA_5"]
    image.refresh()
    region = w._view_region(image)
    assert 0 <= region[0] and region[2] <= 523 and region[3] <= 776  # inside the image


def test_segment_errors_are_notifications(make_napari_viewer, notes, all_foreground_model):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Segment")
    assert w.run() is None and "no image layer" in notes[-1][1]
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    assert w.run() is None and "no model chosen" in notes[-1][1]
    _dock(viewer, "Model").select(all_foreground_model)
    w.image_box.setCurrentText("grey")
    w.region_box.setCurrentText("shapes ROI")
    assert w.run() is None and "needs a Shapes layer" in notes[-1][1]


def test_segment_threshold_is_offered_only_to_a_binary_model(make_napari_viewer,
                                                             all_foreground_model):
    """A multi-class model takes the argmax: its threshold box would change nothing."""
    viewer = make_napari_viewer()
    model, w = _dock(viewer, "Model"), _dock(viewer, "Segment")
    model.select("glands-he")
    assert not w.threshold.isEnabled() and "argmax" in w.threshold.toolTip()
    model.select(all_foreground_model)
    assert w.threshold.isEnabled()
    model.select("nuclei-he")
    assert not w.threshold.isEnabled()


def test_segment_scale_estimate_is_offered_only_to_a_model_with_a_reference(
        make_napari_viewer):
    """Without a scale reference the estimate is skipped (scale.can_estimate): the box is
    shown off and greyed with the scale actually used; the user's choice comes back."""
    viewer = make_napari_viewer()
    model, w = _dock(viewer, "Model"), _dock(viewer, "Segment")
    model.select("wbc")  # the bundled model with a reference
    assert w.auto_scale.isEnabled() and w.auto_scale.isChecked()
    model.select("glands-he")
    assert not w.auto_scale.isEnabled() and not w.auto_scale.isChecked()
    assert "taken to be at 0.62 um/px" in w.auto_scale.toolTip()
    model.select("organs-mri")
    assert not w.auto_scale.isChecked() and "their own scale" in w.auto_scale.toolTip()
    model.select("wbc")
    assert w.auto_scale.isEnabled() and w.auto_scale.isChecked()  # as the user left it
    w.auto_scale.setChecked(False)  # the user turns it off ...
    model.select("nuclei-he")
    model.select("wbc")
    assert w.auto_scale.isEnabled() and not w.auto_scale.isChecked()  # ... and it stays off


def _touching_disks():
    yy, xx = np.mgrid[:64, :80]
    return (((yy - 32) ** 2 + (xx - 26) ** 2 <= 100)
            | ((yy - 32) ** 2 + (xx - 46) ** 2 <= 144)).astype(np.uint8)


def test_postprocess_widget_preview_apply_and_csv(make_napari_viewer, qtbot, tmp_path,
                                                  notes):
    viewer = make_napari_viewer()
    mask = _touching_disks()
    viewer.add_labels(mask.copy(), name="pred")
    viewer.add_image(mask * 200, name="img")
    w = _dock(viewer, "Post-process")
    w.labels_box.setCurrentText("pred")
    w.image_box.setCurrentText("img")
    w.split_box.setCurrentText("none")
    w.preview.setChecked(True)
    assert viewer.layers["postprocess preview"].data.max() == 1
    w.split_box.setCurrentText("distance")
    w.update_preview()  # what the 150 ms timer does after a change
    assert viewer.layers["postprocess preview"].data.max() == 2
    with qtbot.waitSignal(w.apply().finished, timeout=30000):  # in the background
        assert not w.apply_btn.isEnabled()
    layer = w.last_layer
    assert layer.name == "pred [objects]" and layer.data.max() == 2
    assert "postprocess preview" not in viewer.layers
    assert len(layer.features) == 2 and set(layer.features["mean_intensity"]) == {200.0}
    np.testing.assert_array_equal(viewer.layers["pred"].data, mask)  # input untouched
    assert not viewer.layers["pred"].visible  # hidden: it would show through the result
    viewer.layers.selection.active = layer
    assert w.export_csv(tmp_path / "objects.csv")
    assert (tmp_path / "objects.csv").read_text().startswith("label,area")
    # a hand-painted object gets into the table (re-measured after the edit)
    layer.paint((5, 5), 3)
    qtbot.waitUntil(lambda: len(layer.features) == 3, timeout=5000)


def _compare(qtbot, w):
    """Compare in the background and wait; the scores, or None when it refused to start."""
    worker = w.compute()
    if worker is None:
        return None
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    return w.metrics


def test_compare_widget_metrics_overlay_and_objects(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    truth = viewer.layers["glas_testA_5 [truth]"].data
    pred = truth.copy()
    missing = int(pred.max())
    pred[pred == missing] = 0
    viewer.add_labels(pred, name="pred")
    w = _dock(viewer, "Compare")
    w.pred_box.setCurrentText("pred")
    assert w.truth_box.currentText() == "glas_testA_5 [truth]"  # picked by its role
    m = _compare(qtbot, w)
    n = len(np.unique(truth)) - 1  # one of n glands missed: F1 2(n-1) / (2(n-1) + 1)
    assert m["object_f1"] == pytest.approx(2 * (n - 1) / (2 * (n - 1) + 1))
    assert m["precision"] == 1.0
    assert w.metric_table.rowCount() >= 11
    overlay = viewer.layers[f"compare pred ({OVERLAY_LEGEND})"].data
    assert set(np.unique(overlay[truth == missing])) == {3}  # the missed gland is FN
    assert set(np.unique(overlay[pred > 0])) == {1}
    row = next(i for i, o in enumerate(w.objects) if o["status"] == "missed")
    assert w.objects[row]["id"] == missing and w.objects[row]["side"] == "truth"
    before = _camera(viewer).center
    zoom = _camera(viewer).zoom
    w.object_table.cellClicked.emit(row, 0)
    ys, xs = np.nonzero(truth == missing)
    centre = ((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2)
    assert _camera(viewer).center[-2:] == pytest.approx(centre)
    assert _camera(viewer).center != before and _camera(viewer).zoom > zoom  # zoomed in
    box = viewer.layers["compare selected object"].data[0]  # outlined
    assert box.min(0) == pytest.approx((ys.min() - 0.5, xs.min() - 0.5))

    # one prediction covering two glands, and one gland cut in two: shown, and counted
    merged = truth.copy()
    merged[truth == 2] = 1
    ys, xs = np.nonzero(truth == 3)
    merged[ys[xs > np.median(xs)], xs[xs > np.median(xs)]] = 99
    viewer.add_labels(merged, name="merged")
    w.pred_box.setCurrentText("merged")
    m = _compare(qtbot, w)
    assert m["merged"] == 1 and m["split"] == 1
    outlines = viewer.layers[f"compare merged ({OUTLINE_LEGEND})"]
    # the merging prediction and both pieces of the split gland are outlined by their ids
    assert set(np.unique(outlines.data[(truth == 1) | (truth == 2)])) == {1}
    assert set(np.unique(outlines.data[truth == 3])) == {3, 99}
    assert outlines.contour > 0
    assert outlines.colormap.map(np.array([99]))[0, :3] == pytest.approx(
        np.array([int(SPLIT_COLOUR[i:i + 2], 16) / 255 for i in (1, 3, 5)]), abs=0.01)
    assert {o["status"] for o in w.objects} >= {"merged", "split"}
    assert sum(o["side"] == "truth" for o in w.objects) == len(np.unique(truth)) - 1
    # an edit after comparing makes the results stale, and says so; the overlay leaves the
    # canvas (it would show the edit undone) and the edited layer comes back into view
    assert viewer.layers[f"compare merged ({OVERLAY_LEGEND})"].visible
    assert not viewer.layers["merged"].visible
    viewer.layers["merged"].paint((0, 0), 5)
    assert "press Compare again" in w.stale.text()
    assert not viewer.layers[f"compare merged ({OVERLAY_LEGEND})"].visible
    assert not viewer.layers[f"compare merged ({OUTLINE_LEGEND})"].visible
    assert viewer.layers["merged"].visible


def test_compare_refuses_class_maps_as_objects_and_warns_on_empty_truth(make_napari_viewer,
                                                                         qtbot, notes):
    viewer = make_napari_viewer()
    classes = np.zeros((32, 32), np.uint8)
    classes[4:12, 4:12], classes[20:28, 20:28] = 1, 2
    viewer.add_labels(classes, name="map", metadata={
        "glandseg_role": "prediction", "class_names": ["background", "interior", "boundary"]})
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="t",
                      metadata={"glandseg_role": "truth"})
    w = _dock(viewer, "Compare")
    assert w.pred_box.currentText() == "map" and w.truth_box.currentText() == "t"
    assert w.compute() is None and "is a class map" in notes[-1][1]
    viewer.add_labels((classes > 0).astype(np.uint8), name="map [objects]",
                      metadata={"glandseg_role": "objects", "source_image": "x"})
    assert w.pred_box.currentText() == "map [objects]"  # objects beat the class map
    assert _compare(qtbot, w) is not None
    assert notes[-1][0] == "warning" and "'t' is empty" in notes[-1][1]


def test_compare_widget_dataset_mode(make_napari_viewer, qtbot, tmp_path, data_dir, notes):
    from napari_glandseg.io import write_labels

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for stem in ("testA_5_crop", "train_1_crop"):
        shutil.copy(data_dir / f"glas/{stem}_instances.png", truth / f"{stem}.png")
        t = iio.imread(data_dir / f"glas/{stem}_instances.png")
        write_labels(pred / f"{stem}_labels.tif", np.where(t == t.max(), 0, t))
    viewer = make_napari_viewer()
    w = _dock(viewer, "Compare")
    worker = w.evaluate_folders(pred, truth)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert [r["name"] for r in w.rows] == ["testA_5_crop", "train_1_crop"]
    assert w.dataset_table.rowCount() == 5  # two images, mean of images, sd, pooled
    from napari_glandseg.metrics import KEYS

    rows = {w.dataset_table.item(r, 0).text(): r for r in range(5)}
    dice = KEYS.index("dice") + 1
    per_image = [float(w.dataset_table.item(r, dice).text()) for r in (0, 1)]
    mean_row = float(w.dataset_table.item(rows["mean of images"], dice).text())
    assert mean_row == pytest.approx(np.mean(per_image), abs=1e-4)  # a mean, not pooled
    assert float(w.dataset_table.item(rows["pooled"], dice).text()) == pytest.approx(
        w.summary["pooled"]["dice"], abs=1e-4)
    assert w.dataset_table.item(rows["pooled"], KEYS.index("aji") + 1).text() == ""
    assert "worst by Dice: train_1_crop" in w.best_worst.text()
    w.image_dir.setText(str(data_dir / "glas"))  # the images, to show under the labels
    assert w.image_dir.browse_btn.text() == w.pred_dir.browse_btn.text() == "Browse…"
    w.dataset_table.cellClicked.emit(1, 0)
    assert [la.name for la in viewer.layers] == [
        "train_1_crop", "train_1_crop [truth]", "train_1_crop [prediction]"]
    assert w.evaluate_folders(tmp_path / "nope", truth) is None
    assert "not a folder" in notes[-1][1]


def test_load_auto_mask_folder_prefers_instance_labels(make_napari_viewer, dataset):
    (dataset / "instances").mkdir()
    for f in (dataset / "masks").iterdir():  # binary masks in masks/, instances beside
        shutil.copy(f, dataset / "instances" / f.name)
        iio.imwrite(f, (iio.imread(f) > 0).astype(np.uint8) * 255)
    viewer = make_napari_viewer()
    w = _dock(viewer, "Load")
    w.open_dataset(dataset)
    assert viewer.layers["testA_5_crop [truth]"].data.max() == 8  # instances, not 0/1


def test_finetune_pairs_follow_the_user_and_the_source_image(make_napari_viewer):
    viewer, _, w = _finetune_setup(make_napari_viewer)
    item = w.pairs_list.item(0)
    item.setCheckState(Qt.CheckState.Unchecked)  # the user does not want the truth
    image = viewer.layers["glas_testA_5"]
    # a prediction and its maps, all of the image's size; the maps are no training image
    viewer.add_image(np.zeros((256, 256), np.float32), name="pred uncertainty",
                     metadata={"glandseg_role": "uncertainty"})
    viewer.add_labels(np.ones((256, 256), np.uint8), name="pred",
                      metadata={"glandseg_role": "objects", "source_image": image.name})
    pairs = {w.pairs_list.item(i).text(): w.pairs_list.item(i).checkState()
             for i in range(w.pairs_list.count())}
    assert pairs == {"glas_testA_5 ⇐ glas_testA_5 [truth]": Qt.CheckState.Unchecked,
                     "glas_testA_5 ⇐ pred": Qt.CheckState.Unchecked}


def test_finetune_shows_the_base_models_own_architecture(make_napari_viewer):
    """The greyed Architecture box said U-Net for glands-he, an EfficientNet-Lite U-Net."""
    viewer, _, w = _finetune_setup(make_napari_viewer)
    w.base_box.setCurrentText("glands-he")
    assert w.arch_box.currentData() == "effnet_unet" and not w.arch_box.isEnabled()
    w.base_box.setCurrentText("nuclei-he")
    from napari_glandseg.models import find_model

    arch = find_model("nuclei-he").card.architecture
    assert w.arch_box.currentData() == getattr(arch, "value", arch)
    # its target too (training takes the base card's): greyed, even with Advanced open
    w.advanced.setChecked(True)
    assert w.target_box.currentText() == "levels" and not w.target_box.isEnabled()
    w.base_box.setCurrentText("glands-he")
    assert w.target_box.currentText() == "boundary" and not w.classes.isEnabled()
    w.base_box.setCurrentText("wbc")  # a class map: its classes
    assert w.target_box.currentText() == "mask" and w.classes.value() == 3
    w.advanced.setChecked(False)
    w.advanced.setChecked(True)  # the group re-enables its children: still greyed
    assert not w.target_box.isEnabled()
    w.base_box.setCurrentIndex(0)  # a new model: the user's own choice, open again
    assert w.target_box.currentText() == "mask" and w.classes.value() == 0
    assert w.target_box.isEnabled() and w.classes.isEnabled()


def test_job_failure_is_one_line_and_resets_the_status(make_napari_viewer, qtbot, notes,
                                                       all_foreground_model, monkeypatch):
    import napari_glandseg.inference as inf

    def broken(*a):
        raise RuntimeError("device lost")

    monkeypatch.setattr(inf, "_forward", broken)
    viewer, w = _segment_setup(make_napari_viewer, all_foreground_model)
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    assert notes == [("error", "segmentation failed: RuntimeError: device lost")]
    assert w.status.text() == "Failed: segmentation failed: RuntimeError: device lost"
    assert w.run_btn.isEnabled()


def _finetune_setup(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    model_w = _dock(viewer, "Model")
    w = _dock(viewer, "Fine-tune")
    assert w.pairs_list.count() == 1  # the sample image and its truth, paired and checked
    assert w.pairs_list.item(0).text() == "glas_testA_5 ⇐ glas_testA_5 [truth]"
    w.name_edit.setText("ft-test")
    w.base_box.setCurrentText("(train from scratch)")
    w.arch_box.setCurrentIndex(w.arch_box.findData("base_cnn"))
    w.patch.setValue(64)
    w.batch.setValue(2)
    return viewer, model_w, w


def test_finetune_widget_trains_end_to_end(make_napari_viewer, qtbot, notes):
    viewer, model_w, w = _finetune_setup(make_napari_viewer)
    w.epochs.setValue(2)
    w.steps.setValue(3)
    worker = w.start()
    assert worker is not None and not w.start_btn.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    result, before, after, looks = w.result
    # the sample alone: no truth of another image, so nothing is scored (the truth it
    # trains on is no validation) and the new model is shown, not selected
    assert len(result.history) == 2 and before == after == [] and set(looks) == {"after"}
    assert len(w.plot.losses) == 6
    assert not [la for la in viewer.layers if "[val" in la.name]
    (after_layer,) = [la for la in viewer.layers if la.metadata.get("glandseg_role") == "after"]
    assert after_layer.data.shape == (522, 775) and tuple(after_layer.translate) == (0, 0)
    assert "nothing was scored" in w.status.text()
    assert model_w.selection.model.name != "ft-test"  # nothing says it is better
    w.use_new_model()
    assert model_w.selection.model.name == "ft-test"
    assert [n for n in notes if n[0] == "error"] == []


def test_finetune_stop_returns_quickly_and_keeps_best(make_napari_viewer, qtbot, notes,
                                                     monkeypatch):
    import napari_glandseg.training as tr

    steps = []
    real = tr.make_loss
    monkeypatch.setattr(tr.loop, "make_loss", lambda *a, **k: (lambda f: (lambda x, y: (
        steps.append(1), f(x, y))[1]))(real(*a, **k)))
    viewer, model_w, w = _finetune_setup(make_napari_viewer)
    w.epochs.setValue(100)
    w.steps.setValue(2)
    worker = w.start()
    at_stop = []

    def on_progress(p):
        if p.metrics and "val_dice" in p.metrics and not at_stop:
            at_stop.append(len(steps))
            w.stop()

    worker.yielded.connect(on_progress)
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    assert len(steps) - at_stop[0] <= 2  # at most the step in flight after Stop
    assert w.result is None and "best checkpoint so far is selected" in w.status.text()
    assert model_w.selection.model.name == "ft-test"


def test_finetune_bad_input_is_a_notification(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Fine-tune")
    assert w.start() is None and "no training pairs" in notes[-1][1]


def test_finetune_advanced_settings_reach_the_parameters(make_napari_viewer):
    viewer, _, w = _finetune_setup(make_napari_viewer)
    w.stain_box.setCurrentText("macenko")
    w.loss_box.setCurrentText("bce_focal_dice")
    w.target_box.setCurrentText("boundary")
    w.gap.setValue(5.0)
    p = w.params()
    assert p.stain_normalization.value == "none" and p.gap_weight == 0  # Advanced closed
    w.advanced.setChecked(True)
    p = w.params()
    assert p.stain_normalization.value == "macenko" and p.loss.value == "bce_focal_dice"
    assert p.gap_weight == 5.0 and p.target.value == "boundary"
    # the ImageNet encoder: only for a new EfficientNet-Lite U-Net
    w.pretrained.setChecked(True)
    w.base_box.setCurrentText("glands-he")
    assert not w.params().pretrained  # fine-tuning keeps the base's weights
    w.base_box.setCurrentIndex(0)  # new model
    w.arch_box.setCurrentIndex(w.arch_box.findData("unet"))
    assert not w.params().pretrained
    w.arch_box.setCurrentIndex(w.arch_box.findData("effnet_unet"))
    p = w.params()
    assert p.pretrained and p.architecture == "effnet_unet"


def test_segment_estimates_the_scale_of_an_image_without_one_and_says_so(
        make_napari_viewer, qtbot, data_dir, notes):
    """A WBC smear imaged at twice the magnification, opened without a pixel size: Segment
    estimates its scale, says so, and the cell is found whole; Pixel size overrides."""
    from skimage.io import imread
    from skimage.transform import rescale

    viewer = make_napari_viewer()
    _dock(viewer, "Model").select("wbc")
    w = _dock(viewer, "Segment")
    img = imread(data_dir / "wbc/dataset1_001.png")[..., :3]
    big = rescale(img, 2, channel_axis=-1, preserve_range=True).astype(np.uint8)
    viewer.add_image(big, name="big", rgb=True)
    w.image_box.setCurrentText("big")
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    assert "estimated objects 2.0" in w.status.text()
    layer = w.last_layers[0]
    assert "estimated" in layer.metadata["scale_estimate"]
    truth = rescale(imread(data_dir / "wbc/dataset1_001_mask.png") > 0, 2, order=0)
    pred = layer.data > 0
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.9
    w.auto_scale.setChecked(False)
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    assert "estimated" not in w.status.text()


def test_postprocess_adopts_the_model_cards_defaults(make_napari_viewer):
    viewer = make_napari_viewer()
    w = _dock(viewer, "Post-process")
    viewer.add_labels(_touching_disks(), name="seg",
                      metadata={"postprocess_defaults": {"split": "peaks", "min_size": 77}})
    w.labels_box.setCurrentText("seg")
    assert w.split_box.currentText() == "peaks" and w.min_size.value() == 77


@pytest.mark.parametrize("sample,model,image", [
    ("em", "membranes-em", "isbi2012_em_29_crop"), ("wbc", "wbc", "wbc_005"),
    ("mri", "organs-mri", "uwm_gi_mri_case119_day0_slice_0081")])
def test_gui_opens_each_sample_with_its_bundled_model(sample, model, image, make_napari_viewer,
                                                     qtbot, notes):
    from napari_glandseg.gui import open_viewer

    viewer = open_viewer(sample=sample, viewer=make_napari_viewer())
    assert _dock(viewer, "Model").selection.model.name == model
    w = _dock(viewer, "Segment")
    assert w.image_box.currentText() == image
    assert w.tile.value() == SegmentParams().tile_size  # as the card's figures were measured
    with qtbot.waitSignal(w.run().finished, timeout=60000):
        pass
    layer = w.last_layers[0]  # objects straight away; a class model's cleaned class map
    legend = {"wbc": ": cytoplasm red, nucleus green",
              "mri": ": large bowel red, small bowel green, stomach blue"}.get(sample, "")
    assert layer.name == f"{image} [{model}{' objects' if sample == 'em' else legend}]"
    if legend:  # a class map names its classes and colours, in its name and on the canvas
        text = viewer.canvas.overlays.text
        assert text.visible and legend[2:] in text.text
        assert "classes found:" in w.status.text() and "objects" not in w.status.text()
    assert len(layer.features) >= 1  # measured
    labels = layer.data
    truth = viewer.layers[f"{image} [truth]"].data
    assert ((labels > 0) == (truth > 0)).mean() > 0.85  # a real segmentation
    assert [n for n in notes if n[0] == "error"] == []


def test_postprocess_tunes_on_validation_images_and_saves_a_copy(make_napari_viewer, qtbot,
                                                                 tmp_path, notes):
    from skimage.io import imsave

    from napari_glandseg.models import Model, build_from_card, load_model
    from napari_glandseg.widgets._state import selection_for

    class Scores(torch.nn.Module):  # logits = the image's channels: predictions by hand
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * 20 * self.w

    yy, xx = np.mgrid[:64, :80]
    a = (yy - 32) ** 2 + (xx - 26) ** 2 <= 100
    truth = (a * 1 + (((yy - 32) ** 2 + (xx - 46) ** 2 <= 144) & ~a) * 2).astype(np.uint16)
    image = np.zeros((*truth.shape, 3), np.uint8)
    image[..., 0], image[..., 1] = 255 * (truth == 0), 255 * (truth > 0)  # merged interior
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for n in ("a", "b"):
        imsave(tmp_path / "images" / f"{n}.png", image, check_contrast=False)
        imsave(tmp_path / "masks" / f"{n}.png", truth, check_contrast=False)
    card = ModelCard(name="scores", architecture="base_cnn", in_channels=3, num_classes=3,
                     boundary_class=True, normalization="unit", arch_kwargs={"widths": [4, 8]},
                     class_names=["background", "interior", "boundary"],
                     postprocess={"split": "none", "min_size": 50},
                     metrics={"selected_on": "val_object_f1"})
    viewer = make_napari_viewer()
    w = _dock(viewer, "Post-process")
    assert w.tune_folder(tmp_path) is None  # no model chosen yet: one clear message
    assert "choose a model" in notes[-1][1]
    selection_for(viewer).set(Model(Scores(), card))
    with qtbot.waitSignal(w.tune_folder(tmp_path).finished, timeout=60000):
        pass
    # the card's "no split" merges the two disks; the best setting splits them
    assert w.split_box.currentText() in ("distance", "peaks"), (w.status.text(), notes)
    assert "Chosen on 1 validation image(s): object f1 1.000" in w.status.text()
    res, _, folder = w.tune_result
    real = Model(build_from_card(card), card)  # a saveable network for the copy
    w.tune_result = (res, real, folder)
    w.save_tuned()
    assert load_model("scores-tuned").card.postprocess == res.best
    w.tune_result = (res, real, folder)
    w.save_tuned()  # never over the first copy
    assert load_model("scores-tuned-2").card.postprocess == res.best


def test_postprocess_keeps_segment_objects_apart(make_napari_viewer, qtbot):
    objs = np.zeros((40, 60), np.int32)
    objs[5:35, 5:30], objs[5:35, 30:55] = 1, 2  # two touching objects, as Segment gives
    viewer = make_napari_viewer()
    w = _dock(viewer, "Post-process")
    viewer.add_labels(objs, name="img [m objects]", metadata={"glandseg_role": "objects"})
    w.labels_box.setCurrentText("img [m objects]")
    w.split_box.setCurrentText("none")
    with qtbot.waitSignal(w.apply().finished, timeout=30000):
        pass
    assert w.last_layer.data.max() == 2  # not merged into one


def test_finetune_ticks_the_correction_not_also_the_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    ft = _dock(viewer, "Fine-tune")
    truth = viewer.layers["glas_testA_5 [truth]"]
    fixed = viewer.add_labels(truth.data.copy(), name="glas_testA_5 [m objects]",
                              metadata={"glandseg_role": "objects",
                                        "source_image": "glas_testA_5", "edited": True})
    ft._refresh_layers()

    def state():
        return {ft.pairs_list.item(i).text(): ft.pairs_list.item(i).checkState()
                for i in range(ft.pairs_list.count())}

    s = state()
    assert s[f"glas_testA_5 ⇐ {fixed.name}"] == Qt.CheckState.Checked
    assert s["glas_testA_5 ⇐ glas_testA_5 [truth]"] == Qt.CheckState.Unchecked


def test_a_levels_model_gives_objects_and_post_process_splits_by_its_levels(
        make_napari_viewer, qtbot, notes):
    from napari_glandseg.models import Model
    from napari_glandseg.training.targets import distance_levels
    from napari_glandseg.widgets._state import selection_for

    class Levels(torch.nn.Module):  # the image's red channel is the level: logits by hand
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            level = x[:, :1] * 255 / 50 * self.w
            return -10 * (level - torch.arange(5.0).view(1, 5, 1, 1)) ** 2

    inst = np.zeros((48, 72), np.int32)
    inst[8:40, 4:36], inst[8:40, 36:68] = 1, 2  # touching along a whole side
    image = np.zeros((*inst.shape, 3), np.uint8)
    image[..., 0] = distance_levels(inst, 4) * 50
    card = ModelCard(name="levels-by-hand", architecture="base_cnn", in_channels=3,
                     num_classes=5, levels=4, normalization="unit",
                     arch_kwargs={"widths": [4, 8]},
                     postprocess={"split": "levels", "marker_level": 3, "min_size": 20})
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img", rgb=True)
    seg = _dock(viewer, "Segment")
    selection_for(viewer).set(Model(Levels(), card))
    assert seg.model_label.text() == "levels-by-hand: objects, as 4 distance levels"
    seg.keep_classes.setChecked(True)
    with qtbot.waitSignal(seg.run().finished, timeout=60000):
        pass
    objects, levels = seg.last_layers
    assert objects.data.max() == 2 and "2 objects" in seg.status.text()  # split, not merged
    assert int(levels.data.max()) == 4
    w = _dock(viewer, "Post-process")
    w.labels_box.setCurrentText(levels.name)  # the levels map, with the card's settings
    assert w.split_box.currentText() == "levels" and w.marker_level.value() == 3
    w.marker_level.setValue(1)  # seeds at level 1: the foreground, nothing split
    with qtbot.waitSignal(w.apply().finished, timeout=30000):
        pass
    assert w.last_layer.data.max() == 1
    # the box stays on the levels map, the settings as the user left them (it once moved to
    # the output and put the card's settings back, so the next Apply split the objects)
    assert w.labels_box.currentText() == levels.name and w.marker_level.value() == 1
    w.split_box.setCurrentText("level_peaks")  # the tops of the smoothed map: two again
    w.level_h.setValue(1.5)
    w.smooth.setValue(1.0)
    assert (w.params().level_h, w.params().smooth) == (1.5, 1.0)
    first = w.last_layer
    with qtbot.waitSignal(w.apply().finished, timeout=30000):
        pass
    assert w.last_layer.data.max() == 2
    # the second setting's objects are seen alone: the first Apply's are hidden, not removed
    assert w.last_layer.visible and first in viewer.layers and not first.visible
    assert f"{first.name!r}" in w.status.text() and "hidden" in w.status.text()
    assert [n for n in notes if n[0] == "error"] == []
