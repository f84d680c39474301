"""Segment widget: run the selected model over an image layer in the background."""

from __future__ import annotations

from enum import Enum

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..inference import LARGE_PIXELS, Blend, SegmentParams
from ..io import lazy_pyramid
from ..pipeline import entry_of, mask_to_polygons, postprocess_for, read_into_memory
from ..scale import estimate_unused
from . import _worker
from ._common import (
    fill_layer_box,
    label_features,
    map_colormap,
    notify,
    track_edits,
    unique_name,
)
from ._focus import RESULT_ROLES, follow, is_source_image, newest_of
from ._state import selection_for
from ._stores import StoreKeeper


def segment_job(data, model, pixel_size_um, region, params, polygons=None, post=True,
                auto_scale=True):
    """The core's per-file pipeline on a layer's pixels, then masked to the polygons.

    Runs in the worker thread. With ``post`` (and a card that has post-processing) the
    result is the card's objects, measured (a class model's: its cleaned class map). A result
    small enough for memory (a region of a slide) is read out of its zarr store, which is
    then removed. Returns ``(SegmentResult, labels, features)``: ``labels`` is None without
    post-processing (the class map is ``SegmentResult.labels``).
    """
    from ..pipeline import FileParams, iter_segment_file

    post = post and bool(model.card.postprocess)
    result = yield from iter_segment_file(
        data, model, FileParams(segment=params, postprocess="card" if post else None,
                                objects_csv=post, auto_scale=auto_scale),
        region=region, pixel_size_um=pixel_size_um)
    try:
        if result.segment.labels.size <= LARGE_PIXELS:
            read_into_memory(result)
        if polygons and result.segment.store_path is None:
            mask_to_polygons(result, polygons)
        res = result.segment
        return (res, result.labels, result.table) if post else (res, None, None)
    except BaseException:  # the result is never shown: its store goes now
        result.segment.discard()
        raise


def _result_metadata(res, image, card, polygons) -> dict:
    """What a result layer records: its source image and model, the settings the run used
    (the controls may have changed since it started), the card's post-processing as every
    route reads it, the scale estimate, the out-of-domain warning, its store, and the ROI's
    polygons in the image's full-resolution pixels (outside them nothing was segmented)."""
    return {"model": card.name, "source_image": image.name,
            "image_path": image.metadata.get("source_path"),
            "pixel_size_um": res.pixel_size_um, "params": res.metadata()["params"],
            "class_names": card.class_names, "seconds": res.seconds, "device": res.device,
            # a class map to score per class (not a boundary model's helper classes)
            "class_model": card.class_map,
            "legend": f"{image.name}, {card.name}: {card.legend()}",
            "postprocess_defaults": entry_of(postprocess_for(card)),
            "scale_estimate": res.info.get("scale_estimate"),
            "appearance_warning": res.info.get("appearance"),
            "store_path": res.store_path,
            "roi_polygons": None if not polygons else
            [np.asarray(p, float).tolist() for p in polygons]}


def _show_legend(viewer, text: str | None) -> None:
    """The class legend in the canvas's top-left corner (hidden for None)."""
    canvas = getattr(viewer, "canvas", None)  # napari >= 0.9; viewer.text_overlay before
    overlay = canvas.overlays.text if canvas is not None else viewer.text_overlay
    if text:
        overlay.text = text
        overlay.position = "top_left"
        overlay.font_size = 12
    overlay.visible = bool(text)


def _classes_found(class_map, card) -> str:
    """The classes a class map holds, with their share of the image: "small bowel 2.1 %,
    stomach 0.4 %" (a lazy map: not counted, "see the layer")."""
    if not isinstance(class_map, np.ndarray):
        return "see the layer"
    counts = np.bincount(class_map.ravel(), minlength=len(card.class_names))
    found = [f"{name} {100 * counts[c] / class_map.size:.1f} %"
             for c, name in enumerate(card.class_names) if c and counts[c]]
    return ", ".join(found) if found else "none"


