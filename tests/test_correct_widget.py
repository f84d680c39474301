"""The Correct widget, opened through the manifest and driven as a user would."""

import json

import numpy as np
import pytest

PLUGIN = "napari-glandseg"


def _objects():
    lab = np.zeros((100, 140), np.int32)
    lab[10:40, 10:40] = 1
    lab[10:40, 40:70] = 2  # touches 1: a wrong split to merge
    lab[60:90, 10:90] = 3  # two glands merged: to split
    lab[12:16, 100:104] = 4  # a speck to delete
    return lab


@pytest.fixture
def widget(make_napari_viewer, notes):
    viewer = make_napari_viewer()
    lab = _objects()
    prob = np.where(lab > 0, 0.95, 0.03).astype(np.float32)
    prob[lab == 4] = 0.4
    prob[15:35, 105:130] = 0.8  # a missed object
    viewer.add_image(np.zeros((100, 140, 3), np.uint8), name="img")
    meta = {"source_image": "img", "model": "glands-he", "pixel_size_um": 0.5,
            "class_names": ["background", "interior", "boundary"]}
    viewer.add_labels(lab, name="img [glands-he objects]",
                      metadata={**meta, "glandseg_role": "objects"})
    viewer.add_image(prob, name="img [glands-he] probability",
                     metadata={**meta, "glandseg_role": "probability"})
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    w.labels_box.setCurrentText("img [glands-he objects]")
    return viewer, w, viewer.layers["img [glands-he objects]"]


def test_tools_edit_the_layer_one_undo_step_each(widget, notes):
    viewer, w, layer = widget
    assert w.prob_box.currentText() == "img [glands-he] probability"  # found by metadata
    assert not layer.metadata.get("edited")
    w.set_tool("merge")
    assert layer.mode == "pan_zoom" and w.tool_buttons["merge"].isChecked()
    assert w.click((20, 20)) is None  # first object chosen
    w.click((20, 60))
    assert set(np.unique(layer.data)) == {0, 1, 3, 4}
    assert layer.metadata["edited"] is True
    w.set_tool("split_line")
    w.click((55, 50))
    w.click((95, 50))
    assert len(np.unique(layer.data[60:90, 10:90])) == 2
    w.set_tool("delete")
    w.click((13, 101))
    w.set_tool("add")
    w.click((25, 115))
    assert layer.data[25, 115] == 6 and (layer.data == 6).sum() > 300
    # four edits, four undo steps, in reverse order
    layer.undo()
    assert not (layer.data == 6).any()
    layer.undo()
    assert (layer.data[12:16, 100:104] == 4).all()
    layer.undo()
    assert len(np.unique(layer.data[60:90, 10:90])) == 1
    layer.undo()
    assert (layer.data == _objects()).all()
    layer.redo()
    assert set(np.unique(layer.data)) == {0, 1, 3, 4}
    assert notes == []


def test_bad_clicks_are_notifications_and_keys_choose_tools(widget, notes):
    viewer, w, layer = widget
    w.set_tool("split_seeds")
    w.click((20, 20))
    w.click((70, 50))  # the second seed lies in another object
    assert notes and notes[-1][0] == "error" and "inside one object" in notes[-1][1]
    assert (layer.data == _objects()).all()
    w.set_tool("delete")
    w.click((95, 135))
    assert "background" in notes[-1][1]
    keymap = {str(k): v for k, v in layer.keymap.items()}
    assert any("Shift" in k and "M" in k for k in keymap)
    (bound,) = [v for k, v in keymap.items() if "Shift" in k and k.endswith("M")]
    bound(layer)
    assert w.tool == "merge"
    layer.mode = "paint"  # napari's own tools put ours down
    assert w.tool is None and not w.tool_buttons["merge"].isChecked()


