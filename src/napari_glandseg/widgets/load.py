"""Load widget: open images, masks and datasets of image/mask pairs, and step through them."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..io import MASK_FOLDERS, Pair, find_pairs, read_image, read_pair
from ._common import notify, track_edits

TRUTH_SUFFIX = " [truth]"
AUTO = "auto"


class LoadWidget(QWidget):
    """Open files or a dataset folder; one Image and one ground-truth Labels layer per pair.

    Scripted use (everything the buttons do)::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Load")[1]
        w.open_dataset("glas/train")    # shows the first pair
        w.next()                        # replaces it with the second
        w.open_files(["a.png", "a_mask.png"])
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.pairs: list[Pair] = []
        self.index = -1
        self._shown: list = []  # layers this widget added for the pair on show

        self.open_files_btn = QPushButton("Open images…")
        self.open_folder_btn = QPushButton("Open dataset folder…")
        self.mask_folder = QComboBox()
        self.mask_folder.addItems([AUTO, *MASK_FOLDERS])
        self.mask_folder.setToolTip("Which folder holds the masks in an images/ + masks/ layout")
        self.as_masks = QCheckBox("Open chosen files as masks")
        self.pair_list = QListWidget()
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.status = QLabel("No dataset open")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addWidget(self.open_files_btn)
        layout.addWidget(self.as_masks)
        row = QHBoxLayout()
        row.addWidget(QLabel("Masks folder:"))
        row.addWidget(self.mask_folder)
        layout.addLayout(row)
        layout.addWidget(self.open_folder_btn)
        layout.addWidget(self.pair_list)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        layout.addLayout(nav)
        layout.addWidget(self.status)

        self.open_files_btn.clicked.connect(self._choose_files)
        self.open_folder_btn.clicked.connect(self._choose_folder)
        self.pair_list.currentRowChanged.connect(self._row_changed)
        self.prev_btn.clicked.connect(self.previous)
        self.next_btn.clicked.connect(self.next)
        self._update_nav()

    # ---------------------------------------------------------------- actions a script can call
    def open_files(self, paths, as_masks: bool | None = None) -> list:
        """Add each file as a layer (masks as Labels); bad files are reported and skipped."""
        if as_masks is None and self.as_masks.isChecked():
            as_masks = True
        added = []
        for path in paths:
            try:
                img = read_image(path, as_labels=as_masks)
            except GlandsegError as exc:
                notify("error", str(exc))
                continue
            added.append(self._add(img, truth=img.kind == "labels"))
        return added

    def open_dataset(self, folder) -> list[Pair]:
        """List the image/mask pairs in ``folder`` and show the first."""
        choice = self.mask_folder.currentText()
        try:
            pairs = find_pairs(folder, None if choice == AUTO else choice)
        except GlandsegError as exc:
            notify("error", str(exc))
            return []
        self.pairs = pairs
        self.pair_list.blockSignals(True)
        self.pair_list.clear()
        self.pair_list.addItems(
            [p.name if p.mask else f"{p.name} (no mask)" for p in pairs]
        )
        self.pair_list.blockSignals(False)
        n_masks = sum(p.mask is not None for p in pairs)
        if n_masks == 0:
            notify("warning", f"{folder}: {len(pairs)} images and no masks; loading images only")
        elif n_masks < len(pairs):
            notify("info", f"{folder}: {len(pairs) - n_masks} of {len(pairs)} images have no mask")
        self.index = -1
        self.show_pair(0)
        return pairs

    def show_pair(self, index: int) -> None:
        """Replace the pair on show with pair ``index`` (edited ground truth is kept)."""
        if not 0 <= index < len(self.pairs):
            return
        pair = self.pairs[index]
        try:
            image, truth = read_pair(pair)
        except GlandsegError as exc:
            # A bad mask must not hide its image: show the image alone and say why.
            notify("error", str(exc))
            try:
                image, truth = read_image(pair.image, as_labels=False), None
            except GlandsegError as exc2:
                notify("error", str(exc2))
                return
        self._clear_shown()
        self.index = index
        self._shown.append(self._add(image, truth=False))
        if truth is not None:
            self._shown.append(self._add(truth, truth=True, name=image.name + TRUTH_SUFFIX))
        self.pair_list.blockSignals(True)
        self.pair_list.setCurrentRow(index)
        self.pair_list.blockSignals(False)
        self.status.setText(
            f"{index + 1} / {len(self.pairs)}: {pair.image.name}"
            + (f" + {pair.mask.name}" if pair.mask else " (no mask)")
        )
        self._update_nav()

    def next(self) -> None:
        self.show_pair(self.index + 1)

    def previous(self) -> None:
        self.show_pair(self.index - 1)

    # ---------------------------------------------------------------- internals
    def _add(self, img, truth: bool, name: str | None = None):
        data, kwargs, kind = img.to_layer_data(name=name)
        if truth and name is None:
            kwargs["name"] = img.name + TRUTH_SUFFIX
        kwargs["metadata"]["glandseg_role"] = "truth" if truth else "image"
        if kind == "labels":
            layer = self.viewer.add_labels(data, **kwargs)
            track_edits(layer)
        else:
            layer = self.viewer.add_image(data, **kwargs)
        return layer

    def _clear_shown(self) -> None:
        for layer in self._shown:
            if layer not in self.viewer.layers:
                continue
            if layer.metadata.get("edited"):
                layer.name = layer.name + " (edited)"
                notify("info", f"kept your edited layer {layer.name!r}; save it before closing")
                continue
            self.viewer.layers.remove(layer)
        self._shown = []

    def _row_changed(self, row: int) -> None:
        if row != self.index:
            self.show_pair(row)

    def _update_nav(self) -> None:
        self.prev_btn.setEnabled(self.index > 0)
        self.next_btn.setEnabled(0 <= self.index < len(self.pairs) - 1)

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "",
            "Images (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.svs);;All files (*)",
        )
        if paths:
            self.open_files(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open dataset folder")
        if folder:
            self.open_dataset(Path(folder))