def class_features(table, card):
    """A class map's hover table: one row per class present, keyed by its class value
    (napari's ``index``), with its name, number of regions and area."""
    import pandas as pd

    rows = []
    for c, name in enumerate(card.class_names):
        part = table[table["class"] == c] if len(table) else table
        if c and len(part):
            row = {"index": c, "class": name, "regions": len(part),
                   "area": int(part["area"].sum())}
            if "area_um2" in part:
                row["area_um2"] = float(part["area_um2"].sum())
            rows.append(row)
    return pd.DataFrame(rows, columns=["index", "class", "regions", "area"]
                        + (["area_um2"] if "area_um2" in table else []))


#: the controls start at the settings' own defaults (one place: SegmentParams)
DEFAULTS = SegmentParams()
AUTO_SCALE_TIP = ("From the size of the image's nuclei and cells, against the model's "
                  "training images (off: take the training scale)")


class Region(str, Enum):
    WHOLE = "whole image"
    VIEW = "current field of view"
    ROI = "shapes ROI"


class SegmentWidget(QWidget):
    """Pick an image layer, set tiling options, Run (or Cancel) and get a Labels layer.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Segment")[1]
        w.image_box.setCurrentText("my image"); w.tile.setValue(256)
        worker = w.run()          # returns napari's worker; w.last_layers holds the result
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.selection = selection_for(napari_viewer)
        self.worker = None
        self.last_layers: list = []

        self.image_box = QComboBox()
        self.region_box = QComboBox()
        self.region_box.addItems([r.value for r in Region])
        self.shapes_box = QComboBox()
        self.tile = QSpinBox()
        self.tile.setRange(64, 4096)
        self.tile.setSingleStep(64)
        self.tile.setValue(DEFAULTS.tile_size)
        self.tile.setToolTip("largest tile side the network sees; tiles are shrunk to "
                             "cover the image evenly (fewer pixels, same overlap)")
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(0.0, 0.75)
        self.overlap.setSingleStep(0.05)
        self.overlap.setValue(DEFAULTS.overlap)
        self.batch = QSpinBox()
        self.batch.setRange(1, 64)
        self.batch.setValue(DEFAULTS.batch_size)
        self.blend = QComboBox()
        self.blend.addItems([b.value for b in Blend])
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(DEFAULTS.threshold)
        self.tta = QCheckBox("Test-time augmentation (8x slower, gives uncertainty)")
        self.show_probs = QCheckBox("Add probability map")
        self.objects = QCheckBox("Objects (the model card's post-processing)")
        self.objects.setChecked(True)
        self.objects.setToolTip("Split the class map into one label per object with the "
                                "settings the model card gives (Post-process can redo it)")
        self.keep_classes = QCheckBox("Also keep the class map")
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setRange(0.0, 1000.0)
        self.pixel_size.setDecimals(4)
        self.pixel_size.setSingleStep(0.05)
        self.pixel_size.setSpecialValueText("from the image")
        self.pixel_size.setToolTip("um/px of the image; 'from the image': what its file says, "
                                   "or for a PNG/JPEG the estimate below")
        self.auto_scale = QCheckBox("Estimate the scale of images without a pixel size")
        self.auto_scale.setChecked(True)
        self.auto_scale.setToolTip(AUTO_SCALE_TIP)
        self._auto_scale_wanted = True  # the user's choice, kept while a model greys it out
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.run_btn = QPushButton("Run")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)  # a long message must not widen the dock

        self._lay_out()

        self.run_btn.clicked.connect(self.run)
        self.cancel_btn.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._forget)
        self.viewer.layers.events.changed.connect(self._refresh_layers)
        # large results' stores: removed with their last layer, or with this widget
        self.stores = StoreKeeper(self, napari_viewer)
        self.selection.changed.connect(self._show_model)
        self.focus = follow(self, napari_viewer, self._follow)
        self._refresh_layers()
        self._follow(self.focus.name)
        self._show_model()

    def _lay_out(self) -> None:
        """The form, the switches, the buttons, the progress and the status."""
        form = QFormLayout()
        form.addRow("Image", self.image_box)
        form.addRow("Model", self.model_label)
        form.addRow("Region", self.region_box)
        form.addRow("Shapes layer", self.shapes_box)
        form.addRow("Pixel size (um)", self.pixel_size)
        form.addRow("Tile size", self.tile)
        form.addRow("Overlap", self.overlap)
        form.addRow("Batch size", self.batch)
        form.addRow("Blending", self.blend)
        form.addRow("Threshold", self.threshold)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.auto_scale)
        layout.addWidget(self.tta)
        layout.addWidget(self.objects)
        layout.addWidget(self.keep_classes)
        layout.addWidget(self.show_probs)
        row = QHBoxLayout()
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    # ---------------------------------------------------------------- actions a script can call
    def params(self) -> SegmentParams:
        return SegmentParams(
            tile_size=self.tile.value(), overlap=self.overlap.value(),
            batch_size=self.batch.value(), blend=self.blend.currentText(), tta=self.tta.isChecked(),
            threshold=self.threshold.value(),
            device=str(self.selection.device) if self.selection.device else "auto",
            return_probabilities=self.show_probs.isChecked(),
        )

    def run(self):
        """Start segmenting; returns the worker (None when the input is not usable)."""
        if self.worker is not None:
            notify("warning", "a segmentation is already running; cancel it first")
            return None
        try:
            image, model, region, polygon = self._inputs()
            params = self.params()
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        pixel_size = self.pixel_size.value() or image.metadata.get("pixel_size_um")
        data = list(image.data) if image.multiscale else image.data
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        self._set_running(True)
        self.progress.setValue(0)
        self.status.setText(f"Running {model.name} on {image.name}…")
        self.worker = _worker.start(
            segment_job, data, model, pixel_size, region, params, polygon,
            self.objects.isChecked(), self.auto_scale.isChecked(),
            on_yield=self._on_progress,
            on_return=lambda out: self._on_result(out, image, model, polygon),
            on_done=lambda: self._set_running(False), what="segmentation",
            on_error=lambda msg: self.status.setText(f"Failed: {msg}"),
            on_abort=lambda: self.status.setText("Cancelled: nothing was added"),
            on_discard=lambda out: self.stores.discard(out[0].store_path),
            progress_desc="GlandSeg: segmenting", owner=self)
        return self.worker

    def cancel(self) -> None:
        """Stop at the next batch (with TTA: the next of its 8 passes); nothing is added."""
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.quit()

    # ---------------------------------------------------------------- inputs
    def _inputs(self):
        from napari.layers import Image

        name = self.image_box.currentText()
        if not name or name not in self.viewer.layers:
            raise GlandsegError("no image layer chosen: open an image first (Load widget)")
        image = self.viewer.layers[name]
        if not isinstance(image, Image):
            raise GlandsegError(f"layer {name!r} is not an image")
        model = self.selection.model
        if model is None:
            raise GlandsegError("no model chosen: pick one in the Model widget")
        region, polygon = None, None
        mode = Region(self.region_box.currentText())
        if mode is Region.VIEW:
            region = self._view_region(image)
        elif mode is Region.ROI:
            region, polygon = self._roi_region(image)
        return image, model, region, polygon

    def _view_region(self, image):
        corners = np.asarray(image.corner_pixels, float)
        if image.multiscale:
            corners = corners * np.asarray(image.downsample_factors[image.data_level])
        (y0, x0), (y1, x1) = corners[:, -2:]
        return (y0, x0, y1 + 1, x1 + 1)

    def _roi_region(self, image):
        from napari.layers import Shapes

        name = self.shapes_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(layer, Shapes) or len(layer.data) == 0:
            raise GlandsegError("region 'shapes ROI' needs a Shapes layer with at least one "
                                "shape: draw a rectangle or polygon around the area")
        chosen = sorted(layer.selected_data) or range(len(layer.data))
        polys = []
        for i in chosen:
            verts = np.array([image.world_to_data(layer.data_to_world(v))
                              for v in layer.data[i]])
            polys.append(verts[:, -2:])
        pts = np.round(np.concatenate(polys), 6)  # um -> px round trips leave 1e-13 errors
        y0, x0 = np.floor(pts.min(0)).astype(int)
        y1, x1 = np.ceil(pts.max(0)).astype(int) + 1
        return (y0, x0, y1, x1), polys

    # ---------------------------------------------------------------- results
    def _on_progress(self, p) -> None:
        self.progress.setMaximum(p.total)
        self.progress.setValue(p.done)
        eta = f", about {p.eta:.0f} s left" if p.eta is not None else ""
        self.status.setText(f"{p.message}{eta}")

    def _on_result(self, out, image, model, polygons=None) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        res, post, features = out
        card = model.card

        def shown(arr):  # a large result stays lazy, in its zarr store
            if res.store_path is None:
                return arr, False
            levels = lazy_pyramid([arr])
            return (levels, True) if len(levels) > 1 else (levels[0], False)

        self.stores.keep(res.store_path)
        scale = np.asarray(image.scale[-2:]) * res.downsample
        units = tuple(image.units[-2:])  # the image's (um on a slide): napari warns on a mix
        translate = np.asarray(image.translate[-2:]) + np.asarray(res.offset) * image.scale[-2:]
        meta = _result_metadata(res, image, card, polygons)
        colours = card.label_colours()
        class_model = features is not None and "class" in features
        earlier = self._hide_earlier_results(image)
        self.last_layers = []
        if post is None or class_model or self.keep_classes.isChecked():
            # the class map: as predicted, or (a class model) cleaned, with its objects' table
            data, multiscale = shown(post if class_model else res.labels)
            title = f"{card.name}: {card.legend()}" if class_model else card.name
            layer = self.viewer.add_labels(
                data, name=unique_name(self.viewer, f"{image.name} [{title}]", run=True),
                scale=scale, translate=translate, units=units, multiscale=multiscale,
                opacity=0.5,
                features=class_features(features, card) if class_model else None,
                metadata={**meta, "glandseg_role": "prediction"},
                colormap=DirectLabelColormap(color_dict=colours))
            track_edits(layer)
            self.last_layers.append(layer)
        if post is not None and not class_model:
            data, multiscale = shown(post)
            layer = self.viewer.add_labels(
                data,
                name=unique_name(self.viewer, f"{image.name} [{card.name} objects]",
                                 run=True),
                scale=scale, translate=translate, units=units, multiscale=multiscale,
                opacity=0.5,
                features=label_features(features),
                metadata={**meta, "glandseg_role": "objects",
                          "postprocess": meta["postprocess_defaults"]})  # as applied
            track_edits(layer)
            self.last_layers.insert(0, layer)
        self._add_maps(res, f"{image.name} [{card.name}]", meta,
                       {"scale": scale, "translate": translate, "units": units})
        what = (f"{len(features)} objects" if features is not None
                else f"{res.info['tiles']} tiles")
        if class_model:  # the classes present, never "4 objects" of unnamed kinds
            what = "classes found: " + _classes_found(post, card)
            _show_legend(self.viewer, f"{image.name}, {card.name}: {card.legend()}")
        hidden = (f"; {earlier} layer(s) of this image hidden (its truth, earlier results: "
                  "still in the list)") if earlier else ""
        est = res.info.get("scale_estimate")
        est = f" ({est}; set Pixel size to override)" if est else ""
        self.status.setText(f"Done in {res.seconds:.1f} s on {res.device}: {what}{hidden}{est}")
        unlike = res.info.get("appearance")
        if unlike:  # objects on an image the model was not made for: say so, loudly
            self.status.setText(self.status.text() + f"\nWarning: {unlike}")
            notify("warning", f"{image.name}: {unlike}")

    def _add_maps(self, res, name: str, meta: dict, place: dict) -> None:
        """The probability map (when asked for) and the TTA uncertainty map, as images over
        the result, each tinting the tissue in one colour."""
        if res.probabilities is not None and res.params.return_probabilities:
            probs = res.probabilities
            if res.store_path is None:
                probs = np.asarray(probs, dtype=np.float32)
                fg = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
            else:
                import dask.array as da

                probs = da.from_zarr(probs)
                fg = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
            self.last_layers.append(self.viewer.add_image(
                fg, name=unique_name(self.viewer, f"{name} probability", run=True),
                colormap=map_colormap("#00c8ff"), blending="translucent", opacity=0.6,
                **place, contrast_limits=(0, 1),
                metadata={**meta, "glandseg_role": "probability"}))
        if res.uncertainty is not None:
            unc = res.uncertainty
            if res.store_path is not None:
                import dask.array as da

                unc = da.from_zarr(unc)
            top = float(np.nanmax(unc)) if res.store_path is None else 0.25
            self.last_layers.append(self.viewer.add_image(
                unc, name=unique_name(self.viewer, f"{name} uncertainty", run=True),
                colormap=map_colormap("#ffe600"), blending="translucent", opacity=0.6,
                **place, visible=False,
                contrast_limits=(0, max(top, 1e-3)),
                metadata={**meta, "glandseg_role": "uncertainty"}))

    def _hide_earlier_results(self, image) -> int:
        """Hide (never remove) the truth and the results of earlier runs on ``image``, so
        the new result is not seen through a stack of half-transparent layers (Compare
        still reads the hidden ones); a layer with unsaved edits stays as it is (the user is
        correcting it). Returns how many were hidden."""
        roles = ("truth", "prediction", "objects", "probability", "uncertainty")
        n = 0
        for layer in self.viewer.layers:
            meta = layer.metadata
            if (layer.visible and meta.get("source_image") == image.name
                    and meta.get("glandseg_role") in roles and not meta.get("unsaved")):
                layer.visible = False
                n += 1
        return n

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        if not running:
            self.worker = None

    # ---------------------------------------------------------------- layer lists
    def _forget(self, event) -> None:
        """Let go of a removed layer."""
        name = getattr(event.value, "name", None)
        self.last_layers = [la for la in self.last_layers if la.name != name]

    def _follow(self, name) -> None:
        """The image box follows the image on show; the canvas shows the legend of its
        newest class map, if it has one."""
        self._refresh_layers()
        if name and self.image_box.findText(name) >= 0:
            self.image_box.setCurrentText(name)
        newest = newest_of(self.viewer, name, RESULT_ROLES)
        meta = newest.metadata if newest is not None else {}
        _show_legend(self.viewer, meta.get("legend") if meta.get("class_model") else None)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Shapes

        fill_layer_box(self.image_box, self.viewer, Image,
                       exclude=[la.name for la in self.viewer.layers
                                if not is_source_image(la)])  # not probability maps
        fill_layer_box(self.shapes_box, self.viewer, Shapes,
                       exclude=[la.name for la in self.viewer.layers
                                if la.name.startswith("compare ")
                                or la.metadata.get("glandseg_role") == "highlight"])

    def _show_model(self, *_) -> None:
        m = self.selection.model
        if m is None:
            text = "none: choose one in the Model widget"
        elif m.card.levels:  # its classes are the levels of one object, not kinds of thing
            text = f"{m.name}: objects, as {m.card.levels} distance levels"
        else:
            text = f"{m.name}: {' / '.join(m.card.class_names)}"
        self.model_label.setText(text)
        why = m.card.threshold_unused() if m is not None else ""
        self.threshold.setEnabled(not why)
        self.threshold.setToolTip(why or "probability above which a pixel is foreground")
        # a model without a scale reference cannot estimate: shown off and greyed, and the
        # user's choice comes back with a model that can
        why = estimate_unused(m.card) if m is not None else ""
        if why and self.auto_scale.isEnabled():
            self._auto_scale_wanted = self.auto_scale.isChecked()
            self.auto_scale.setChecked(False)
        elif not why and not self.auto_scale.isEnabled():
            self.auto_scale.setChecked(self._auto_scale_wanted)
        self.auto_scale.setEnabled(not why)
        self.auto_scale.setToolTip(why or AUTO_SCALE_TIP)
