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
    scores = _flat_metrics(card.metrics)
    if scores:
        html.append("<p style='margin-bottom:2px'><b>Validation</b></p><table>"
                    + "".join(row(k, v) for k, v in scores) + "</table>")
    if card.training_data:
        html.append(f"<p><b>Trained on</b> {escape(card.training_data)}</p>")
    if card.licence or card.data_licence:
        html.append(f"<p><b>Licence</b> {escape(card.licence or '?')}; data: "
                    f"{escape(card.data_licence or '?')}</p>")
    if path:
        html.append(f"<p style='color:#999'>file: {escape(str(path))}</p>")
    return "".join(html)


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
