"""The settings of one training run as one value, :class:`TrainConfig`.

The CLI, the Fine-tune widget and the API build a :class:`TrainConfig` and hand it to
:class:`~napari_tiled_unet.training.loop.Trainer`; the checks of the user's settings
(:func:`napari_tiled_unet.settings.training`) run when it is made. What belongs to the
data (regions, names, the images held out ...) is the
:class:`~napari_tiled_unet.training.dataset.TrainingSet`'s, not the config's.

It also names the choices a short fine-tuning run can make (issue 16): the learning-rate
schedule (:data:`LR_SCHEDULES`, a name or a callable), what BatchNorm does while training
(:data:`BATCHNORM_MODES`), whether the encoder is frozen, and a patch sampler (a
:data:`SamplerFactory`, e.g. one that weights patches towards where the base model
disagrees with the annotation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import settings
from .data import Augmentation, PatchSampler, TrainingImage
from .device import PRECISIONS
from .targets import ANNOTATIONS

#: epochs when neither ``epochs`` nor ``minutes`` is given
DEFAULT_EPOCHS = 10
#: the learning rate decays to this fraction of its peak at the end of the cosine
LR_FLOOR = 0.05

#: ``(step, warm-up steps, progress in [0, 1]) -> factor`` of the peak learning rate
LRSchedule = Callable[[int, int, float], float]
#: ``(training images, patch size, generator, augmentation) -> sampler`` (a :class:`PatchSampler`
#: or anything with its ``items``, ``rng`` and ``batch(n)``)
SamplerFactory = Callable[[Sequence[TrainingImage], int, np.random.Generator, Augmentation], PatchSampler]


def cosine_schedule(step: int, warm: int, progress: float) -> float:
    """Linear warm-up over ``warm`` steps, then a cosine from 1 down to :data:`LR_FLOOR`."""
    if step < warm:
        return (step + 1) / warm
    return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def constant_schedule(step: int, warm: int, progress: float) -> float:
    """Linear warm-up over ``warm`` steps, then the peak learning rate to the end."""
    return (step + 1) / warm if step < warm else 1.0


#: learning-rate schedules by name (``TrainConfig.lr_schedule``)
LR_SCHEDULES: dict[str, LRSchedule] = {"cosine": cosine_schedule, "constant": constant_schedule}

#: ``"train"``: BatchNorm normalizes with the batch and updates its running statistics (the
#: default); ``"frozen"``: it keeps the base model's statistics (eval mode) while training
BATCHNORM_MODES = ("train", "frozen")

#: which weights a run returns (``TrainConfig.keep``)
KEEP = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a training run.

    Attributes:
        annotation: ``"instances"`` or ``"scribbles"``.
        epochs: epochs to train (an epoch is ``steps_per_epoch`` steps). With ``minutes``
            too, whichever ends first; with neither, :data:`DEFAULT_EPOCHS`.
        minutes: training-time budget (wall clock, validation included).
        steps_per_epoch: steps per epoch; default: the annotated area (bounding boxes, at
            least one patch per image) divided by the pixels of a batch, at least 10.
        lr: peak learning rate of AdamW (see ``lr_schedule``).
        weight_decay: AdamW weight decay.
        patch_size: side of the square training patches (px), rounded up to a multiple of
            ``2**depth`` and shrunk to the largest image.
        batch_size: patches per step.
        val_fraction: fraction held out for validation (0 disables validation; the last
            weights are then returned).
        val_every: steps between validations (default: one epoch).
        seed: seed of the patch sampling, augmentation and split.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 with a gradient
            scaler); falls back to fp32 with a warning where the device cannot.
        checkpointing: gradient checkpointing (less memory, about 30 % more compute).
        early_stopping_patience: validations without improvement before stopping (None: never).
        checkpoint_path: file for resumable checkpoints (None: none).
        checkpoint_every: steps between checkpoints (default: ``val_every``).
        checkpoint_minutes: also save when this many minutes passed since the last save.
        resume: continue from ``checkpoint_path`` when it holds a matching run.
        augmentation: :class:`~napari_tiled_unet.training.data.Augmentation` (default: all on).
        w0, sigma: U-Net border weight (instances).
        touching_width: px of each object next to another object that are trained as boundary
            too (instances; 0: only the 1 px outline; see :func:`.targets.instance_classes`).
        core_fraction: train only each object's core as interior, the pixels at least this
            fraction of the object's largest distance from its outline (instances; 0: off).
        keep: which weights the run returns: ``"best"`` (the best on the held-out part) or
            ``"last"`` (those of the last step, for a schedule meant to run to its end; the best
            step is still recorded).
        balance: class-balancing weights.
        dice_weight: weight of the soft Dice term added to the cross-entropy.
        lr_schedule: a name in :data:`LR_SCHEDULES` or an :data:`LRSchedule`.
        batchnorm: one of :data:`BATCHNORM_MODES`.
        freeze_encoder: train only the decoder (the encoder's weights stay the base's).
        sampler: a :data:`SamplerFactory` (None: :class:`PatchSampler`).

    Raises:
        ValueError (a :class:`~napari_tiled_unet.errors.SettingsError` for ranges): a
            setting out of its range, or an unknown name, in one sentence.
    """

    annotation: str = "instances"
    epochs: float | None = None
    minutes: float | None = None
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patch_size: int = 256
    batch_size: int = 4
    val_fraction: float = 0.15
    val_every: int | None = None
    seed: int = 0
    device: Any = "cpu"
    precision: str = "fp32"
    checkpointing: bool = False
    early_stopping_patience: int | None = 5
    checkpoint_path: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 5.0
    resume: bool = True
    augmentation: Augmentation = field(default_factory=Augmentation)
    w0: float = 10.0
    sigma: float = 5.0
    touching_width: int = 0
    core_fraction: float = 0.0
    keep: str = "best"
    balance: bool = True
    dice_weight: float = 1.0
    lr_schedule: str | LRSchedule = "cosine"
    batchnorm: str = "train"
    freeze_encoder: bool = False
    sampler: SamplerFactory | None = None

    def __post_init__(self) -> None:
        if self.annotation not in ANNOTATIONS:
            raise ValueError(f"Unknown annotation {self.annotation!r}: use 'instances' or 'scribbles'.")
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}: use auto, fp32, bf16 or fp16.")
        if isinstance(self.lr_schedule, str) and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Unknown learning-rate schedule {self.lr_schedule!r}: use "
                             f"{' or '.join(LR_SCHEDULES)}.")
        settings.integer("touching_width", self.touching_width, minimum=0, maximum=16)
        settings.fraction("core_fraction", self.core_fraction)
        if self.keep not in KEEP:
            raise ValueError(f"Unknown choice of weights to keep {self.keep!r}: use 'best' or 'last'.")
        if self.batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"Unknown BatchNorm mode {self.batchnorm!r}: use 'train' or 'frozen'.")
        settings.training(self.batch_size, self.patch_size, self.lr, self.val_fraction, self.epochs,
                          self.minutes)
        if self.epochs is None and self.minutes is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS)
        if self.augmentation is None:
            object.__setattr__(self, "augmentation", Augmentation())
        if self.checkpoint_path is not None:
            object.__setattr__(self, "checkpoint_path", Path(self.checkpoint_path))

    @classmethod
    def split(cls, options: Mapping[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
        """Keyword arguments -> (the config of those that are settings, the others)."""
        names = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in options.items() if k in names})
        return config, {k: v for k, v in options.items() if k not in names}

    def schedule(self) -> LRSchedule:
        """The learning-rate schedule function."""
        return LR_SCHEDULES[self.lr_schedule] if isinstance(self.lr_schedule, str) else self.lr_schedule

    def make_sampler(self, items: Sequence[TrainingImage], patch_size: int,
                     rng: np.random.Generator) -> PatchSampler:
        """The patch sampler over ``items`` (``sampler``, or a :class:`PatchSampler`)."""
        return (self.sampler or PatchSampler)(items, patch_size, rng, self.augmentation)
