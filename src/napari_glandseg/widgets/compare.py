"""Compare widget: every metric of a prediction against ground truth, per image or dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..metrics import KEYS, as_instances, iter_evaluate_dataset
from . import _worker
from ._common import fill_layer_box, notify, unique_name
from ._focus import RESULT_ROLES, follow, is_news, newest_of

OVERLAY_COLOURS = {None: "transparent", 0: "transparent", 1: "#34c759", 2: "#ff3b30",
                   3: "#007aff", 4: "#ff9500"}
#: outlines of merging and split predictions: bright on pink H&E and on the dark theme
MERGED_COLOUR, SPLIT_COLOUR = "#ffd60a", "#00e5ff"
OVERLAY_LEGEND = "TP green, FP red, missed blue"
CLASS_LEGEND = "right class green, FP red, missed blue, wrong class orange"
OUTLINE_LEGEND = "outlines: merged yellow, split cyan"
HIGHLIGHT = "compare selected object"
#: the status column says the fate in words (split into ..., merged with ...): readable
#: without scrolling the table sideways
OBJECT_COLUMNS = ["truth", "status", "IoU", "prediction", "area"]


def compare_job(pred, truth, classes=None):
    """Score a prediction against the truth in the worker thread (the caller's own copies
    of both): :func:`napari_glandseg.metrics.iter_compare`."""
    from ..metrics import iter_compare

    return (yield from iter_compare(pred, truth, classes))


def _fate(row: dict) -> str:
    """An object row's status in words: "TP", "FP", "missed", "split into 4, 6", "merged
    with 9 in prediction 7"."""
    if row["status"] in ("split", "merged"):
        return row["note"]
    return row["status"]


def _table(headers) -> QTableWidget:
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    return t


def _fill(table: QTableWidget, rows: list[list]) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            text = f"{v:.4f}" if isinstance(v, float) else str(v)
            table.setItem(r, c, QTableWidgetItem(text))
    table.resizeColumnsToContents()


def _table_text(table: QTableWidget) -> str:
    head = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    lines = ["\t".join(head)]
    for r in range(table.rowCount()):
        lines.append("\t".join(table.item(r, c).text() if table.item(r, c) else ""
                               for c in range(table.columnCount())))
    return "\n".join(lines)


