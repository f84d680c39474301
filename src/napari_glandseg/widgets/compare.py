"""Compare widget: every metric of a prediction against ground truth, per image or dataset."""

from __future__ import annotations

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
from ..metrics import KEYS, as_instances, evaluate, iter_evaluate_dataset, object_status
from . import _worker
from ._common import fill_layer_box, notify, unique_name

OVERLAY_COLOURS = {None: "transparent", 0: "transparent", 1: "#34c759", 2: "#ff3b30",
                   3: "#007aff"}
STATUS_VALUE = {"TP": 1, "FP": 2, "FN": 3}


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
        metrics = w.compute()
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

        # --- one image
        self.pred_box, self.truth_box = QComboBox(), QComboBox()
        self.classes = QSpinBox()
        self.classes.setRange(0, 64)
        self.classes.setToolTip("0: instance or binary labels; K > 2: class maps 0..K-1")
        self.compute_btn = QPushButton("Compare")
        self.metric_table = _table(["metric", "value"])
        self.object_table = _table(["side", "id", "status", "area", "match", "IoU"])
        self.copy_btn = QPushButton("Copy")
        self.csv_btn = QPushButton("Export CSV…")
        single = QWidget()
        form = QFormLayout()
        form.addRow("Prediction", self.pred_box)
        form.addRow("Ground truth", self.truth_box)
        form.addRow("Classes", self.classes)
        lay = QVBoxLayout(single)
        lay.addLayout(form)
        lay.addWidget(self.compute_btn)
        lay.addWidget(self.metric_table)
        row = QHBoxLayout()
        row.addWidget(self.copy_btn)
        row.addWidget(self.csv_btn)
        lay.addLayout(row)
        lay.addWidget(QLabel("Objects (click to centre on one)"))
        lay.addWidget(self.object_table)

        # --- dataset: two folders paired by file stem
        self.pred_dir, self.truth_dir = QLineEdit(), QLineEdit()
        self.pred_dir.setPlaceholderText("folder of predicted labels")
        self.truth_dir.setPlaceholderText("folder of ground-truth labels")
        self.dataset_btn = QPushButton("Evaluate folders")
        self.dataset_table = _table(["image", *KEYS])
        self.best_worst = QLabel("")
        self.best_worst.setWordWrap(True)
        dataset = QWidget()
        dform = QFormLayout()
        dform.addRow("Predictions", self.pred_dir)
        dform.addRow("Ground truth", self.truth_dir)
        dlay = QVBoxLayout(dataset)
        dlay.addLayout(dform)
        dlay.addWidget(self.dataset_btn)
        dlay.addWidget(self.dataset_table)
        dlay.addWidget(self.best_worst)

        tabs = QTabWidget()
        tabs.addTab(single, "Layers")
        tabs.addTab(dataset, "Dataset")
        QVBoxLayout(self).addWidget(tabs)

        self.compute_btn.clicked.connect(self.compute)
        self.copy_btn.clicked.connect(self.copy)
        self.csv_btn.clicked.connect(self._choose_csv)
        self.object_table.cellClicked.connect(lambda r, _c: self.go_to_object(r))
        self.dataset_btn.clicked.connect(self.evaluate_folders)
        self.dataset_table.cellClicked.connect(lambda r, _c: self.show_dataset_row(r))
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ---------------------------------------------------------------- one image
    def compute(self) -> dict | None:
        """Compare the chosen layers; fills the tables and adds the TP/FP/FN overlay."""
        try:
            pred_layer, truth_layer = self._layers()
            pred, truth = (np.asarray(la.data[0] if la.multiscale else la.data)
                           for la in (pred_layer, truth_layer))
            classes = self.classes.value() or None
            self.metrics = evaluate(pred, truth, classes=classes)
            pi, ti = ((as_instances(pred > 0), as_instances(truth > 0)) if classes and
                      classes > 2 else (as_instances(pred), as_instances(truth)))
            self.objects = object_status(pi, ti)
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        _fill(self.metric_table, [[k, float(self.metrics[k])] for k in KEYS]
              + [[k, self.metrics[k]] for k in ("tp", "fp", "fn", "n_pred", "n_true")])
        _fill(self.object_table, [[o["side"], o["id"], o["status"], o["area"], o["match"],
                                   o["iou"]] for o in self.objects])
        self._overlay(pi, ti, pred_layer)
        return self.metrics

    def _overlay(self, pred, truth, like) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        lut_p = np.zeros(int(pred.max()) + 1, np.uint8)
        lut_t = np.zeros(int(truth.max()) + 1, np.uint8)
        for o in self.objects:
            (lut_p if o["side"] == "pred" else lut_t)[o["id"]] = STATUS_VALUE[o["status"]]
        overlay = lut_p[pred]
        fn = lut_t[truth]
        overlay[(overlay == 0) & (fn > 0)] = 3
        name = f"compare {like.name} (TP green, FP red, FN blue)"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = overlay
        else:
            self.viewer.add_labels(overlay, name=name, scale=like.scale[-2:],
                                   translate=like.translate[-2:], opacity=0.5,
                                   colormap=DirectLabelColormap(color_dict=OVERLAY_COLOURS))

    def go_to_object(self, row: int) -> None:
        """Centre the view on the object in row ``row`` of the object table."""
        if not 0 <= row < len(self.objects):
            return
        o = self.objects[row]
        pred_layer, truth_layer = self._layers()
        layer = pred_layer if o["side"] == "pred" else truth_layer
        data = np.asarray(layer.data[0] if layer.multiscale else layer.data)
        inst = as_instances(data)
        ys, xs = np.nonzero(inst == o["id"])
        if not len(ys):
            return
        centre = np.array([ys.mean(), xs.mean()])
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9; .camera before
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.center = tuple(layer.data_to_world(centre))
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
            progress_desc="GlandSeg: evaluating")
        return self.worker

    def _dataset_done(self, result) -> None:
        self.rows, self.summary = result
        self.worker = None
        table = [[r["name"], *[float(r[k]) for k in KEYS]] for r in self.rows]
        table.append(["mean", *[self.summary[k] for k in KEYS]])
        table.append(["sd", *[self.summary[f"{k}_std"] for k in KEYS]])
        _fill(self.dataset_table, table)
        self.best_worst.setText(f"best by Dice: {', '.join(self.summary['best'])}\n"
                                f"worst by Dice: {', '.join(self.summary['worst'])}\n"
                                "click a row to show that image")

    def show_dataset_row(self, row: int) -> None:
        """Show the prediction and ground truth of a dataset row as layers."""
        if not 0 <= row < len(self.rows):
            return
        from ..io import read_image

        name = self.rows[row]["name"]
        pred_path, truth_path = self._pairs[name]
        for layer in self._shown:
            if layer in self.viewer.layers and not layer.metadata.get("edited"):
                self.viewer.layers.remove(layer)
        self._shown = [
            self.viewer.add_labels(read_image(truth_path, as_labels=True).data,
                                   name=unique_name(self.viewer, f"{name} [truth]")),
            self.viewer.add_labels(read_image(pred_path, as_labels=True).data,
                                   name=unique_name(self.viewer, f"{name} [prediction]")),
        ]
        self.pred_box.setCurrentText(self._shown[1].name)
        self.truth_box.setCurrentText(self._shown[0].name)

    # ---------------------------------------------------------------- internals
    def _layers(self):
        names = (self.pred_box.currentText(), self.truth_box.currentText())
        if not all(n and n in self.viewer.layers for n in names):
            raise GlandsegError("choose a prediction and a ground-truth Labels layer")
        if names[0] == names[1]:
            raise GlandsegError("prediction and ground truth are the same layer")
        return tuple(self.viewer.layers[n] for n in names)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Labels

        skip = tuple(la.name for la in self.viewer.layers if la.name.startswith("compare "))
        fill_layer_box(self.pred_box, self.viewer, Labels, exclude=skip)
        fill_layer_box(self.truth_box, self.viewer, Labels, exclude=skip)

        def newest(*roles):
            names = [la.name for la in self.viewer.layers
                     if la.metadata.get("glandseg_role") in roles and la.name not in skip]
            return names[-1] if names else None

        def role(name):
            return self.viewer.layers[name].metadata.get("glandseg_role") if name else None

        # a fresh prediction replaces a choice that was a truth layer or nothing
        if role(self.pred_box.currentText()) in (None, "truth") and \
                (pick := newest("objects", "prediction")):
            self.pred_box.setCurrentText(pick)
        if role(self.truth_box.currentText()) != "truth" and (pick := newest("truth")):
            self.truth_box.setCurrentText(pick)

    def _choose_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv",
                                              "CSV (*.csv)")
        if path:
            self.export_csv(path)