def test_review_queue_zooms_marks_and_keeps_state_in_features(widget, tmp_path, notes):
    import pandas as pd

    viewer, w, layer = widget
    layer.features = pd.DataFrame({"label": [1, 2, 3, 4], "area": [900, 900, 2400, 16]})
    q = w.rank()
    assert len(q) == 4
    assert int(q.table["label"].iloc[0]) == 4  # the faint speck is the most suspicious
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 keeps the camera there
    camera = scene.camera if scene is not None else viewer.camera
    zoom = camera.zoom
    row = w.next()
    assert row["label"] == 4 and layer.selected_label == 4
    assert np.allclose(camera.center[-2:], (14, 102), atol=1)  # centred on the speck
    assert camera.zoom > zoom  # and zoomed in on it
    box = viewer.layers["review: current object"].data[0]
    assert box[:, 0].min() <= 12 and box[:, 0].max() >= 15
    w.accept()
    assert w.queue.position == 1
    assert w.review_label.text().startswith("1 of 4 reviewed")
    f = layer.features.set_index("index")
    assert f.loc[4, "review"] == "accepted" and f.loc[4, "review_rank"] == 0
    assert f.loc[4, "area"] == 16 and f.loc[4, "label"] == 4  # the object table stays
    # an edit through the tools marks its objects corrected
    w.set_tool("fill")
    w.click((20, 20))
    assert layer.features.set_index("index").loc[1, "review"] == "corrected"
    assert w.queue.summary() == "2 of 4 reviewed"
    # the marks travel in the GeoJSON and come back with it: the review goes on
    path = tmp_path / "reviewed.geojson"
    assert w.export_geojson(path)
    back = w.import_geojson(path)
    w.labels_box.setCurrentText(back.name)
    assert w.rank().summary() == "2 of 4 reviewed"
    assert w.queue.status == {4: "accepted", 1: "corrected"}


def test_geojson_export_and_import(widget, tmp_path, notes):
    viewer, w, layer = widget
    layer.translate = (10, 20)  # a region of the image, at 0.5 um/px
    viewer.layers["img"].translate = (0, 0)
    path = tmp_path / "objects.geojson"
    assert w.export_geojson(path)
    fc = json.loads(path.read_text(encoding="utf-8"))
    assert len(fc["features"]) == 4
    first = fc["features"][0]["properties"]
    assert first["classification"]["name"] == "glands-he"
    assert first["measurements"]["Area µm^2"] == pytest.approx(
        (900 - 0.5) * 0.25, rel=0.01)
    xy = np.asarray(fc["features"][0]["geometry"]["coordinates"][0])
    assert xy[:, 0].min() == pytest.approx(20 + 10, abs=0.6)  # level-0 x of column 10
    new = w.import_geojson(path)
    assert new.metadata["glandseg_role"] == "truth"
    assert (np.asarray(new.data) == layer.data).all()
    assert [p.name for p in tmp_path.iterdir()] == ["objects.geojson"]


def test_mouse_clicks_use_the_tool_and_drags_pan(widget, notes):
    from types import SimpleNamespace

    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    viewer, w, layer = widget
    layer.scale = (2, 2)  # world coordinates differ from data coordinates

    class Persisted:  # napari swaps the event under a drag generator (``__wrapped__``)
        def __init__(self, ev):
            self.__wrapped__ = ev

        def __getattr__(self, name):
            return getattr(self.__wrapped__, name)

    def event(kind, pos):
        return Persisted(SimpleNamespace(
            type=kind, button=1, position=pos, modifiers=(), handled=False,
            is_dragging=kind == "mouse_move", dims_displayed=(0, 1)))

    w.set_tool("delete")
    mouse_press_callbacks(layer, event("mouse_press", (26, 202)))  # a drag from the speck
    mouse_move_callbacks(layer, event("mouse_move", (40, 220)))
    mouse_release_callbacks(layer, event("mouse_release", (40, 220)))
    assert (layer.data == 4).sum() == 16
    mouse_press_callbacks(layer, event("mouse_press", (26, 202)))  # a click on it
    mouse_release_callbacks(layer, event("mouse_release", (26, 202)))
    assert not (layer.data == 4).any()
    assert notes == []


