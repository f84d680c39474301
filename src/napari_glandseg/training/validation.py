"""Validation scores: fixed patches per epoch, whole validation images segmented as inference
does (the scores checkpoints are selected on)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..enums import Selection  # noqa: F401  (defined with the other modes)
from ..models import Model, ModelCard
from .data import TrainingPair
from .targets import GAP, UNKNOWN_FG

if TYPE_CHECKING:
    from ..postprocessing import PostprocessParams


def iter_validation_rows(model: Model, pairs: list[TrainingPair], tile_size: int = 512,
                         postprocess_params: PostprocessParams | dict | None = None,
                         stain_normalization: bool = True,
                         device: str = "auto") -> Iterator[dict]:
    """Segment each validation image in full, as inference does (at its own pixel size),
    and score it; yields one row per pair. The one owner of "how a model scores on
    validation images": training's checkpoint selection (:func:`validate_images`) and
    Fine-tune's before/after table (:func:`validation_report`) both read these rows.

    A row holds ``name``, the network's ``labels`` (foreground for binary / boundary
    models), their pixel ``dice``, ``iou``, ``accuracy`` and pixel counts ``pixels``
    (tp, fp, fn; foreground classes pooled for class maps; a class map's per class in
    ``class_pixels``), and for models with
    post-processing (the card's, or ``postprocess_params``, as
    :func:`~napari_glandseg.pipeline.postprocess_for` makes them for every route: the
    objects users get) the objects' :func:`~napari_glandseg.metrics.object_scores`;
    ``score`` is the measure the checkpoint is selected on (:func:`selection_score`).
    ``stain_normalization=False`` for pairs that training has already mapped onto the
    card's stains.
    """
    from ..inference import SegmentParams
    from ..metrics import Overlap, _counts, as_instances, object_scores, pixel_metrics
    from ..pipeline import FileParams, objects_from_image, postprocess_for

    card = model.card
    classes = card.num_classes if card.class_map else None
    # the objects users get: the card's post-processing as every route has it
    post = postprocess_for(card, postprocess_params or "card") if not classes else None
    params = FileParams(segment=SegmentParams(
        tile_size=tile_size, return_probabilities=False,
        stain_normalization=stain_normalization, device=device), postprocess=post)
    for p in pairs:
        res = objects_from_image(p.image, model, params, pixel_size_um=p.pixel_size_um,
                                 in_memory=True)
        pred = np.asarray(res.segment.labels)  # the network's classes
        m = pixel_metrics(pred, p.mask, classes)
        pf, tf = pred > 0, p.mask > 0
        hit = pf & (pred == p.mask) if classes else pf & tf  # class maps: the right class
        counts = (int(hit.sum()), int((pf & ~hit).sum()), int((tf & ~hit).sum()))
        row = {"name": p.name, "group": p.group, "dice": m["dice"], "iou": m["iou"],
               "accuracy": m["accuracy"], "pixels": counts, "labels": pred}
        if classes:  # each foreground class's (tp, fp, fn), counted as the metrics count
            row["class_pixels"] = [_counts(pred == c, p.mask == c)[:3]
                                   for c in range(1, classes)]
        if post is not None:
            row.update(object_scores(Overlap.of(as_instances(np.asarray(res.labels)),
                                                as_instances(p.mask))))
        row["score"] = selection_score(row, card)
        yield row


def validation_report(model: Model, pairs: list[TrainingPair], tile_size: int = 256,
                      device: str = "auto") -> list[dict]:
    """Rows of :func:`iter_validation_rows` for each validation image, scored as training
    selects checkpoints (so a before/after comparison judges what training optimised),
    run on ``device``."""
    return list(iter_validation_rows(model, pairs, tile_size, device=device))


def selection_score(row: dict, card: ModelCard) -> float:
    """One image's (or a summary's) score by the measure ``card`` was selected on: objects
    (mean of object F1 and object Dice), object F1, object Dice, AJI or PQ; pixel Dice for
    models without post-processing or cards that do not say."""
    key = str(card.metrics.get("selected_on", "")).removeprefix("val_")
    if key in ("objects", "objects_worst") and "object_f1" in row:
        return (row["object_f1"] + row["object_dice"]) / 2
    if key in ("object_f1", "object_dice", "aji", "pq") and key in row:
        return row[key]
    return row["dice"]


_SELECT_KEY = {Selection.OBJECTS: "val_objects", Selection.OBJECTS_WORST: "val_objects_worst",
               Selection.OBJECT_F1: "val_object_f1",
               Selection.OBJECT_DICE: "val_object_dice", Selection.AJI: "val_aji",
               Selection.PQ: "val_pq", Selection.PIXEL_DICE: "val_image_dice",
               Selection.CLASS_DICE: "val_class_dice"}


@torch.no_grad()
def _validate(net, val_set, loss_fn, device, num_classes) -> dict:
    """Loss and pixel Dice/IoU/accuracy on the fixed validation patches (foreground classes
    pooled for multi-class models)."""
    net.eval()
    tp = fp = fn = correct = n = 0
    losses = []
    classes = [1] if num_classes == 1 else range(1, num_classes)
    for k in range(0, len(val_set), 8):
        chunk = val_set[k:k + 8]
        x = torch.from_numpy(np.stack([c[0] for c in chunk])).to(device)
        y = torch.from_numpy(np.stack([c[1] for c in chunk]).astype(np.int64)).to(device)
        logits = net(x)
        losses.append(float(loss_fn(logits, y)))
        y = torch.where(y == GAP, torch.zeros_like(y), y)  # a gap is background
        pred = (logits[:, 0] > 0).long() if num_classes == 1 else logits.argmax(1)
        known = y != UNKNOWN_FG
        for c in classes:
            pc, tc = pred == c, y == c
            tp += int((pc & tc & known).sum())
            fp += int((pc & ~tc & known).sum())
            fn += int((~pc & tc).sum())
        correct += int(((pred == y) & known).sum())
        n += int(known.sum())
    return {"val_loss": float(np.mean(losses)),
            "val_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "val_iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "val_accuracy": correct / n if n else 1.0}


def validate_images(model: Model, pairs: list[TrainingPair], tile_size: int = 512,
                    postprocess_params: PostprocessParams | dict | None = None) -> dict:
    """Whole-image validation scores of :func:`iter_validation_rows` (pairs already
    stain-normalised by training), aggregated over the images.

    Returns ``val_image_dice`` (foreground Dice pooled over the images; foreground classes
    pooled for class maps); for class maps ``val_dice[CLASS]`` (each foreground class's
    Dice pooled over the images) and ``val_class_dice``, their mean; and for models with
    post-processing ``val_object_f1``,
    ``val_object_dice``, ``val_objects`` (their mean), ``val_aji`` and ``val_pq``
    (:func:`~napari_glandseg.metrics.summarise_objects`); per group of pairs (their
    ``group``) ``val_objects[GROUP]``, ``val_object_f1[GROUP]``, ``val_object_dice[GROUP]``,
    and ``val_objects_worst``, the lowest group's ``objects`` (``val_objects`` without
    groups).
    """
    from ..metrics import summarise_objects

    rows = []
    for row in iter_validation_rows(model, pairs, tile_size, postprocess_params,
                                    stain_normalization=False, device=str(model.device)):
        row.pop("labels")
        rows.append(row)
    tp, fp, fn = (sum(r["pixels"][i] for r in rows) for i in range(3))
    out = {"val_image_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}
    if rows and "class_pixels" in rows[0]:
        names = model.card.class_names
        per = {}
        for i in range(len(rows[0]["class_pixels"])):
            ctp, cfp, cfn = (sum(r["class_pixels"][i][j] for r in rows) for j in range(3))
            if ctp + cfp + cfn:  # a class in neither truth nor prediction is not scored
                name = names[i + 1] if i + 1 < len(names) else str(i + 1)
                per[name] = 2 * ctp / (2 * ctp + cfp + cfn)
        out.update({f"val_dice[{k}]": v for k, v in per.items()})
        out["val_class_dice"] = float(np.mean(list(per.values()))) if per else 1.0
    if rows and "object_f1" in rows[0]:
        s = summarise_objects(rows)
        out.update({f"val_{k}": float(s[k]) for k in
                    ("object_f1", "object_dice", "objects", "aji", "pq")})
        groups = sorted({r["group"] for r in rows if r["group"]})
        worst = out["val_objects"] if not groups else 1.0
        for g in groups:
            sg = summarise_objects([r for r in rows if r["group"] == g])
            out.update({f"val_{k}[{g}]": float(sg[k]) for k in
                        ("objects", "object_f1", "object_dice")})
            worst = min(worst, float(sg["objects"]))
        out["val_objects_worst"] = worst
    return out
