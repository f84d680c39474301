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
from .inference import _cpu_has_bf16, _norm_stats, _normalise
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


@dataclass
class TrainingPair:
    """An image ``(Y, X[, C])`` and its mask ``(Y, X)`` of the same height and width."""

    image: np.ndarray
    mask: np.ndarray
    name: str = ""

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
    val_patches : int
        Fixed validation patches (seeded) per epoch.
    patience : int
        Stop after this many epochs without a better validation Dice (0: never).
    mixed_precision : bool
        bf16/fp16 autocast on a GPU, bf16 on a CPU with native bf16 (weights stay fp32).
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
    stain_normalization: StainNorm = StainNorm.NONE
    stain_reference: str | None = None
    val_patches: int = 16
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    mixed_precision: bool = True
    description: str = ""
    training_data: str = ""
    data_licence: str = ""
    licence: str = ""
    postprocess: dict = field(default_factory=dict)

    def __post_init__(self):
        self.loss = as_enum(Loss, self.loss, "loss")
        self.target = as_enum(Target, self.target, "target")
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
        if not 0 <= self.foreground_fraction <= 1:
            raise GlandsegError(f"foreground_fraction must be in [0, 1], got "
                                f"{self.foreground_fraction!r}")


@dataclass
class TrainResult:
    model: Model
    checkpoint: Path | None
    history: list
    best_epoch: int
    best_dice: float
    stopped_early: bool = False


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
    find_pairs`), keeping those whose split (from ``split_csv``) is in ``splits``."""
    split = read_split(split_csv) if split_csv else None
    pairs = []
    for p in find_pairs(folder, mask_folder):
        if p.mask is None or (split is not None and split.get(p.name) not in splits):
            continue
        image, mask = read_pair(p)
        pairs.append(TrainingPair(image.data, mask.data, p.name))
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
    return ([TrainingPair(p.image[:cut], p.mask[:cut], f"{p.name} (top)")],
            [TrainingPair(p.image[cut:], p.mask[cut:], f"{p.name} (bottom)")])


def validation_report(model: Model, pairs: list[TrainingPair], tile_size: int = 256):
    """Segment each validation image in full and score it: rows of name, Dice, IoU,
    accuracy, and the predicted labels (foreground for binary/boundary models)."""
    from .inference import segment
    from .metrics import pixel_metrics

    rows = []
    for p in pairs:
        res = segment(p.image, model, tile_size=tile_size, return_probabilities=False)
        pred = np.asarray(res.labels)
        truth = p.mask
        classes = None
        if model.card.num_classes > 1 and not model.card.boundary_class:
            classes = model.card.num_classes
        m = pixel_metrics(pred, truth, classes)
        rows.append({"name": p.name, "dice": m["dice"], "iou": m["iou"],
                     "accuracy": m["accuracy"], "labels": pred})
    return rows


def make_target(mask: np.ndarray, target: Target, num_classes: int) -> np.ndarray:
    """The per-pixel training target: 0/1 for binary, 0..K-1 for classes, and
    0 background / 1 interior / 2 boundary (2-px inner boundary of each instance)."""
    if target is Target.BOUNDARY:
        from skimage.segmentation import find_boundaries

        from .metrics import as_instances

        inst = as_instances(mask)
        out = (inst > 0).astype(np.uint8)
        edge = find_boundaries(inst, mode="inner")
        from scipy.ndimage import binary_dilation

        edge = binary_dilation(edge) & (inst > 0)
        out[edge] = 2
        return out
    if num_classes == 1:
        return (mask > 0).astype(np.uint8)
    if mask.max() >= num_classes:
        raise GlandsegError(f"mask has label {int(mask.max())} but the model has "
                            f"{num_classes} classes")
    return mask.astype(np.uint8)


class PatchSampler:
    """Random patches from pairs, centred on foreground with ``foreground_fraction``."""

    def __init__(self, pairs, targets, params: TrainParams, normalization: str, rng):
        self.pairs, self.targets, self.p, self.norm, self.rng = pairs, targets, params, \
            normalization, rng
        self.fg = [np.flatnonzero(t > 0) for t in targets]
        areas = np.array([t.size for t in targets], float)
        self.weights = areas / areas.sum()
        # whole-image statistics, as inference uses (None for fixed normalisations)
        self.stats = [_norm_stats(p.image, (0, 0, *p.image.shape[:2]), normalization)
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
        x = _normalise(img, self.norm, self.stats[i])
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

        return fit_macenko(read_image(reference).data).to_card(Path(reference).name)
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
        out.append(TrainingPair(image, p.mask, p.name))
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
    zoom = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
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
    x = x * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)  # contrast, brightness
    x = np.clip(x, 0, 1) ** np.exp(rng.uniform(-0.2, 0.2))  # gamma
    x = x * top
    if np.issubdtype(dtype, np.integer):
        x = np.round(x)
    return np.ascontiguousarray(x.astype(dtype)), np.ascontiguousarray(tgt)


def _stain_jitter(x, sigma, rng):
    """H&E stain augmentation (Tellez et al. 2018): scale and shift each HED channel."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(x, 1e-6, 1))
    hed = hed * rng.uniform(1 - sigma, 1 + sigma, 3) + rng.uniform(-sigma, sigma, 3) * 0.05
    return hed2rgb(hed)


# --------------------------------------------------------------------------------------------
# losses and encoder freezing


def make_loss(loss: Loss, num_classes: int):
    """The loss module for logits (N, K, H, W) and integer targets (N, H, W)."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

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


_ENCODER_PREFIXES = {
    "base_cnn": ("encoder.",),
    "unet": ("net.conv_0.", "net.down_"),
    "unetpp": ("net.conv_0_0.", "net.conv_1_0.", "net.conv_2_0.", "net.conv_3_0.",
               "net.conv_4_0."),
    "linknet34": ("encoder.",),
    "deeplabv3plus": ("encoder.",),
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
                     boundary_class=params.target is Target.BOUNDARY)
    return card, build_from_card(card)


def iter_train(train_pairs, val_pairs, params: TrainParams | None = None, resume=None,
               **kwargs):
    """Train or fine-tune, yielding :class:`~napari_glandseg.progress.Progress`.

    Yields one record per step (``metrics={"loss": ...}``) and one per epoch
    (``metrics`` with ``train_loss, val_loss, val_dice, val_iou, val_accuracy, lr,
    checkpoint``). Returns a :class:`TrainResult`.

    Parameters
    ----------
    train_pairs, val_pairs : list of TrainingPair
        Validation pairs may be the training ones when there are too few images (say so).
    params : TrainParams
    resume : str or Path, optional
        A training state (``<name>.state.pt`` in the store's ``training/`` folder) to go on
        from: same model, optimiser and history, next epoch.

    Raises
    ------
    GlandsegError
        Bad data or settings; or a NaN loss (the last good checkpoint is kept).
    """
    if params is None:
        params = TrainParams(**kwargs)
    elif kwargs:
        from dataclasses import replace

        params = replace(params, **kwargs)
    train_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in train_pairs]
    val_pairs = [p if isinstance(p, TrainingPair) else TrainingPair(*p) for p in val_pairs]
    if not train_pairs or not val_pairs:
        raise GlandsegError("training needs at least one training and one validation pair")
    from .models import list_models

    if any(m.name == params.name and m.source == "bundled" for m in list_models()):
        raise GlandsegError(f"{params.name!r} is a bundled model; train under another name "
                            f"(e.g. --name {params.name}-mine)")
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
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
    device = resolve_device(params.device)
    net.to(device)
    if params.freeze_encoder:
        freeze_encoder(net, card.architecture)
    target_kind = Target.BOUNDARY if card.boundary_class else params.target
    tr_targets = [make_target(p.mask, target_kind, card.num_classes) for p in train_pairs]
    va_targets = [make_target(p.mask, target_kind, card.num_classes) for p in val_pairs]
    sampler = PatchSampler(train_pairs, tr_targets, params, card.normalization, rng)
    val_sampler = PatchSampler(val_pairs, va_targets, params, card.normalization,
                               np.random.default_rng(params.seed + 1))
    val_set = [val_sampler.sample(augment=False) for _ in range(params.val_patches)]
    loss_fn = make_loss(params.loss, card.num_classes)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(trainable, lr=params.lr, weight_decay=params.weight_decay)
    total_steps = params.epochs * params.steps_per_epoch

    def lr_at(step):
        if params.schedule == "constant":
            return params.lr
        warm = params.steps_per_epoch
        if step < warm:
            return params.lr * (step + 1) / warm
        t = (step - warm) / max(1, total_steps - warm)
        return params.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    amp = None
    if params.mixed_precision and device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif params.mixed_precision and device.type == "cpu" and _cpu_has_bf16():
        amp = torch.bfloat16  # 2.9x faster steps with channels-last on this project's CPU
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    net.to(memory_format=torch.channels_last)

    store = user_dir()
    ckpt_path = store / f"{params.name}.safetensors"
    state_path = store / "training" / f"{params.name}.state.pt"
    history, start_epoch, best, best_epoch, bad_epochs = [], 0, -1.0, -1, 0
    if resume:
        st = _load_state(resume)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        history, start_epoch = st["history"], int(st["epoch"]) + 1
        best, best_epoch = float(st["best"]), int(st["best_epoch"])
        rng = np.random.default_rng(params.seed + start_epoch)
        sampler.rng = rng
    saved = ckpt_path if best_epoch >= 0 and ckpt_path.exists() else None
    t0 = time.perf_counter()
    step = start_epoch * params.steps_per_epoch
    stopped_early = False
    data_desc = params.training_data or ", ".join(p.name for p in train_pairs[:5]) + (
        f" (+{len(train_pairs) - 5} more)" if len(train_pairs) > 5 else "")

    for epoch in range(start_epoch, params.epochs):
        net.train()
        losses = []
        for _ in range(params.steps_per_epoch):
            batch = [sampler.sample(params.augment) for _ in range(params.batch_size)]
            x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device).contiguous(
                memory_format=torch.channels_last)
            y = torch.from_numpy(np.stack([b[1] for b in batch]).astype(np.int64)).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            if amp is not None:
                with torch.autocast(device.type, dtype=amp):
                    logits = net(x)
                loss = loss_fn(logits.float(), y)
            else:
                loss = loss_fn(net(x), y)
            if not torch.isfinite(loss):
                kept = f"the best checkpoint {saved} is kept" if saved else \
                    "no checkpoint was saved yet"
                raise GlandsegError(
                    f"training stopped: the loss became {loss.item()} at epoch {epoch + 1}, "
                    f"step {step + 1}; {kept}. Lower the learning rate (now {params.lr:g}).")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            step += 1
            losses.append(loss.item())
            yield Progress(step, total_steps, f"epoch {epoch + 1}/{params.epochs}",
                           time.perf_counter() - t0, {"loss": losses[-1]})
        val = _validate(net, val_set, loss_fn, device, card.num_classes)
        improved = val["val_dice"] > best
        if improved:
            best, best_epoch, bad_epochs = val["val_dice"], epoch, 0
            card.metrics = {"val_dice": val["val_dice"], "val_iou": val["val_iou"],
                            "val_accuracy": val["val_accuracy"], "epoch": epoch + 1}
            card.training = {**_settings(params), "train_pairs": len(train_pairs),
                             "val_pairs": len(val_pairs)}
            card.training_data = data_desc
            card.data_licence = params.data_licence or card.data_licence
            card.licence = params.licence or card.licence
            card.description = params.description or card.description
            card.postprocess = params.postprocess or card.postprocess
            saved = save_checkpoint(ckpt_path, net, card, overwrite=True)
        else:
            bad_epochs += 1
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **val,
                  "lr": lr_at(step - 1), "seconds": time.perf_counter() - t0,
                  "checkpoint": str(saved) if saved else None, "best": improved}
        history.append(record)
        _save_state(state_path, net, opt, history, epoch, best, best_epoch)
        yield Progress(step, total_steps, f"epoch {epoch + 1}: val Dice {val['val_dice']:.3f}",
                       time.perf_counter() - t0, dict(record))
        if params.patience and bad_epochs >= params.patience:
            stopped_early = True
            break

    net.eval()
    best_model = load_model(saved) if saved else Model(net, card)
    return TrainResult(best_model, saved, history, best_epoch + 1, best, stopped_early)


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
        pred = (logits[:, 0] > 0).long() if num_classes == 1 else logits.argmax(1)
        for c in classes:
            pc, tc = pred == c, y == c
            tp += int((pc & tc).sum())
            fp += int((pc & ~tc).sum())
            fn += int((~pc & tc).sum())
        correct += int((pred == y).sum())
        n += y.numel()
    return {"val_loss": float(np.mean(losses)),
            "val_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "val_iou": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
            "val_accuracy": correct / n if n else 1.0}


def _save_state(path: Path, net, opt, history, epoch, best, best_epoch) -> None:
    with atomic_path(path) as tmp:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "history": history,
                    "epoch": epoch, "best": best, "best_epoch": best_epoch}, tmp)


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
