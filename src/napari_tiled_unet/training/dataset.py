"""The data of a training run: checks, targets, the validation split and the fingerprint.

:class:`TrainingSet` takes the user's images and painted labels, refuses what cannot be
trained on (one sentence each), makes the targets (:mod:`.targets`) and normalizes each
image with the model's recipe from statistics of the whole image, then holds part of the
annotation out for validation.

**Validation** is held out by area, never by random pixels: with enough images (``n *
val_fraction >= 1``, or ``val_images`` given) whole images are held out; otherwise each
annotated image gives up a strip at the far end of its annotated area (across its longer
side) holding ``val_fraction`` of its annotated pixels, and training patches never count
pixels of that strip.

**Live data.** :meth:`TrainingSet.update` replaces one image's labels (and region) while a
run goes on: its targets are made again and its held-out part stays where it was, so
strokes painted during training join the training data without a restart.

The :meth:`~TrainingSet.fingerprint` names the data, the settings that shape the patches
and the starting weights; a checkpoint resumes only a run with the same fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import normalization, objectsize
from ..model.bundle import ModelBundle
from .config import TrainConfig
from .data import IGNORE, Augmentation, TrainingImage, cover_windows
from .targets import check_annotation, check_labels, make_targets, scaled_region

log = logging.getLogger(__name__)

#: fewest held-out pixels for a validation that means anything
MIN_VAL_PIXELS = 64
#: side of the windows validation runs the model on
VAL_WINDOW = 1024


def as_channels_first(image: Any, n_channels: int, channel_axis: int | None = None) -> np.ndarray:
    """An image as (C, Y, X) for a model with ``n_channels`` inputs (a view when possible).

    Args:
        image: (Y, X) grayscale; (Y, X, 3|4) RGB(A) when ``channel_axis`` is None (alpha
            is dropped for a 3-channel model); any 3D layout when ``channel_axis`` says
            which axis holds the channels.
        n_channels: input channels of the model.
        channel_axis: axis of the channels in ``image``, or None (see above).

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


def largest_label(labels: Sequence[Any]) -> int:
    """The largest value in a list of label arrays (0 when all are empty)."""
    return max((int(np.max(lab)) for lab in labels if np.size(lab)), default=0)


def check_scribbles_fit(base: ModelBundle, top: int) -> None:
    """Refuse scribbles with a label value (up to ``top``) that has no class in ``base``."""
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


def holdout_strip(mask: np.ndarray, fraction: float) -> np.ndarray | None:
    """bool (Y, X): the far strip across the longer side of ``mask``'s bounding box that holds
    about ``fraction`` of its True pixels (None when nothing would be left on either side)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    axis = 0 if (rows[-1] - rows[0]) >= (cols[-1] - cols[0]) else 1
    cum = np.cumsum(mask.sum(axis=1 - axis))
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


def state_hash(model: torch.nn.Module) -> str:
    """sha256 of a model's state dict (names and bytes)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _data_hash(image: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (image, labels):
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class _Slot:
    """One image: what :meth:`TrainingSet.update` needs to make its targets again."""

    image: np.ndarray  # (C, Y, X)
    stats: np.ndarray | None
    region: Any
    role: str  # "train", "val" (held out whole) or "strip" (a strip held out)
    strip: np.ndarray | None = None
    item: TrainingImage | None = None
    labels: np.ndarray | None = None
    native: tuple[int, ...] = ()  # (Y, X) of the image as given (``image`` may be resized)
    ignore: np.ndarray | None = None  # bool (Y, X) at the training size: pixels that never count


