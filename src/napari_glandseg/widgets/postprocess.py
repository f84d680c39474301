"""Post-process widget: split touching objects, with a live preview, into a new Labels layer."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..pipeline import FileParams, from_entry, objects_of
from ..postprocessing import (
    MAX_LEVELS,
    PostprocessParams,
    Split,
    iter_postprocess_windows,
    object_table,
    write_csv,
)
from ..progress import Progress
from . import _worker
from ._common import (
    fill_layer_box,
    label_features,
    notify,
    table_for_csv,
    track_edits,
    unique_name,
)
from ._focus import RESULT_ROLES, follow, is_news, layers_of
from ._stores import StoreKeeper

PREVIEW = "postprocess preview"
#: Above this many pixels the preview covers only the part of the layer on screen.
PREVIEW_MAX_PIXELS = 2048 * 2048


def _applied_here(meta: dict) -> bool:
    """Whether a layer's metadata is that of Apply's objects (they name the labels they were
    split from), as opposed to a Segment result the labels box follows."""
    return "source_labels" in meta
#: Above this many pixels (or for a lazy, zarr/dask-backed layer) Apply post-processes
#: window by window: the whole-layer route needs ~100 bytes per pixel at once.
WINDOWED_PIXELS = 4096 * 4096
#: The window side and context of the windowed route: the per-file pipeline's.
WINDOW, HALO = FileParams.window, FileParams.halo
#: Metadata a new layer must not inherit from the layer it was made from.
_NOT_INHERITED = ("edited", "unsaved", "saved_path", "store_path")


def postprocess_job(data, params, intensity, pixel_size_um, objects=False):
    """Post-process and measure in the worker thread; returns ``(objects, table, None)``.
    ``data`` is the caller's own copy (a snapshot of the layer, which may be edited
    meanwhile). ``objects``: the input holds separate objects, which stay apart."""
    yield Progress(0, 2, "splitting into objects…")
    out = objects_of(data, params, objects=objects).labels  # the route's post-processing step
    yield Progress(1, 2, f"measuring {int(out.max())} objects…")
    table = object_table(out, intensity, pixel_size_um)
    yield Progress(2, 2, "done")
    return out, table, None


def windowed_job(data, params, intensity, pixel_size_um, objects=False):
    """Post-process a large or lazy layer window by window in the worker thread
    (:func:`~napari_glandseg.postprocessing.iter_postprocess_windows`, with the window and
    context the per-file pipeline uses), never reading it whole; returns ``(objects,
    table, store_path)``. A lazy layer's objects go into a temporary zarr store (removed
    here when the job fails or is cancelled; else with the layer that shows it)."""
    h, w = data.shape[:2]
    path = None
    if isinstance(data, np.ndarray):
        dst = np.zeros((h, w), np.uint32)
    else:
        import tempfile

        import zarr

        path = tempfile.mkdtemp(prefix="glandseg-", suffix=".zarr")
        dst = zarr.open_group(path, mode="w").create_array(
            "objects", shape=(h, w), dtype="uint32", fill_value=0,
            chunks=(min(h, 1024), min(w, 1024)))
    try:
        n, table = yield from iter_postprocess_windows(
            data, dst, params, window=WINDOW, halo=HALO, image=intensity,
            pixel_size_um=pixel_size_um, table=True, objects=objects)
    except BaseException:  # failed or cancelled (the generator closed): nothing is shown
        if path is not None:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise
    return dst, table, path


def is_large(data) -> bool:
    """Whether Apply takes the windowed route for ``data``."""
    return not isinstance(data, np.ndarray) or data.shape[0] * data.shape[1] > WINDOWED_PIXELS


class PostprocessWidget(QWidget):
    """Fill holes, drop small objects, split touching ones; Apply adds a new layer whose
    ``features`` hold the per-object table. The input layer is never changed.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Post-process")[1]
        w.labels_box.setCurrentText("img [glands-he]"); w.split_box.setCurrentText("distance")
        layer = w.apply()
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.last_layer = None
        self._stale: set = set()
        self.labels_box = QComboBox()
        self.image_box = QComboBox()
        self.split_box = QComboBox()
        self.split_box.addItems([s.value for s in Split])
        self.split_box.setCurrentText(Split.DISTANCE.value)
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10**6)
        self.min_size.setValue(30)
        self.fill_holes = QCheckBox("Fill holes")
        self.fill_holes.setChecked(True)
        self.max_hole = QSpinBox()
        self.max_hole.setRange(0, 10**6)
        self.max_hole.setToolTip("0 fills holes of any size")
        self.h = QDoubleSpinBox()
        self.h.setRange(0.1, 50)
        self.h.setValue(2.0)
        self.min_distance = QSpinBox()
        self.min_distance.setRange(1, 200)
        self.min_distance.setValue(7)
        self.marker_level = QSpinBox()
        self.marker_level.setRange(1, MAX_LEVELS)
        self.marker_level.setValue(2)
        self.marker_level.setToolTip(
            "distance-levels models: each connected region at or above this level seeds one "
            "object (higher splits touching objects more readily)")
        self.level_h = QDoubleSpinBox()
        self.level_h.setRange(0.05, float(MAX_LEVELS))
        self.level_h.setSingleStep(0.1)
        self.level_h.setValue(0.8)
        self.level_h.setToolTip(
            "distance-levels models, level peaks: each top of the smoothed map at least this "
            "many levels high seeds one object (lower splits more)")
        self.smooth = QDoubleSpinBox()
        self.smooth.setRange(0.0, 20.0)
        self.smooth.setSingleStep(0.5)
        self.smooth.setValue(2.0)
        self.smooth.setToolTip("distance-levels models, level peaks: Gaussian smoothing of the "
                               "levels map in pixels before its tops are found (0: none)")
        self.preview = QCheckBox("Live preview")
        self.apply_btn = QPushButton("Apply")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.csv_btn = QPushButton("Export objects CSV…")
        self.tune_btn = QPushButton("Tune on validation images…")
        self.tune_btn.setToolTip(
            "Choose a dataset folder (images + masks): the selected model segments its "
            "validation images (split.csv val rows, or the last 20%) and every split setting "
            "is scored on their objects; the best goes into the controls")
        self.save_tuned_btn = QPushButton("Save as model copy")
        self.save_tuned_btn.setVisible(False)
        self.tune_result = None
        self.tune_worker = None
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self._lay_out()

        self.apply_btn.clicked.connect(self.apply)
        self.cancel_btn.clicked.connect(self.cancel)
        self.csv_btn.clicked.connect(self._choose_csv)
        self.tune_btn.clicked.connect(self._choose_tune_folder)
        self.save_tuned_btn.clicked.connect(self.save_tuned)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._forget)
        self.stores = StoreKeeper(self, napari_viewer)
        self.focus = follow(self, napari_viewer, self._follow)
        self._refresh_layers()
        if self.focus.name:
            self._follow(self.focus.name)

    def _lay_out(self) -> None:
        """The form, the buttons and the status."""
        form = QFormLayout()
        form.addRow("Labels", self.labels_box)
        form.addRow("Intensity image", self.image_box)
        form.addRow("Split", self.split_box)
        form.addRow("Min object size (px)", self.min_size)
        form.addRow(self.fill_holes)
        form.addRow("Max hole size (px)", self.max_hole)
        form.addRow("h (distance)", self.h)
        form.addRow("Min distance (peaks)", self.min_distance)
        form.addRow("Marker level (levels)", self.marker_level)
        form.addRow("Peak height (level peaks)", self.level_h)
        form.addRow("Smoothing px (level peaks)", self.smooth)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.preview)
        row = QHBoxLayout()
        row.addWidget(self.apply_btn)
        row.addWidget(self.cancel_btn)
        row.addWidget(self.csv_btn)
        layout.addLayout(row)
        row2 = QHBoxLayout()
        row2.addWidget(self.tune_btn)
        row2.addWidget(self.save_tuned_btn)
        layout.addLayout(row2)
        layout.addWidget(self.status)

        # Coalesce slider drags: recompute the preview 150 ms after the last change.
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(150)
        self._timer.timeout.connect(self.update_preview)
        # re-measure objects a user edits by hand (half a second after the last stroke)
        self._measure_timer = QTimer(self)
        self._measure_timer.setSingleShot(True)
        self._measure_timer.setInterval(500)
        self._measure_timer.timeout.connect(self.refresh_features)
        for w in (self.min_size, self.max_hole, self.min_distance, self.marker_level):
            w.valueChanged.connect(self._schedule)
        for w in (self.h, self.level_h, self.smooth):
            w.valueChanged.connect(self._schedule)
        self.split_box.currentTextChanged.connect(self._schedule)
        self.fill_holes.toggled.connect(self._schedule)
        self.labels_box.currentTextChanged.connect(self._adopt_defaults)
        self.labels_box.currentTextChanged.connect(self._adopt_image)
        self.labels_box.currentTextChanged.connect(self._schedule)
        self.preview.toggled.connect(self._preview_toggled)

    def params(self) -> PostprocessParams:
        return PostprocessParams(
            fill_holes=self.fill_holes.isChecked(), max_hole_size=self.max_hole.value(),
            min_size=self.min_size.value(), split=self.split_box.currentText(),
            h=self.h.value(), min_distance=self.min_distance.value(),
            marker_level=self.marker_level.value(), level_h=self.level_h.value(),
            smooth=self.smooth.value())

    # ---------------------------------------------------------------- actions a script can call
    def apply(self):
        """Post-process the whole layer into a new Labels layer in the background.

        Returns the worker (None on bad input); ``last_layer`` holds the new layer when it
        finishes."""
        if self.worker is not None:
            notify("warning", "post-processing is already running")
            return None
        layer = self._labels_layer()
        if layer is None:
            return None
        try:
            params = self.params()
            data = layer.data[0] if layer.multiscale else layer.data
            large = is_large(data)
            intensity = self._intensity(data.shape, lazy=large)
            objects = self._holds_objects(layer, data)
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        if large:  # read window by window; the layer is locked meanwhile (too big to copy)
            job = windowed_job
            self._locked = (layer, layer.editable)
            layer.editable = False
        else:  # the job works on a copy: edits made while it runs cannot reach it
            job, data = postprocess_job, np.array(data, copy=True)
        self.apply_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(f"Post-processing {layer.name!r}"
                            + (" window by window…" if large else "…"))
        self.worker = _worker.start(
            job, data, params, intensity, layer.metadata.get("pixel_size_um"), objects,
            on_yield=lambda p: self.status.setText(p.message),
            on_return=lambda out: self._applied(out, layer, params),
            on_error=lambda msg: self.status.setText(f"Failed: {msg}"),
            on_abort=lambda: self.status.setText("Cancelled: nothing was added"),
            on_discard=lambda out: self.stores.discard(out[2]),
            on_done=self._apply_done, what="post-processing",
            progress_desc="GlandSeg: post-processing", owner=self)
        return self.worker

    def cancel(self) -> None:
        """Stop Apply at its next step (window); nothing is added."""
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.quit()

    def _apply_done(self) -> None:
        self.worker = None
        self.apply_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        locked = getattr(self, "_locked", None)
        if locked is not None:
            layer, editable = locked
            layer.editable = editable
            self._locked = None

    def _applied(self, out, layer, params) -> None:
        labels, table, store = out
        name = unique_name(self.viewer, f"{layer.name} [objects]")
        meta = {k: v for k, v in layer.metadata.items() if k not in _NOT_INHERITED}
        multiscale = False
        if store is not None:  # lazy, as a pyramid napari shows zoomed out cheaply
            from ..io import lazy_pyramid

            self.stores.keep(store)
            levels = lazy_pyramid([labels])
            labels, multiscale = (levels, True) if len(levels) > 1 else (levels[0], False)
            meta["store_path"] = store
        new = self.viewer.add_labels(
            labels, name=name, scale=layer.scale[-2:], translate=layer.translate[-2:],
            units=layer.units[-2:], multiscale=multiscale,
            features=label_features(table),
            metadata={**meta, "glandseg_role": "objects", "source_labels": layer.name,
                      "postprocess": {k: getattr(v, "value", v)
                                      for k, v in vars(params).items()}})
        track_edits(new)
        self._timer.stop()
        self.preview.setChecked(False)  # the result is there: the preview would hide it
        self._remove_preview()
        self.last_layer = new
        # the input under the result would show through it: a deleted object would stay
        # visible and the colours mix (hidden, never removed: Compare still reads it)
        # so would an earlier Apply's objects of the same input (a setting compared with
        # another is seen alone, each layer kept)
        under = [la for la in self.viewer.layers if la.name != new.name and la.visible and (
            la.name == layer.name or la.metadata.get("source_labels") == layer.name)]
        for la in under:
            la.visible = False
        hidden = "; " + ", ".join(repr(la.name) for la in under) + " hidden" if under else ""
        self.status.setText(f"{len(table)} objects in {name!r}{hidden}")

    def _forget(self, event) -> None:
        """Let go of a removed layer (no re-measuring of a layer that is gone)."""
        name = getattr(event.value, "name", None)
        self._stale = {la for la in self._stale if la.name != name}
        if self.last_layer is not None and self.last_layer.name == name:
            self.last_layer = None

    def refresh_features(self, layers=None) -> None:
        """Re-measure the objects of layers edited since their table was made."""
        for layer in list(layers or self._stale):
            self._stale.discard(layer)
            if layer not in self.viewer.layers:
                continue
            data = layer.data[0] if layer.multiscale else layer.data
            if is_large(data):  # never read a large layer whole on the GUI thread
                self.status.setText(f"{layer.name!r} is too large to re-measure after "
                                    "each edit: Apply again for a new table")
                continue
            img = self._intensity(np.shape(data))
            try:
                layer.features = label_features(object_table(
                    np.asarray(layer.data), img, layer.metadata.get("pixel_size_um")))
            except GlandsegError as exc:
                self.status.setText(f"cannot re-measure {layer.name!r}: {exc}")
                continue
            self.status.setText(f"{len(layer.features)} objects in {layer.name!r} "
                                "(re-measured after your edit)")

    def _watch(self, event) -> None:
        """Objects layers get their table re-measured after hand edits."""
        layer = event.value
        if getattr(layer, "metadata", {}).get("glandseg_role") != "objects" or \
                not hasattr(layer.events, "paint"):
            return

        def _edited(_event=None, layer=layer):
            self._stale.add(layer)
            self._measure_timer.start()

        layer.events.paint.connect(_edited)

    def update_preview(self) -> None:
        """Show the result for the current settings in a temporary layer."""
        if not self.preview.isChecked():
            return
        layer = self._labels_layer(quiet=True)
        if layer is None:
            return
        data = layer.data[0] if layer.multiscale else layer.data
        offset = np.zeros(2)
        if data.shape[0] * data.shape[1] > PREVIEW_MAX_PIXELS:
            (y0, x0), (y1, x1) = np.asarray(layer.corner_pixels)[:, -2:]
            if layer.multiscale:
                f = np.asarray(layer.downsample_factors[layer.data_level])[-2:]
                y0, x0, y1, x1 = y0 * f[0], x0 * f[1], (y1 + 1) * f[0], (x1 + 1) * f[1]
            y0, x0 = int(y0), int(x0)
            data, offset = data[y0:int(y1) + 1, x0:int(x1) + 1], np.array([y0, x0])
        try:
            data = np.asarray(data)
            out = objects_of(data, self.params(),
                             objects=self._holds_objects(layer, data)).labels
        except GlandsegError as exc:
            self.status.setText(str(exc))
            return
        translate = np.asarray(layer.translate)[-2:] + offset * np.asarray(layer.scale)[-2:]
        if PREVIEW in self.viewer.layers:
            prev = self.viewer.layers[PREVIEW]
            prev.data, prev.translate = out, translate
        else:
            self.viewer.add_labels(out, name=PREVIEW, scale=layer.scale[-2:],
                                   units=layer.units[-2:],
                                   translate=translate, opacity=0.6)
        self.status.setText(f"preview: {int(out.max())} objects")

    def export_csv(self, path) -> bool:
        layer = self.viewer.layers.selection.active
        from napari.layers import Labels

        if not isinstance(layer, Labels) or layer.features is None or not len(layer.features):
            notify("error", "select a Labels layer made with Apply (it holds the object table)")
            return False
        try:
            # the save dialog asked already
            write_csv(table_for_csv(layer.features), path, overwrite=True)
        except (GlandsegError, OSError) as exc:
            notify("error", f"cannot write {path}: {exc}")
            return False
        notify("info", f"wrote {len(layer.features)} objects to {path}")
        return True

    # ---------------------------------------------------------------- internals
    def _labels_layer(self, quiet: bool = False):
        name = self.labels_box.currentText()
        if not name or name not in self.viewer.layers:
            if not quiet:
                notify("error", "no Labels layer chosen: segment an image or open a mask first")
            return None
        return self.viewer.layers[name]

    def _intensity(self, shape, lazy: bool = False):
        """The intensity image's pixels on the labels' grid: its pyramid level of the same
        height and width (a slide's result lies on a coarser level), else None. Read into
        memory unless ``lazy``; a level of another size is never read."""
        name = self.image_box.currentText()
        if name and name in self.viewer.layers:
            img = self.viewer.layers[name]
            for level in (img.data if img.multiscale else [img.data]):
                if tuple(level.shape[:2]) == tuple(shape[:2]):
                    return level if lazy else np.asarray(level)
        return None

    def _adopt_defaults(self, name: str) -> None:
        """A layer made by the Segment widget carries its model card's post-processing."""
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        defaults = layer.metadata.get("postprocess_defaults") if layer is not None else None
        if not defaults:
            return
        try:
            p = from_entry(defaults)  # a card entry, read as every route reads it
        except (GlandsegError, TypeError):
            return
        self.set_params(p)

    def set_params(self, p: PostprocessParams) -> None:
        """Put settings into the controls."""
        self.split_box.setCurrentText(p.split.value)
        self.min_size.setValue(p.min_size)
        self.fill_holes.setChecked(p.fill_holes)
        self.max_hole.setValue(p.max_hole_size)
        self.h.setValue(p.h)
        self.min_distance.setValue(p.min_distance)
        self.marker_level.setValue(p.marker_level)
        self.level_h.setValue(p.level_h)
        self.smooth.setValue(p.smooth)

    # ---------------------------------------------------------------- tuning on validation images
    def tune_folder(self, folder):
        """Tune the selected model's post-processing on the validation pairs of a dataset
        folder in the background (:func:`napari_glandseg.tune.iter_tune`); the best setting
        goes into the controls. Returns the worker (None on bad input)."""
        from pathlib import Path

        from ..training import split_pairs, with_pixel_size
        from ..tune import iter_tune
        from ._state import selection_for

        model = selection_for(self.viewer).model
        if model is None:
            notify("error", "choose a model in the Model tab first: tuning segments the "
                            "validation images with it")
            return None
        if self.tune_worker is not None:
            notify("warning", "tuning is already running")
            return None
        folder = Path(folder)
        try:
            csv = folder / "split.csv"
            _, val = split_pairs(folder, csv if csv.exists() else None)
            val = with_pixel_size(val, model.card.data_pixel_size_um)
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        self.tune_btn.setEnabled(False)
        self.save_tuned_btn.setVisible(False)
        self.status.setText(f"Tuning {model.name!r} on {len(val)} validation image(s)…")
        self.tune_worker = _worker.start(
            iter_tune, model, val,
            on_yield=lambda p: self.status.setText(f"Tuning: {p.message}"),
            on_return=lambda res: self._tuned(res, model, folder),
            on_error=lambda msg: self.status.setText(f"Tuning failed: {msg}"),
            on_abort=lambda: self.status.setText("Tuning cancelled"),
            on_done=self._tune_done, what="tuning", progress_desc="GlandSeg: tuning", owner=self)
        return self.tune_worker

    def _tune_done(self) -> None:
        self.tune_worker = None
        self.tune_btn.setEnabled(True)

    def _tuned(self, res, model, folder) -> None:
        self.tune_result = (res, model, folder)
        self.set_params(PostprocessParams(**res.best))
        rows = []
        for r in res.table[:3]:
            setting = ", ".join(f"{k}={v}" for k, v in r.items()
                                if k not in ("object_f1", "object_dice", "aji", "pq",
                                             "objects"))
            rows.append(f"  {r[res.metric]:.3f}  {setting}")
        self.status.setText(
            f"Chosen on {res.n_images} validation image(s): {res.metric.replace('_', ' ')} "
            f"{res.score:.3f} (the card's setting: {res.current_score:.3f}; near-ties within "
            "0.002 go to the best mean of the four object scores); now in the controls. "
            "Top settings:\n" + "\n".join(rows))
        self.save_tuned_btn.setVisible(True)

    def save_tuned(self, name: str | None = None):
        """Save the tuned setting into a copy of the model (``<model>-tuned``, never over an
        existing one) and return its path."""
        if self.tune_result is None:
            notify("warning", "tune first")
            return None
        from ..models import list_models
        from ..tune import save_tuned

        res, model, folder = self.tune_result
        taken = {m.name for m in list_models()}
        if name is None:
            name, k = f"{model.name}-tuned", 2
            while name in taken:
                name, k = f"{model.name}-tuned-{k}", k + 1
        try:
            path = save_tuned(model, res, name, f"{res.n_images} validation image(s) of "
                                                f"{folder}")
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        notify("info", f"saved {name!r} with the tuned post-processing; choose it in Model")
        self.save_tuned_btn.setVisible(False)
        return path

    def _choose_tune_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Dataset folder with validation pairs")
        if folder:
            self.tune_folder(folder)

    def _schedule(self, *_):
        if self.preview.isChecked():
            self._timer.start()

    def _preview_toggled(self, on: bool) -> None:
        if on:
            self.update_preview()
        else:
            self._remove_preview()

    def _remove_preview(self) -> None:
        if PREVIEW in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW)

    def _follow(self, name) -> None:
        """The labels box moves to a new Segment result of the image on show (or to the
        newest one of another image), never to this widget's own output and never away
        from the user's choice while no new result comes: after Apply the box stays on what
        was split, with the settings used, so the next Apply splits it afresh (from the
        output, a larger ``h`` could never merge what a smaller one cut, and the card's
        settings would replace the user's)."""
        self._refresh_layers()
        made = [la for la in layers_of(self.viewer, name, RESULT_ROLES)
                if not _applied_here(la.metadata)]
        pick = made[-1] if made else None
        if not is_news(self, (name, getattr(pick, "name", None))):
            return
        if pick is not None and self.labels_box.findText(pick.name) >= 0 and \
                pick.name != self.labels_box.currentText():
            self.labels_box.setCurrentText(pick.name)
            self._adopt_defaults(pick.name)
            self._adopt_image(pick.name)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Labels

        before = self.labels_box.currentText()
        skip = (PREVIEW,) + tuple(la.name for la in self.viewer.layers
                                  if la.name.startswith("compare "))
        fill_layer_box(self.labels_box, self.viewer, Labels, exclude=skip)
        # a fresh prediction (or objects) replaces a choice that was truth or nothing;
        # the default is never a ground-truth layer
        current = self.labels_box.currentText()
        preds = [la.name for la in self.viewer.layers if la.name not in skip
                 and la.metadata.get("glandseg_role") in ("prediction", "objects")]
        inserted = getattr(event, "value", None)
        meta = getattr(inserted, "metadata", {})
        if inserted is not None and inserted.name in preds and not _applied_here(meta):
            self.labels_box.setCurrentText(inserted.name)  # a new Segment result
        elif preds and (not current or self._role(current) == "truth"):
            self.labels_box.setCurrentText(preds[-1])
        if self.labels_box.currentText() != before:
            self._adopt_defaults(self.labels_box.currentText())
        fill_layer_box(self.image_box, self.viewer, Image, extra=("",))
        if self.labels_box.currentText() != before or not self.image_box.currentText():
            # the intensity image is the one the labels were made from
            source = self._layer_meta(self.labels_box.currentText()).get("source_image")
            if source and self.image_box.findText(source) >= 0:
                self.image_box.setCurrentText(source)

    def _adopt_image(self, name: str) -> None:
        source = self._layer_meta(name).get("source_image")
        if source and self.image_box.findText(source) >= 0:
            self.image_box.setCurrentText(source)

    def _layer_meta(self, name) -> dict:
        return self.viewer.layers[name].metadata if name and name in self.viewer.layers else {}

    def _holds_objects(self, layer, data) -> bool:
        """Whether a layer already holds separate objects (which must stay apart) rather
        than a class map or mask to split afresh."""
        role = layer.metadata.get("glandseg_role")
        if role == "prediction":
            return False
        if role in ("objects", "truth"):
            return True
        if isinstance(data, np.ndarray):
            return bool(data.size and data.max() > 2)
        step = 2048  # a lazy layer: block by block, never whole
        return any(np.asarray(data[y: y + step, x: x + step]).max(initial=0) > 2
                   for y in range(0, data.shape[0], step)
                   for x in range(0, data.shape[1], step))

    def _role(self, name):
        return self._layer_meta(name).get("glandseg_role")

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export objects", "objects.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)