def test_a_large_layer_is_ranked_and_exported_where_it_is_on_screen(widget, tmp_path, qtbot,
                                                                    monkeypatch, notes):
    import napari_glandseg.widgets.correct as wc

    viewer, w, layer = widget
    viewer.window.show()  # corner_pixels follow the camera when the canvas draws
    monkeypatch.setattr(wc, "REGION_PIXELS", 100)  # as if the layer were a slide
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None else viewer.camera
    camera.center = (25, 25)
    camera.zoom = camera.zoom * 6
    qtbot.waitUntil(lambda: np.asarray(layer.corner_pixels)[1, -1] < 139, timeout=5000)
    (y0, x0), (y1, x1) = np.asarray(layer.corner_pixels)[:, -2:]
    assert y1 - y0 < 99 or x1 - x0 < 139  # only part of the layer is on screen
    region = wc._view_region(layer)
    assert region[0] == y0 and region[1] == x0
    table = w.rank().table
    assert set(table["label"]) == set(np.unique(layer.data[y0:y1 + 1, x0:x1 + 1])) - {0}
    assert w.export_geojson(tmp_path / "view.geojson")
    fc = json.loads((tmp_path / "view.geojson").read_text(encoding="utf-8"))
    for f in fc["features"]:
        xy = np.asarray(f["geometry"]["coordinates"][0])
        assert xy[:, 0].min() >= x0 - 0.01 and xy[:, 0].max() <= x1 + 1.01
        assert xy[:, 1].min() >= y0 - 0.01 and xy[:, 1].max() <= y1 + 1.01


def test_class_model_objects_are_ranked_and_exported_with_their_class(make_napari_viewer,
                                                                      tmp_path, notes):
    viewer = make_napari_viewer()
    objects = _objects()
    classes = np.where(objects > 0, 1, 0).astype(np.uint8)
    classes[objects == 3] = 2
    meta = {"source_image": "cells", "model": "wbc",
            "class_names": ["background", "cytoplasm", "nucleus"]}
    viewer.add_labels(classes, name="cells [wbc]",
                      metadata={**meta, "glandseg_role": "prediction"})
    viewer.add_labels(objects, name="cells [wbc objects]",
                      metadata={**meta, "glandseg_role": "objects"})
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    w.labels_box.setCurrentText("cells [wbc objects]")
    table = w.rank().table.set_index("label")
    assert table.loc[3, "class"] == 2 and table.loc[1, "class"] == 1
    assert w.export_geojson(tmp_path / "cells.geojson")
    fc = json.loads((tmp_path / "cells.geojson").read_text(encoding="utf-8"))
    names = {f["properties"]["measurements"]["Label"]: f["properties"]["classification"]["name"]
             for f in fc["features"]}
    assert names == {1: "cytoplasm", 2: "cytoplasm", 3: "nucleus", 4: "cytoplasm"}


def test_defaults_to_the_newest_result_never_to_the_truth(make_napari_viewer):
    """The sample opens with only its [truth] layer: once Segment adds objects, Correct must
    edit those, not the ground truth that was the only choice when the widget was made."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((100, 140, 3), np.uint8), name="img")
    viewer.add_labels(_objects(), name="img [truth]",
                      metadata={"glandseg_role": "truth", "source_image": "img"})
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct")
    assert w.labels_box.currentText() == "img [truth]"  # nothing else to correct yet
    viewer.add_labels(_objects(), name="img [glands-he objects]",
                      metadata={"glandseg_role": "objects", "source_image": "img"})
    assert w.labels_box.currentText() == "img [glands-he objects]"
    assert w.image_box.currentText() == "img"
    viewer.add_labels(np.zeros((100, 140), np.uint8), name="compare x",
                      metadata={"glandseg_role": "objects"})  # an overlay, not a result
    assert w.labels_box.currentText() == "img [glands-he objects]"
    assert w.labels_box.findText("compare x") < 0
    w.set_tool("delete")
    w.click((20, 20))
    assert (viewer.layers["img [truth]"].data == _objects()).all()  # the truth is untouched


def test_the_review_box_is_not_offered_as_a_region(widget):
    """Next draws a yellow box around the object under review: Segment's Shapes ROI and
    Fine-tune's "Only inside shapes" must not offer (and pick) it as a region."""
    viewer, w, layer = widget
    seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")[1]
    ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")[1]
    viewer.add_shapes([np.array([[0, 0], [0, 50], [50, 50]], float)], shape_type="polygon",
                      name="my roi")
    w.rank()
    w.next()
    assert "review: current object" in viewer.layers
    for box in (seg.shapes_box, ft.roi_box):
        names = [box.itemText(i) for i in range(box.count())]
        assert "review: current object" not in names and "my roi" in names
