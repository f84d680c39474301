"""Training losses: MONAI's and the partial background / interior / boundary loss for mixed
instance and binary masks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..enums import Loss  # noqa: F401  (defined with the other modes)
from ..errors import GlandsegError
from .targets import GAP, UNKNOWN_FG


def make_loss(loss: Loss, num_classes: int, partial: bool = False, gap_weight: float = 0.0,
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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