class TrainingSet:
    """Images, their targets and the validation split of one run.

    Args:
        base: the starting model (its channels, classes and normalization recipe).
        images: one array per image: (Y, X), (Y, X, 3|4) RGB(A), or any 3D layout with
            ``channel_axis``. Read once into memory.
        labels: one integer (Y, X) array per image: instance ids (``annotation="instances"``)
            or scribbles (value k >= 1 is class k - 1, 0 is not annotated).
        config: the run's :class:`TrainConfig` (annotation, patch size, split fraction, seed,
            target weights).
        regions: None, or one entry per image: None (whole image) or a list of rectangles
            ``(y0, x0, y1, x1)`` / corner arrays from a napari Shapes layer; only pixels
            inside count.
        ignore: None, or one entry per image: None or a bool (Y, X) mask of the image's size,
            True where nothing counts (objects the annotators left out); kept through
            :meth:`update`.
        channel_axis: channel axis of 3D images (see :func:`as_channels_first`).
        names: names of the images for the training record (default ``image 0`` ...).
        val_images: indices of images to hold out whole for validation (overrides the
            automatic split).
        sample_weights: per image, a relative chance of drawing its patches (times its
            annotated area); used to mix training sets in chosen proportions (mixture.py).
        diameters: per image, its median object diameter (px) or None, for scale augmentation.
        scale: resize every image (and its labels and region) by this factor before training:
            the scale the base model's ``diameter="auto"`` segmented them at, so that a model is
            fine-tuned on objects of the sizes it was trained on. Labels and regions are given
            at the images' own size; None or 1 trains at that size.

    Raises:
        ValueError: bad input, with one sentence that says what to do.
    """

    def __init__(self, base: ModelBundle, images: Sequence[Any], labels: Sequence[np.ndarray],
                 config: TrainConfig, *, regions: Sequence[Any] | None = None,
                 channel_axis: int | None = None, names: Sequence[str] | None = None,
                 val_images: Sequence[int] | None = None, sample_weights: Sequence[float] | None = None,
                 diameters: Sequence[float | None] | None = None, scale: float | None = None,
                 ignore: Sequence[np.ndarray | None] | None = None) -> None:
        annotation = config.annotation
        self.scale = objectsize.check_training_scale(scale)
        if annotation == "instances" and base.task != "instances":
            raise ValueError("Instance labels need an instances model (3 classes); paint scribbles for a "
                             "semantic model, or start a new instances model.")
        if isinstance(images, np.ndarray) or isinstance(labels, np.ndarray):
            raise ValueError("Give images and labels as lists (one array per image).")
        if len(images) != len(labels) or not images:
            raise ValueError(f"Give one labels array per image ({len(images)} images, {len(labels)} labels).")
        if annotation == "scribbles":
            check_scribbles_fit(base, largest_label(labels))
        if regions is not None and len(regions) != len(images):
            raise ValueError(f"Give one region entry per image (None for the whole image), "
                             f"got {len(regions)} for {len(images)} images.")
        self.base, self.config = base, config
        self.names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        if len(self.names) != len(images):
            raise ValueError("Give one name per image.")
        per_image = (("sample_weights", sample_weights), ("diameters", diameters), ("ignore", ignore))
        for what, values in per_image:
            if values is not None and len(values) != len(images):
                raise ValueError(f"Give one of {what} per image ({len(values)} for {len(images)} images).")
        self._sampling = (list(sample_weights) if sample_weights is not None else None,
                          list(diameters) if diameters is not None else None)
        self._regions = regions
        self._ignored: list[str] = []
        self.channel_axis = channel_axis
        self.data_record: list[dict[str, str]] = []
        self._slots: list[_Slot] = []
        n_annotated, present, has_object = 0, set(), False
        for i, (img, lab) in enumerate(zip(images, labels)):
            chw = as_channels_first(img, base.n_channels, channel_axis)
            native = chw.shape[1:]
            if self.resizes:
                chw = objectsize.resize(chw, "CYX", objectsize.scaled_shape(native, self.scale))
            slot = _Slot(chw, None, None, "train", native=native)
            slot.region = self._scaled_region(slot, regions[i] if regions is not None else None)
            if ignore is not None and ignore[i] is not None:
                slot.ignore = self._scaled_ignore(slot, ignore[i])
                self._ignored.append(f"{i}:{hashlib.sha256(np.packbits(slot.ignore)).hexdigest()}")
            self._slots.append(slot)
            t, lab = self._targets(i, lab)
            n_annotated += t.n_annotated
            present.update(t.present_classes())
            has_object = has_object or bool(annotation == "instances" and (lab[t.mask] > 0).any())
            slot.item = self._item(i, t)
            slot.labels = lab
            self.data_record.append({"name": self.names[i], "sha256": _data_hash(chw, lab)})
        check_annotation(n_annotated, present, has_object, annotation)
        m = base.model.size_multiple
        largest = max(max(s.item.shape) for s in self._slots if s.item is not None)
        p = min(int(config.patch_size), largest)
        self.patch_size = -(-p // m) * m
        self._split(val_images, float(config.val_fraction))

    # -- targets ------------------------------------------------------------------------------

    @property
    def resizes(self) -> bool:
        """Whether images are trained at another size than their own (``scale``)."""
        return self.scale is not None and self.scale != 1.0

    def _scaled_region(self, slot: _Slot, region: Any) -> Any:
        """``region`` (at the image's own size) as boxes at the training size."""
        if not self.resizes:
            return region
        return scaled_region(region, slot.native, slot.image.shape[1:])

    def _scaled_ignore(self, slot: _Slot, ignore: np.ndarray) -> np.ndarray:
        """An ignore mask (at the image's own size) as bool at the training size."""
        ignore = np.asarray(ignore)
        if ignore.shape != tuple(slot.native):
            raise ValueError(f"An ignore mask has shape {ignore.shape}, its image {tuple(slot.native)}; give "
                             "one mask of the image's size.")
        ignore = ignore.astype(bool)
        if self.resizes:
            ignore = objectsize.resize_labels(ignore.astype(np.uint8), slot.image.shape[1:]) > 0
        return ignore

    def _targets(self, i: int, labels: np.ndarray) -> tuple[Any, np.ndarray]:
        c, slot = self.config, self._slots[i]
        lab = check_labels(slot.native, labels)
        if self.resizes:
            lab = objectsize.resize_labels(lab, slot.image.shape[1:])
        t = make_targets(slot.image.shape[1:], lab, c.annotation, slot.region,
                         n_classes=int(self.base.model.n_classes), w0=c.w0, sigma=c.sigma, balance=c.balance,
                         touching_width=c.touching_width, core_fraction=c.core_fraction,
                         ignore=slot.ignore)
        return t, lab

    def _item(self, i: int, targets: Any) -> TrainingImage | None:
        """The compact training image of image ``i`` (None when nothing is annotated)."""
        if not targets.n_annotated:
            return None
        slot = self._slots[i]
        if slot.stats is None:
            try:
                slot.stats = normalization.compute_stats(slot.image, self.base.normalization, channel_axis=0)
            except normalization.ImageError as exc:
                raise normalization.ImageError(f"{self.names[i]}: {exc}") from None
        item = TrainingImage(slot.image, targets, slot.stats, name=self.names[i])
        weights, diameters = self._sampling
        if weights is not None:
            item.sample_weight = float(weights[i])
        if diameters is not None:
            item.diameter = diameters[i]
        return item

    # -- split --------------------------------------------------------------------------------

    def _split(self, val_images: Sequence[int] | None, fraction: float) -> None:
        annotated = [i for i, s in enumerate(self._slots) if s.item is not None]
        self.warnings: list[str] = []
        rng = np.random.default_rng(self.config.seed)
        if val_images is not None:
            held = sorted({int(i) for i in val_images})
            if any(i < 0 or i >= len(self._slots) for i in held):
                raise ValueError(f"val_images must be image indices between 0 and {len(self._slots) - 1}.")
            mode = "images"
        elif fraction <= 0:
            held, mode = [], "none"
        elif len(annotated) * fraction >= 1:
            k = min(len(annotated) - 1, max(1, round(len(annotated) * fraction)))
            held, mode = sorted(int(i) for i in rng.choice(annotated, size=k, replace=False)), "images"
        else:
            held, mode = [], "strips"
        for i in annotated:
            slot = self._slots[i]
            if i in held:
                slot.role = "val"
            elif mode == "strips":
                slot.strip = holdout_strip(slot.item.classes != IGNORE, fraction)
                slot.role = "strip" if slot.strip is not None else "train"
        self._arrange()
        if not any(it.n_counted for it in self.train_items):
            raise ValueError("Every annotated image is held out for validation; annotate more images or "
                             "hold out fewer.")
        n_val = sum(it.n_counted for it, _ in self.val_items)
        if mode != "none" and n_val < MIN_VAL_PIXELS:
            self.warnings.append("Too little is annotated to hold out a validation part; training without "
                                 "validation and keeping the last weights.")
            for slot in self._slots:
                slot.role, slot.strip = "train", None
            self._arrange()
            mode = "none"
        for slot in self._slots:  # only held-out labels are needed (object matching); free the others
            if slot.role == "train":
                slot.labels = None
        if mode == "images":
            self.val_description = f"{len(self.val_items)} held-out image(s) for validation"
            self.val_record: dict[str, Any] = {"kind": "images",
                                               "names": [it.name for it, _ in self.val_items]}
        elif mode == "strips":
            self.val_description = f"a strip of {fraction:.0%} of the annotated area held out for validation"
            self.val_record = {"kind": "strips", "fraction": fraction}
        else:
            self.val_description = "no validation"
            self.val_record = {"kind": "none"}

    def _arrange(self) -> None:
        """The training and held-out lists from the slots, in image order."""
        self.train_items: list[TrainingImage] = []
        #: (image, its labels) held out for validation
        self.val_items: list[tuple[TrainingImage, np.ndarray]] = []
        for slot in self._slots:
            if slot.item is None:
                continue
            if slot.role == "val":
                self.val_items.append((slot.item, slot.labels))
            elif slot.role == "strip":
                self.val_items.append((slot.item.restrict(slot.strip), slot.labels))
                self.train_items.append(slot.item.restrict(~slot.strip))
            else:
                self.train_items.append(slot.item)
        m = self.base.model.size_multiple
        self.val_windows = [(k, w) for k, (it, _) in enumerate(self.val_items)
                            for w in cover_windows(it, VAL_WINDOW, m, margin=2 * m)]

    def check_labels(self, index: int, labels: np.ndarray) -> np.ndarray:
        """``labels`` checked against image ``index`` (shape, integer values >= 0)."""
        return check_labels(self._slots[index].native, labels)

    def update(self, index: int, labels: np.ndarray, region: Any = ...) -> None:
        """Replace image ``index``'s labels (and ``region``, when given) during a run.

        Its targets are made again; a held-out image or strip stays held out, so the
        validation keeps measuring the same area. The fingerprint is not changed: a run
        whose data changed as it went is not one a checkpoint can replay.

        Raises:
            ValueError: labels of another shape, or an update that leaves nothing to train on.
        """
        slot = self._slots[index]
        if region is not ...:
            slot.region = self._scaled_region(slot, region)
        t, lab = self._targets(index, labels)
        item = self._item(index, t)
        if item is not None and slot.item is None and slot.role == "val":
            slot.role = "train"
        slot.item, slot.labels = item, (lab if slot.role != "train" else None)
        self._arrange()
        if not self.train_items:
            raise ValueError("Nothing annotated is left to train on; paint labels again.")

    # -- derived ------------------------------------------------------------------------------

    def steps_per_epoch(self, batch_size: int) -> int:
        """The annotated area (bounding boxes, at least one patch per image) over a batch's
        pixels, at least 10."""
        area = 0
        for it in self.train_items:
            y0, x0, y1, x1 = it.counted_bbox()
            area += max(y1 - y0, self.patch_size) * max(x1 - x0, self.patch_size)
        return max(10, math.ceil(area / (batch_size * self.patch_size**2)))

    def record(self) -> dict[str, Any]:
        """The ``data`` entry of the training record: the images' names and sha256 (for more
        than 32 images, the names and one sha256 of them all, to keep the file header small)."""
        images = self.data_record
        if len(images) <= 32:
            return {"n_images": len(images), "images": images}
        joined = "".join(d["sha256"] for d in images)
        return {"n_images": len(images), "names": [d["name"] for d in images],
                "sha256": hashlib.sha256(joined.encode()).hexdigest()}

    def fingerprint(self) -> str:
        """sha256 of the data, the settings that shape the patches and the starting weights
        (what a checkpoint must match to be resumed; keep it stable across versions)."""
        c = self.config
        h = hashlib.sha256()
        parts = [c.annotation, self.patch_size, c.batch_size, c.seed, self.base.model.config,
                 [d["sha256"] for d in self.data_record], self.val_record, repr(self._regions)]
        if self.resizes:
            parts.append(self.scale)
        if c.touching_width:
            parts.append(("touching_width", c.touching_width))
        if c.core_fraction:
            parts.append(("core_fraction", c.core_fraction))
        if self._ignored:
            parts.append(("ignore", self._ignored))
        if self._sampling != (None, None) or c.augmentation != Augmentation():
            parts += [repr(self._sampling), repr(c.augmentation)]
        h.update(repr(parts).encode())
        h.update(state_hash(self.base.model).encode())
        return h.hexdigest()
