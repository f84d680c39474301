"""Training losses: MONAI's and the partial loss of background / interior / boundary and
distance-levels models for mixed instance and binary masks and gap weights."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..enums import Loss  # noqa: F401  (defined with the other modes)
from ..errors import GlandsegError
from .targets import GAP, UNKNOWN_FG


def make_loss(loss: Loss, num_classes: int, partial: bool = False, gap_weight: float = 0.0,
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss module for logits (N, K, H, W) and integer targets (N, H, W).

    ``partial``: targets of a background / interior / boundary (or distance-levels) model
    may hold :data:`UNKNOWN_FG` (foreground of unknown class); ``gap_weight``: they may hold
    :data:`GAP`. Only ``dice_ce`` and ``bce`` support these (:func:`partial_boundary_loss`).
    """
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    if partial or gap_weight:
        if num_classes < 3 or loss not in (Loss.DICE_CE, Loss.BCE):
            what = "mixed instance and binary masks" if partial else "gap_weight"
            raise GlandsegError(
                f"{what} trains a background/interior/boundary or distance-levels model with "
                f"loss 'dice_ce' or 'bce', not {loss.value!r} with {num_classes} classes")
        with_dice = loss is Loss.DICE_CE

        def compute_partial(logits, target):
            return partial_boundary_loss(logits, target, dice=with_dice, gap_weight=gap_weight)

        return compute_partial
    binary = num_classes == 1
    bce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
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


def partial_boundary_loss(logits: torch.Tensor, target: torch.Tensor, dice: bool = True,
                          gap_weight: float = 0.0, eps: float = 1e-5) -> torch.Tensor:
    """Cross-entropy (+ soft Dice) for background / foreground-class logits (interior /
    boundary, or distance levels 1..L) whose targets may be :data:`UNKNOWN_FG` or
    :data:`GAP`.

    Known pixels take the usual cross-entropy; an unknown foreground pixel takes
    ``-log(sum of the foreground classes' p)``, so it teaches "foreground" without claiming
    which class. A gap pixel is background weighing ``1 + gap_weight``. Dice: foreground
    (all foreground classes) on every pixel, and each foreground class on the known pixels,
    averaged.
    """
    logp = torch.log_softmax(logits.float(), 1)
    gap = target == GAP
    target = torch.where(gap, torch.zeros_like(target), target)
    known = target != UNKNOWN_FG
    y = torch.where(known, target, torch.zeros_like(target)).long()
    nll = -logp.gather(1, y[:, None])[:, 0]
    fg_nll = -torch.logsumexp(logp[:, 1:], 1)
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
    d = soft_dice(p[:, 1:].sum(1), fg_truth, torch.ones_like(k))
    for c in range(1, p.shape[1]):
        d = d + soft_dice(p[:, c], (target == c).float(), k)
    return ce + d / p.shape[1]
