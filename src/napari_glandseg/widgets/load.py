"""Load widget: open images, masks and datasets of image/mask pairs, and step through them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
from ..io import (
    CORRECTED_FOLDER,
    IMAGE_FOLDERS,
    IMAGE_SUFFIXES,
    MASK_FOLDERS,
    MASK_NAME_SUFFIXES,
    Pair,
    find_pairs,
    read_image,
    read_pair,
    write_labels,
)
from ..labels import paste_labels
from ._common import notify, speak_micrometres, track_edits
from ._focus import focus_for
from ._placement import image_under, level_data, level_of, offset_in
from ._state import selection_for, set_dataset

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
        self.mask_folder.setToolTip("Which folder holds the masks in an images/ + masks/ layout; "
                                    "auto: instances/ (one label per object) when there is "
                                    "one, else masks/, labels/, ...")
        self.as_masks = QCheckBox("Open chosen files as masks")
        self.pair_list = QListWidget()
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.save_btn = QPushButton("Save corrections")
        self.save_btn.setToolTip(
            "Write every edited Labels layer beside its image, as the mask Load and "
            "`glandseg train` read (images/x.png -> masks/x.png), or into a chosen folder")
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
        layout.addWidget(self.save_btn)
        layout.addWidget(self.status)

        self.open_files_btn.clicked.connect(self._choose_files)
        self.open_folder_btn.clicked.connect(self._choose_folder)
        self.pair_list.currentRowChanged.connect(self._row_changed)
        self.prev_btn.clicked.connect(self.previous)
        self.next_btn.clicked.connect(self.next)
        self.save_btn.clicked.connect(self._save_clicked)
        selection_for(self.viewer).changed.connect(self._model_changed)
        self._update_nav()

    # ---------------------------------------------------------------- actions a script can call
    def open_files(self, paths, as_masks: bool | None = None) -> list:
        """Add each file as a layer (masks as Labels); bad files are reported and skipped."""
        if as_masks is None and self.as_masks.isChecked():
            as_masks = True
        added = []
        read = []
        for path in paths:
            try:
                read.append(read_image(path, as_labels=as_masks))
            except GlandsegError as exc:
                notify("error", str(exc))
        # images first, so that each mask can be checked against its image
        for img in sorted(read, key=lambda i: i.kind == "labels"):
            if img.kind == "labels":
                image = self._image_for_mask(img)
                if image is not None:
                    shape = image.data[0].shape if image.multiscale else image.data.shape
                    shape = tuple(shape[:-1] if image.rgb else shape)[-2:]
                    if tuple(img.shape[-2:]) != shape:
                        notify("error", f"mask {img.path.name} has shape {tuple(img.shape)} "
                               f"but image {image.name!r} has shape {shape}: not loaded")
                        continue
                added.append(self._add(img, truth=True, image=image))
            else:
                added.append(self._add(img, truth=False))
        if added:
            self.status.setText(f"opened {len(added)} file(s): "
                                + ", ".join(la.name for la in added))
        return added

    def open_dataset(self, folder) -> list[Pair]:
        """List the image/mask pairs in ``folder`` and show the first."""
        choice = self.mask_folder.currentText()
        try:
            pairs = find_pairs(folder, _auto_mask_folder(folder) if choice == AUTO else choice)
        except GlandsegError as exc:
            notify("error", str(exc))
            return []
        self.pairs = pairs
        set_dataset(self.viewer, pairs)
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
        kept = self._kept_for(pair.image)
        if kept:  # back on an image whose edits were kept: show the image and the edits
            for layer in kept:  # (its other layers stay in the list, hidden)
                layer.visible = layer is kept[0] or bool(layer.metadata.get("edited"))
            self._shown.extend(kept)
            if not any(la.metadata.get("glandseg_role") == "truth" for la in kept) and \
                    truth is not None:
                added = self._add(truth, truth=True, image=kept[0])
                # under a correction the truth would mix its colours in: there, hidden
                added.visible = not any(la.metadata.get("edited") for la in kept[1:])
                self._shown.append(added)
        else:
            image_layer = self._add(image, truth=False)
            self._shown.append(image_layer)
            if truth is not None:
                self._shown.append(self._add(truth, truth=True, image=image_layer,
                                             name=image.name + TRUTH_SUFFIX))
        self.viewer.reset_view()
        self.pair_list.blockSignals(True)
        self.pair_list.setCurrentRow(index)
        self.pair_list.blockSignals(False)
        self.status.setText(
            f"{index + 1} / {len(self.pairs)}: {pair.image.name}"
            + (f" + mask {pair.mask.parent.name}/{pair.mask.name}" if pair.mask
               else " (no mask)")
        )
        self._update_nav()
        image_layer = next((la for la in self._shown
                            if la.metadata.get("glandseg_role") == "image"), None)
        if image_layer is not None:  # every widget follows the image on show
            focus_for(self.viewer).set(image_layer)

    def next(self) -> None:
        self.show_pair(self.index + 1)

    def unsaved(self) -> list:
        """Labels layers edited by hand since they were last saved."""
        from napari.layers import Labels

        return [la for la in self.viewer.layers
                if isinstance(la, Labels) and la.metadata.get("unsaved")]

    def save_corrections(self, folder=None, overwrite: bool = False) -> list[Path]:
        """Write each edited Labels layer as the mask of its image; returns the files written.

        Without ``folder`` a mask goes where Load and ``glandseg train`` look for it: the
        file it was read from, else the image's existing mask (the one Load shows), else
        ``<dataset>/masks/<image stem>.tif`` for an image in ``<dataset>/images/``, else
        ``<image stem>_mask.tif`` beside the image. It is always a mask of the whole image:
        a region's labels (a Segment ROI or field of view) are pasted where they lie into
        the existing mask (its objects outside the region, or outside the ROI's polygons,
        are kept), or into an empty one (the rest is then background, and you are told).
        A region of a slide needs a folder (a whole-slide mask is not written).

        With ``folder`` the pair is written as ``folder/images/<stem>.png`` and
        ``folder/masks/<stem>.tif``; a region as the pixels under it and its labels,
        ``<stem>_<row>_<column>`` (its full-resolution corner). An existing mask is
        replaced (or pasted into) only with ``overwrite``.
        """
        layers = self.unsaved()
        if not layers:
            notify("info", "no edited labels to save")
            return []
        written = []
        for layer in layers:
            try:
                written.extend(self._save_one(layer, folder, overwrite))
            except (GlandsegError, OSError) as exc:
                notify("error", f"{layer.name}: {exc}")
        if written:
            notify("info", f"saved {len(written)} file(s): " + ", ".join(str(p) for p in written))
        return written

    def previous(self) -> None:
        self.show_pair(self.index - 1)

    # ---------------------------------------------------------------- internals
    def _model_changed(self, selection) -> None:
        """Truths already open take a newly chosen class-map model's colours, as they would
        have had if opened under it."""
        for layer in self.viewer.layers:
            _colour_as_classes(layer, selection.model)

    def _add(self, img, truth: bool, name: str | None = None, image=None):
        data, kwargs, kind = img.to_layer_data(name=name)
        if truth and name is None:
            kwargs["name"] = (image.name if image is not None else img.name) + TRUTH_SUFFIX
        kwargs["metadata"]["glandseg_role"] = "truth" if truth else "image"
        if image is not None:  # the image this mask belongs to (pairs, Save corrections)
            kwargs["metadata"]["source_image"] = image.name
            kwargs["metadata"]["image_path"] = image.metadata.get("source_path")
            if "pixel_size_um" in image.metadata and "scale" not in kwargs:
                px = image.metadata["pixel_size_um"]
                kwargs["scale"] = (px, px)
                kwargs["metadata"]["pixel_size_um"] = px
        if kind == "labels":
            layer = self.viewer.add_labels(data, **kwargs)
            _colour_as_classes(layer, selection_for(self.viewer).model)
            track_edits(layer)
        else:
            layer = self.viewer.add_image(data, **kwargs)
            if "scale" in kwargs:
                self._show_scale_bar()
        return layer

    def _show_scale_bar(self) -> None:
        """A scale bar in micrometres the first time an image of known pixel size opens (a
        pathologist judges size on a slide by it); hidden again by the user, it stays so."""
        if getattr(self, "_scale_bar_shown", False):
            return
        self._scale_bar_shown = True
        speak_micrometres(self.viewer)
        self.viewer.scale_bar.visible = True

    def _clear_shown(self) -> None:
        """Take the pair on show off screen, with the layers made from it (predictions,
        objects, maps, compare overlays). Edited layers are kept, hidden, with their image
        (so Fine-tune can still pair them) until saved; nothing edited is dropped."""
        names = {la.name for la in self._shown}
        derived = [la for la in self.viewer.layers
                   if la not in self._shown and (la.metadata.get("source_image") in names
                                                 or la.name.startswith("compare "))]
        family = [la for la in [*self._shown, *derived] if la in self.viewer.layers]
        keep = [la for la in family if la.metadata.get("edited")]
        if keep:
            image = next((la for la in self._shown if la.metadata.get("glandseg_role") ==
                          "image"), None)
            if image is not None and image not in keep:
                keep.insert(0, image)
            unsaved = [la.name for la in keep if la.metadata.get("unsaved")]
            if unsaved:
                notify("warning", "kept your edited layer(s) " + ", ".join(map(repr, unsaved))
                       + " (hidden): press Save corrections to write them")
        for layer in family:
            if layer in keep:
                layer.visible = False
            else:
                self.viewer.layers.remove(layer)
        self._shown = []

    def _kept_for(self, image_path) -> list:
        """Kept (hidden) layers of the image read from ``image_path``, image first."""
        image = next((la for la in self.viewer.layers
                      if la.metadata.get("glandseg_role") == "image"
                      and la.metadata.get("source_path") == str(image_path)), None)
        if image is None:
            return []
        return [image] + [la for la in self.viewer.layers
                          if la.metadata.get("source_image") == image.name]

    def _image_for_mask(self, mask):
        """The open image a mask file belongs to: same stem (less a mask ending), else the
        only image layer, else None."""
        from napari.layers import Image

        images = [la for la in self.viewer.layers if isinstance(la, Image)]
        stem = mask.name
        for s in MASK_NAME_SUFFIXES:
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        same = [la for la in images if la.name == stem]
        if same:
            return same[-1]
        return images[0] if len(images) == 1 else None

    def _save_one(self, layer, folder, overwrite) -> list[Path]:
        image_name = layer.metadata.get("source_image")
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        image_path = layer.metadata.get("image_path") or (
            image.metadata.get("source_path") if image is not None else None)
        data = layer.data[0] if layer.multiscale else layer.data
        region = _region_of(layer, image)
        if folder is not None:
            written = self._save_pair(layer, image, image_path, data, region, Path(folder),
                                      overwrite)
        elif image_path is None:
            raise GlandsegError("its image has no file: choose a folder to save into")
        else:
            dest = self.mask_path(layer)
            if dest.exists() and not overwrite:
                raise GlandsegError(f"{dest} exists; confirm replacing it, or save into a "
                                    "folder")
            px = layer.metadata.get("pixel_size_um")
            if region is None:
                labels = np.asarray(data)
            else:
                base = dest if dest.exists() else self._existing_mask(Path(image_path))
                labels = self._pasted(layer, image, data, region, base, dest)
                px = image.metadata.get("pixel_size_um") or px
            dest.parent.mkdir(parents=True, exist_ok=True)
            written = [write_labels(dest, labels, overwrite=True, pixel_size_um=px)]
        layer.metadata["unsaved"] = False
        layer.metadata["saved_path"] = str(written[-1])
        return written

    def _pasted(self, layer, image, data, region, base, dest):
        """A region's labels pasted into the whole image's mask ``base`` (the file being
        replaced, else the image's truth: read, never written), or into an empty one."""
        level, offset, shape = region
        full_shape = tuple(level_data(image, 0).shape[:2])
        if level != 0 or image.multiscale:
            raise GlandsegError(
                f"it covers a region of {image.name!r}, whose full-size mask "
                f"({full_shape[0]} x {full_shape[1]} px) is not written beside the slide: "
                "choose a folder (the region and the image under it are saved there as a "
                "pair)")
        if base is not None and Path(base).exists():
            full = np.asarray(read_image(base, as_labels=True).data)
            if full.shape != full_shape:
                raise GlandsegError(f"{base} has shape {full.shape}, not its image's "
                                    f"{full_shape}: choose a folder to save into")
        else:
            full = np.zeros(full_shape, np.uint8)
            notify("warning", f"{image.name}: no mask existed, so outside the region of "
                   f"{layer.name!r} the new mask {dest.name} is background (no objects); "
                   "correct the whole image before training on it, or save into a folder "
                   "(the region alone becomes a pair)")
        return paste_labels(full, np.asarray(data), offset, _inside(layer, image, region))

    def _save_pair(self, layer, image, image_path, data, region, folder, overwrite):
        """``folder/images/<stem>.png`` and ``folder/masks/<stem>.tif``: the image (the
        pixels under a region) and the labels."""
        import imageio.v3 as iio

        from .._files import atomic_path

        stem = Path(image_path).stem if image_path else (image.name if image is not None
                                                         else layer.name)
        data = np.asarray(data)
        pixels = None
        if region is not None:
            corner = offset_in(image, layer, 0)
            stem = f"{stem}_{corner[0]}_{corner[1]}"
            pixels = image_under(image, layer, (0, 0), data.shape)
            data = np.where(_inside(layer, image, region), data, 0)
        elif image is not None and not image.multiscale:
            pixels = np.asarray(image.data)
        dest = folder / "masks" / f"{stem}.tif"
        if dest.exists() and not overwrite:
            raise GlandsegError(f"{dest} exists; confirm replacing it, or choose another "
                                "folder")
        written = []
        img_dest = folder / "images" / f"{stem}.png"
        if pixels is not None and not img_dest.exists():
            img_dest.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(img_dest, ".png") as tmp:
                iio.imwrite(tmp, pixels, extension=".png")
            written.append(img_dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_labels(dest, data, overwrite=True,
                                    pixel_size_um=layer.metadata.get("pixel_size_um")))
        return written

    def mask_path(self, layer) -> Path | None:
        """Where Save corrections writes ``layer`` without a folder (None: it needs one).

        A truth layer goes back to the file it was read from (else the image's mask). A
        corrected result (objects, class map) never replaces the truth by default: it goes
        to ``corrected/<image stem>.tif`` beside ``images/`` (or beside the image), which
        Load's Masks folder ``corrected`` and ``glandseg train --mask-folder corrected``
        read; a pathologist replaces the truth only by saving into its folder on purpose.
        """
        image_path = layer.metadata.get("image_path") or self._image_path_of(layer)
        if not image_path:
            return None
        image_path = Path(image_path)
        root = image_path.parent.parent if image_path.parent.name.lower() in IMAGE_FOLDERS \
            else image_path.parent
        if layer.metadata.get("glandseg_role") != "truth":
            return root / CORRECTED_FOLDER / f"{image_path.stem}.tif"
        src = layer.metadata.get("source_path")
        if src and Path(src) != image_path:
            return Path(src)  # the file it was read from
        existing = self._existing_mask(image_path)
        if existing is not None:  # the mask Load shows with this image (and train reads)
            return existing
        if image_path.parent.name.lower() in IMAGE_FOLDERS:
            return root / "masks" / f"{image_path.stem}.tif"
        return image_path.with_name(f"{image_path.stem}_mask.tif")

    def _existing_mask(self, image_path: Path) -> Path | None:
        """The mask file Load pairs with ``image_path`` in its folder, if any."""
        root = image_path.parent.parent if image_path.parent.name.lower() in IMAGE_FOLDERS \
            else image_path.parent
        choice = self.mask_folder.currentText()
        try:
            pairs = find_pairs(root, _auto_mask_folder(root) if choice == AUTO else choice)
        except (GlandsegError, OSError):
            return None
        target = image_path.resolve()
        return next((p.mask for p in pairs
                     if p.mask is not None and p.image.resolve() == target), None)

    def _needs_folder(self, layer) -> bool:
        """Whether ``layer`` can only be saved into a chosen folder: its image has no file,
        or it is a region of a slide (no whole-slide mask is written)."""
        if self.mask_path(layer) is None:
            return True
        name = layer.metadata.get("source_image")
        image = self.viewer.layers[name] if name in self.viewer.layers else None
        region = _region_of(layer, image)
        return region is not None and (region[0] != 0 or image.multiscale)

    def _save_clicked(self) -> None:
        from qtpy.QtWidgets import QMessageBox

        layers = self.unsaved()
        if not layers:
            notify("info", "no edited labels to save")
            return
        folder = None
        if any(self._needs_folder(la) for la in layers):
            folder = QFileDialog.getExistingDirectory(self, "Save corrections into folder")
            if not folder:
                return
        targets = [] if folder else [self.mask_path(la) for la in layers]
        existing = [t for t in targets if t.exists()]
        overwrite = False
        if existing:
            answer = QMessageBox.question(
                self, "Replace masks?",
                "Replace these masks with your corrections (a region's corrections replace "
                "only that region)?\n"
                + "\n".join(str(t) for t in existing)
                + "\n\nNo: choose another folder instead.")
            if answer == QMessageBox.StandardButton.Yes:
                overwrite = True
            else:
                folder = QFileDialog.getExistingDirectory(self, "Save corrections into folder")
                if not folder:
                    return
        self.save_corrections(folder or None, overwrite=overwrite)

    def _image_path_of(self, layer):
        name = layer.metadata.get("source_image")
        if name in self.viewer.layers:
            return self.viewer.layers[name].metadata.get("source_path")
        return None

    def _row_changed(self, row: int) -> None:
        if row != self.index:
            self.show_pair(row)

    def _update_nav(self) -> None:
        self.prev_btn.setEnabled(self.index > 0)
        self.next_btn.setEnabled(0 <= self.index < len(self.pairs) - 1)

    def _choose_files(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open images", "",
            file_filter(),
        )
        if paths:
            self.open_files(paths)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open dataset folder")
        if folder:
            self.open_dataset(Path(folder))


def file_filter() -> str:
    """The Open dialog's filter: every file type :func:`~napari_glandseg.io.read_image` reads
    (whole-slide formats included), from the list it reads them by."""
    return f"Images ({' '.join('*' + s for s in IMAGE_SUFFIXES)});;All files (*)"


def _region_of(layer, image):
    """None when ``layer`` covers its whole image at full resolution (or cannot be placed
    on it); else ``(level, offset, shape)``: the image's pyramid level at the layer's pixel
    size, where the layer's corner lies on it, and the layer's height and width."""
    if image is None:
        return None
    level = level_of(image, layer)
    if level is None:
        return None
    data = layer.data[0] if layer.multiscale else layer.data
    offset, shape = offset_in(image, layer, level), tuple(np.shape(data)[-2:])
    if level == 0 and not offset.any() and shape == tuple(level_data(image, 0).shape[:2]):
        return None
    return level, offset, shape


def _inside(layer, image, region) -> np.ndarray | None:
    """Where in a region's labels the ROI's polygons lie (Segment masks its result to
    them; outside, nothing was looked at); None (everywhere) without polygons."""
    polygons = layer.metadata.get("roi_polygons")
    if not polygons:
        return None
    from skimage.draw import polygon2mask

    level, offset, shape = region
    f = np.asarray(image.downsample_factors)[level, -2:] if image.multiscale else 1.0
    corner = offset * f  # the region's corner in full-resolution pixels
    inside = np.zeros(shape, bool)
    for poly in polygons:
        inside |= polygon2mask(shape, (np.asarray(poly, float) - corner) / f)
    return inside


def _auto_mask_folder(folder) -> str | None:
    """Instance labels beat binary masks when a dataset has both folders."""
    root = Path(folder)
    subs = [root] if any((root / n).is_dir() for n in IMAGE_FOLDERS) else \
        [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    subs = [d for d in subs if any((d / n).is_dir() for n in IMAGE_FOLDERS)]
    for name in ("instances", "instances_cc"):
        if subs and all((d / name).is_dir() for d in subs):
            return name
    return None


def _colour_as_classes(layer, model) -> None:
    """A truth in napari's cycling colours whose values fit ``model``'s classes (a class map)
    is drawn in that model's colours, as its predictions are; any other layer, or one whose
    colours are already set, stays as it is."""
    from napari.utils.colormaps import DirectLabelColormap

    if model is not None and layer.metadata.get("glandseg_role") == "truth" and \
            not isinstance(layer.colormap, DirectLabelColormap) and \
            model.card.fits_classes(layer.data):
        layer.colormap = DirectLabelColormap(color_dict=model.card.label_colours())
