"""The modes the settings take, as string enums (torch-free: the command line builds its
choices from them, the dataclasses validate against them)."""

from __future__ import annotations

from enum import Enum

from .precision import Precision


class Split(str, Enum):
    """How touching objects are separated.

    - ``none``: connected components only;
    - ``distance``: watershed on the distance transform, one marker per h-maximum
      (``h`` pixels high): robust for roundish objects of varied size;
    - ``peaks``: watershed from distance peaks at least ``min_distance`` apart;
    - ``boundary``: markers are connected regions of the interior class (label 1) of a
      background / interior / boundary model, grown over interior + boundary (a map with no
      boundary pixels is thus split into its connected interiors);
    - ``levels``: markers are connected regions at or above distance level ``marker_level``
      of a distance-levels model (labels 0..L, :attr:`Target.LEVELS`), grown downhill over
      the lower levels (the deep watershed transform);
    - ``level_peaks``: the same map smoothed over ``smooth`` pixels; markers are its
      maxima at least ``level_h`` levels high, so each hill seeds one object whatever the
      height its top reaches (on MoNuSeg val it found more nuclei than seeding at a level).
    """

    NONE = "none"
    DISTANCE = "distance"
    PEAKS = "peaks"
    BOUNDARY = "boundary"
    LEVELS = "levels"
    LEVEL_PEAKS = "level_peaks"


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
    """What the model learns: ``mask`` (foreground, or the classes of a class map),
    ``boundary`` (background / interior / boundary from instance labels, for splitting
    touching objects) or ``levels`` (background and L levels of each object's distance to
    its own edge, relative to the object's deepest point, from instance labels: a quantised
    distance map whose top levels seed one object each; Bai and Urtasun's deep watershed
    transform, CVPR 2017)."""

    MASK = "mask"
    BOUNDARY = "boundary"
    LEVELS = "levels"


#: The most distance levels a ``levels`` model may have (its card's ``levels``, training's
#: ``levels``, post-processing's ``marker_level``).
MAX_LEVELS = 64


class Selection(str, Enum):
    """The validation score that picks the best checkpoint (and early stopping).

    Object scores are computed on the whole validation images, segmented as inference
    does and post-processed with the card's settings:

    - ``auto``: ``objects`` for a model with post-processing (binary or boundary);
      ``class_dice`` for a class map of more than one foreground class; else ``pixel_dice``;
    - ``objects``: the mean of object F1 and object Dice (GlaS's gland scores);
    - ``objects_worst``: ``objects`` of each group of validation images
      (:attr:`TrainingPair.group`, e.g. GlaS's benign and malignant), the worse of them:
      an average over groups hides the hard cases;
    - ``object_f1``, ``object_dice``, ``aji``, ``pq``: one object score;
    - ``pixel_dice``: Dice of the foreground (pooled foreground classes for class maps)
      on the whole validation images;
    - ``class_dice``: a class map's Dice class by class, each pooled over the whole
      validation images, averaged over the foreground classes: every class counts alike
      (pooled, a small organ that is never found barely moves the score).
    """

    AUTO = "auto"
    OBJECTS = "objects"
    OBJECTS_WORST = "objects_worst"
    OBJECT_F1 = "object_f1"
    OBJECT_DICE = "object_dice"
    AJI = "aji"
    PQ = "pq"
    PIXEL_DICE = "pixel_dice"
    CLASS_DICE = "class_dice"


class StainNorm(str, Enum):
    """Stain normalisation applied before a model sees an RGB image."""

    NONE = "none"
    MACENKO = "macenko"


class Blend(str, Enum):
    """How overlapping tiles are weighted: ``gaussian`` (sigma = tile/8, as MONAI),
    ``cosine`` (Hann window) or ``constant`` (plain average)."""

    GAUSSIAN = "gaussian"
    COSINE = "cosine"
    CONSTANT = "constant"


__all__ = ["Blend", "Loss", "Precision", "Selection", "Split", "StainNorm", "Target"]
