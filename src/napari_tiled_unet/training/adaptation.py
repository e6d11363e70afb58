"""Adapting a trained model to a user's images in minutes: the choices measured in
docs/benchmarks.md ("The correction loop").

- **Where patches come from.** :func:`disagreement` marks the annotated pixels where the base
  model's class differs from the annotation's (widened a little, so a patch shows the
  error's context); :class:`PixelPicker` places a share of the patches on them and the rest
  uniformly on annotated pixels, so training spends its few steps where the base model is
  wrong rather than re-learning what it already gets right.
- **Learning-rate schedule for runs of minutes.** :func:`lr_factor`: a few warm-up steps,
  then the peak held for a share of the budget and a linear decay to a floor by the end of
  the time budget (the end is known in seconds, not steps).
- **BatchNorm with tiny batches.** :func:`freeze_batchnorm` keeps the base model's running
  statistics and uses them in training too (the normalisation the model was trained with),
  instead of statistics of a batch of 2-8 patches.
- **Encoder freezing.** :func:`encoder_parameters` names the contracting path's parameters,
  which a short run may leave unchanged.

No Qt here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage as ndi

from .data import IGNORE, TrainingImage

#: learning-rate schedules for short runs
SCHEDULES = ("cosine", "hold-decay", "constant")


def disagreement(base_classes: np.ndarray, classes: np.ndarray, widen: int = 4) -> np.ndarray:
    """bool (Y, X): annotated pixels near one where the base model's class is not the annotated one.

    Args:
        base_classes: int (Y, X) the base model's most likely class per pixel.
        classes: uint8 (Y, X) annotated classes, :data:`~.data.IGNORE` where nothing counts.
        widen: px by which the disagreeing pixels are widened (staying on annotated pixels).
    """
    counted = classes != IGNORE
    wrong = counted & (np.asarray(base_classes) != classes)
    if widen > 0 and wrong.any():
        wrong = ndi.binary_dilation(wrong, iterations=int(widen)) & counted
    return wrong


class PixelPicker:
    """Patch centres: a share on the base model's errors, the rest on any annotated pixel.

    Args:
        item: the training image.
        wrong: bool (Y, X) from :func:`disagreement` (restricted to ``item``'s counted pixels).
        share: probability that a centre is drawn among the ``wrong`` pixels (when any).
    """

    def __init__(self, item: TrainingImage, wrong: np.ndarray, share: float = 0.5) -> None:
        self.item = item
        self.share = float(share)
        wrong = wrong & (item.classes != IGNORE)
        self._flat = np.flatnonzero(wrong).astype(np.int64)  # the errors are few: an index array is cheap
        self._width = wrong.shape[1]

    @property
    def n_wrong(self) -> int:
        return int(self._flat.size)

    def __call__(self, rng: np.random.Generator) -> tuple[int, int]:
        if self._flat.size and rng.random() < self.share:
            i = int(self._flat[int(rng.integers(self._flat.size))])
            return i // self._width, i % self._width
        return self.item.random_counted_pixel(rng)


def lr_factor(schedule: str, step: int, progress: float, warmup: int = 5, hold: float = 0.3,
              floor: float = 0.05) -> float:
    """The learning rate's fraction of its peak.

    Args:
        schedule: ``"cosine"`` (warm-up, cosine to ``floor``), ``"hold-decay"`` (warm-up, the
            peak for the first ``hold`` of the run, then linear to ``floor``) or ``"constant"``
            (warm-up, then the peak).
        step: optimisation steps done.
        progress: share of the budget used, 0-1 (time for a minutes budget, steps otherwise).
        warmup: steps of linear warm-up.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown learning-rate schedule {schedule!r}: use one of {', '.join(SCHEDULES)}.")
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, max(0.0, progress))
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    if p <= hold:
        return 1.0
    return 1.0 - (1.0 - floor) * (p - hold) / (1.0 - hold)


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def freeze_batchnorm(model: torch.nn.Module) -> Iterator[None]:
    """Within: the BatchNorm layers normalise with their running statistics and do not update
    them, even while the model is in training mode (their scale and shift still learn)."""
    layers = batchnorm_layers(model)
    modes = [m.training for m in layers]
    for m in layers:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)


def encoder_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of the U-Net's contracting path (``inc`` and ``down1`` ... ``downN``)."""
    return [p for name, p in model.named_parameters() if name.startswith(("inc.", "down"))]