class CompareWidget(QWidget):
    """Prediction vs ground truth: metrics table, TP/FP/FN overlay, per-object list.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Compare")[1]
        w.pred_box.setCurrentText("img [objects]"); w.truth_box.setCurrentText("img [truth]")
        worker = w.compute()      # in the background; w.metrics holds the scores when done
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.metrics: dict | None = None
        self.objects: list[dict] = []
        self.rows: list[dict] = []
        self.summary: dict | None = None
        self.worker = None
        self._shown: list = []
        self._compared = None
        self._watched: list = []

        self._build_tabs()

        self.compute_btn.clicked.connect(self.compute)
        self.cancel_btn.clicked.connect(self.cancel)
        self.copy_btn.clicked.connect(self.copy)
        self.csv_btn.clicked.connect(self._choose_csv)
        self.object_table.cellClicked.connect(lambda r, _c: self.go_to_object(r))
        self.dataset_btn.clicked.connect(self.evaluate_folders)
        for box in (self.pred_box, self.truth_box):
            box.currentTextChanged.connect(self._check_pair)
        self.dataset_table.cellClicked.connect(lambda r, _c: self.show_dataset_row(r))
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._overlay_removed)
        self.viewer.layers.events.removed.connect(self._forget)
        self._class_names = None
        self._restore = None  # (overlay name, {layer name: visible before})
        self._overlays: list[str] = []  # the overlay layers of the pair compared last
        self._restoring: set = set()  # overlays whose visibility is watched
        self.focus = follow(self, napari_viewer, self._follow)
        self._refresh_layers()
        if self.focus.name:
            self._follow(self.focus.name)

    def _build_tabs(self) -> None:
        """The one-image tab (layers, tables, overlay) and the dataset tab (two folders)."""
        # --- one image
        self.pred_box, self.truth_box = QComboBox(), QComboBox()
        self.classes = QSpinBox()
        self.classes.setRange(0, 64)
        self.classes.setToolTip("0: instance or binary labels; K > 2: class maps 0..K-1")
        self.compute_btn = QPushButton("Compare")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.compare_worker = None
        self._comparing = None  # the layers a running comparison scores
        self._stale_during = ""
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.stale = QLabel("")
        self.stale.setWordWrap(True)
        self.stale.setStyleSheet("color: #ff9500")
        self.metric_table = _table(["metric", "value"])
        self.object_table = _table(OBJECT_COLUMNS)
        self.copy_btn = QPushButton("Copy")
        self.csv_btn = QPushButton("Export CSV…")
        single = QWidget()
        form = QFormLayout()
        form.addRow("Prediction", self.pred_box)
        form.addRow("Ground truth", self.truth_box)
        form.addRow("Classes", self.classes)
        lay = QVBoxLayout(single)
        lay.addLayout(form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.compute_btn)
        buttons.addWidget(self.cancel_btn)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(self.stale)
        lay.addWidget(self.metric_table)
        row = QHBoxLayout()
        row.addWidget(self.copy_btn)
        row.addWidget(self.csv_btn)
        lay.addLayout(row)
        lay.addWidget(QLabel("Objects (click one to zoom to it)"))
        lay.addWidget(self.object_table)

        # --- dataset: two folders paired by file stem
        self.pred_dir, self.truth_dir, self.image_dir = QLineEdit(), QLineEdit(), QLineEdit()
        self.pred_dir.setPlaceholderText("folder of predicted labels")
        self.truth_dir.setPlaceholderText("folder of ground-truth labels")
        self.image_dir.setPlaceholderText("optional: images, shown under the labels")
        self.dataset_btn = QPushButton("Evaluate folders")
        self.dataset_table = _table(["image", *KEYS])
        self.best_worst = QLabel("")
        self.best_worst.setWordWrap(True)
        dataset = QWidget()
        dform = QFormLayout()
        dform.addRow("Predictions", _with_browse(self, self.pred_dir))
        dform.addRow("Ground truth", _with_browse(self, self.truth_dir))
        dform.addRow("Images", _with_browse(self, self.image_dir))
        dlay = QVBoxLayout(dataset)
        dlay.addLayout(dform)
        dlay.addWidget(self.dataset_btn)
        dlay.addWidget(self.dataset_table)
        dlay.addWidget(self.best_worst)

        tabs = QTabWidget()
        tabs.addTab(single, "Layers")
        tabs.addTab(dataset, "Dataset")
        QVBoxLayout(self).addWidget(tabs)

    # ---------------------------------------------------------------- one image
    def compute(self):
        """Compare the chosen layers in the background (a slide-sized pair takes seconds);
        returns the worker, or None on bad input. When it finishes ``metrics`` holds the
        scores, the tables are filled and the overlay (TP, FP, FN, merged predictions and
        split truths) is added."""
        if self.compare_worker is not None:
            notify("warning", "a comparison is already running; cancel it first")
            return None
        try:
            pred_layer, truth_layer = self._layers()
            classes, self._class_names = self._classes_of(pred_layer)
            # copies: the layers may be edited while the job runs
            pred, truth = (np.array(la.data[0] if la.multiscale else la.data, copy=True)
                           for la in (pred_layer, truth_layer))
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        for layer in (pred_layer, truth_layer):
            if hasattr(layer.events, "paint") and layer not in self._watched:
                layer.events.paint.connect(lambda _e=None, la=layer: self._mark_stale(la))
                self._watched.append(layer)
        self._comparing, self._stale_during = (pred_layer, truth_layer), ""
        self.compute_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(f"Comparing {pred_layer.name!r} with {truth_layer.name!r}…")
        self.compare_worker = _worker.start(
            compare_job, pred, truth, classes,
            on_yield=lambda p: self.status.setText(f"{p.message} ({p.done}/{p.total})"),
            on_return=lambda out: self._compared_done(out, pred_layer, truth_layer),
            on_error=lambda msg: self.status.setText(f"Failed: {msg}"),
            on_abort=lambda: self.status.setText("Cancelled: the tables are as they were"),
            on_done=self._compare_finished, what="comparison",
            progress_desc="GlandSeg: comparing", owner=self)
        return self.compare_worker

    def cancel(self) -> None:
        """Stop the comparison after the step running now; nothing changes."""
        if self.compare_worker is not None:
            self.status.setText("Cancelling…")
            self.compare_worker.quit()

    def _compare_finished(self) -> None:
        self.compare_worker = None
        self._comparing = None
        self.compute_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _compared_done(self, out, pred_layer, truth_layer) -> None:
        self.metrics, self.objects = out.metrics, out.rows
        metrics = out.metrics
        classes = self._class_names
        if not metrics["n_true"]:
            notify("warning", f"ground truth {truth_layer.name!r} is empty: there is "
                   "nothing to find, so every object score is 0")
        if classes:  # a class map: per-class rows; object scores mean little here
            per = metrics["per_class"]
            rows = [[f"{k} {classes[c] if c < len(classes) else c}", float(per[c][k])]
                    for c in sorted(per) for k in ("dice", "iou")]
            rows += [["mean Dice (foreground classes)", float(metrics["dice"])],
                     ["mean IoU (foreground classes)", float(metrics["iou"])],
                     ["accuracy (all pixels)", float(metrics["accuracy"])]]
        else:
            rows = [[k, float(metrics[k])] for k in KEYS] + \
                [[k, metrics[k]] for k in ("tp", "fp", "fn", "merged", "split", "n_pred",
                                            "n_true")]
        _fill(self.metric_table, rows)
        _fill(self.object_table, [[o["truth"], _fate(o), o["iou"], o["prediction"],
                                   o["area"]] for o in self.objects])
        if pred_layer in self.viewer.layers:
            self._overlay(out, pred_layer, truth_layer)
        self._compared = (pred_layer, truth_layer)
        self.stale.setText(self._stale_during)
        if self._stale_during:  # scored from a copy taken before the edit
            self._hide_overlays()
        self._stale_during = ""
        if not self._check_pair():  # a box changed while it ran
            return
        if classes:
            per = metrics["per_class"]
            found = [classes[c] for c in sorted(per) if c < len(classes)
                     and per[c]["dice"] > 0 and per[c]["recall"] > 0]
            self.status.setText(
                "Dice per class: " + ", ".join(f"{classes[c] if c < len(classes) else c} "
                                              f"{per[c]['dice']:.3f}" for c in sorted(per))
                + f"; mean {metrics['dice']:.3f}. Found: "
                + (", ".join(found) if found else "none of the classes"))
        else:
            self.status.setText(
                f"{metrics['n_pred']} predicted and {metrics['n_true']} true objects: object "
                f"F1 {metrics['object_f1']:.3f}; {metrics['merged']} merged, "
                f"{metrics['split']} split")

    def _check_pair(self, *_) -> bool:
        """Scores stay on show only beside the pair they are of: when the boxes name other
        layers (chosen by the user, or a new result), the tables are emptied and the
        status says whose they were. Returns whether the scores shown (if any) are of the
        chosen pair."""
        if not self._compared:
            return True
        pred, truth = self._compared
        if (self.pred_box.currentText(), self.truth_box.currentText()) == \
                (pred.name, truth.name):
            return True
        self._clear_results(f"The scores shown were of {pred.name!r} against "
                            f"{truth.name!r}: press Compare for the layers chosen")
        return False

    def _clear_results(self, why: str) -> None:
        """Empty the tables (their numbers belong to layers no longer on show) and say so."""
        self.metrics, self.objects, self._compared = None, [], None
        self.metric_table.setRowCount(0)
        self.object_table.setRowCount(0)
        self.stale.setText("")
        self.status.setText(why)

    def _classes_of(self, pred_layer):
        """The number of classes to score (None: objects) and their names. A class model's
        map is scored per class (its card's names); Classes > 0 forces a count."""
        meta = pred_layer.metadata
        names = list(meta.get("class_names") or ())
        forced = self.classes.value() or None
        if forced:
            return (forced if forced > 2 else None,
                    names if forced > 2 and len(names) == forced else
                    ([f"class {c}" for c in range(forced)] if forced > 2 else None))
        if meta.get("glandseg_role") == "prediction" and meta.get("class_model"):
            return len(names), names
        if meta.get("glandseg_role") == "prediction" and len(names) > 2:
            raise GlandsegError(
                f"{pred_layer.name!r} is a class map ({', '.join(names)}), not objects: "
                "compare its objects layer (Segment's Objects option or Post-process), or "
                f"set Classes to {len(names)} for per-class scores")
        return None, None

    def _mark_stale(self, layer) -> None:
        text = f"{layer.name!r} was edited since these results: press Compare again"
        if layer in (self._comparing or ()):
            self._stale_during = text  # edited while the job scored its copy
        elif layer in (self._compared or ()):
            self.stale.setText(text)
            self._hide_overlays()

    def _hide_overlays(self) -> None:
        """Take an out-of-date overlay off the canvas: it would show an object deleted
        since as found, and it hides the very layer being corrected (which comes back into
        view). Compare again redraws it."""
        for name in self._overlays:
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = False

    def _overlay(self, out, like, truth_layer) -> None:
        """The TP / FP / missed overlay, and outlines of merging and split predictions,
        drawn over the image; the prediction and truth are hidden while it shows (they
        would mix their colours in) and come back when it is hidden or removed."""
        from napari.utils.colormaps import DirectLabelColormap

        source = like.metadata.get("source_image") or truth_layer.metadata.get("source_image")
        meta = {"glandseg_role": "compare", "source_image": source}
        place = {"scale": like.scale[-2:], "units": like.units[-2:],
                 "translate": like.translate[-2:]}
        legend = CLASS_LEGEND if self._class_names else OVERLAY_LEGEND
        fill_name = f"compare {like.name} ({legend})"
        line_name = f"compare {like.name} ({OUTLINE_LEGEND})"
        colours = {None: "transparent", 0: "transparent"}
        colours.update({p: MERGED_COLOUR for p in out.merged})
        colours.update({p: SPLIT_COLOUR for ps in out.split.values() for p in ps})
        layers = [(fill_name, out.overlay, {"opacity": 0.45, "colormap": DirectLabelColormap(
            color_dict=OVERLAY_COLOURS)})]
        if not self._class_names:  # a class map has no merges or splits to outline
            layers.append((line_name, out.outlines, {"opacity": 1.0, "colormap":
                                                     DirectLabelColormap(color_dict=colours)}))
        for name, data, kwargs in layers:
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = data
                layer.colormap = kwargs["colormap"]
            else:
                layer = self.viewer.add_labels(data, name=name, metadata=dict(meta),
                                               **place, **kwargs)
            if name == line_name:
                layer.contour = 3
            layer.visible = True
        self._overlays = [name for name, _, _ in layers]
        fill = self.viewer.layers[fill_name]
        self._hide_under(fill, (like, truth_layer))

    def _hide_under(self, overlay, layers) -> None:
        """Hide ``layers`` while ``overlay`` is visible; put their visibility back when it
        is hidden or removed. (Layers are known by name: napari hands a plugin proxies of
        its layers, so identity says nothing.)"""
        was = {la.name: la.visible for la in layers}
        for la in layers:
            la.visible = False
        self._restore = (overlay.name, was)
        if overlay.name not in self._restoring:
            self._restoring.add(overlay.name)
            overlay.events.visible.connect(lambda e=None, o=overlay: self._overlay_shown(o))

    def _overlay_shown(self, overlay) -> None:
        restore = self._restore
        if restore is None or restore[0] != overlay.name:
            return
        for name, visible in restore[1].items():
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = visible if not overlay.visible else False

    def _forget(self, event) -> None:
        """Let go of a removed layer: no paint callback watched, no result pointing at it."""
        name = getattr(event.value, "name", None)
        self._watched = [la for la in self._watched if la.name != name]
        if self._compared and name in (la.name for la in self._compared):
            # the scores shown belong to a layer that is gone: never leave them on screen
            self._clear_results(f"{name!r} was removed: its scores are cleared")

    def _overlay_removed(self, event) -> None:
        name = getattr(event.value, "name", None)
        self._restoring.discard(name)
        restore = self._restore
        if restore is not None and name == restore[0]:
            for other, visible in restore[1].items():
                if other in self.viewer.layers:
                    self.viewer.layers[other].visible = visible
            self._restore = None

    def go_to_object(self, row: int) -> None:
        """Zoom to the object in row ``row`` of the object table and outline it."""
        if not 0 <= row < len(self.objects):
            return
        o = self.objects[row]
        pred_layer, truth_layer = self._compared or self._layers()
        layer = pred_layer if o["side"] == "pred" else truth_layer
        data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        inst = as_instances(data)
        ys, xs = np.nonzero(inst == o["id"])
        if not len(ys):
            return
        lo = np.array([ys.min(), xs.min()], float) - 0.5
        hi = np.array([ys.max(), xs.max()], float) + 0.5
        corners = np.array([layer.data_to_world(c)[-2:] for c in
                            (lo, (lo[0], hi[1]), hi, (hi[0], lo[1]))])
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; .camera before
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(corners.mean(0))
        extent = np.ptp(corners, axis=0).max()
        canvas = getattr(self.viewer, "canvas", None)  # napari >= 0.9 has viewer.canvas
        size = np.asarray(canvas.size if canvas is not None else self.viewer._canvas_size,
                          float)
        camera.zoom = float(size.min() / max(extent * 1.6, 1e-6))  # the object fills ~2/3
        if HIGHLIGHT in self.viewer.layers:
            self.viewer.layers[HIGHLIGHT].data = [corners]
            self.viewer.layers.move(self.viewer.layers.index(HIGHLIGHT),
                                    len(self.viewer.layers))
        else:
            self.viewer.add_shapes([corners], shape_type="rectangle", name=HIGHLIGHT,
                                   edge_color="yellow", face_color="transparent",
                                   edge_width=max(extent / 40, 1e-3))
        self.viewer.layers.selection.active = layer
        if hasattr(layer, "selected_label") and np.array_equal(inst, data):
            layer.selected_label = o["id"]

    def copy(self) -> None:
        QApplication.clipboard().setText(_table_text(self.metric_table))

    def export_csv(self, path) -> None:
        """Write the metrics (one image) or the per-image rows (dataset) to CSV."""
        import pandas as pd

        from ..postprocessing import write_csv

        rows = self.rows or ([self.metrics] if self.metrics else [])
        if not rows:
            notify("error", "nothing to export yet: press Compare first")
            return
        write_csv(pd.DataFrame(rows), path, overwrite=True)  # the save dialog asked
        notify("info", f"wrote {path}")

    # ---------------------------------------------------------------- dataset
    def evaluate_folders(self, pred_dir=None, truth_dir=None):
        """Evaluate two folders paired by file stem in the background; returns the worker."""
        from ..io import pair_by_stem, read_image

        try:
            self._pairs = pair_by_stem(pred_dir or self.pred_dir.text(),
                                       truth_dir or self.truth_dir.text())
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        items = [(k, (lambda p=p: read_image(p, as_labels=True).data),
                  (lambda t=t: read_image(t, as_labels=True).data))
                 for k, (p, t) in self._pairs.items()]
        self.dataset_btn.setEnabled(False)
        self.worker = _worker.start(
            iter_evaluate_dataset, items, on_return=self._dataset_done,
            on_yield=lambda p: self.best_worst.setText(f"{p.done}/{p.total}: {p.message}"),
            on_done=lambda: self.dataset_btn.setEnabled(True), what="evaluation",
            progress_desc="GlandSeg: evaluating", owner=self)
        return self.worker

    def _dataset_done(self, result) -> None:
        self.rows, self.summary = result
        self.worker = None
        table = [[r["name"], *[float(r[k]) for k in KEYS]] for r in self.rows]
        # say which aggregate each row is: the pooled values are not means of the rows above
        table.append(["mean of images", *[self.summary["image_mean"][k] for k in KEYS]])
        table.append(["sd", *[self.summary[f"{k}_std"] for k in KEYS]])
        table.append(["pooled", *[self.summary["pooled"].get(k, "") for k in KEYS]])
        _fill(self.dataset_table, table)
        self.best_worst.setText(f"best by Dice: {', '.join(self.summary['best'])}\n"
                                f"worst by Dice: {', '.join(self.summary['worst'])}\n"
                                "click a row to show that image")

    def show_dataset_row(self, row: int) -> None:
        """Show the image (when found), ground truth and prediction of a dataset row."""
        if not 0 <= row < len(self.rows):
            return
        from ..io import read_image

        name = self.rows[row]["name"]
        pred_path, truth_path = self._pairs[name]
        for layer in self._shown:
            if layer in self.viewer.layers and not layer.metadata.get("edited"):
                self.viewer.layers.remove(layer)
        self._shown = []
        image_path = self._image_path(name, truth_path)
        image_name = None
        if image_path is not None:
            try:
                img = read_image(image_path, as_labels=False)
                data, kwargs, _ = img.to_layer_data(name=unique_name(self.viewer, name))
                kwargs["metadata"]["glandseg_role"] = "image"
                self._shown.append(self.viewer.add_image(data, **kwargs))
                image_name = self._shown[-1].name
            except GlandsegError as exc:
                notify("warning", f"image not shown: {exc}")
        for path, tag, role in ((truth_path, "truth", "truth"),
                                (pred_path, "prediction", "objects")):
            self._shown.append(self.viewer.add_labels(
                read_image(path, as_labels=True).data, opacity=0.5,
                name=unique_name(self.viewer, f"{name} [{tag}]"),
                metadata={"glandseg_role": role, "source_image": image_name,
                          "source_path": str(path)}))
        self.pred_box.setCurrentText(self._shown[-1].name)
        self.truth_box.setCurrentText(self._shown[-2].name)
        self.viewer.reset_view()

    def _image_path(self, name, truth_path):
        """The image of a dataset row: in the Images folder, else in ``images/`` beside
        the ground-truth folder; None when there is none."""
        from ..io import IMAGE_SUFFIXES

        folders = [Path(self.image_dir.text())] if self.image_dir.text() else []
        folders.append(Path(truth_path).parent.parent / "images")
        for folder in folders:
            for suffix in IMAGE_SUFFIXES:
                if (folder / f"{name}{suffix}").is_file():
                    return folder / f"{name}{suffix}"
        return None

    # ---------------------------------------------------------------- internals
    def _layers(self):
        names = (self.pred_box.currentText(), self.truth_box.currentText())
        if not all(n and n in self.viewer.layers for n in names):
            raise GlandsegError("choose a prediction and a ground-truth Labels layer")
        if names[0] == names[1]:
            raise GlandsegError("prediction and ground truth are the same layer")
        pred, truth = (self.viewer.layers[n] for n in names)
        src = [la.metadata.get("source_image") for la in (pred, truth)]
        if all(src) and src[0] != src[1]:
            raise GlandsegError(f"{names[0]!r} belongs to image {src[0]!r} but {names[1]!r} to "
                                f"{src[1]!r}: choose the pair of one image")
        shapes = [tuple((la.data[0] if la.multiscale else la.data).shape[-2:])
                  for la in (pred, truth)]
        if shapes[0] != shapes[1]:
            raise GlandsegError(f"{names[0]!r} has shape {shapes[0]} but {names[1]!r} has "
                                f"{shapes[1]}: they are not of the same image")
        return pred, truth

    def _follow(self, name) -> None:
        """Prediction and truth follow the image on show: its newest result (objects or
        class map, whichever came last) and its truth."""
        self._refresh_layers()
        shown = self._compared
        if shown and shown[0].metadata.get("source_image") not in (None, name):
            # the tables hold another image's numbers: never beside this one
            self._clear_results(f"The scores shown were of "
                                f"{shown[0].metadata.get('source_image')!r}: press Compare "
                                f"for {name!r}")
        pred = newest_of(self.viewer, name, RESULT_ROLES)
        truth = newest_of(self.viewer, name, ("truth",))
        # a box moves when a new result or truth comes, or another image: never away from
        # the user's choice (and the scores shown for it) because an overlay came in
        if not is_news(self, (name, getattr(pred, "name", None), getattr(truth, "name", None))):
            return
        if pred is None and name:  # the box stands on what is left: say so
            self.status.setText(f"No result of {name!r} yet: segment it (Segment tab), then "
                                "press Compare")
        for box, layer in ((self.pred_box, pred), (self.truth_box, truth)):
            if layer is not None and box.findText(layer.name) >= 0:
                box.setCurrentText(layer.name)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Labels

        skip = tuple(la.name for la in self.viewer.layers if la.name.startswith("compare ")
                     or la.metadata.get("glandseg_role") == "validation")
        fill_layer_box(self.pred_box, self.viewer, Labels, exclude=skip)
        fill_layer_box(self.truth_box, self.viewer, Labels, exclude=skip)

        def newest(*roles):
            names = [la.name for la in self.viewer.layers
                     if la.metadata.get("glandseg_role") in roles and la.name not in skip]
            return names[-1] if names else None

        def role(name):
            return self.viewer.layers[name].metadata.get("glandseg_role") if name else None

        # a fresh prediction replaces a choice that was a truth layer or nothing
        # a fresh result replaces a choice that was a truth layer or nothing; objects
        # beat a class map (object scores need objects)
        inserted = getattr(event, "value", None)
        fresh = getattr(inserted, "metadata", {}).get("glandseg_role") == "objects"
        if (fresh or role(self.pred_box.currentText()) in (None, "truth")) and \
                (pick := newest("objects") or newest("prediction")):
            self.pred_box.setCurrentText(pick)
        if role(self.truth_box.currentText()) != "truth" and (pick := newest("truth")):
            self.truth_box.setCurrentText(pick)

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)


def _with_browse(parent, edit: QLineEdit) -> QWidget:
    """A folder field with a Browse… button beside it."""
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(edit)
    btn = QPushButton("Browse…")
    row.addWidget(btn)

    def choose():
        folder = QFileDialog.getExistingDirectory(parent, "Choose a folder", edit.text())
        if folder:
            edit.setText(folder)

    btn.clicked.connect(choose)
    edit.browse_btn = btn
    return box
