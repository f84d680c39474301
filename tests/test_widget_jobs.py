"""Background jobs of the widgets (issue 23, items 5-7): Compare scores in a worker, Apply
never reads a large layer whole, jobs work on snapshots of the layers, and no temporary
zarr store outlives a failed or cancelled job."""

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-glandseg"


def _dock(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def _wait(qtbot, worker, timeout=60000):
    assert worker is not None, "the widget refused to start"
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass


def _stores():
    return set(Path(tempfile.gettempdir()).glob("glandseg-*.zarr"))


def _disks(h, w, step=60, r=20):
    """Separate disks on a grid: one object each."""
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((h, w), np.uint8)
    for cy in range(step // 2, h - r, step):
        for cx in range(step // 2, w - r, step):
            out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    return out


class WholeReadRefused:
    """A zarr array that, once armed, refuses to be read whole (np.asarray on it, or a
    slice covering all of it): what a slide-sized layer must never be."""

    def __init__(self, arr):
        self.arr, self.armed, self.reads = arr, False, 0

    shape = property(lambda self: self.arr.shape)
    dtype = property(lambda self: self.arr.dtype)
    ndim = property(lambda self: len(self.arr.shape))
    size = property(lambda self: int(np.prod(self.arr.shape)))

    def __len__(self):
        return self.arr.shape[0]

    def __getitem__(self, key):
        if self.armed:
            key = key if isinstance(key, tuple) else (key,)
            whole = len(key) >= 1 and all(
                isinstance(k, slice) and range(*k.indices(n)) == range(n)
                for k, n in zip(key, self.shape, strict=False)) and len(key) >= self.ndim
            if whole or key == (Ellipsis,):
                raise AssertionError("the whole layer was read")
            self.reads += 1
        return self.arr[key]

    def __array__(self, dtype=None, copy=None):
        if self.armed:
            raise AssertionError("np.asarray on the whole layer")
        return np.asarray(self.arr[...], dtype)


@pytest.fixture
def big_layer(make_napari_viewer, tmp_path, monkeypatch):
    """A zarr-backed labels pyramid of 16 disks, post-processed in 256-px windows."""
    import zarr

    import napari_glandseg.widgets.postprocess as pp

    monkeypatch.setattr(pp, "WINDOW", 256, raising=False)
    monkeypatch.setattr(pp, "HALO", 32, raising=False)
    mask = _disks(480, 480, step=120, r=30)
    z = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=mask.shape,
                        chunks=(128, 128), dtype="uint8")
    z[:] = mask
    guard = WholeReadRefused(z)
    viewer = make_napari_viewer()
    layer = viewer.add_labels([guard, mask[::2, ::2]], name="big", multiscale=True,
                              metadata={"glandseg_role": "prediction"})
    w = _dock(viewer, "Post-process")
    w.labels_box.setCurrentText("big")
    w.split_box.setCurrentText("distance")
    return viewer, w, layer, guard, mask


def test_apply_on_a_zarr_layer_works_window_by_window(big_layer, qtbot, notes):
    viewer, w, layer, guard, mask = big_layer
    before, editable = _stores(), layer.editable
    guard.armed = True
    worker = w.apply()
    assert "window by window" in w.status.text() and not layer.editable  # locked meanwhile
    _wait(qtbot, worker)
    guard.armed = False
    assert guard.reads >= 4  # 4 windows of 256 px (with their context), never the whole
    out = w.last_layer
    assert layer.editable == editable  # unlocked as it was
    labels = np.asarray(out.data[0] if out.multiscale else out.data)
    assert labels.shape == mask.shape and labels.max() == 16 and len(out.features) == 16
    np.testing.assert_array_equal(labels > 0, mask > 0)
    # the objects live in a temporary store, which goes with the layer
    store = Path(out.metadata["store_path"])
    assert store.is_dir() and _stores() == before | {store}
    viewer.layers.remove(out)
    assert not store.exists()
    assert [n for n in notes if n[0] == "error"] == []


def test_apply_cancelled_or_failed_leaves_no_store(big_layer, qtbot, notes, monkeypatch):
    import napari_glandseg.postprocessing as post

    viewer, w, layer, guard, mask = big_layer
    real = post.postprocess
    before, n_layers = _stores(), len(viewer.layers)
    # cancelled at the first window
    monkeypatch.setattr(post, "postprocess", lambda *a, **k: (time.sleep(0.3),
                                                              real(*a, **k))[1])
    worker = w.apply()
    worker.yielded.connect(lambda p: w.cancel())
    _wait(qtbot, worker)
    assert ("info", "post-processing cancelled") in notes
    assert w.status.text() == "Cancelled: nothing was added"
    assert len(viewer.layers) == n_layers and _stores() == before
    assert w.apply_btn.isEnabled()
    # failed in the third window
    calls = []

    def broken(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("boom")
        return real(*a, **k)

    monkeypatch.setattr(post, "postprocess", broken)
    _wait(qtbot, w.apply())
    assert notes[-1][0] == "error" and "boom" in notes[-1][1]
    assert len(viewer.layers) == n_layers and _stores() == before


def test_postprocess_job_reads_a_snapshot_of_the_layer(make_napari_viewer, qtbot,
                                                       monkeypatch):
    """An edit made while Apply runs must not reach the job (it read the live array)."""
    import napari_glandseg.widgets.postprocess as pp

    viewer = make_napari_viewer()
    mask = _disks(120, 120)
    layer = viewer.add_labels(mask.copy(), name="pred",
                              metadata={"glandseg_role": "prediction"})
    w = _dock(viewer, "Post-process")
    w.labels_box.setCurrentText("pred")
    started, go = threading.Event(), threading.Event()
    real = pp.objects_of  # the job's post-processing step
    monkeypatch.setattr(pp, "objects_of", lambda *a, **k: (started.set(), go.wait(10),
                                                           real(*a, **k))[2])
    worker = w.apply()
    qtbot.waitUntil(started.is_set, timeout=10000)
    layer.data[:] = 0  # the user wipes the layer meanwhile
    layer.refresh()
    with qtbot.waitSignal(worker.finished, timeout=60000):
        go.set()
    assert w.last_layer.data.max() == 4  # the four disks Apply was pressed on


def test_compare_runs_in_a_worker_on_copies_and_can_be_cancelled(make_napari_viewer, qtbot,
                                                                notes, monkeypatch):
    import napari_glandseg.metrics as met
    import napari_glandseg.widgets.compare as cmp

    viewer = make_napari_viewer()
    truth = _disks(120, 120).astype(np.uint16)
    from skimage.measure import label

    truth = label(truth).astype(np.uint16)
    pred = viewer.add_labels(truth.copy(), name="pred", metadata={"glandseg_role": "objects"})
    viewer.add_labels(truth, name="truth", metadata={"glandseg_role": "truth"})
    w = _dock(viewer, "Compare")
    started, go = threading.Event(), threading.Event()
    real = met._evaluate
    main = threading.current_thread()
    ran_on = []
    monkeypatch.setattr(met, "_evaluate", lambda *a, **k: (
        ran_on.append(threading.current_thread()), started.set(), go.wait(10),
        real(*a, **k))[3])
    t0 = time.perf_counter()
    worker = w.compute()
    assert time.perf_counter() - t0 < 1.0 and worker is not None  # returns at once
    assert not w.compute_btn.isEnabled() and w.cancel_btn.isEnabled()
    assert w.metrics is None
    qtbot.waitUntil(started.is_set, timeout=10000)
    assert ran_on[0] is not main  # scored in the worker thread, not the GUI's
    pred.data[:] = 0  # an edit while it runs: the job scores the layers as they were
    pred.events.paint()  # what a brush stroke emits
    with qtbot.waitSignal(worker.finished, timeout=60000):
        go.set()
    assert w.metrics["object_f1"] == 1.0 and w.metrics["n_pred"] == 4
    assert "press Compare again" in w.stale.text()  # but the edit is noticed
    # drawn from the copy before the edit: kept, but off the canvas
    assert not viewer.layers[f"compare pred ({cmp.OVERLAY_LEGEND})"].visible
    assert w.compute_btn.isEnabled() and not w.cancel_btn.isEnabled()
    # Cancel: stops after the step running; the tables stay as they were
    shown = dict(w.metrics)
    started.clear()
    go.clear()
    worker = w.compute()
    qtbot.waitUntil(started.is_set, timeout=10000)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        w.cancel()
        go.set()
    assert ("info", "comparison cancelled") in notes
    assert w.metrics == shown and w.status.text().startswith("Cancelled")


@pytest.fixture
def stored_segment(make_napari_viewer, fg_model_factory, monkeypatch):
    """Segment on the sample with its result in a zarr store (as a slide's would be)."""
    import napari_glandseg.inference as inf

    monkeypatch.setattr(inf, "LARGE_PIXELS", 0)
    name = fg_model_factory("allfg-store", class_names=["background", "gland"],
                            postprocess={"split": "none", "min_size": 0})
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    _dock(viewer, "Model").select(name)
    w = _dock(viewer, "Segment")
    w.image_box.setCurrentText("glas_testA_5")
    w.tile.setValue(256)
    return viewer, w


def test_segment_failed_in_post_processing_leaves_no_store(stored_segment, qtbot, notes,
                                                           monkeypatch):
    import napari_glandseg.pipeline as pipe

    viewer, w = stored_segment

    def broken(*a, **k):
        yield from ()
        raise ValueError("no memory left")

    monkeypatch.setattr(pipe, "iter_postprocess_windows", broken)
    before, n_layers = _stores(), len(viewer.layers)
    _wait(qtbot, w.run())
    assert "no memory left" in notes[-1][1] and len(viewer.layers) == n_layers
    assert _stores() == before


def test_segment_cancelled_in_post_processing_leaves_no_store(stored_segment, qtbot, notes,
                                                              monkeypatch):
    import napari_glandseg.pipeline as pipe
    from napari_glandseg.progress import Progress

    viewer, w = stored_segment

    def slow(*a, **k):
        for i in range(100):
            time.sleep(0.05)
            yield Progress(i, 100, "post-processing window")
        return 0, None

    monkeypatch.setattr(pipe, "iter_postprocess_windows", slow)
    before, n_layers = _stores(), len(viewer.layers)
    worker = w.run()
    worker.yielded.connect(lambda p: p.message == "post-processing window" and w.cancel())
    _wait(qtbot, worker)
    assert ("info", "segmentation cancelled") in notes and len(viewer.layers) == n_layers
    assert _stores() == before  # removed before the job ended, not at garbage collection


def test_a_result_returned_as_cancel_came_is_discarded(qtbot):
    """superqt drops a value the job returned after Cancel was pressed: its store would
    be lost; the worker hands it to on_discard instead."""
    from napari_glandseg.progress import Progress
    from napari_glandseg.widgets import _worker

    running, go, discarded, cleaned = threading.Event(), threading.Event(), [], []

    def job():
        try:
            yield Progress(1, 1, "last step")
            running.set()  # past its last yield: only the return is left
            go.wait(10)
        finally:
            cleaned.append(1)
        return "a result holding a store"

    def on_yield(p):
        running.wait(10)
        worker.quit()  # Cancel, just as the job ends
        go.set()

    worker = _worker.start(job, on_yield=on_yield, on_discard=discarded.append,
                           on_return=lambda v: pytest.fail("a cancelled job's result shown"))
    _wait(qtbot, worker)
    assert discarded == ["a result holding a store"] and cleaned == [1]


def test_finetune_validates_on_the_chosen_device(make_napari_viewer, qtbot, notes,
                                                 fg_model_factory, monkeypatch):
    """The before/after table ran on the default device whatever the Model widget said.
    Here the default ("auto") is made unusable: validation must run on the chosen CPU."""
    import napari_glandseg.inference as inf
    from napari_glandseg.errors import GlandsegError

    real = inf.resolve_device

    def chosen_only(choice="auto"):
        if str(choice) == "auto":
            raise GlandsegError("ran on the default device, not the chosen one")
        return real(choice)

    base = fg_model_factory("ft-base", class_names=["background", "gland"])
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "glas")
    model_w = _dock(viewer, "Model")
    model_w.select(base)
    model_w.set_device("cpu")
    w = _dock(viewer, "Fine-tune")
    w.name_edit.setText("ft-device")
    w.base_box.setCurrentText(base)
    w.epochs.setValue(1)
    w.steps.setValue(1)
    w.patch.setValue(64)
    w.batch.setValue(2)
    assert w.params().device == "cpu"
    monkeypatch.setattr(inf, "resolve_device", chosen_only)
    _wait(qtbot, w.start(), timeout=120000)
    assert [n for n in notes if n[0] == "error"] == []
    result, before, after, looks = w.result
    # no independent truth: the base and the new model segment the corrected region, on
    # the chosen device, for the user to judge
    assert set(looks) == {"before", "after"}
