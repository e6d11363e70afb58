"""Adapting a trained model to a user's images in minutes: the choices measured in
docs/benchmarks.md ("The correction loop").

- **Where patches come from.** :func:`disagreement` marks the annotated pixels where the base
  model's class differs from the annotation's (widened a little, so a patch shows the
  error's context); :class:`DisagreementSampler` places a share of the patches on them and
  the rest uniformly on annotated pixels, so training spends its few steps where the base
  model is wrong rather than re-learning what it already gets right.
- **Learning-rate schedule for runs of minutes.** :func:`hold_decay_schedule`: a few warm-up steps,
  then the peak held for a share of the budget and a linear decay to a floor by the end of
  the time budget (the end is known in seconds, not steps).

BatchNorm with frozen statistics and a frozen encoder are options of
:class:`~.config.TrainConfig` (``batchnorm="frozen"``, ``freeze_encoder``), carried out by
:class:`~.step.Optimization`; :func:`short_run_options` holds the choices measured best.

No Qt here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from .data import IGNORE, Augmentation, PatchSampler, TrainingImage

#: share of a run at the peak learning rate (:func:`hold_decay_schedule`)
HOLD = 0.3
#: the learning rate's fraction of its peak at the end of a run
FLOOR = 0.05


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


@torch.no_grad()
def base_classes(model: torch.nn.Module, item: TrainingImage, tile: int = 1024) -> np.ndarray:
    """uint8 (Y, X): ``model``'s most likely class on the counted part of ``item`` (0 elsewhere).

    The counted bounding box is covered by windows of at most ``tile`` px with 32 px of
    context each side (an estimate for sampling, not the exact tiled engine).
    """
    out = np.zeros(item.shape, dtype=np.uint8)
    box = item.counted_bbox()
    if box is None:
        return out
    was_training = model.training
    model.eval()
    try:
        y0, x0, y1, x1 = box
        for wy in range(y0, y1, tile):
            for wx in range(x0, x1, tile):
                h, w = min(tile, y1 - wy), min(tile, x1 - wx)
                img, _, _ = item.window(wy - 32, wx - 32, h + 64, w + 64)
                logits = model(torch.from_numpy(img[None]))
                out[wy : wy + h, wx : wx + w] = logits[0, :, 32 : 32 + h, 32 : 32 + w].argmax(0).numpy()
    finally:
        model.train(was_training)
    return out


class DisagreementSampler(PatchSampler):
    """A :class:`~.data.PatchSampler` that centres ``share`` of its patches on the annotated
    pixels where ``model`` (the base model) is wrong (:func:`disagreement`).

    Args:
        items, patch_size, rng, augmentation: as for :class:`~.data.PatchSampler`.
        model: the base model, run once on each image's annotated part.
        share: probability that a patch is centred on an error (when there is one).
        widen: px by which errors are widened.
    """

    def __init__(self, items: Sequence[TrainingImage], patch_size: int, rng: np.random.Generator | int = 0,
                 augmentation: Augmentation | None = None, *, model: torch.nn.Module, share: float = 0.5,
                 widen: int = 4) -> None:
        views, self.n_wrong = [], 0
        for item in items:
            if item.n_counted == 0:
                continue
            picker = PixelPicker(item, disagreement(base_classes(model, item), item.classes, widen), share)
            view = copy.copy(item)  # the same arrays; only how centres are drawn differs
            view.random_counted_pixel = picker
            views.append(view)
            #: annotated pixels near an error of the base model, over all images
            self.n_wrong += picker.n_wrong
        super().__init__(views, patch_size, rng, augmentation)


def disagreement_sampler(model: torch.nn.Module, share: float = 0.5, widen: int = 4):
    """A sampler factory ``(items, patch_size, rng, augmentation) -> DisagreementSampler``."""

    def make(items, patch_size, rng, augmentation):
        return DisagreementSampler(items, patch_size, rng, augmentation, model=model, share=share,
                                   widen=widen)

    return make


def hold_decay_schedule(step: int, warm: int, progress: float) -> float:
    """Learning-rate factor: linear warm-up over ``warm`` steps, the peak for :data:`HOLD` of
    the run, then linear down to :data:`FLOOR` at its end (``progress`` 0-1)."""
    if step < warm:
        return (step + 1) / warm
    p = min(1.0, max(0.0, progress))
    return 1.0 if p <= HOLD else 1.0 - (1.0 - FLOOR) * (p - HOLD) / (1.0 - HOLD)


#: TrainConfig fields for fine-tuning a trained model (``train --base``, the Fine-tune widget
#: with a base model), chosen by the measurements of docs/benchmarks.md ("The correction loop"):
#: precision "auto" (bf16 where the CPU computes it in hardware, or on a GPU: runtime.py's rule),
#: batches of 2 patches of 256 px
#: (the most steps per minute at the same pixel rate; a patch holds a 100 px nucleus with
#: context), validation every 25 steps, no early stopping (the budget is minutes: the best
#: weights on the held-out part are returned anyway)
FINETUNE = {"patch_size": 256, "batch_size": 2, "lr": 1e-3, "val_every": 25, "early_stopping_patience": None,
            "precision": "auto"}
#: the defaults for a model trained from scratch (unchanged)
SCRATCH = {"patch_size": 256, "batch_size": 4, "lr": 1e-3, "val_every": None, "early_stopping_patience": 5,
           "precision": "fp32"}


def short_run_options(base: object | None) -> dict:
    """TrainConfig fields for fine-tuning ``base`` (a model or its name; None: training from
    scratch, the former defaults)."""
    return dict(SCRATCH if base is None else FINETUNE)
