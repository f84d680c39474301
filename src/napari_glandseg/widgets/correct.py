"""Correct widget: object tools on a Labels layer, a review queue ranked by the model's
uncertainty, and GeoJSON exchange with QuPath.

The work is done by :mod:`napari_glandseg.correct` and :mod:`napari_glandseg.geojson`; this
module maps clicks to their functions and writes each result with ``Labels.data_setitem``
inside ``block_history``, so that every edit is one step of napari's undo/redo (Ctrl+Z).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import correct as core
from ..errors import GlandsegError
from ._common import fill_layer_box, notify, track_edits, unique_name
from ._focus import follow, is_news, newest_of

#: Tools that act on clicks, with their button text and keyboard shortcut (on the layer).
#: pixels of background the merge tool closes between pieces (core.merge's close_gap)
MERGE_GAP = 2

TOOLS = {
    "merge": ("Merge", "Shift-M", "click two or more objects; each click merges into the first"),
    "split_line": ("Split (line)", "Shift-L", "click the two ends of a line across an object"),
    "split_seeds": ("Split (seeds)", "Shift-S", "click two points inside one object"),
    "delete": ("Delete", "Shift-D", "click an object to remove it"),
    "add": ("Add", "Shift-A", "click a missed object: it grows from the probabilities "
            "(or the image)"),
    "fill": ("Fill holes", "Shift-H", "click an object to fill its holes"),
}
#: Keys for the rest (bound on the chosen Labels layer).
KEYS = {"relabel": "Shift-R", "next": "Shift-N", "previous": "Shift-B",
        "accept": "Shift-K", "corrected": "Shift-C"}
REVIEW_BOX = "review: current object"


def _camera(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; .camera before
    return scene.camera if scene is not None else viewer.camera


class CorrectWidget(QWidget):
    """Object tools and the review queue.

    Scripted use (positions are the Labels layer's data coordinates)::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Correct")[1]
        w.labels_box.setCurrentText("img [glands-he objects]")
        w.set_tool("merge"); w.click((40, 60)); w.click((45, 90))   # one undo step
        w.rank(); w.next(); w.accept()                                # "1 of 212 reviewed"
    """

    def __init__(self, napari_viewer):
        super().__init__()
        #: asks the user a yes/no question (a script or test may replace it)
        self.confirm = self._ask
        self.viewer = napari_viewer
        self.tool: str | None = None
        self.clicks: list[tuple[float, float]] = []
        self.queue: core.ReviewQueue | None = None
        self._bound = None  # the layer our keys and mouse callback are attached to

        self.labels_box = QComboBox()
        self.image_box = QComboBox()
        self.prob_box = QComboBox()
        self.unc_box = QComboBox()
        form = QFormLayout()
        form.addRow("Labels", self.labels_box)
        form.addRow("Image", self.image_box)
        form.addRow("Probability", self.prob_box)
        form.addRow("Uncertainty", self.unc_box)

        grid = self._tool_grid()

        self.rank_btn = QPushButton("Rank objects for review")
        self.prev_btn = QPushButton(f"Previous [{KEYS['previous']}]")
        self.next_btn = QPushButton(f"Next [{KEYS['next']}]")
        self.accept_btn = QPushButton(f"Accept [{KEYS['accept']}]")
        self.corrected_btn = QPushButton(f"Corrected [{KEYS['corrected']}]")
        self.review_label = QLabel("not ranked")
        self.export_btn = QPushButton("Export GeoJSON…")
        self.import_btn = QPushButton("Import GeoJSON…")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Tools (click on the Labels layer; Ctrl+Z undoes)"))
        layout.addLayout(grid)
        layout.addWidget(QLabel("Review queue (most likely wrong first)"))
        layout.addWidget(self.rank_btn)
        row = QHBoxLayout()
        row.addWidget(self.prev_btn)
        row.addWidget(self.next_btn)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.accept_btn)
        row.addWidget(self.corrected_btn)
        layout.addLayout(row)
        layout.addWidget(self.review_label)
        row = QHBoxLayout()
        row.addWidget(self.export_btn)
        row.addWidget(self.import_btn)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.rank_btn.clicked.connect(self.rank)
        self.next_btn.clicked.connect(self.next)
        self.prev_btn.clicked.connect(self.previous)
        self.accept_btn.clicked.connect(self.accept)
        self.corrected_btn.clicked.connect(lambda: self.mark("corrected"))
        self.export_btn.clicked.connect(self._choose_export)
        self.import_btn.clicked.connect(self._choose_import)
        self.labels_box.currentTextChanged.connect(self._labels_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.focus = follow(self, napari_viewer, self._follow)
        self._refresh_layers()
        if self.focus.name:
            self._follow(self.focus.name)

    # ---------------------------------------------------------------- layers
    def _tool_grid(self) -> QGridLayout:
        """One checkable button per tool (a tool stays on until another is chosen) and
        Relabel."""
        self.tool_buttons: dict[str, QPushButton] = {}
        self.group = QButtonGroup(self)
        self.group.setExclusive(False)
        grid = QGridLayout()
        for k, (name, (text, key, tip)) in enumerate(TOOLS.items()):
            b = QPushButton(f"{text} [{key}]")
            b.setCheckable(True)
            b.setToolTip(tip)
            b.clicked.connect(lambda on, name=name: self.set_tool(name if on else None))
            self.tool_buttons[name] = b
            self.group.addButton(b)
            grid.addWidget(b, k // 2, k % 2)
        self.relabel_btn = QPushButton(f"Relabel 1..N [{KEYS['relabel']}]")
        self.relabel_btn.clicked.connect(self.relabel)
        grid.addWidget(self.relabel_btn, 3, 0, 1, 2)
        return grid

    def _ask(self, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "Correct", question)
        return answer == QMessageBox.StandardButton.Yes

    def layer(self, quiet: bool = False):
        from napari.layers import Labels

        name = self.labels_box.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(layer, Labels):
            if not quiet:
                notify("error", "no Labels layer chosen: segment an image or open a mask first")
            return None
        return layer

    def _editable(self, layer):
        if layer.multiscale or not isinstance(layer.data, np.ndarray) or layer.data.ndim != 2:
            raise GlandsegError(f"layer {layer.name!r} is not a 2D in-memory label image: "
                                f"correct a region of it (Post-process or Segment a region)")
        return layer.data

    def _plane(self, box, kind: str):
        """The chosen probability / uncertainty / image layer's data, when it matches."""
        name = box.currentText()
        layer = self.layer(quiet=True)
        if not name or name not in self.viewer.layers or layer is None:
            return None
        other = self.viewer.layers[name]
        data = other.data[0] if other.multiscale else other.data
        shape = tuple(data.shape[:2]) if kind == "image" and data.ndim == 3 else \
            tuple(data.shape[-2:])
        if shape != tuple(layer.data.shape[-2:]):
            self.status.setText(f"{kind} layer {name!r} has shape {shape}, the labels "
                                f"{tuple(layer.data.shape)}: not used")
            return None
        return np.asarray(data)

    def _follow(self, name) -> None:
        """The layer to correct follows the image on show: its newest objects (else its
        class map). It moves when a new one comes or another image is shown, never away
        from the layer a user chose because some other layer of the image came in (a
        Compare overlay, a map): the next stroke would land on another layer."""
        self._refresh_layers()
        pick = newest_of(self.viewer, name, ("objects",)) or \
            newest_of(self.viewer, name, ("prediction",))
        if not is_news(self, (name, getattr(pick, "name", None))):
            return
        if pick is not None and self.labels_box.findText(pick.name) >= 0:
            self.labels_box.setCurrentText(pick.name)
            self._labels_changed(pick.name)

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Labels

        skip = tuple(la.name for la in self.viewer.layers if la.name.startswith("compare ")
                     or la.metadata.get("glandseg_role") == "validation")
        fill_layer_box(self.labels_box, self.viewer, Labels, exclude=skip)
        for box in (self.image_box, self.prob_box, self.unc_box):
            fill_layer_box(box, self.viewer, Image, extra=("",))
        # as in Post-process and Compare: a fresh result (objects first) replaces a choice
        # that was ground truth or nothing, so the first click never edits the truth
        current = self.labels_box.currentText()
        role = self.viewer.layers[current].metadata.get("glandseg_role") \
            if current in self.viewer.layers else None
        results = {r: [la.name for la in self.viewer.layers if la.name not in skip
                       and la.metadata.get("glandseg_role") == r]
                   for r in ("objects", "prediction")}
        inserted = getattr(event, "value", None)
        fresh = getattr(inserted, "metadata", {}).get("glandseg_role") == "objects"
        pick = (results["objects"] or results["prediction"] or [None])[-1]
        if pick and (fresh or role in (None, "truth")):
            self.labels_box.setCurrentText(pick)
        self._labels_changed(self.labels_box.currentText())

    def _labels_changed(self, name: str) -> None:
        """Pick the probability / uncertainty / image layers of the same segmentation, and
        attach the mouse and keys to the chosen layer."""
        layer = self.layer(quiet=True)
        if layer is None:
            self._attach(None)
            return
        meta = layer.metadata
        for box, role in ((self.prob_box, "probability"), (self.unc_box, "uncertainty")):
            for la in self.viewer.layers:
                m = la.metadata
                if m.get("glandseg_role") == role and m.get("source_image") == \
                        meta.get("source_image") and m.get("model") == meta.get("model"):
                    box.setCurrentText(la.name)
        src = meta.get("source_image")
        if src and src in self.viewer.layers:
            self.image_box.setCurrentText(src)
        self._attach(layer)

    def _attach(self, layer) -> None:
        old = self._bound
        if _unwrap(old) is _unwrap(layer):
            return
        if old is not None:
            if self._on_mouse in old.mouse_drag_callbacks:
                old.mouse_drag_callbacks.remove(self._on_mouse)
            for key in [*(k for _, k, _ in TOOLS.values()), *KEYS.values()]:
                old.bind_key(key, None, overwrite=True)
            old.events.mode.disconnect(self._mode_changed)
        self._bound = layer
        self.queue = None
        self.clicks = []
        if layer is None:
            return
        track_edits(layer)
        layer.mouse_drag_callbacks.append(self._on_mouse)
        layer.events.mode.connect(self._mode_changed)
        for name, (_, key, _) in TOOLS.items():
            layer.bind_key(key, lambda _la, name=name: self.set_tool(name), overwrite=True)
        actions = {"relabel": self.relabel, "next": self.next, "previous": self.previous,
                   "accept": self.accept, "corrected": lambda: self.mark("corrected")}
        for name, key in KEYS.items():
            layer.bind_key(key, lambda _la, f=actions[name]: f(), overwrite=True)
        self._load_review(layer)

    # ---------------------------------------------------------------- tools
    def set_tool(self, name: str | None) -> None:
        """Choose a tool (``merge``, ``split_line``, ``split_seeds``, ``delete``, ``add``,
        ``fill``) or None; the layer goes to pan/zoom so clicks do not paint."""
        if name is not None and name not in TOOLS:
            raise GlandsegError(f"unknown tool {name!r}; expected one of {', '.join(TOOLS)}")
        self.tool = name
        self.clicks = []
        for k, b in self.tool_buttons.items():
            b.setChecked(k == name)
        layer = self.layer(quiet=True)
        if name is not None and layer is not None:
            layer.mode = "pan_zoom"
        self.status.setText(TOOLS[name][2] if name else "")

    def _mode_changed(self, event=None) -> None:
        """Picking napari's paint, fill, erase... (any mode but pan/zoom) puts the tool down."""
        layer = self._bound
        if self.tool is not None and layer is not None and str(layer.mode) != "pan_zoom":
            self.set_tool(None)

    def _on_mouse(self, layer, event):
        """A click (press and release without moving) runs the tool; a drag pans."""
        if self.tool is None or event.button != 1:
            return
        start = np.asarray(event.position)
        yield
        while event.type == "mouse_move":
            if np.abs(np.asarray(event.position) - start).max() > 0:
                return  # a drag: leave it to pan/zoom
            yield
        self.click(layer.world_to_data(start)[-2:])

    def click(self, position) -> core.Edit | None:
        """Use the current tool at ``position`` (y, x) in the layer's data coordinates."""
        layer = self.layer()
        if layer is None or self.tool is None:
            return None
        pos = tuple(float(v) for v in np.asarray(position)[-2:])
        if not self._may_edit(layer):
            return None
        try:
            data = self._editable(layer)
            edit = self._use_tool(data, pos)
        except GlandsegError as exc:
            self.clicks = []
            notify("error", str(exc))
            return None
        if edit is not None:
            self._apply(layer, edit)
        return edit

    def _use_tool(self, data, pos) -> core.Edit | None:
        tool = self.tool
        if tool in ("delete", "fill"):
            obj = core.object_at(data, pos)
            if not obj:
                raise GlandsegError("click on an object, not on background")
            return core.delete(data, obj) if tool == "delete" else core.fill_holes(data, obj)
        if tool == "add":
            return core.add_object(data, pos, probabilities=self._plane(self.prob_box, "prob"),
                                   image=self._plane(self.image_box, "image"))
        self.clicks.append(pos)
        if tool == "merge":
            if len(self.clicks) == 1:
                obj = core.object_at(data, pos)
                if not obj:
                    self.clicks = []
                    raise GlandsegError("click on an object to merge, not on background")
                self.status.setText(f"merge: object {obj} chosen, click the next one")
                return None
            first, second = core.object_at(data, self.clicks[0]), core.object_at(data, pos)
            self.clicks = self.clicks[:1]  # keep merging into the first
            if first and second and first != second:
                gap = core.gap_between(data, first, second)
                if gap > 2 * MERGE_GAP and not self.confirm(
                        f"Objects {first} and {second} do not touch: {gap:.0f} px of "
                        "background lie between them. Merge them into one object anyway "
                        "(two separate pieces with one id)?"):
                    self.status.setText(f"merge: {second} not merged into {first} (they "
                                        "are apart)")
                    return None
            return core.merge(data, [first, second], close_gap=MERGE_GAP)
        if len(self.clicks) < 2:
            self.status.setText(f"{TOOLS[tool][0]}: first point set, click the second")
            return None
        a, b = self.clicks
        self.clicks = []
        if tool == "split_line":
            return core.split_line(data, [a, b])
        return core.split_seeds(data, [a, b], probabilities=self._plane(self.prob_box, "prob"))

    def relabel(self) -> core.Edit | None:
        layer = self.layer()
        if layer is None or not self._may_edit(layer):
            return None
        try:
            edit = core.relabel(self._editable(layer))
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        self.queue = None  # ids changed: rank again
        self._apply(layer, edit)
        return edit

    def _may_edit(self, layer) -> bool:
        """Whether the chosen layer may be edited: a result always; ground truth once a user
        has said so (asked once per layer). The box can stand on a truth layer without the
        user choosing it: an image shown before it has a result offers only its truth."""
        meta = layer.metadata
        if meta.get("glandseg_role") != "truth" or meta.get("truth_edits_confirmed"):
            return True
        src = meta.get("source_image")
        of = f" of {src!r}" if src else ""
        if self.confirm(f"{layer.name!r} is the ground truth{of}, not a result. Correct the "
                        "truth itself? (Save corrections writes it to corrected/, never over "
                        "the mask file unless you choose that.)"):
            meta["truth_edits_confirmed"] = True
            return True
        self.clicks = []
        self.status.setText(f"{layer.name!r} not edited: it is ground truth. Segment the "
                            "image and correct its result, or say Yes to correct the truth")
        return False

    def _apply(self, layer, edit: core.Edit) -> None:
        """Write the edit as one undo step and keep the review state in step with it."""
        indices, values = edit.changes()
        if len(values):
            with layer.block_history():
                layer.data_setitem(indices, values)
        layer.metadata["edited"] = True
        if self.queue is not None:
            for i in edit.removed:
                self.queue.status.pop(int(i), None)
            for i in edit.kept:
                self.queue.mark("corrected", i)
            self._save_review(layer)
        self.status.setText(f"{edit.action}: {len(values)} pixels changed "
                            f"(objects {', '.join(map(str, edit.kept)) or '-'})")

    # ---------------------------------------------------------------- review queue
    def rank(self) -> core.ReviewQueue | None:
        """Rank the layer's objects (those on screen for a large layer) for review."""
        layer = self.layer()
        if layer is None:
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        region = _view_region(layer)
        names = layer.metadata.get("class_names") or []
        classes = _classification(self.viewer, layer, data.shape[-2:], names)[0]
        try:  # a class model's objects are judged against others of their class
            table = core.rank_objects(data, self._plane(self.prob_box, "probability"),
                                      self._plane(self.unc_box, "uncertainty"),
                                      classes=classes, region=region)
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        old = self.queue.status if self.queue is not None else _review_status(layer)
        self.queue = core.ReviewQueue(table, old)
        self._save_review(layer)
        return self.queue

    def next(self):
        return self._go(lambda q: q.next())

    def previous(self):
        return self._go(lambda q: q.previous())

    def accept(self):
        """Mark the current object accepted and go to the next one."""
        if self.mark("accepted"):
            return self.next()
        return None

    def mark(self, state: str) -> bool:
        layer = self.layer()
        if layer is None or self.queue is None or self.queue.current is None:
            notify("error", "rank the objects and press Next first")
            return False
        self.queue.mark(state)
        self._save_review(layer)
        return True

    def _go(self, step):
        layer = self.layer()
        if layer is None:
            return None
        if self.queue is None and self.rank() is None:
            return None
        row = step(self.queue)
        if row is None:
            return None
        self._show(layer, row)
        self._update_review_label()
        return row

    def _show(self, layer, row) -> None:
        """Zoom to the object, select its id and draw a box around it."""
        y0, x0, y1, x1 = row["y0"], row["x0"], row["y1"], row["x1"]
        pad = max(y1 - y0, x1 - x0) * 0.75 + 5
        corners = np.array([[y0 - pad, x0 - pad], [y1 + pad, x1 + pad]], float)
        world = np.array([layer.data_to_world(c)[-2:] for c in corners])
        camera = _camera(self.viewer)
        # what is on screen now (corner_pixels, clipped to the layer) sets the new zoom
        seen = np.asarray(layer.corner_pixels, float)[:, -2:]
        seen = np.array([layer.data_to_world(c)[-2:] for c in seen])
        size = np.abs(world[1] - world[0]).max()
        shown = np.abs(seen[1] - seen[0]).min()
        camera.center = tuple(world.mean(0))
        if size > 0 and shown > 0:
            camera.zoom = float(camera.zoom * shown / size)
        layer.selected_label = int(row["label"])
        box = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5
        box = np.array([layer.data_to_world(c)[-2:] for c in box])
        if REVIEW_BOX in self.viewer.layers:
            self.viewer.layers[REVIEW_BOX].data = [box]
        else:
            self.viewer.add_shapes([box], shape_type="rectangle", edge_color="yellow",
                                   face_color="transparent", edge_width=2, name=REVIEW_BOX,
                                   metadata={"glandseg_role": "highlight"})  # not a ROI
            self.viewer.layers.selection.active = layer

    def _update_review_label(self) -> None:
        if self.queue is None:
            self.review_label.setText("not ranked")
            return
        cur = self.queue.current
        where = f"; object {cur['label']} ({self.queue.position + 1} in the queue, " \
                f"{self.queue.status.get(cur['label'], 'not reviewed')})" if cur else ""
        self.review_label.setText(self.queue.summary() + where)

    def _save_review(self, layer) -> None:
        """Keep the ranking and the marks in the layer's features (one row per object)."""
        import pandas as pd

        q = self.queue
        table = pd.DataFrame({
            "index": q.table["label"].astype(int).to_numpy(),
            "review": [q.status.get(int(i), "") for i in q.table["label"]],
            "review_rank": q.table["rank"].to_numpy(),
            "review_score": q.table["score"].to_numpy()})
        extra = sorted(set(q.status) - set(table["index"]))  # objects made by edits
        if extra:
            table = pd.concat([table, pd.DataFrame({
                "index": extra, "review": [q.status[i] for i in extra],
                "review_rank": -1, "review_score": np.nan})], ignore_index=True)
        old = layer.features
        if old is not None and len(old) and ("label" in old or "index" in old):
            keep = old.drop(columns=[c for c in ("review", "review_rank", "review_score")
                                     if c in old])
            if "index" not in keep:  # napari maps rows to labels by an "index" column
                keep = keep.assign(index=keep["label"].to_numpy())
            table = keep.merge(table, on="index", how="outer")
            if "label" in table:  # rows of objects made by edits get their label too
                table["label"] = table["label"].fillna(table["index"]).astype(int)
        layer.features = table
        layer.metadata["review"] = {"summary": q.summary()}
        self._update_review_label()

    def _load_review(self, layer) -> None:
        status = _review_status(layer)
        self.review_label.setText(f"{len(status)} objects reviewed before; rank to continue"
                                  if status else "not ranked")

    # ---------------------------------------------------------------- GeoJSON
    def _geometry(self, layer):
        """Level-0 offset and downsample of ``layer`` against its source image."""
        src = layer.metadata.get("source_image")
        scale = np.asarray(layer.scale[-2:], float)
        translate = np.asarray(layer.translate[-2:], float)
        if src and src in self.viewer.layers:
            image = self.viewer.layers[src]
            base = np.asarray(image.scale[-2:], float)
            offset = (translate - np.asarray(image.translate[-2:], float)) / base
            return tuple(offset), float(scale[0] / base[0])
        return tuple(translate / scale), 1.0

    def export_geojson(self, path) -> bool:
        from ..geojson import export_geojson

        layer = self.layer()
        if layer is None:
            return False
        meta = layer.metadata
        data = layer.data[0] if layer.multiscale else layer.data
        full = tuple(data.shape[-2:])
        offset, downsample = self._geometry(layer)
        region = _view_region(layer) or (0, 0, *full)  # a slide: the objects on screen
        y0, x0, y1, x1 = region
        data = np.asarray(data[y0:y1, x0:x1])
        offset = (offset[0] + y0 * downsample, offset[1] + x0 * downsample)
        names = meta.get("class_names") or []
        try:
            classes, names, colours = _classification(self.viewer, layer, full, names)
            if classes is not None:
                classes = np.asarray(classes[y0:y1, x0:x1])
            table = layer.features if layer.features is not None and \
                ("index" in layer.features or "label" in layer.features) else None
            px = meta.get("pixel_size_um")
            export_geojson(data, path, overwrite=True,  # the save dialog asked already
                           classes=classes, class_names=names, class_colours=colours,
                           pixel_size_um=px / downsample if px else None, offset=offset,
                           downsample=downsample, table=table)
        except (GlandsegError, OSError) as exc:
            notify("error", f"cannot export {path}: {exc}")
            return False
        notify("info", f"wrote {int(len(np.unique(data)) - 1)} objects to {path}")
        return True

    def import_geojson(self, path):
        """Add the GeoJSON's polygons as a new Labels layer (role ``truth``) over the chosen
        labels' (or image's) grid."""
        from ..geojson import geojson_to_labels

        like = self.layer(quiet=True)
        name = self.image_box.currentText()
        if like is None and name in self.viewer.layers:
            like = self.viewer.layers[name]
        if like is None:
            notify("error", "open the image the annotations belong to first")
            return None
        data = like.data[0] if like.multiscale else like.data
        shape = tuple(data.shape[:2]) if getattr(like, "rgb", False) else \
            tuple(data.shape[-2:])
        offset, downsample = self._geometry(like)
        try:
            out = geojson_to_labels(path, shape, offset=offset, downsample=downsample)
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        import pandas as pd

        ids = sorted(out.class_of)
        features = pd.DataFrame({"index": ids, "class": [out.class_of[i] for i in ids],
                                 "review": [out.review.get(i, "") for i in ids]})
        src = like.metadata.get("source_image") or like.name
        layer = self.viewer.add_labels(
            out.labels, name=unique_name(self.viewer, f"{Path(path).stem} [GeoJSON]"),
            scale=like.scale[-2:], translate=like.translate[-2:], units=like.units[-2:],
            features=features,
            metadata={"glandseg_role": "truth", "source_image": src,
                      "source_path": str(path), "class_colours": out.colours,
                      "pixel_size_um": like.metadata.get("pixel_size_um")})
        skipped = f" ({out.skipped} without a polygon skipped)" if out.skipped else ""
        notify("info", f"imported {len(ids)} objects from {path}{skipped}")
        return layer

    def _choose_export(self) -> None:
        layer = self.layer()
        if layer is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export objects as GeoJSON",
                                              f"{layer.name}_objects.geojson",
                                              "GeoJSON (*.geojson *.json)")
        if path:
            self.export_geojson(path)

    def _choose_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import GeoJSON annotations", "",
                                              "GeoJSON (*.geojson *.json)")
        if path:
            self.import_geojson(path)


