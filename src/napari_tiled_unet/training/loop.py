"""Fine-tune a model bundle on painted labels, or train a new one, as a generator of events.

:class:`Trainer` holds one run. Build it (all input checks happen here, before anything
is changed), then drive :meth:`Trainer.iter`, a generator that yields
:class:`~napari_tiled_unet.events.TrainStep` and :class:`~napari_tiled_unet.events.WarningEvent`
events and returns the best :class:`~napari_tiled_unet.model.bundle.ModelBundle`::

    trainer = Trainer(bundle, [image], [labels], epochs=20)
    for event in trainer.iter():      # e.g. inside napari's thread_worker
        ...
    # a Stop button calls trainer.stop(): the generator then returns the best bundle normally
    best = trainer.best_bundle()      # also valid after gen.close() or an exception

:func:`finetune_iter` / :func:`finetune` are the one-call forms (generator and synchronous
twin); :func:`new_bundle` makes a randomly initialised bundle that the same loop trains
from scratch.

**Validation** is held out by area, never by random pixels: with enough images (``n *
val_fraction >= 1``, or ``val_images`` given) whole images are held out; otherwise each
annotated image gives up a strip at the far end of its annotated area (across its longer
side) holding ``val_fraction`` of its annotated pixels, and training patches never count
pixels of that strip. The starting model is validated first (step 0), so the returned
weights are never worse on the held-out area than the ones fine-tuning started from.

**Robustness**: a NaN or infinite loss or gradient skips the step, restores the BatchNorm
statistics of that forward pass, halves the learning rate and yields a warning; weights
that are not finite are never kept, returned or saved.

**Checkpoints** (``checkpoint_path``) are private ``torch.save`` files holding only
tensors, dicts, lists, numbers and strings (model, optimizer, scaler, step, elapsed time,
learning-rate back-off, best weights and their validation loss, early-stopping counters,
the patch sampler's numpy generator state after the last batch used, the RNG states of
torch (CPU and CUDA), numpy's global generator and Python's ``random``, and a fingerprint
of the data and settings). They are written atomically (temporary file + ``os.replace``)
every ``checkpoint_every`` steps or ``checkpoint_minutes``, on stop, on close and at the
end, and read back with ``torch.load(weights_only=True)``. With ``resume=True`` a run
whose fingerprint matches continues from the saved step and draws the same patches the
interrupted run would have drawn.

**What a resumed run guarantees.** A Ctrl-C or SIGTERM never cuts an optimisation step or
the bookkeeping of a validation in the middle: on the main thread the signal waits for the
end of that block (:mod:`napari_tiled_unet._interrupts`), so the checkpoint saved on the
way out is a state the uninterrupted run passed through, and a validation that was due is
run first on resume. Resuming therefore gives **bit-identical weights** to the
uninterrupted run (tested: SIGTERM twice, resumed twice, against one run without stops)
when the budget is in *epochs*, on the same device, precision, thread count and library
versions. With a *minutes* budget the learning-rate schedule and the end follow the wall
clock, so a resumed run ends close to, but not exactly at, the uninterrupted one. A run
killed outright (SIGKILL, power cut) resumes from its last periodic checkpoint, exactly as
well.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import normalization, settings
from .._interrupts import deferred_signals
from ..events import TrainStep, WarningEvent, run_to_end
from ..metrics import class_overlap_counts, match_instances
from ..model.bundle import INSTANCE_CLASSES, ModelBundle, load_model, make_metadata
from ..model.unet import UNet
from ..postprocess import labels_from_probabilities
from . import losses
from .data import IGNORE, Augmentation, PatchSampler, Prefetcher, TrainingImage, cover_windows
from .optim import AdamW  # not torch.optim's: that one imports torch._dynamo (and triton)
from .targets import ANNOTATIONS, check_annotation, check_labels, make_targets

log = logging.getLogger(__name__)

from ..inference import PRECISIONS, _autocast  # one autocast policy for inference and training  # noqa: E402

CHECKPOINT_FORMAT = "napari-tiled-unet-training-checkpoint"
CHECKPOINT_VERSION = 1
#: epochs when neither ``epochs`` nor ``minutes`` is given
DEFAULT_EPOCHS = 10
#: consecutive non-finite steps after which training gives up (keeping the best weights)
MAX_BAD_STEPS = 8
#: the learning rate decays to this fraction of its peak at the end of the cosine
LR_FLOOR = 0.05
#: fewest held-out pixels for a validation that means anything
MIN_VAL_PIXELS = 64
#: gradient norm clip
CLIP_NORM = 5.0
#: scribbles with more label values than this, and no class names, look like instance labels
MAX_SCRIBBLE_CLASSES = 32


# -- input preparation ---------------------------------------------------------------------


def as_channels_first(image: Any, n_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """An image as (C, Y, X) for a model with ``n_channels`` inputs (a view when possible).

    Args:
        image: (Y, X) grayscale; (Y, X, 3|4) RGB(A) when ``channel_axis`` is None (alpha
            is dropped for a 3-channel model); any 3D layout when ``channel_axis`` says
            which axis holds the channels.
        n_channels: input channels of the model.
        channel_axis: axis of the channels in ``image``, or None (see above).

    Returns:
        (C, Y, X) array of the image's dtype.

    Raises:
        ValueError: wrong dimensionality, ambiguous layout, or a channel count the model
            cannot take.
    """
    arr = np.asarray(image)
    if arr.ndim == 2 and channel_axis is None:
        chw = arr[None]
    elif arr.ndim == 3:
        if channel_axis is not None:
            chw = np.moveaxis(arr, channel_axis, 0)
        elif arr.shape[-1] in (3, 4):
            chw = np.moveaxis(arr[..., :3] if n_channels == 3 else arr, -1, 0)
        else:
            raise ValueError(
                f"The image has shape {arr.shape}: say which axis holds the channels (channel_axis), "
                "or give one 2D plane of a stack."
            )
    else:
        raise ValueError(
            f"Training images must be 2D (Y, X) or 2D with channels, got shape {arr.shape}; "
            "give one plane of a stack at a time."
        )
    if chw.shape[0] != n_channels:
        raise ValueError(
            f"The image has {chw.shape[0]} channel(s) but the model expects {n_channels}; choose a model "
            f"made for {chw.shape[0]}-channel images, train a new one, or set channel_axis."
        )
    return chw


def _data_hash(image: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (image, labels):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _resolve_device(device: str | torch.device) -> torch.device:
    from ..inference import resolve_device  # the engine's rule: "auto" -> cuda, mps, cpu

    return resolve_device(device)


def new_bundle(
    task: str = "instances",
    n_classes: int | None = None,
    n_channels: int = 1,
    base_channels: int = 32,
    depth: int = 4,
    class_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    name: str | None = None,
    seed: int | None = None,
) -> ModelBundle:
    """A randomly initialised U-Net bundle, to be trained from scratch.

    Args:
        task: ``"instances"`` (3 classes: background, interior, boundary) or ``"semantic"``.
        n_classes: output classes (semantic; taken from ``class_names`` when omitted).
        n_channels: input channels (1 grayscale, 3 RGB).
        base_channels: channels of the first level (the paper uses 64).
        depth: number of poolings (4 in the paper).
        class_names: names of the semantic classes.
        normalization: intensity normalization recipe (default: percentiles 1-99.8).
        name: model name stored in the bundle.
        seed: seed of the initial weights (None: torch's global generator).

    Returns:
        A :class:`ModelBundle` with a model in eval mode on the CPU.
    """
    if task == "instances":
        if n_classes not in (None, 3):
            raise ValueError(
                f"An instances model has 3 classes (background, interior, boundary), not {n_classes}."
            )
        n_classes, class_names = 3, class_names or list(INSTANCE_CLASSES)
    elif task == "semantic":
        if n_classes is None:
            if not class_names:
                raise ValueError("Say how many classes the semantic model has (n_classes or class_names).")
            n_classes = len(class_names)
        if n_classes < 2:
            raise ValueError(f"A semantic model needs at least 2 classes, got {n_classes}.")
    else:
        raise ValueError(f"Unknown task {task!r}: use 'instances' or 'semantic'.")
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        model = UNet(n_channels=n_channels, n_classes=n_classes, base_channels=base_channels, depth=depth)
    model.eval()
    meta = make_metadata(model, task=task, class_names=class_names, normalization=normalization,
                         name=name, description="Trained from scratch with napari-tiled-unet.")
    return ModelBundle(model, meta)


def largest_label(labels: Sequence[Any]) -> int:
    """The largest value in a list of label arrays (0 when all are empty)."""
    return max((int(np.max(lab)) for lab in labels if np.size(lab)), default=0)


def new_bundle_for_annotation(
    annotation: str,
    labels: Sequence[Any],
    class_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> ModelBundle:
    """A new bundle for training from scratch on ``labels`` painted as ``annotation``.

    Instance labels make an ``instances`` model (background, interior, boundary). Scribbles
    make a ``semantic`` model: one class per label value (value k is class k - 1), as many as
    ``class_names`` name, or else as many as the largest value painted (named ``class 1``
    ... ``class n`` after the values). The training record of the trained bundle says which
    (``classes_from``).

    Args:
        annotation: ``"instances"`` or ``"scribbles"``.
        labels: the label arrays the model will be trained on.
        class_names: names of the scribble classes, for label values 1, 2, ...
        **kwargs: other arguments of :func:`new_bundle` (``n_channels``, ``base_channels``,
            ``depth``, ``name``, ``seed`` ...).

    Raises:
        ValueError: class names with instance labels, a label value without a name, fewer
            than two classes, or (without names) more label values than
            :data:`MAX_SCRIBBLE_CLASSES`, which looks like instance labels.
    """
    if annotation == "instances":
        if class_names:
            raise ValueError("Class names are for scribbles: instance labels always train the classes "
                             "background, interior and boundary; leave the class names out.")
        return new_bundle("instances", **kwargs)
    if annotation != "scribbles":
        raise ValueError(f"Unknown annotation {annotation!r}: use 'instances' or 'scribbles'.")
    top = largest_label(labels)
    if class_names:
        names = [str(n) for n in class_names]
        if top > len(names):
            raise ValueError(f"Label value {top} has no class: {len(names)} class names are given "
                             f"({', '.join(names)}); name one class per label value 1 to {top}.")
        source = "class names given"
    else:
        if top == 0:
            raise ValueError("No pixel is annotated: paint scribbles (values 1, 2, ...) to train on.")
        if top > MAX_SCRIBBLE_CLASSES:
            raise ValueError(
                f"The scribbles use label values up to {top}, one class each: if they are objects, train "
                f"with instance annotation; if you want {top} classes, give their names."
            )
        names = [f"class {k}" for k in range(1, top + 1)]
        source = f"largest label value ({top})"
    if len(names) < 2:
        raise ValueError("Only label value 1 is painted: paint scribbles of at least two classes "
                         "(values 1, 2, ...) so the network can learn to tell them apart.")
    bundle = new_bundle("semantic", class_names=names, **kwargs)
    bundle.metadata["classes_from"] = source
    return bundle


def check_class_names(bundle: ModelBundle, class_names: Sequence[str] | None) -> None:
    """Refuse class names that are not the classes of the model to fine-tune.

    Raises:
        ValueError: ``class_names`` given and different from ``bundle.class_names``.
    """
    if class_names and [str(n) for n in class_names] != bundle.class_names:
        raise ValueError(
            f"The model {bundle.name} has the classes {', '.join(bundle.class_names)}, not "
            f"{', '.join(map(str, class_names))}; leave the class names out to fine-tune it, or train a "
            "new model from scratch for these classes."
        )


# -- the run -------------------------------------------------------------------------------


class Trainer:
    """One fine-tuning (or training) run; see the module docstring for the life cycle.

    Args:
        bundle: the starting model (a :class:`ModelBundle`, a built-in name or a file); it
            is copied and never modified.
        images: one array per image: (Y, X), (Y, X, 3|4) RGB(A), or any 3D layout with
            ``channel_axis``. Read once into memory; each is normalized with the bundle's
            recipe from statistics of the whole image.
        labels: one integer (Y, X) array per image: instance ids (``annotation="instances"``)
            or scribbles (``"scribbles"``: value k >= 1 is class k - 1, 0 is not annotated).
        annotation: ``"instances"`` or ``"scribbles"``.
        regions: None, or one entry per image: None (whole image) or a list of rectangles
            ``(y0, x0, y1, x1)`` / corner arrays from a napari Shapes layer; only pixels
            inside count.
        channel_axis: channel axis of 3D images (see :func:`as_channels_first`).
        names: names of the images for the training record (default ``image 0`` ...).
        val_images: indices of images to hold out whole for validation (overrides the
            automatic split).
        epochs: epochs to train (an epoch is ``steps_per_epoch`` steps). With ``minutes``
            too, whichever ends first; with neither, :data:`DEFAULT_EPOCHS`.
        minutes: training-time budget (wall clock, validation included).
        steps_per_epoch: steps per epoch; default: the annotated area (bounding boxes, at
            least one patch per image) divided by the pixels of a batch, at least 10.
        lr: peak learning rate of AdamW (linear warm-up, then cosine decay to 5 %).
        weight_decay: AdamW weight decay.
        patch_size: side of the square training patches (px), rounded up to a multiple of
            ``2**depth`` and shrunk to the largest image.
        batch_size: patches per step.
        val_fraction: fraction held out for validation (0 disables validation; the last
            weights are then returned).
        val_every: steps between validations (default: one epoch).
        seed: seed of the patch sampling, augmentation and split.
        device: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 with a gradient
            scaler); falls back to fp32 with a warning where the device cannot.
        checkpointing: gradient checkpointing (less memory, about 30 % more compute).
        early_stopping_patience: validations without improvement before stopping (None: never).
        checkpoint_path: file for resumable checkpoints (None: none).
        checkpoint_every: steps between checkpoints (default: ``val_every``).
        checkpoint_minutes: also save when this many minutes passed since the last save.
        resume: continue from ``checkpoint_path`` when it holds a matching run.
        augmentation: :class:`~napari_tiled_unet.training.data.Augmentation` (default: all on).
        w0, sigma: U-Net border weight (instances).
        balance: class-balancing weights.
        dice_weight: weight of the soft Dice term added to the cross-entropy.
        should_stop: optional callable checked every step (e.g. ``threading.Event.is_set``).
        sample_weights: per image, a relative chance of drawing its patches (times its
            annotated area); used to mix training sets in chosen proportions (mixture.py).
        diameters: per image, its median object diameter (px) or None, for scale augmentation.
        record_extra: more entries for the training record (e.g. the sets of a mixture).

    Raises:
        ValueError: bad input, with one sentence that says what to do (labels of another
            shape, nothing annotated, one scribble class only, channel mismatch, ...).
    """

    def __init__(
        self,
        bundle: ModelBundle | str | os.PathLike,
        images: Sequence[Any],
        labels: Sequence[np.ndarray],
        *,
        annotation: str = "instances",
        regions: Sequence[Any] | None = None,
        channel_axis: int | None = None,
        names: Sequence[str] | None = None,
        val_images: Sequence[int] | None = None,
        epochs: float | None = None,
        minutes: float | None = None,
        steps_per_epoch: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patch_size: int = 256,
        batch_size: int = 4,
        val_fraction: float = 0.15,
        val_every: int | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        checkpointing: bool = False,
        early_stopping_patience: int | None = 5,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_minutes: float = 5.0,
        resume: bool = True,
        augmentation: Augmentation | None = None,
        w0: float = 10.0,
        sigma: float = 5.0,
        balance: bool = True,
        dice_weight: float = 1.0,
        should_stop: Callable[[], bool] | None = None,
        sample_weights: Sequence[float] | None = None,
        diameters: Sequence[float | None] | None = None,
        record_extra: dict[str, Any] | None = None,
    ) -> None:
        base = load_model(bundle)
        if annotation not in ANNOTATIONS:
            raise ValueError(f"Unknown annotation {annotation!r}: use 'instances' or 'scribbles'.")
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}: use fp32, bf16 or fp16.")
        if annotation == "instances" and base.task != "instances":
            raise ValueError("Instance labels need an instances model (3 classes); paint scribbles for a "
                             "semantic model, or start a new instances model.")
        settings.training(batch_size, patch_size, lr, val_fraction, epochs, minutes)
        if isinstance(images, np.ndarray) or isinstance(labels, np.ndarray):
            raise ValueError("Give images and labels as lists (one array per image).")
        if len(images) != len(labels) or not images:
            raise ValueError(f"Give one labels array per image ({len(images)} images, {len(labels)} labels).")
        if annotation == "scribbles":
            _check_scribbles_fit(base, largest_label(labels))
        if regions is not None and len(regions) != len(images):
            raise ValueError(f"Give one region entry per image (None for the whole image), "
                             f"got {len(regions)} for {len(images)} images.")
        self.base = base
        self.annotation = annotation
        self.names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if len(self.names) != len(images):
            raise ValueError("Give one name per image.")
        self.lr, self.weight_decay, self.batch_size = float(lr), float(weight_decay), int(batch_size)
        self.seed = int(seed)
        self.epochs, self.minutes = epochs, minutes
        if epochs is None and minutes is None:
            self.epochs = DEFAULT_EPOCHS
        self.precision = precision
        self.checkpointing = bool(checkpointing)
        self.patience = early_stopping_patience
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_minutes = float(checkpoint_minutes)
        self.resume = resume
        self.dice_weight = float(dice_weight)
        self.should_stop = should_stop
        self.device = _resolve_device(device)
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.record_extra = dict(record_extra or {})
        for what, values in (("sample_weights", sample_weights), ("diameters", diameters)):
            if values is not None and len(values) != len(images):
                raise ValueError(f"Give one of {what} per image ({len(values)} for {len(images)} images).")
        self._sampling = (list(sample_weights) if sample_weights is not None else None,
                          list(diameters) if diameters is not None else None)

        n_ch, n_classes = base.n_channels, int(base.model.n_classes)
        recipe = base.normalization
        # Targets are made one image at a time and kept only in compact form (see data.py).
        items: list[TrainingImage | None] = []
        labs: list[np.ndarray] = []
        self.data_record = []
        n_annotated, present, has_object = 0, set(), False
        for i, (img, lab) in enumerate(zip(images, labels)):
            chw = as_channels_first(img, n_ch, channel_axis)
            lab = check_labels(chw.shape[1:], lab)
            region = regions[i] if regions is not None else None
            t = make_targets(chw.shape[1:], lab, annotation, region, n_classes=n_classes, w0=w0, sigma=sigma,
                             balance=balance)
            n_annotated += t.n_annotated
            present.update(t.present_classes())
            has_object = has_object or bool(annotation == "instances" and (lab[t.mask] > 0).any())
            item = None
            if t.n_annotated:
                try:
                    stats = normalization.compute_stats(chw, recipe, channel_axis=0)
                except normalization.ImageError as exc:
                    raise normalization.ImageError(f"{self.names[i]}: {exc}") from None
                item = TrainingImage(chw, t, stats, name=self.names[i])
                if sample_weights is not None:
                    item.sample_weight = float(sample_weights[i])
                if diameters is not None:
                    item.diameter = diameters[i]
            del t
            items.append(item)
            labs.append(lab)
            self.data_record.append({"name": self.names[i], "sha256": _data_hash(chw, lab)})
        check_annotation(n_annotated, present, has_object, annotation)

        m = base.model.size_multiple
        largest = max(max(it.shape) for it in items if it is not None)
        p = min(int(patch_size), largest)
        self.patch_size = -(-p // m) * m
        self._split(items, labs, val_images, float(val_fraction))
        area = 0
        for it in self.train_items:
            y0, x0, y1, x1 = it.counted_bbox()
            area += max(y1 - y0, self.patch_size) * max(x1 - x0, self.patch_size)
        self.steps_per_epoch = int(steps_per_epoch) if steps_per_epoch else max(
            10, math.ceil(area / (self.batch_size * self.patch_size**2)))
        self.val_every = int(val_every) if val_every else self.steps_per_epoch
        self.checkpoint_every = int(checkpoint_every) if checkpoint_every else self.val_every
        self.fingerprint = self._fingerprint(regions)

        self.model: UNet = copy.deepcopy(base.model).cpu()
        self.step = 0
        self.elapsed = 0.0
        self.lr_backoff = 1.0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self._best_state: dict[str, torch.Tensor] | None = None
        self._bad_validations = 0
        self._last_val_step: int | None = None
        self._bad_steps = 0  # non-finite steps in a row
        self._running: list[float] = []  # training losses since the last validation
        self._stop = threading.Event()
        self.stop_reason: str | None = None
        self.sampler = PatchSampler(self.train_items, self.patch_size, np.random.default_rng(self.seed),
                                    self.augmentation)
        self.sampler_state = self.sampler.rng.bit_generator.state
        self._started = False
        log.info("Training on %d image(s), %d annotated pixels for training, %s; patch %d, %d steps/epoch.",
                 len(self.train_items), sum(it.n_counted for it in self.train_items), self.val_description,
                 self.patch_size, self.steps_per_epoch)

    # -- split ------------------------------------------------------------------------------

    def _split(self, items: list[TrainingImage | None], labs: list[np.ndarray],
               val_images: Sequence[int] | None, fraction: float) -> None:
        annotated = [i for i, it in enumerate(items) if it is not None]
        self.warnings: list[str] = []
        self.train_items: list[TrainingImage] = []
        #: (image, its instance labels) held out for validation
        self.val_items: list[tuple[TrainingImage, np.ndarray]] = []
        rng = np.random.default_rng(self.seed)
        if val_images is not None:
            held = sorted({int(i) for i in val_images})
            if any(i < 0 or i >= len(items) for i in held):
                raise ValueError(f"val_images must be image indices between 0 and {len(items) - 1}.")
            mode = "images"
        elif fraction <= 0:
            held, mode = [], "none"
        elif len(annotated) * fraction >= 1:
            k = min(len(annotated) - 1, max(1, round(len(annotated) * fraction)))
            held, mode = sorted(int(i) for i in rng.choice(annotated, size=k, replace=False)), "images"
        else:
            held, mode = [], "strips"
        for i in annotated:
            item = items[i]
            if i in held:
                self.val_items.append((item, labs[i]))
                continue
            if mode == "strips":
                strip = _holdout_strip(item.classes != IGNORE, fraction)
                if strip is not None:
                    self.val_items.append((item.restrict(strip), labs[i]))
                    self.train_items.append(item.restrict(~strip))
                    continue
            self.train_items.append(item)
        if not any(it.n_counted for it in self.train_items):
            raise ValueError("Every annotated image is held out for validation; annotate more images or "
                             "hold out fewer.")
        n_val = sum(it.n_counted for it, _ in self.val_items)
        if mode != "none" and n_val < MIN_VAL_PIXELS:
            self.warnings.append("Too little is annotated to hold out a validation part; training without "
                                 "validation and keeping the last weights.")
            self.train_items = [items[i] for i in annotated]
            self.val_items, mode = [], "none"
        if mode == "images":
            self.val_description = f"{len(self.val_items)} held-out image(s) for validation"
            self.val_record = {"kind": "images", "names": [it.name for it, _ in self.val_items]}
        elif mode == "strips":
            self.val_description = f"a strip of {fraction:.0%} of the annotated area held out for validation"
            self.val_record = {"kind": "strips", "fraction": fraction}
        else:
            self.val_description = "no validation"
            self.val_record = {"kind": "none"}
        m = self.base.model.size_multiple
        self.val_windows = [(k, w) for k, (it, _) in enumerate(self.val_items)
                            for w in cover_windows(it, 1024, m, margin=2 * m)]

    def _fingerprint(self, regions: Any) -> str:
        h = hashlib.sha256()
        parts = [self.annotation, self.patch_size, self.batch_size, self.seed, self.base.model.config,
                 [d["sha256"] for d in self.data_record], self.val_record, repr(regions)]
        if self._sampling != (None, None) or self.augmentation != Augmentation():
            parts += [repr(self._sampling), repr(self.augmentation)]
        h.update(repr(parts).encode())
        h.update(_state_hash(self.base.model).encode())
        return h.hexdigest()

    # -- control ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the running :meth:`iter` to finish after the current step and return the best bundle."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or bool(self.should_stop and self.should_stop())

    def planned_steps(self) -> int:
        """Steps planned (an estimate when only a time budget is set)."""
        total = math.ceil(self.epochs * self.steps_per_epoch) if self.epochs else None
        if self.minutes:
            if self.step and self.elapsed > 0:
                est = math.ceil(self.step * self.minutes * 60 / self.elapsed)
            else:
                est = total or self.steps_per_epoch
            total = min(total, est) if total else est
        return max(1, int(total))

    def _lr(self) -> float:
        total = self.planned_steps()
        warm = min(50, max(1, total // 20))
        if self.step < warm:
            factor = (self.step + 1) / warm
        else:
            prog = (self.step - warm) / max(1, total - warm)
            if self.minutes:
                prog = max(prog if self.epochs else 0.0, self.elapsed / (self.minutes * 60))
            prog = min(1.0, prog)
            factor = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * prog))
        return self.lr * self.lr_backoff * factor

    def _done(self) -> str | None:
        if self.epochs and self.step >= math.ceil(self.epochs * self.steps_per_epoch):
            return "completed"
        if self.minutes and self.elapsed >= self.minutes * 60:
            return "time budget"
        return None

    # -- results ----------------------------------------------------------------------------

    def best_bundle(self) -> ModelBundle:
        """The best weights so far (lowest validation loss; the last finite weights without
        validation) as a new bundle with the training record, model in eval mode on the CPU.

        Safe to call at any time, also after the generator was closed or failed.
        """
        state = self._best_state
        if state is None:
            current = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            state = current if _finite(current) else self.base.model.state_dict()
        model = type(self.base.model)(**self.base.model.config)
        model.load_state_dict(state)
        model.eval()
        meta = copy.deepcopy(self.base.metadata)
        meta.pop("classes_from", None)  # kept in the training record
        meta["training"] = self.record()
        base_name = self.base.metadata.get("name")
        if base_name and not self.record_is_scratch and not base_name.endswith("-finetuned"):
            meta["name"] = f"{base_name}-finetuned"
        meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta["package_version"] = _package_version()
        return ModelBundle(model, meta)

    @property
    def record_is_scratch(self) -> bool:
        """True when the starting model was never trained (made by :func:`new_bundle`)."""
        return not self.base.metadata.get("training") and self.base.path is None

    def record(self) -> dict[str, Any]:
        """The training record stored in the returned bundle's ``metadata["training"]``."""
        base_training = self.base.metadata.get("training") or {}
        scratch = self.record_is_scratch
        many = len(self.data_record) > 32
        data: dict[str, Any] = {"n_images": len(self.data_record)}
        if many:  # keep the file header small for large training sets
            data["names"] = [d["name"] for d in self.data_record]
            joined = "".join(d["sha256"] for d in self.data_record)
            data["sha256"] = hashlib.sha256(joined.encode()).hexdigest()
        else:
            data["images"] = self.data_record
        rec = {
            "base_model": None if scratch else self.base.name,
            "from_scratch": scratch,
            "data": data,
            "annotation": self.annotation,
            "task": self.base.task,
            "classes": self.base.class_names,
            "validation": self.val_record,
            "epochs": round(self.step / self.steps_per_epoch, 3),
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "patch_size": self.patch_size,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "time_s": round(self.elapsed, 1),
            "stopped": self.stop_reason,
            "best_step": self.best_step,
            "metrics": {"best_val_loss": self.best_val, **self.best_metrics},
            "package_version": _package_version(),
            "device": str(self.device),
            "precision": self.precision,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if scratch and self.base.metadata.get("classes_from"):
            rec["classes_from"] = self.base.metadata["classes_from"]
        rec.update(self.record_extra)
        if base_training:
            rec["base_training"] = base_training
        return rec

    # -- the generator ----------------------------------------------------------------------

    def iter(self) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
        """Train, yielding events; return the best bundle (see the module docstring).

        Yields:
            :class:`TrainStep` after every optimisation step, and one more (with
            ``val_loss`` and ``metrics``) after every validation (the first, at step 0,
            validates the starting model and has ``loss`` NaN); :class:`WarningEvent` for
            skipped steps, precision fall-backs, early stopping (``kind="info"``) ...
        """
        if self._started:
            raise RuntimeError("A Trainer runs once; make a new one (with resume=True to continue).")
        self._started = True
        for message in self.warnings:
            yield WarningEvent(message)
        if self.annotation == "scribbles" and self.base.task == "instances":
            yield WarningEvent("Scribbles on an instances model paint its classes: 1 background, 2 interior, "
                               "3 boundary.", kind="info")
        dev = self.device
        precision = self.precision
        if PRECISIONS[precision] is not None and not _autocast_works(dev, PRECISIONS[precision]):
            yield WarningEvent(f"{precision} is not supported on {dev.type}; training in fp32.")
            precision = "fp32"
        self._precision_used = precision
        model = self.model.to(dev)
        model.use_checkpointing(self.checkpointing)
        opt = AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
        if self.checkpoint_path is not None and self.resume and self.checkpoint_path.exists():
            message = self._load_checkpoint(opt, scaler)
            if message:
                yield WarningEvent(message)
            else:
                yield WarningEvent(f"Resumed from {self.checkpoint_path.name} at step {self.step}.",
                                   kind="info")
        t_start = time.monotonic() - self.elapsed
        last_save = time.monotonic()
        prefetch = Prefetcher(self.sampler, self.batch_size)
        try:
            while True:
                # a validation that is due (at step 0, or where an interrupted run stopped before it)
                if self.val_windows and self._last_val_step != self.step and self.step % self.val_every == 0:
                    yield self._validate(model, precision, float(np.mean(self._running)) if self._running
                                         else float("nan"), t_start)
                    self._running = []
                self.elapsed = time.monotonic() - t_start
                if self.stopping:
                    self.stop_reason = "stopped by user"
                    break
                if self.patience is not None and self._bad_validations >= self.patience:
                    self.stop_reason = "early stopping"
                    yield WarningEvent(f"Validation loss did not improve for {self.patience} "
                                       "validations; stopping early with the best weights.", kind="info")
                    break
                self.stop_reason = self._done()
                if self.stop_reason:
                    break
                batch = prefetch.next()
                lr = self._lr()
                # The step and its bookkeeping are never cut in the middle (a signal waits for the
                # end of this block), so a checkpoint saved on Ctrl-C/SIGTERM is a state the
                # uninterrupted run also passed through.
                with deferred_signals():
                    for group in opt.param_groups:
                        group["lr"] = lr
                    status, loss_value = self._train_step(model, opt, scaler, batch, precision)
                    self.sampler_state = prefetch.rng_state  # this batch is used up, whatever happened
                    if status == "bad":
                        self._bad_steps += 1
                        self.lr_backoff *= 0.5
                    elif status == "ok":
                        self._bad_steps = 0
                        self.step += 1
                        self._running.append(loss_value)
                if status == "overflow":  # fp16: the gradient scaler lowered its scale, as designed
                    continue
                if status == "bad":
                    yield WarningEvent(
                        f"The loss or its gradient became NaN or infinite at step {self.step + 1}; the step "
                        f"was skipped and the learning rate halved (now {self.lr * self.lr_backoff:.2e})."
                    )
                    if self._bad_steps >= MAX_BAD_STEPS:
                        self.stop_reason = "diverged"
                        yield WarningEvent(f"Training diverged ({self._bad_steps} failed steps in a row); "
                                           "keeping the best weights so far. Try a lower learning rate.")
                        break
                    continue
                self.elapsed = time.monotonic() - t_start
                yield TrainStep(step=self.step, total=self.planned_steps(),
                                epoch=self.step / self.steps_per_epoch, loss=loss_value, lr=lr,
                                elapsed=self.elapsed)
                if self.checkpoint_path is not None and (
                    self.step % self.checkpoint_every == 0
                    or time.monotonic() - last_save > self.checkpoint_minutes * 60
                ):
                    self._save_checkpoint(opt, scaler)
                    last_save = time.monotonic()
            if self.val_windows and self._last_val_step != self.step:
                yield self._validate(model, precision, float(np.mean(self._running)) if self._running
                                     else float("nan"), t_start)
            self.elapsed = time.monotonic() - t_start
            if self.checkpoint_path is not None:
                self._save_checkpoint(opt, scaler)
        except (GeneratorExit, KeyboardInterrupt):  # closed (Stop), or Ctrl-C/SIGTERM mid-step
            self.stop_reason = "interrupted"
            self.elapsed = time.monotonic() - t_start
            if self.checkpoint_path is not None:
                self._save_checkpoint(opt, scaler)
            raise
        finally:
            prefetch.close()
            model.use_checkpointing(False)
            model.eval()
        log.info("Training finished (%s) after %d steps in %.0f s; best validation loss %s.",
                 self.stop_reason, self.step, self.elapsed, self.best_val)
        return self.best_bundle()

    def _train_step(self, model: UNet, opt: AdamW, scaler: torch.amp.GradScaler,
                    batch: Any, precision: str) -> tuple[str, float]:
        """One optimisation step -> (status, loss).

        status is ``"ok"``; ``"bad"`` when the loss, gradient or new weights are not finite
        (nothing kept); ``"overflow"`` for an fp16 gradient overflow that the scaler handles.
        """
        dev = self.device
        x = torch.from_numpy(batch.image).to(dev, non_blocking=True)
        y = torch.from_numpy(batch.classes).to(dev, non_blocking=True)
        w = torch.from_numpy(batch.weight).to(dev, non_blocking=True)
        m = torch.from_numpy(batch.mask).to(dev, non_blocking=True)
        model.train()
        buffers = [b.detach().clone() for b in model.buffers()]
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, precision):
            logits = model(x)
        loss = losses.combined_loss(logits, y, w, m, self.dice_weight)
        if not torch.isfinite(loss):
            _restore(model, buffers)
            return "bad", float("nan")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        if not torch.isfinite(norm):
            _restore(model, buffers)
            opt.zero_grad(set_to_none=True)
            if scaler.is_enabled():  # fp16 overflow: the scaler skips the step and lowers its scale
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                return "overflow", float("nan")
            return "bad", float("nan")
        scaler.step(opt)
        scaler.update()
        if not _finite_params(model):
            # finite gradients can still give non-finite weights (a too large step): go back
            _restore(model, buffers)
            state = self._best_state or self.base.model.state_dict()
            model.load_state_dict(state)
            opt.state.clear()
            return "bad", float("nan")
        return "ok", float(loss.detach())

    @torch.no_grad()
    def _validate(self, model: UNet, precision: str, train_loss: float, t_start: float) -> TrainStep:
        model.eval()
        dev = self.device
        terms = None
        f1_counts = [0, 0, 0]
        metrics_on = self.base.task == "instances" and self.annotation == "instances"
        for k, (y0, x0, h, w) in self.val_windows:
            item, labels = self.val_items[k]
            img, cls, wt = item.window(y0, x0, h, w)
            mask = cls != IGNORE
            x = torch.from_numpy(img[None]).to(dev)
            with _autocast(dev, precision):
                logits = model(x)
            logits = logits.float()
            t = losses.loss_terms(
                logits, torch.from_numpy(np.where(mask, cls, 0).astype(np.int64)[None]).to(dev),
                torch.from_numpy(wt[None]).to(dev), torch.from_numpy(mask[None]).to(dev)).detach()
            terms = t if terms is None else terms + t
            if metrics_on:
                counts = _match_counts(torch.softmax(logits[0], 0).cpu().numpy(), labels, mask,
                                       (y0, x0, h, w), self.base.postprocess)
                f1_counts = [a + b for a, b in zip(f1_counts, counts)]
        model.train()
        val_loss = float(terms.total(self.dice_weight)) if terms is not None else float("nan")
        metrics: dict[str, Any] = {}
        if metrics_on:
            tp, fp, fn = f1_counts
            metrics["f1@0.5"] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        with deferred_signals():  # the validation's record is kept whole or not at all
            self._last_val_step = self.step
            if math.isfinite(val_loss) and _finite(state) and (
                self.best_val is None or val_loss < self.best_val - 1e-6 * abs(self.best_val)
            ):
                self.best_val, self.best_step, self.best_metrics = val_loss, self.step, dict(metrics)
                self._best_state = state
                self._bad_validations = 0
            else:
                self._bad_validations += 1
        self.elapsed = time.monotonic() - t_start
        metrics["best_val_loss"] = self.best_val
        return TrainStep(step=self.step, total=self.planned_steps(), epoch=self.step / self.steps_per_epoch,
                         loss=train_loss, lr=self._lr(), elapsed=self.elapsed, val_loss=val_loss,
                         metrics=metrics)

    def class_iou_iter(self, bundles: list[Any]) -> Generator[None, None, list[dict[str, float]]]:
        """IoU per class on the held-out windows, for each of ``bundles`` (scribble training).

        Only pixels that count (the painted scribbles inside the held-out part) are compared,
        so the figures say how well each model reproduces what was painted there.

        Args:
            bundles: models whose classes are this trainer's (its base model and the result).

        Yields:
            None after every window and model (a cancel point).

        Returns:
            One dict per bundle: ``{"IoU <class name>": iou, ..., "mean IoU": mean}`` over the
            classes present in the held-out scribbles or the prediction.
        """
        out = []
        for bundle in bundles:
            n = int(bundle.model.n_classes)
            inter, union = np.zeros(n, np.int64), np.zeros(n, np.int64)
            dev = next(bundle.model.parameters()).device
            bundle.model.eval()
            for k, (y0, x0, h, w) in self.val_windows:
                item, _ = self.val_items[k]
                img, cls, _ = item.window(y0, x0, h, w)
                mask = cls != IGNORE
                with torch.inference_mode():
                    logits = bundle.model(torch.from_numpy(img[None]).to(dev))
                i, u = class_overlap_counts(cls[mask], logits[0].argmax(0).cpu().numpy()[mask], n)
                inter, union = inter + i, union + u
                yield None
            names = bundle.class_names
            figures = {f"IoU {names[c]}": float(inter[c] / union[c]) for c in range(n) if union[c]}
            if figures:
                figures["mean IoU"] = float(np.mean(list(figures.values())))
            out.append(figures)
        return out

    # -- checkpoints ------------------------------------------------------------------------

    def _save_checkpoint(self, opt: AdamW, scaler: torch.amp.GradScaler) -> None:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        if not _finite(state):
            log.warning("Not saving a checkpoint: the current weights are not finite.")
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "step": self.step,
            "elapsed": self.elapsed,
            "lr_backoff": self.lr_backoff,
            "model": state,
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict(),
            "best_state": self._best_state,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "best_metrics": {k: float(v) for k, v in self.best_metrics.items()},
            "bad_validations": self._bad_validations,
            "last_val_step": self._last_val_step,
            "sampler_rng": self.sampler_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python_rng": _plain(random.getstate()),
            "numpy_rng": _plain(np.random.get_state(legacy=False)),
            "bad_steps": self._bad_steps,
            "running": list(self._running),
        }
        from ..io import temp_beside

        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(path)  # tagged with this process, so a later run removes it if we are killed
        try:
            torch.save(ckpt, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.debug("Checkpoint saved at step %d to %s.", self.step, path)

    def _load_checkpoint(self, opt: AdamW, scaler: torch.amp.GradScaler) -> str | None:
        path = self.checkpoint_path
        try:
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            return (f"The checkpoint {path.name} could not be read ({type(exc).__name__}); starting from "
                    "the beginning.")
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            return f"{path.name} is not a training checkpoint; starting from the beginning."
        if ckpt.get("fingerprint") != self.fingerprint:
            return (f"The checkpoint {path.name} belongs to another run (other data, model or settings); "
                    "starting from the beginning and overwriting it.")
        self.model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.elapsed = float(ckpt["elapsed"])
        self.lr_backoff = float(ckpt["lr_backoff"])
        self._best_state = ckpt["best_state"]
        self.best_val = ckpt["best_val"]
        self.best_step = ckpt["best_step"]
        self.best_metrics = dict(ckpt["best_metrics"])
        self._bad_validations = int(ckpt["bad_validations"])
        self._last_val_step = ckpt["last_val_step"]
        self.sampler.rng.bit_generator.state = ckpt["sampler_rng"]
        self.sampler_state = ckpt["sampler_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        if ckpt.get("python_rng"):
            version, state, gauss = ckpt["python_rng"]
            random.setstate((version, tuple(state), gauss))
        if ckpt.get("numpy_rng"):
            legacy = dict(ckpt["numpy_rng"])
            legacy["state"] = {k: np.asarray(v, dtype=np.uint32) if k == "key" else v
                               for k, v in legacy["state"].items()}
            np.random.set_state(legacy)
        self._bad_steps = int(ckpt.get("bad_steps", 0))
        self._running = [float(v) for v in ckpt.get("running", [])]
        log.info("Resumed from %s at step %d.", path, self.step)
        return None


# -- helpers --------------------------------------------------------------------------------


def _holdout_strip(mask: np.ndarray, fraction: float) -> np.ndarray | None:
    """bool (Y, X): the far strip across the longer side of ``mask``'s bounding box that holds
    about ``fraction`` of its True pixels (None when nothing would be left on either side)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    axis = 0 if (rows[-1] - rows[0]) >= (cols[-1] - cols[0]) else 1
    per_line = mask.sum(axis=1 - axis)
    cum = np.cumsum(per_line)
    total = int(cum[-1])
    cut = int(np.searchsorted(cum, (1 - fraction) * total, side="left")) + 1
    if cut >= len(cum) or cum[cut - 1] == 0 or cum[cut - 1] == total:
        return None
    strip = np.zeros(mask.shape, dtype=bool)
    if axis == 0:
        strip[cut:] = True
    else:
        strip[:, cut:] = True
    return strip


def _check_scribbles_fit(base: ModelBundle, top: int) -> None:
    """Refuse scribbles with a label value that has no class in ``base``."""
    n = int(base.model.n_classes)
    if top <= n:
        return
    if base.task == "instances":
        raise ValueError(
            f"The scribbles use label values up to {top}, but {base.name} is an instances model whose "
            "scribbles paint 1 background, 2 interior, 3 boundary; train a new semantic model from "
            f"scratch for {top} classes instead (no base model)."
        )
    raise ValueError(
        f"The scribbles use label values up to {top}, but {base.name} has {n} classes "
        f"({', '.join(base.class_names)}); paint values 1 to {n}, or train a new model from scratch "
        f"for {top} classes (no base model)."
    )


def _match_counts(prob: np.ndarray, labels: np.ndarray, mask: np.ndarray, window: tuple[int, int, int, int],
                  params: dict[str, Any]) -> tuple[int, int, int]:
    """(tp, fp, fn) of objects at IoU 0.5 in the counted part of a validation window."""
    y0, x0, h, w = window
    H, W = labels.shape
    gt = np.zeros((h, w), dtype=labels.dtype)
    sy, sx = slice(max(0, y0), min(H, y0 + h)), slice(max(0, x0), min(W, x0 + w))
    gt[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = labels[sy, sx]
    pred = labels_from_probabilities(prob, "instances", **params)
    gt = np.where(mask, gt, 0)
    pred = np.where(mask, pred, 0)
    m = match_instances(gt, pred, 0.5)
    return m.tp, m.fp, m.fn


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        with torch.autocast(device.type, dtype=dtype):
            x = torch.ones(1, 1, 3, 3, device=device)
            torch.nn.functional.conv2d(x, torch.ones(1, 1, 1, 1, device=device))
        return True
    except Exception as exc:  # a probe: the caller falls back to fp32 and warns the user
        log.info("autocast %s on %s is not supported here: %s", dtype, device, exc)
        return False


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and numpy arrays as lists of ints: what a
    ``weights_only`` load reads back (RNG states of ``random`` and numpy's legacy generator)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _finite_params(model: torch.nn.Module) -> bool:
    sums = torch.stack([p.detach().float().sum() for p in model.parameters()])
    return bool(torch.isfinite(sums).all())


def _restore(model: torch.nn.Module, buffers: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)


def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _package_version() -> str:
    from ..model.bundle import _package_version as version

    return version()


# -- one-call forms ---------------------------------------------------------------------------


def finetune_iter(
    bundle: ModelBundle | str | os.PathLike,
    images: Sequence[Any],
    labels: Sequence[np.ndarray],
    **options: Any,
) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
    """Fine-tune ``bundle`` on painted labels: a generator of events returning the best bundle.

    Args:
        bundle: the starting model (copied, never modified).
        images: list of (Y, X) / (Y, X, 3|4) arrays (see :class:`Trainer`).
        labels: list of integer (Y, X) arrays.
        **options: the keyword arguments of :class:`Trainer` (``annotation``, ``regions``,
            ``epochs``, ``minutes``, ``lr``, ``patch_size``, ``batch_size``, ``val_fraction``,
            ``seed``, ``device``, ``precision``, ``checkpointing``, ``early_stopping_patience``,
            ``checkpoint_path``, ``resume``, ``should_stop`` ...).

    Yields:
        :class:`TrainStep` and :class:`WarningEvent` (see :meth:`Trainer.iter`).

    Returns:
        A new :class:`ModelBundle` with the best weights and the training record. To stop
        early and still get it, pass ``should_stop`` (e.g. ``threading.Event().is_set``) or
        use :class:`Trainer` and its :meth:`~Trainer.stop` / :meth:`~Trainer.best_bundle`.
    """
    trainer = Trainer(bundle, images, labels, **options)
    return (yield from trainer.iter())


def finetune(
    bundle: ModelBundle | str | os.PathLike,
    images: Sequence[Any],
    labels: Sequence[np.ndarray],
    on_event: Callable[[Any], None] | None = None,
    **options: Any,
) -> ModelBundle:
    """Synchronous twin of :func:`finetune_iter`; ``on_event`` receives each event."""
    return run_to_end(finetune_iter(bundle, images, labels, **options), on_event)
