"""Model widget: pick a model from the store (or a file), read its card, choose the device."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..models import (
    DeviceChoice,
    delete_model,
    describe_device,
    export_model,
    import_model,
    list_models,
    load_model,
    resolve_device,
)
from ._common import notify
from ._state import selection_for


class ModelWidget(QWidget):
    """Choose the model and device the Segment and Fine-tune widgets use.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Model")[1]
        w.select("glands-he"); w.set_device("cpu")
        w.selection.model.card.summary()
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.selection = selection_for(napari_viewer)
        self._paths: list[Path] = []

        self.model_box = QComboBox()
        self.card_view = QTextBrowser()  # the card as formatted text, not key=value lines
        self.card_view.setOpenExternalLinks(True)
        self.card_view.setMinimumHeight(220)
        self.load_file_btn = QPushButton("Load from file…")
        self.import_btn = QPushButton("Import into store…")
        self.export_btn = QPushButton("Export…")
        self.delete_btn = QPushButton("Delete")
        self.device_box = QComboBox()
        self.device_box.addItems([d.value for d in DeviceChoice])
        self.device_label = QLabel()

        form = QFormLayout()
        form.addRow("Model", self.model_box)
        form.addRow("Device", self.device_box)
        form.addRow("Running on", self.device_label)
        buttons = QHBoxLayout()
        for b in (self.load_file_btn, self.import_btn, self.export_btn, self.delete_btn):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.card_view)
        layout.addLayout(buttons)

        self.model_box.currentIndexChanged.connect(self._index_changed)
        self.device_box.currentTextChanged.connect(self.set_device)
        self.load_file_btn.clicked.connect(self._choose_file)
        self.import_btn.clicked.connect(self._choose_import)
        self.delete_btn.clicked.connect(self._confirm_delete)
        self.export_btn.clicked.connect(self._choose_export)

        self.set_device(DeviceChoice.AUTO.value)
        self.refresh()
        self.selection.changed.connect(self._selection_changed)

    # ---------------------------------------------------------------- actions a script can call
    def refresh(self, select: str | None = None) -> None:
        """Re-read the store; keep (or move to) the named model."""
        current = select or (self.selection.model.name if self.selection.model else None)
        entries = list_models()
        self._paths = [e.path for e in entries]
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for e in entries:
            self.model_box.addItem(f"{e.name}  [{e.source}]", e.name)
            self.model_box.setItemData(self.model_box.count() - 1, e.card.summary(), 3)
        self.model_box.blockSignals(False)
        names = [e.name for e in entries]
        if current in names:
            self.model_box.setCurrentIndex(names.index(current))
            self._index_changed(names.index(current))
        elif entries:
            self._index_changed(0)
        else:
            self.card_view.setPlainText(
                "No models in the store yet.\nUse 'Load from file…' or 'Import into store…'.")
        self.delete_btn.setEnabled(any(e.source == "user" for e in entries))

    def select(self, name_or_path) -> bool:
        """Load a model by store name or file path; True on success (errors are notified)."""
        try:
            model = load_model(name_or_path)
        except GlandsegError as exc:
            notify("error", str(exc))
            return False
        self.selection.set(model=model)
        self.card_view.setHtml(card_html(model.card, model.path))
        return True

    def set_device(self, choice: str) -> bool:
        try:
            device = resolve_device(choice)
        except GlandsegError as exc:
            notify("error", str(exc))
            self.device_box.setCurrentText(DeviceChoice.AUTO.value)
            return False
        if self.device_box.currentText() != choice:
            self.device_box.setCurrentText(choice)
        self.selection.set(device=device)
        self.device_label.setText(describe_device(device))
        return True

    def import_file(self, path, name: str | None = None) -> bool:
        """Import a checkpoint, or a bioimage.io package (``.zip``), into the store."""
        try:
            if Path(path).suffix.lower() == ".zip":
                from ..bioimageio import import_bioimageio

                entry = import_bioimageio(path, name=name)
            else:
                entry = import_model(path, name=name)
        except GlandsegError as exc:
            notify("error", str(exc))
            return False
        notify("info", f"imported {entry.name} into {entry.path.parent}")
        self.refresh(select=entry.name)
        return True

    def export(self, name: str, path) -> bool:
        """Copy a stored model to ``path`` (the save dialog has asked about replacing); a
        ``.zip`` path gets a bioimage.io model package, written by ``self.export_worker``."""
        try:
            if Path(path).suffix.lower() == ".zip":  # a bioimage.io package: seconds of work
                from ..bioimageio import iter_export_bioimageio
                from ._worker import start

                self.export_worker = start(
                    iter_export_bioimageio, name, path, overwrite=True,
                    what="bioimage.io export", progress_desc=f"exporting {name}",
                    on_return=lambda d: notify("info", f"exported {name} to {d}"))
                return True
            dest = export_model(name, path, overwrite=True)
        except (GlandsegError, OSError) as exc:
            notify("error", str(exc))
            return False
        notify("info", f"exported {name} to {dest}")
        return True

    def delete(self, name: str) -> bool:
        try:
            delete_model(name)
        except GlandsegError as exc:
            notify("error", str(exc))
            return False
        if self.selection.model is not None and self.selection.model.name == name:
            self.selection.model = None
        self.refresh()
        return True

    # ---------------------------------------------------------------- internals
    def _selection_changed(self, selection) -> None:
        """Another widget (Fine-tune) chose a model: show it, listing it if it is new."""
        model = selection.model
        if model is None or self.model_box.currentData() == model.name:
            return
        if self.model_box.findData(model.name) < 0:
            self.refresh(select=model.name)
        self.model_box.blockSignals(True)
        self.model_box.setCurrentIndex(self.model_box.findData(model.name))
        self.model_box.blockSignals(False)
        self.card_view.setHtml(card_html(model.card, model.path))

    def _index_changed(self, index: int) -> None:
        if 0 <= index < len(self._paths):
            self.select(self._paths[index])

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load model", "", "Models (*.safetensors *.pt *.pth)")
        if path and self.select(path):
            self.model_box.setCurrentIndex(-1)

    def _choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import model into store", "",
            "Models (*.safetensors *.pt *.pth);;bioimage.io package (*.zip)")
        if path:
            self.import_file(path)

    def _choose_export(self) -> None:
        name = self.model_box.currentData()
        if not name:
            return
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export model", f"{name}.safetensors",
            "Models (*.safetensors);;bioimage.io package (*.zip)")
        if path and "zip" in chosen and Path(path).suffix.lower() != ".zip":
            path = str(Path(path).with_suffix(".zip"))  # the filter chose the format
        if path:
            self.export(name, path)

    def _confirm_delete(self) -> None:
        name = self.model_box.currentData()
        if not name:
            return
        answer = QMessageBox.question(
            self, "Delete model", f"Delete {name!r} from your model store? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete(name)


def card_html(card, path=None) -> str:
    """A model card as readable HTML: what it finds, what it expects, how good it is."""
    from html import escape

    from ..models import Architecture

    def row(k, v):
        return f"<tr><td style='color:#999;padding-right:8px'>{escape(k)}</td><td>{v}</td></tr>"

    swatches = " ".join(
        f"<span style='color:{c}'>&#9632;</span>&nbsp;{escape(n)}"
        for n, c in zip(card.class_names, card.class_colours, strict=False))
    scale = f"{card.pixel_size_um:g} um/px" if card.pixel_size_um else "any scale"
    rows = [row("finds", swatches),
            row("input", f"{card.in_channels} channel(s), {scale}, "
                f"{escape(card.normalization)} normalisation"),
            row("network", f"{escape(Architecture(card.architecture).label)}, "
                f"version {escape(card.version)}")]
    if card.boundary_class:
        rows.append(row("boundary", "a class of its own between touching objects"))
    if card.levels:
        rows.append(row("distance levels", f"{card.levels}, rising from each object's edge "
                        "to its centre: the top levels seed one object each"))
    if card.postprocess:
        rows.append(row("post-processing", escape(", ".join(
            f"{k} {v}" for k, v in card.postprocess.items()))))
    if card.stain_normalization:
        ref = card.stain_normalization.get("reference") or "the training images"
        rows.append(row("stain normalisation", f"Macenko, onto {escape(str(ref))}"))
    html = [f"<h3 style='margin:0'>{escape(card.name)}</h3>"]
    if card.description:
        html.append(f"<p>{escape(card.description)}</p>")
    html.append("<table>" + "".join(rows) + "</table>")
    html.append("<table>" + "".join(row(k, v) for k, v in _use_for(card)) + "</table>")
    groups = _metric_groups(card.metrics)
    if groups:
        html.append("<p style='margin-bottom:2px'><b>How good it is</b></p><table>"
                    + "".join(row(k, escape(v)) for k, v in groups) + "</table>")
    if card.training_data:
        html.append(f"<p><b>Trained on</b> {escape(card.training_data)}</p>")
    if card.licence or card.data_licence:
        html.append(f"<p><b>Licence</b> {escape(card.licence or '?')}; data: "
                    f"{escape(card.data_licence or '?')}</p>")
    if path:
        html.append(f"<p style='color:#999'>file: {escape(str(path))}</p>")
    return "".join(html)


#: the figures a user judges a model by, in this order (objects first, pixels after)
KEY_METRICS = (("object_f1", "object F1"), ("object_dice", "object Dice"),
               ("object_hausdorff", "object Hausdorff (px)"), ("aji", "AJI"), ("pq", "PQ"),
               ("dice", "Dice"), ("iou", "IoU"))


def _use_for(card) -> list[tuple[str, str]]:
    """What images a model is for: tissue and stain (its description's first sentence),
    the magnification its training images had, and what input it takes."""
    import math
    from html import escape

    out = []
    what = card.description.split(". ")[0].rstrip(".") if card.description else ""
    if what:
        out.append(("use it for", escape(what)))
    px = card.data_pixel_size_um or card.pixel_size_um
    if px:
        # 0.25 um/px is a 40x scan, 0.5-0.62 a 20x one: the nearest usual objective
        mag = min((5, 10, 20, 40, 63), key=lambda m: abs(math.log(m * px / 10.0)))
        out.append(("images at", f"{px:g} um/px (a {mag}x scan); other scales are "
                    "rescaled when the file says its um/px"))
    kind = {1: "grey", 3: "RGB"}.get(card.in_channels, f"{card.in_channels} channels")
    out.append(("input", f"{kind} images"))
    return out


#: How the Model widget names a score a checkpoint was chosen on, where its key says too little.
_SELECTED_ON = {"val_class_dice": "val Dice per class, mean",
                "val_image_dice": "val Dice (foreground pooled)"}


def _metric_groups(metrics: dict) -> list[tuple[str, str]]:
    """The card's figures grouped by the images they were measured on (validation, held-out
    test), key figures first; the training run's own validation in one line."""
    out = []
    sets = [("val", "validation"), ("test", "held-out test (measured once)")]
    for key in sorted(metrics):  # images scored by group: "val[malignant]"
        for group, label in list(sets[:2]):
            if key.startswith(f"{group}[") and isinstance(metrics[key], dict):
                sets.append((key, f"{label}, {key[len(group) + 1:-1]}"))
    for group, label in sets:
        m = metrics.get(group)
        if isinstance(m, dict):
            n = m.get("images")
            figures = ", ".join(f"{name} {m[k]:.3f}" if k != "object_hausdorff" else
                                f"{name} {m[k]:.1f}" for k, name in KEY_METRICS
                                if isinstance(m.get(k), int | float))
            out.append((f"{label}" + (f" ({n} images)" if n else ""), figures))
            # a class map's classes one by one (organs: the figure it is judged by)
            per_class = [(k.removeprefix("dice_"), v) for k, v in m.items()
                         if k.startswith("dice_") and isinstance(v, int | float)]
            if per_class:
                out.append((f"{label}, Dice per class",
                            ", ".join(f"{c} {v:.3f}" for c, v in per_class)))
    per_group = {k[len("val_objects["):-1]: v for k, v in metrics.items()
                 if k.startswith("val_objects[") and isinstance(v, int | float)}
    if per_group:
        out.append(("validation by group", ", ".join(f"{g} {v:.3f}" for g, v in
                                                     sorted(per_group.items()))))
    rescaled = metrics.get("val_rescaled_auto_scale")  # the same images at other scales
    if isinstance(rescaled, dict) and rescaled.get("factors") and rescaled.get("cell_dice"):
        f, d = rescaled["factors"], rescaled["cell_dice"]
        out.append(("validation rescaled, no pixel size given",
                    f"{min(f):g}x to {max(f):g}x with automatic scale: cell Dice "
                    f"{min(d):.3f} or better"))
    sel = metrics.get("selected_on")
    if sel and isinstance(metrics.get(sel), int | float):
        when = f" at epoch {metrics['epoch']}" if "epoch" in metrics else ""
        words = _SELECTED_ON.get(str(sel), str(sel).removeprefix("val_").replace("_", " "))
        out.append(("chosen on", f"{words} {metrics[sel]:.3f}{when}"))
    if not out:  # a card without grouped figures: its flat metrics, as they are
        out = _flat_metrics(metrics)
    return out


def _flat_metrics(metrics: dict, prefix: str = "") -> list[tuple[str, str]]:
    nested = [(f"{prefix}{k} ", v) for k, v in metrics.items() if isinstance(v, dict)]
    nested_names = {name for p, v in nested for name, _ in _flat_metrics(v, p)}
    out = []
    for k, v in metrics.items():
        if isinstance(v, dict):
            out += _flat_metrics(v, f"{prefix}{k} ")
            continue
        name = f"{prefix}{k}".replace("_", " ")
        # a card has both {"val": {"dice": ...}} (scored on full images) and "val_dice" (the
        # training run's own validation): not two rows named "val dice" with other values
        if name in nested_names:
            name += " (during training)"
        out.append((name, f"{v:.3f}" if isinstance(v, float) else str(v)))
    return out
