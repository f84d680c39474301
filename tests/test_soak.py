"""A pathologist's afternoon, compressed: 30 cycles of open -> segment -> correct -> compare
-> Next -> remove all layers -> another model, across glands, nuclei, white blood cells and
MRI. napari must not crash, memory must not keep growing, and the widgets must let go of
the layers that were removed."""

import gc
import shutil

import numpy as np
import pytest

PLUGIN = "napari-glandseg"
CYCLES = 30


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture
def sets(tmp_path, data_dir):
    """Four small datasets (images/ + masks/), one per kind of image."""
    import imageio.v3 as iio

    out = {}
    src = {"glands": [("glas/testA_5_crop.png", "glas/testA_5_crop_instances.png"),
                      ("glas/train_1_crop.png", "glas/train_1_crop_instances.png")],
           "nuclei": [("monuseg/TCGA-21-5784-01Z-00-DX1_crop.png",
                       "monuseg/TCGA-21-5784-01Z-00-DX1_crop_instances.png")],
           "wbc": [("wbc/dataset1_001.png", "wbc/dataset1_001_mask.png")]}
    for kind, pairs in src.items():
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for img, mask in pairs:
            stem = img.split("/")[-1][:-4]
            shutil.copy(data_dir / img, root / "images" / f"{stem}.png")
            shutil.copy(data_dir / mask, root / "masks" / f"{stem}.png")
        if len(pairs) == 1:  # Next needs a second image: the same one flipped
            stem = pairs[0][0].split("/")[-1][:-4]
            iio.imwrite(root / "images" / f"{stem}_flip.png",
                        iio.imread(root / "images" / f"{stem}.png")[::-1])
            iio.imwrite(root / "masks" / f"{stem}_flip.png",
                        iio.imread(root / "masks" / f"{stem}.png")[::-1])
    # grey MRI-like slices as RGB (as in the crash report): a bright organ on dark background
    root = tmp_path / "mri"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        img = np.full((96, 96), 40, np.uint8)
        img[20 + i * 5:60, 30:70] = 180
        mask = (img > 100).astype(np.uint8)
        iio.imwrite(root / "images" / f"slice_{i}.png", np.stack([img] * 3, -1))
        iio.imwrite(root / "masks" / f"slice_{i}.png", mask)
    out = {k: tmp_path / k for k in ("glands", "nuclei", "wbc", "mri")}
    return out


@pytest.mark.slow
def test_a_long_session_does_not_crash_leak_or_hold_dead_layers(make_napari_viewer, qtbot,
                                                                 fg_model_factory, sets):
    models = {"glands": fg_model_factory("soak-glands", class_names=["background", "gland"],
                                         postprocess={"split": "none", "min_size": 0}),
              "nuclei": fg_model_factory("soak-nuclei", class_names=["background", "nucleus"],
                                         postprocess={"split": "distance", "h": 2.0,
                                                      "min_size": 0}),
              "wbc": fg_model_factory("soak-wbc", class_names=["background", "cell"],
                                      postprocess={"split": "none", "min_size": 0})}
    models["mri"] = models["glands"]  # a grey slice into an RGB model, as in the crash report
    viewer = make_napari_viewer(show=True)
    load, model_w = _dock(viewer, "Load"), _dock(viewer, "Model")
    seg, corr, cmp = _dock(viewer, "Segment"), _dock(viewer, "Correct"), _dock(viewer, "Compare")
    post, ft = _dock(viewer, "Post-process"), _dock(viewer, "Fine-tune")
    seg.tile.setValue(64)
    corr.confirm = lambda q: True
    kinds = list(sets)
    rss = []
    for cycle in range(CYCLES):
        kind = kinds[cycle % len(kinds)]
        model_w.select(models[kind])
        load.open_dataset(sets[kind])
        for step in range(2):  # this image, then Next
            worker = seg.run()
            assert worker is not None, f"cycle {cycle}: Segment refused to start"
            with qtbot.waitSignal(worker.finished, timeout=60000):
                pass
            result = seg.last_layers[0]
            assert result.metadata["source_image"] == seg.image_box.currentText()
            corr.labels_box.setCurrentText(result.name)
            ids = np.unique(np.asarray(result.data))
            if len(ids) > 1:
                corr.set_tool("delete")
                ys, xs = np.nonzero(np.asarray(result.data) == ids[-1])
                corr.click((ys[0], xs[0]))
            if step == 0:  # compare, then Next (whose image is segmented in step 1)
                worker = cmp.compute()
                if worker is not None:
                    with qtbot.waitSignal(worker.finished, timeout=60000):
                        pass
                load.next()
        viewer.layers.select_all()
        viewer.layers.remove_selected()
        qtbot.wait(10)
        # the widgets let go of removed layers: nothing they hold names a dead layer
        for box in (seg.image_box, cmp.pred_box, cmp.truth_box, corr.labels_box,
                    post.labels_box):
            assert box.currentText() in ("", *[la.name for la in viewer.layers])
        assert ft.pairs_list.count() == 0
        gc.collect()
        rss.append(_rss_mb())
    # memory settles: the last ten cycles grow it by far less than the first ten
    assert rss[-1] - rss[CYCLES // 3] < 150, rss
