"""Save corrections of a region's result (issue 23, item 3): the folder must still load and
train. A Segment ROI gives labels of the ROI's size; they used to be written cropped, as
masks/x.tif beside the truth masks/x.png, and the dataset no longer loaded (shape
mismatch)."""

import shutil

import numpy as np
import pytest

from napari_glandseg.io import find_pairs, read_image
from napari_glandseg.training import pairs_from_folder

PLUGIN = "napari-glandseg"
STEM = "testA_5_crop"


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


@pytest.fixture
def dataset(tmp_path, data_dir):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in (STEM, "train_1_crop"):
        shutil.copy(data_dir / f"glas/{stem}.png", tmp_path / "images" / f"{stem}.png")
        shutil.copy(data_dir / f"glas/{stem}_instances.png", tmp_path / "masks" / f"{stem}.png")
    return tmp_path


@pytest.fixture
def roi_session(make_napari_viewer, fg_model_factory, dataset):
    """The dataset open in Load, a model that calls everything gland, a Segment widget set
    to a Shapes ROI."""
    name = fg_model_factory("allfg-roi", class_names=["background", "gland"],
                            postprocess={"split": "none", "min_size": 0})
    viewer = make_napari_viewer()
    load = _dock(viewer, "Load")
    load.open_dataset(dataset)
    _dock(viewer, "Model").select(name)
    seg = _dock(viewer, "Segment")
    seg.image_box.setCurrentText(STEM)
    seg.tile.setValue(64)
    seg.region_box.setCurrentText("shapes ROI")
    return viewer, load, seg


def _segment_roi(qtbot, viewer, seg, corners, shape_type):
    viewer.add_shapes([np.asarray(corners, float)], shape_type=shape_type, name="roi")
    seg.shapes_box.setCurrentText("roi")
    worker = seg.run()
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    (objects,) = seg.last_layers
    return objects


def test_a_roi_result_is_saved_beside_the_truth_as_a_whole_image_mask(roi_session, qtbot,
                                                                      dataset, notes):
    viewer, load, seg = roi_session
    truth_file = dataset / "masks" / f"{STEM}.png"
    truth = np.asarray(read_image(truth_file, as_labels=True).data)
    before = truth_file.read_bytes()
    tri = [[40, 50], [40, 150], [120, 50]]  # a triangle: its bounding box is 81 x 101
    objects = _segment_roi(qtbot, viewer, seg, tri, "polygon")
    assert objects.data.shape == (81, 101) and tuple(objects.translate) == (40, 50)
    objects.paint((5, 5), 7)  # an edit: now an unsaved correction
    (path,) = load.save_corrections()
    # never over the truth: a corrected result goes to corrected/, named for what it is
    assert path == dataset / "corrected" / f"{STEM}.tif"
    assert truth_file.read_bytes() == before
    assert sorted(p.name for p in (dataset / "masks").iterdir()) == [
        f"{STEM}.png", "train_1_crop.png"]  # no second, cropped mask beside the truth
    # the corrected folder loads and trains: every mask has its image's shape
    pairs = pairs_from_folder(dataset, mask_folder="corrected")
    assert [p.name for p in pairs] == [STEM]
    assert all(p.mask.shape == p.image.shape[:2] for p in pairs)
    saved = pairs[0].mask
    assert saved.shape == truth.shape == (256, 256)
    # inside the triangle: the corrected labels; outside it (the rest of the box too) the
    # truth as it was, its objects keeping their ids
    from skimage.draw import polygon2mask

    inside = np.zeros(truth.shape, bool)
    inside[40:121, 50:151] = polygon2mask((81, 101), np.asarray(tri, float) - (40, 50))
    np.testing.assert_array_equal(saved[~inside], truth[~inside])
    crop = np.asarray(objects.data)
    np.testing.assert_array_equal(saved[inside] > 0, crop[inside[40:121, 50:151]] > 0)
    new_ids = np.unique(saved[inside & (saved > 0)])
    assert len(new_ids) == len(np.unique(crop[crop > 0]))  # 1 (all gland) and the 7
    assert new_ids.min() > truth.max()  # no id of an object outside is reused
    assert not load.unsaved()
    # saving again replaces the earlier correction only when asked
    objects.paint((6, 6), 7)
    assert load.save_corrections() == [] and "exists" in notes[-1][1]
    assert load.save_corrections(overwrite=True) == [path]


def test_a_roi_result_without_truth_gets_a_whole_image_mask(roi_session, qtbot, dataset,
                                                            notes):
    viewer, load, seg = roi_session
    (dataset / "masks" / f"{STEM}.png").unlink()
    objects = _segment_roi(qtbot, viewer, seg, [[40, 50], [40, 150], [120, 150], [120, 50]],
                           "rectangle")
    objects.paint((5, 5), 2)
    (path,) = load.save_corrections()
    assert path == dataset / "corrected" / f"{STEM}.tif"
    assert any(level == "warning" and "background" in m for level, m in notes)
    (pair,) = [p for p in pairs_from_folder(dataset, mask_folder="corrected")
               if p.name == STEM]
    assert pair.mask.shape == pair.image.shape[:2] == (256, 256)
    assert not pair.mask[:40].any() and pair.mask[40:121, 50:151].all()


def test_a_roi_result_saved_into_a_folder_is_a_pair_of_its_region(roi_session, qtbot,
                                                                  tmp_path, notes):
    viewer, load, seg = roi_session
    objects = _segment_roi(qtbot, viewer, seg, [[40, 50], [40, 150], [120, 150], [120, 50]],
                           "rectangle")
    objects.paint((5, 5), 2)
    out = tmp_path / "corrections"
    written = load.save_corrections(folder=out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        f"images/{STEM}_40_50.png", f"masks/{STEM}_40_50.tif"]
    (pair,) = find_pairs(out)
    (tp,) = pairs_from_folder(out)
    assert tp.image.shape == (81, 101, 3) and tp.mask.shape == (81, 101)
    image = viewer.layers[STEM].data
    np.testing.assert_array_equal(tp.image, image[40:121, 50:151])  # the pixels under it
    np.testing.assert_array_equal(tp.mask > 0, np.asarray(objects.data) > 0)
