"""Per-pixel training targets: foreground, classes, or background / interior / boundary from
instance labels (with unknown-foreground and gap pixels)."""

from __future__ import annotations

import numpy as np

from ..enums import Target  # noqa: F401  (defined with the other modes)
from ..errors import GlandsegError

#: Label of a foreground pixel whose class (interior or boundary) is not known: the pixels
#: of a binary mask in a dataset that otherwise has instance labels.
UNKNOWN_FG = 3


#: Label of a background pixel in a narrow gap between two objects (within ``gap_width`` of
#: both): background to the network, weighted ``gap_weight`` times more in the loss, as in
#: U-Net's separation weight map (Ronneberger et al., MICCAI 2015).
GAP = 4


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

        from ..metrics import as_instances

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
    from ..labels import mixed_neighbourhood

    return (inst == 0) & mixed_neighbourhood(inst, 2 * width + 1)
