"""The Slides widget: a folder of slides segmented in the background, results opened."""

import numpy as np


def _slides(folder):
    import imageio.v3 as iio

    folder.mkdir()
    for i in range(2):
        img = np.full((200, 260, 3), 238, np.uint8)
        img[40:160, 30 + 40 * i: 150 + 40 * i] = (150, 60, 130)
        iio.imwrite(folder / f"slide{i}.png", img)
    (folder / "broken.png").write_bytes(b"not an image")


def _slides_widget(make_napari_viewer, tmp_path, model: str):
    """A viewer with the Slides widget set to run ``tmp_path/slides`` into
    ``tmp_path/out`` with ``model`` on one worker."""
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Slides")
    w.folder.setText(str(tmp_path / "slides"))
    w.out.setText(str(tmp_path / "out"))
    w.model_box.setCurrentText(model)
    w.workers.setValue(1)
    return viewer, w


def test_slides_widget_runs_a_folder_in_the_background(make_napari_viewer, qtbot, tmp_path,
                                                       fg_model_factory, notes):
    name = fg_model_factory("fg")
    _slides(tmp_path / "slides")
    viewer, w = _slides_widget(make_napari_viewer, tmp_path, name)
    w.block.setValue(128)
    w.overlap.setValue(32)
    seen = []
    worker = w.run()
    worker.yielded.connect(seen.append)
    assert not w.run_btn.isEnabled()  # one run at a time
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert w.run_btn.isEnabled() and w.result is not None
    assert sorted(r.name for r in w.result.done) == ["slide0", "slide1"]
    assert [p.endswith("broken.png") for p, _ in w.result.failed] == [True]
    assert seen and seen[-1].done == seen[-1].total
    assert any(level == "warning" and "1 failed" in m for level, m in notes)
    layers = w.open_results()
    assert [la.name for la in layers] == ["slide0 [labels]", "slide1 [labels]"]
    # each slide is opened under its labels (not labels over black), once
    names = [la.name for la in viewer.layers]
    assert names == ["slide0", "slide0 [labels]", "slide1", "slide1 [labels]"]
    assert layers[1].metadata["source_image"] == "slide1"
    assert viewer.layers["slide1"].data.shape == (200, 260, 3)
    w.open_results()
    assert sum(name == "slide1" for name in (la.name for la in viewer.layers)) == 1
    assert layers[1].multiscale and int(np.asarray(layers[1].data[0])[100, 150]) == 1
    # blocks of glass only (x >= 256) are not run through the network: they stay empty
    assert int(np.asarray(layers[1].data[0])[100, 258]) == 0
    assert int(np.asarray(layers[0].data[0])[100, 258]) == 0


def test_slides_widget_names_a_bad_folder(make_napari_viewer, notes, tmp_path):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Slides")
    w.folder.setText(str(tmp_path / "missing"))
    assert w.run() is None
    assert notes[-1][0] == "error" and "missing" in notes[-1][1]


def test_slides_widget_runs_the_bundled_svs_with_tissue_detection(make_napari_viewer, qtbot,
                                                                  tmp_path, fg_model_factory,
                                                                  notes):
    """The defaults (tissue on) on a real SVS: the tissue mask is read inside a worker."""
    import shutil
    from pathlib import Path

    svs = Path(__file__).parent / "data" / "wsi" / "cmu_small_region.svs"
    (tmp_path / "slides").mkdir()
    shutil.copy(svs, tmp_path / "slides" / svs.name)
    name = fg_model_factory("fg-coarse", pixel_size_um=4.0)  # 8x fewer pixels: quick
    viewer, w = _slides_widget(make_napari_viewer, tmp_path, name)
    assert w.tissue.isChecked()
    worker = w.run()
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    assert w.result is not None and not w.result.failed, w.result.failed
    assert [r.name for r in w.result.done] == ["cmu_small_region"]
    # the results open over their slide in micrometres: the scale bar keeps its unit
    layers = w.open_results()
    assert viewer.scale_bar.visible
    units = {str(u) for la in viewer.layers for u in la.units[-2:]}
    assert units == {"micrometer"} and layers[0].metadata["source_image"]
