"""Model cards: what a model is, what it expects and how well it does, as plain data.

A card travels inside its checkpoint (safetensors metadata), so a file always says what it is.

Examples
--------
>>> card = ModelCard(name="demo", architecture="unet", in_channels=3, num_classes=1,
...                  class_names=["background", "gland"])
>>> ModelCard.from_json(card.to_json()) == card
True
>>> ModelCard(name="x", architecture="vgg", in_channels=3, num_classes=1)
Traceback (most recent call last):
...
napari_glandseg.errors.GlandsegError: unknown architecture 'vgg'; expected one of base_cnn, ...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from enum import Enum

from ..enums import MAX_LEVELS
from ..errors import GlandsegError, as_enum

CARD_FORMAT = "napari-glandseg/1"


class Architecture(str, Enum):
    """The architectures a card can name (values are what files store)."""

    BASE_CNN = "base_cnn"
    UNET = "unet"
    RESUNET = "resunet"
    LINKNET34 = "linknet34"
    UNETPP = "unetpp"
    DEEPLABV3PLUS = "deeplabv3plus"
    EFFNET_UNET = "effnet_unet"

    @property
    def label(self) -> str:
        return _ARCH_LABELS[self]


_ARCH_LABELS = {
    Architecture.BASE_CNN: "Base CNN",
    Architecture.UNET: "U-Net",
    Architecture.RESUNET: "ResNet U-Net",
    Architecture.LINKNET34: "LinkNet-34",
    Architecture.UNETPP: "UNet++",
    Architecture.DEEPLABV3PLUS: "DeepLabV3+",
    Architecture.EFFNET_UNET: "EfficientNet-Lite U-Net",
}


class Normalization(str, Enum):
    """How pixel values are scaled before the network sees them.

    - ``imagenet``: /255 then per-channel ImageNet mean and std (RGB);
    - ``unit``: divide by the dtype's maximum (255 for uint8), giving 0..1;
    - ``zscore``: per image, per channel, subtract mean and divide by std;
    - ``percentile``: per image, per channel, 1st..99.8th percentile mapped to 0..1.
    """

    IMAGENET = "imagenet"
    UNIT = "unit"
    ZSCORE = "zscore"
    PERCENTILE = "percentile"


DEFAULT_COLOURS = ["#000000", "#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#5ac8fa"]
#: words for the default colours, for legends
COLOUR_NAMES = {"#000000": "black", "#ff3b30": "red", "#34c759": "green", "#007aff": "blue",
                "#ffcc00": "yellow", "#af52de": "purple", "#5ac8fa": "light blue"}


@dataclass
class ModelCard:
    """Everything needed to build, run and judge a model.

    Attributes
    ----------
    name : str
        Store name, e.g. ``"glands-he"``.
    architecture : str
        An :class:`Architecture` value.
    in_channels : int
        1 for grey, 3 for RGB.
    num_classes : int
        Output channels. 1 means binary (sigmoid); more means softmax over classes, 0 being
        background.
    arch_kwargs : dict
        Extra arguments for the architecture (widths, depth, dropout...).
    class_names : list of str
        ``num_classes`` names, or two (background, object) for a binary model.
    class_colours : list of str
        Hex colours, one per class name.
    pixel_size_um : float or None
        The input scale the model was trained at (um/px); None when unknown.
    data_pixel_size_um : float or None
        The scale inference assumes for an image whose pixel size is unknown (a PNG or
        JPEG): that of the training data. None: the image is taken at ``pixel_size_um``.
    normalization : str
        A :class:`Normalization` value.
    stain_normalization : dict
        Empty, or a Macenko reference (``method``, ``stain_matrix``, ``max_concentrations``,
        ``reference``) that inference maps every RGB image onto before normalising it
        (:mod:`napari_glandseg.stain`).
    boundary_class : bool
        Classes are background / interior / boundary, for splitting touching objects.
    levels : int
        0, or L: classes are background and L distance levels of each object (a quantised
        distance map, ``num_classes = L + 1``), for splitting touching objects
        (``split="levels"``).
    scale_reference : dict
        Reference for automatic scale (:mod:`napari_glandseg.autoscale`): ``sigma_px``, the
        median characteristic blob sigma of the training images at the training data's scale
        (``data_pixel_size_um``), its spread and the number of images; empty: no automatic
        scale.
    """

    name: str
    architecture: str
    in_channels: int
    num_classes: int
    arch_kwargs: dict = field(default_factory=dict)
    class_names: list = field(default_factory=list)
    class_colours: list = field(default_factory=list)
    pixel_size_um: float | None = None
    data_pixel_size_um: float | None = None
    normalization: str = Normalization.IMAGENET.value
    stain_normalization: dict = field(default_factory=dict)
    boundary_class: bool = False
    levels: int = 0
    description: str = ""
    training_data: str = ""
    data_licence: str = ""
    licence: str = ""
    metrics: dict = field(default_factory=dict)
    postprocess: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    scale_reference: dict = field(default_factory=dict)
    appearance: dict = field(default_factory=dict)
    version: str = "0.1.0"
    format: str = CARD_FORMAT

    def __post_init__(self):
        _check_field_types(self)
        self.architecture = as_enum(Architecture, self.architecture, "architecture").value
        self.normalization = as_enum(Normalization, self.normalization, "normalization").value
        for attr in ("in_channels", "num_classes"):
            value = getattr(self, attr)
            if not isinstance(value, int) or value < 1:
                raise GlandsegError(f"{attr} must be a positive integer, got {value!r}")
        n_names = 2 if self.num_classes == 1 else self.num_classes
        if not self.class_names:
            self.class_names = (["background", "object"] if self.num_classes == 1
                                else ["background"] + [f"class {i}" for i in range(1, n_names)])
        if len(self.class_names) != n_names:
            raise GlandsegError(
                f"class_names has {len(self.class_names)} names but a model with "
                f"num_classes={self.num_classes} needs {n_names}"
            )
        if not self.class_colours:
            self.class_colours = [DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(n_names)]
        for attr in ("pixel_size_um", "data_pixel_size_um"):
            value = getattr(self, attr)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise GlandsegError(f"{attr} must be a positive number, got {value!r}")
        from ..stain import check_card_entry

        check_card_entry(self.stain_normalization, self.in_channels)

    @property
    def binary(self) -> bool:
        return self.num_classes == 1

    def threshold_unused(self) -> str:
        """Why a probability threshold does nothing for this model, in words ("" for a
        binary model, whose one probability is thresholded; the others take the argmax)."""
        return "" if self.binary else \
            f"not used by {self.name}: its {self.num_classes} classes are taken by argmax"

    def legend(self) -> str:
        """The foreground classes and their colours in words, e.g. ``"large bowel red,
        small bowel green, stomach blue"`` (class 0, background, is not drawn)."""
        return ", ".join(f"{name} {COLOUR_NAMES.get(str(col).lower(), col)}"
                         for name, col in list(zip(self.class_names, self.class_colours,
                                                   strict=False))[1:])

    def label_colours(self) -> dict:
        """A class map's layer colours, ``{class: colour}`` with background clear: what a
        Labels layer of this model's classes is drawn in (its prediction, and a truth of the
        same classes, so that one organ has one colour on both)."""
        colours: dict = {None: "transparent", 0: "transparent"}
        colours.update({i: c for i, c in enumerate(self.class_colours) if i})
        return colours

    def fits_classes(self, labels) -> bool:
        """Whether ``labels`` (an in-memory array) can be a class map of this model's
        classes: a class-map model (more than one foreground class) and no value beyond its
        last class."""
        import numpy as np

        return (self.class_map and self.num_classes > 2 and isinstance(labels, np.ndarray)
                and labels.size > 0 and 0 <= int(labels.min())
                and int(labels.max()) < self.num_classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        if not isinstance(data, dict):
            raise GlandsegError(f"a model card must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GlandsegError(f"model card has unknown fields: {', '.join(unknown)}")
        missing = [k for k in ("name", "architecture", "in_channels", "num_classes")
                   if k not in data]
        if missing:
            raise GlandsegError(f"model card lacks required fields: {', '.join(missing)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GlandsegError(f"model card is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @property
    def class_map(self) -> bool:
        """Whether the labels are semantic classes (kept as classes, objects are their
        connected regions) rather than foreground to split into objects (binary,
        boundary and distance-levels models)."""
        return self.num_classes > 1 and not self.boundary_class and not self.levels

    def summary(self) -> str:
        """A few human-readable lines for the Model widget and ``glandseg models show``."""
        arch = Architecture(self.architecture).label
        lines = [f"{self.name}  ({arch}, v{self.version})"]
        if self.description:
            lines.append(self.description)
        lines.append(f"classes: {', '.join(self.class_names)}"
                     + ("  [background/interior/boundary]" if self.boundary_class else "")
                     + (f"  [background + {self.levels} distance levels]" if self.levels
                        else ""))
        scale = f"{self.pixel_size_um:g} um/px" if self.pixel_size_um else "any"
        lines.append(f"input: {self.in_channels} channel(s), scale {scale}, "
                     f"normalisation {self.normalization}")
        if self.stain_normalization:
            ref = self.stain_normalization.get("reference") or "the training images"
            lines.append(f"stain normalisation: Macenko, onto the stains of {ref}")
        if self.metrics:
            lines.append("metrics: " + "; ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items()))
        if self.training_data:
            lines.append(f"trained on: {self.training_data}")
        if self.data_licence or self.licence:
            weights = self.licence or "?"
            if not weights.lower().startswith("weights"):  # bundled cards already say it
                weights = f"weights {weights}"
            lines.append(f"licence: {weights}; data {self.data_licence or '?'}")
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------------------------
# validation of what a file may say (a card is read from files anyone can edit)

#: Largest width, depth or other integer an architecture argument may ask for, and the longest
#: list of them: far above every real model, far below what would exhaust memory.
MAX_ARCH_INT = 4096
MAX_ARCH_LIST = 16
MAX_TEXT = 20_000
_TEXT_FIELDS = ("name", "description", "training_data", "data_licence", "licence", "version",
                "format")
_DICT_FIELDS = ("arch_kwargs", "stain_normalization", "metrics", "postprocess", "training",
                "scale_reference", "appearance")


def _check_field_types(card: ModelCard) -> None:
    """Types, ranges and sizes of every field, before anything is built from the card: one
    tampered file must give a clear error, never a TypeError or a 360 GB allocation."""
    import math

    for name in _TEXT_FIELDS:
        value = getattr(card, name)
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise GlandsegError(f"card field {name} must be text (at most {MAX_TEXT} "
                                f"characters), got {_short(value)}")
    if not card.name.strip():
        raise GlandsegError("card field name is empty")
    for name in _DICT_FIELDS:
        value = getattr(card, name)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise GlandsegError(f"card field {name} must be a JSON object, got {_short(value)}")
    for name in ("in_channels", "num_classes"):
        value = getattr(card, name)
        top = 16 if name == "in_channels" else 256
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise GlandsegError(f"card field {name} must be an integer in 1..{top}, got "
                                f"{_short(value)}")
    for name in ("class_names", "class_colours"):
        value = getattr(card, name)
        if not isinstance(value, list) or len(value) > 257 or \
                not all(isinstance(v, str) and len(v) <= 200 for v in value):
            raise GlandsegError(f"card field {name} must be a list of short texts, got "
                                f"{_short(value)}")
    for name in ("pixel_size_um", "data_pixel_size_um"):
        value = getattr(card, name, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value) or not 0 < value <= 1e4):
            raise GlandsegError(f"card field {name} must be a number of um/px in (0, 10000], "
                                f"got {_short(value)}")
    if not isinstance(card.boundary_class, bool):
        raise GlandsegError(f"card field boundary_class must be true or false, got "
                            f"{_short(card.boundary_class)}")
    if isinstance(card.levels, bool) or not isinstance(card.levels, int) or \
            card.levels not in (0, *range(2, MAX_LEVELS + 1)):
        raise GlandsegError(f"card field levels must be 0 or an integer in 2..{MAX_LEVELS}, "
                            f"got {_short(card.levels)}")
    if card.levels and (card.boundary_class or card.num_classes != card.levels + 1):
        raise GlandsegError(f"card says {card.levels} distance levels, so num_classes must be "
                            f"{card.levels + 1} and boundary_class false (got "
                            f"{card.num_classes}, {card.boundary_class})")
    for key, value in card.arch_kwargs.items():
        _check_arch_value(key, value)
    from ..autoscale import PEAKS

    peak = card.scale_reference.get("peak", "nearest")
    if peak not in PEAKS:
        raise GlandsegError(f"card field scale_reference: peak must be "
                            f"{' or '.join(map(repr, PEAKS))}, got {_short(peak)}")
    size = card.scale_reference.get("sigma_px")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int | float)
                             or not math.isfinite(size) or not 0 < size <= 1e5):
        raise GlandsegError(f"card field scale_reference: sigma_px must be a positive number "
                            f"of pixels, got {_short(size)}")
    if card.appearance:
        from ..domain import check_entry

        check_entry(card.appearance)
    if card.postprocess:
        from ..postprocessing import PostprocessParams

        try:
            PostprocessParams(**card.postprocess)
        except TypeError as exc:
            raise GlandsegError(f"card field postprocess: {exc}") from None
        except GlandsegError as exc:
            raise GlandsegError(f"card field postprocess: {exc}") from None


def _check_arch_value(key: str, value) -> None:
    import math

    items = value if isinstance(value, list | tuple) else [value]
    if len(items) > MAX_ARCH_LIST:
        raise GlandsegError(f"arch_kwargs {key!r} has {len(items)} entries; at most "
                            f"{MAX_ARCH_LIST}")
    for v in items:
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and 0 <= v <= MAX_ARCH_INT:
            continue
        if isinstance(v, float) and math.isfinite(v) and 0 <= v <= MAX_ARCH_INT:
            continue
        raise GlandsegError(f"arch_kwargs {key!r} holds {_short(v)}; expected numbers in "
                            f"0..{MAX_ARCH_INT}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
