"""Slides widget: segment a folder of slides in the background (napari_glandseg.slides.cohort).

Every slide is segmented block by block, tissue only, into ``NAME.ome.zarr`` (labels
pyramid), ``NAME_objects.csv`` and ``NAME_objects.geojson`` in the output folder. The blocks
run on a dask cluster of threads inside napari (``Workers``); a rerun resumes. Finished
slides can be opened as Labels layers over their slides.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from . import _worker
from ._common import notify, speak_micrometres


class CohortWidget(QWidget):
    """A folder of slides -> OME-Zarr labels, object tables and GeoJSON, in the background.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Slides")[1]
        w.folder.setText("slides/"); w.out.setText("results/")
        w.model_box.setCurrentText("glands-he")
        worker = w.run()          # w.result is the CohortResult once it has finished
        w.open_results()          # the finished slides' labels as layers
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self.folder, self.out = QLineEdit(), QLineEdit()
        self.folder.setPlaceholderText("folder of slides (.svs, .tif, ...)")
        self.out.setPlaceholderText("output folder")
        self.model_box = QComboBox()
        self.workers = QSpinBox()
        self.workers.setRange(1, 64)
        self.workers.setValue(2)
        self.workers.setToolTip("dask workers (threads of napari) running blocks at once")
        self.block = QSpinBox()
        self.block.setRange(128, 8192)
        self.block.setSingleStep(128)
        self.block.setValue(2048)
        self.overlap = QSpinBox()
        self.overlap.setRange(16, 1024)
        self.overlap.setValue(256)
        self.overlap.setToolTip("halo around each block: larger than the largest object")
        self.tissue = QCheckBox("skip blocks without tissue")
        self.tissue.setChecked(True)
        self.run_btn = QPushButton("Segment slides")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.open_btn = QPushButton("Open results")
        self.open_btn.setEnabled(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        for label, edit, title in (("Slides", self.folder, "Folder of slides"),
                                   ("Output", self.out, "Output folder")):
            row = QHBoxLayout()
            browse = QPushButton("...")
            browse.setMaximumWidth(30)
            browse.clicked.connect(lambda _=False, e=edit, t=title: self._browse(e, t))
            row.addWidget(edit)
            row.addWidget(browse)
            form.addRow(label, row)
        form.addRow("Model", self.model_box)
        form.addRow("Workers", self.workers)
        form.addRow("Block size", self.block)
        form.addRow("Block overlap", self.overlap)
        form.addRow("", self.tissue)
        buttons = QHBoxLayout()
        for b in (self.run_btn, self.cancel_btn, self.open_btn):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch()
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.open_btn.clicked.connect(self.open_results)
        self.refresh_models()

    def refresh_models(self) -> None:
        from ..models import list_models

        current = self.model_box.currentText()
        self.model_box.clear()
        self.model_box.addItems([e.name for e in list_models()])
        if current:
            self.model_box.setCurrentText(current)

    def _browse(self, edit: QLineEdit, title: str) -> None:  # pragma: no cover - dialog
        path = QFileDialog.getExistingDirectory(self, title, edit.text() or str(Path.home()))
        if path:
            edit.setText(path)

    def _slides(self) -> list[str]:
        from ..io import iter_image_files

        folder = self.folder.text().strip()
        if not folder or not Path(folder).is_dir():
            raise GlandsegError(f"choose a folder of slides (got {folder!r})")
        files = [str(f) for f in iter_image_files([folder])]
        if not files:
            raise GlandsegError(f"{folder}: no images or slides in it")
        if not self.out.text().strip():
            raise GlandsegError("choose an output folder")
        if not self.model_box.currentText():
            raise GlandsegError("no model: import or train one first")
        return files

    def run(self):
        """Start the cohort in the background; returns the worker (None on bad input)."""
        from ..slides import SlideParams
        from ..slides.cohort import CohortParams, iter_segment_cohort

        try:
            files = self._slides()
            self._sources = {Path(f).stem: f for f in files}  # to open each under its labels
            params = SlideParams(block_size=self.block.value(), overlap=self.overlap.value(),
                                 tissue=self.tissue.isChecked())
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        cohort = CohortParams(workers=self.workers.value(), processes=False)
        self.result = None
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.open_btn.setEnabled(False)
        self.status.setText(f"{len(files)} slides: starting...")
        self.worker = _worker.start(
            iter_segment_cohort, files, self.out.text().strip(), self.model_box.currentText(),
            params=params, cohort=cohort, on_yield=self._progress, on_return=self._finished,
            on_done=self._done, on_abort=lambda: self.status.setText("cancelled"),
            what="slide segmentation", progress_desc="Slides", owner=self)
        return self.worker

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _progress(self, p) -> None:
        self.status.setText(f"{p.done}/{p.total} blocks - {p.message}")

    def _finished(self, result) -> None:
        self.result = result
        text = (f"{len(result.done)} slides segmented, {len(result.skipped)} finished before, "
                f"{len(result.failed)} failed ({result.seconds:.0f} s)")
        for path, why in result.failed:
            text += f"\nfailed: {Path(path).name}: {why}"
        unlike = [(r.name, r.info["appearance"]) for r in result.done
                  if r.info.get("appearance")]
        for name, why in unlike:
            text += f"\n{name}: {why}"
        self.status.setText(text)
        notify("warning" if result.failed or unlike else "info",
               text.splitlines()[0] if not unlike or result.failed else
               f"{text.splitlines()[0]}; {len(unlike)} look unlike the model's training "
               "images (see the Slides panel)")
        self.open_btn.setEnabled(bool(result.done or result.skipped))

    def _done(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.worker = None

    def open_results(self) -> list:
        """Add every finished slide's labels as a multiscale Labels layer (scale in um)."""
        from ..slides import labels_layer_data

        if self.result is None:
            return []
        out = Path(self.out.text().strip())
        names = [r.name for r in self.result.done] + [Path(s).stem for s in self.result.skipped]
        # slides and their labels in micrometres alike: the scale bar keeps its um (napari
        # drops units, and the bar with them, when layers disagree)
        speak_micrometres(self.viewer)
        self.viewer.scale_bar.visible = True
        layers = []
        for name in names:
            data, kwargs, _ = labels_layer_data(out / f"{name}.ome.zarr")
            image = self._open_source(name)  # labels over their tissue, not over black
            if image is not None:
                kwargs["metadata"]["source_image"] = image.name
            layers.append(self.viewer.add_labels(data, **kwargs))
        if layers:
            self.viewer.reset_view()  # the view may be on another image
        return layers

    def _open_source(self, name: str):
        """The slide ``name`` was segmented from, as an image layer (opened if need be)."""
        from napari.layers import Image

        path = getattr(self, "_sources", {}).get(name)
        if path is None:
            return None
        for la in self.viewer.layers:
            if isinstance(la, Image) and la.metadata.get("source_path") == str(path):
                return la
        try:
            opened = self.viewer.open(path, plugin="napari-glandseg")
        except Exception as exc:  # noqa: BLE001 - the labels still open without it
            notify("warning", f"{Path(path).name}: could not open the slide ({exc})")
            return None
        return next((la for la in opened if isinstance(la, Image)), None)
