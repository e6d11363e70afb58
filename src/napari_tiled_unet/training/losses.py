"""Masked losses: weighted cross-entropy plus soft Dice, counting only annotated pixels.

Pixels outside the mask contribute exactly zero to the loss and receive exactly zero
gradient: the cross-entropy is selected with ``torch.where`` (whose backward sends zero to
the unselected branch) and every Dice sum multiplies by the mask first. Both terms are
computed in float32 whatever the autocast precision of the network.

The terms are kept as sums (:class:`LossTerms`) so that a validation pass over many
windows gives the same number as one big batch would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossTerms:
    """Sums from which the loss is computed; add them up over batches or windows.

    Attributes:
        ce_sum: sum over counted pixels of weight * cross-entropy (0-dim tensor).
        weight_sum: sum of the weights of counted pixels (0-dim tensor).
        intersection: float (C,) per class, sum of p_c * [y == c] over counted pixels.
        denominator: float (C,) per class, sum of p_c + [y == c] over counted pixels.
        support: float (C,) counted pixels of each class.
    """

    ce_sum: torch.Tensor
    weight_sum: torch.Tensor
    intersection: torch.Tensor
    denominator: torch.Tensor
    support: torch.Tensor

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(*(a + b for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.ce_sum, self.weight_sum, self.intersection, self.denominator, self.support)

    def detach(self) -> LossTerms:
        """The same sums, without autograd history, on the CPU (for accumulating)."""
        return LossTerms(*(t.detach().double().cpu() for t in self._fields()))

    def cross_entropy(self) -> torch.Tensor:
        """Weighted mean cross-entropy over counted pixels (0 when none count)."""
        return self.ce_sum / self.weight_sum.clamp_min(1e-12)

    def dice_loss(self, smooth: float = 1.0) -> torch.Tensor:
        """1 - mean soft Dice over the classes present among the counted pixels (0 when none)."""
        present = self.support > 0
        if not bool(present.any()):
            return self.ce_sum * 0.0
        dice = (2.0 * self.intersection + smooth) / (self.denominator + smooth)
        return 1.0 - dice[present].mean()

    def total(self, dice_weight: float = 1.0) -> torch.Tensor:
        """``cross_entropy() + dice_weight * dice_loss()``."""
        loss = self.cross_entropy()
        if dice_weight:
            loss = loss + dice_weight * self.dice_loss()
        return loss


def loss_terms(logits: torch.Tensor, classes: torch.Tensor, weight: torch.Tensor,
               mask: torch.Tensor) -> LossTerms:
    """The sums of the masked, weighted cross-entropy and of the soft Dice.

    Args:
        logits: float (N, C, Y, X) network output.
        classes: int64 (N, Y, X) class indices (any value where ``mask`` is False).
        weight: float (N, Y, X) per-pixel weights (the U-Net weight map).
        mask: bool (N, Y, X), True where the pixel counts.

    Returns:
        :class:`LossTerms`.
    """
    logits = logits.float()
    n_classes = logits.shape[1]
    mask = mask.bool()
    safe = torch.where(mask, classes, torch.zeros_like(classes))
    ce = F.cross_entropy(logits, safe, reduction="none")
    w = torch.where(mask, weight.float(), torch.zeros_like(ce))
    ce_sum = torch.where(mask, ce * w, torch.zeros_like(ce)).sum()
    m = mask.unsqueeze(1).to(logits.dtype)
    prob = torch.softmax(logits, dim=1) * m
    onehot = F.one_hot(safe, n_classes).permute(0, 3, 1, 2).to(logits.dtype) * m
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    support = onehot.sum(dims)
    denom = prob.sum(dims) + support
    return LossTerms(ce_sum, w.sum(), inter, denom, support)


def combined_loss(logits: torch.Tensor, classes: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                  dice_weight: float = 1.0) -> torch.Tensor:
    """Masked weighted cross-entropy + ``dice_weight`` * masked soft Dice loss (0-dim float32 tensor).

    Args:
        logits: float (N, C, Y, X).
        classes: int64 (N, Y, X).
        weight: float (N, Y, X).
        mask: bool (N, Y, X).
        dice_weight: weight of the Dice term.
    """
    return loss_terms(logits, classes, weight, mask).total(dice_weight)