def _unwrap(obj):
    """The layer itself: npe2 hands widgets a proxy viewer whose layers are new proxies on
    every access, so identity is checked on the wrapped objects."""
    return getattr(obj, "__wrapped__", obj)


def _review_status(layer) -> dict:
    f = layer.features
    if f is None or "review" not in f or "index" not in f:
        return {}
    return {int(i): s for i, s in zip(f["index"], f["review"], strict=True)
            if isinstance(s, str) and s}


#: Layers with more pixels than this (slides) are ranked and exported where they are on screen.
REGION_PIXELS = 4096 * 4096


def _view_region(layer):
    """The level-0 box on screen when the layer is larger than REGION_PIXELS, else None."""
    data = layer.data[0] if layer.multiscale else layer.data
    if data.shape[-2] * data.shape[-1] <= REGION_PIXELS:
        return None
    (y0, x0), (y1, x1) = np.asarray(layer.corner_pixels, float)[:, -2:]
    f = np.ones(2)
    if layer.multiscale:
        f = np.asarray(layer.downsample_factors[layer.data_level], float)[-2:]
    h, w = data.shape[-2:]
    return (int(y0 * f[0]), int(x0 * f[1]), min(int((y1 + 1) * f[0]), h),
            min(int((x1 + 1) * f[1]), w))


def _classification(viewer, layer, shape, names):
    """Class map, names and colours for the export: a semantic model's prediction layer of
    the same image gives each object its class; otherwise one class named after the model."""
    meta = layer.metadata
    semantic = len(names) > 2 and "boundary" not in [n.lower() for n in names]
    if semantic:
        for la in viewer.layers:
            m = la.metadata
            if m.get("glandseg_role") == "prediction" and m.get("model") == meta.get("model") \
                    and m.get("source_image") == meta.get("source_image") and \
                    tuple(la.data.shape[-2:]) == tuple(shape) and not la.multiscale:
                colours = meta.get("class_colours") or None
                return la.data, names, colours
    name = meta.get("model") or (names[1] if len(names) > 1 else "Object")
    return None, ["background", name], None
