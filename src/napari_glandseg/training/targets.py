"""Per-pixel training targets: foreground, classes, background / interior / boundary or
distance levels from instance labels (with unknown-foreground and gap pixels)."""

from __future__ import annotations

import numpy as np

from ..enums import Target  # noqa: F401  (defined with the other modes)
from ..errors import GlandsegError

#: Label of a foreground pixel whose class (interior or boundary, or its distance level) is
#: not known: the pixels of a binary mask in a dataset that otherwise has instance labels.
#: Above every class a model may have.
UNKNOWN_FG = 254


#: Label of a background pixel in a narrow gap between two objects (within ``gap_width`` of
#: both): background to the network, weighted ``gap_weight`` times more in the loss, as in
#: U-Net's separation weight map (Ronneberger et al., MICCAI 2015).
GAP = 255


def is_instance_mask(mask: np.ndarray) -> bool:
    """Whether a mask holds instance labels (more than one object id) rather than a binary
    foreground mask."""
    return bool(mask.size) and int(mask.max()) > 1


def make_target(mask: np.ndarray, target: Target, num_classes: int,
                partial: bool = False, gap_width: int = 0) -> np.ndarray:
    """The per-pixel training target: 0/1 for binary, 0..K-1 for classes,
    0 background / 1 interior / 2 boundary (2-px inner boundary of each instance), or
    0 background / 1..L distance levels (:func:`distance_levels`, L = ``num_classes - 1``).

    With ``partial`` (a binary mask in a dataset that otherwise has instances), a boundary
    target marks only what the mask tells for sure: background, and the 2-px inner edge of
    each connected component as boundary; the rest of the foreground is
    :data:`UNKNOWN_FG` (interior, or a boundary between touching objects nobody drew), which
    the loss treats as "foreground, either class". A levels target knows only the 1-px
    inner edge of each connected component (level 1) and background.

    With ``gap_width`` > 0, background pixels within ``gap_width`` of two different objects
    are :data:`GAP` (background that the loss weighs more).

    >>> m = np.zeros((8, 8), np.uint8); m[1:7, 1:7] = 1
    >>> t = make_target(m, Target.BOUNDARY, 3, partial=True)
    >>> sorted(np.unique(t).tolist()), int((t == UNKNOWN_FG).sum())
    ([0, 2, 254], 4)
    """
    if target is Target.LEVELS:
        from ..metrics import as_instances

        if num_classes < 3:
            raise GlandsegError(f"a levels target needs at least 2 levels (3 classes), got "
                                f"{num_classes} classes")
        inst = as_instances(mask)
        if partial:
            from skimage.segmentation import find_boundaries

            out = np.where(inst > 0, UNKNOWN_FG, 0).astype(np.uint8)
            out[find_boundaries(inst > 0, mode="inner") & (inst > 0)] = 1
        else:
            out = distance_levels(inst, num_classes - 1)
        if gap_width > 0 and not partial:
            out[_gaps(inst, gap_width)] = GAP
        return out
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


def distance_levels(inst: np.ndarray, levels: int) -> np.ndarray:
    """Each object's pixels quantised by their distance to the object's own edge relative to
    its deepest pixel: level ``ceil(levels * d / d_max)`` (1 at the edge, ``levels`` at the
    centre), so that small and large objects alike reach the top level, and two touching
    objects are two hills. 0 is background.

    >>> inst = np.zeros((9, 9), np.int32); inst[1:8, 1:8] = 1
    >>> distance_levels(inst, 4)[4].tolist()
    [0, 1, 2, 3, 4, 3, 2, 1, 0]
    """
    from scipy import ndimage as ndi

    out = np.zeros(inst.shape, np.uint8)
    for i, box in enumerate(ndi.find_objects(inst), start=1):
        if box is None:
            continue
        # one pixel of padding: an object at the image edge is measured from that edge too
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        own = inst[box] == i
        d = ndi.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1]
        top = d.max()
        lev = np.clip(np.ceil(levels * d / top), 1, levels).astype(np.uint8)
        out[box][own] = lev[own]
    return out


def _gaps(inst: np.ndarray, width: int) -> np.ndarray:
    """Background pixels with two different objects within ``width`` pixels (a square
    window)."""
    from ..labels import mixed_neighbourhood

    return (inst == 0) & mixed_neighbourhood(inst, 2 * width + 1)
