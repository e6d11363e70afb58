"""Painted labels -> training targets and the mask of pixels that count.

Two kinds of annotation (see ``DESIGN.md``):

- **instances**: one id per object. Targets are the classes background / interior /
  boundary (:func:`instance_classes`) and the U-Net border weight map (Ronneberger et al.,
  "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015, eq. 2),
  which makes the thin gaps between close objects count more. Only pixels inside the
  region (rectangles from a napari Shapes layer, or the whole image) count.
- **scribbles** (ilastik style): label value k >= 1 is class k - 1, value 0 is "not
  annotated" and never counts.

Every check raises :class:`ValueError` with one sentence that says what to do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
ANNOTATIONS = ("instances", "scribbles")

#: border-term values below this fraction of ``w0`` are dropped (bounds the distance windows)
BORDER_CUTOFF = 1e-3
#: class-balancing weights are clipped to this range, so a class of a few pixels cannot dominate
CLASS_WEIGHT_RANGE = (0.1, 10.0)


def instance_classes(labels: np.ndarray, touching_width: int = 0, core_fraction: float = 0.0) -> np.ndarray:
    """Instance labels (Y, X) -> classes (Y, X) uint8: 0 background, 1 interior, 2 boundary.

    A pixel is boundary when it belongs to an object and one of its 4-neighbours belongs to
    another label (background or another object), so touching objects are always split by
    boundary pixels and each object's interior is what the seeds are grown from.

    With ``touching_width`` w > 0, an object's pixels within w px (a disc) of *another
    object* are boundary as well (the 1 px outline included): where nuclei touch, the band of
    boundary between their interiors is about 2w px wide instead of 2 px, a wider margin for
    the seeds of two touching nuclei to stay apart. Edges against the background stay 1 px, so the objects'
    outlines (the foreground) are unchanged.

    With ``core_fraction`` f > 0, only an object's core is interior: the pixels whose distance to
    the object's outline is at least f times the largest such distance in that object (for a
    disc of radius r, the central disc of radius (1 - f) r); the rest of the object is boundary.
    The seeds then mark nucleus centres, which a network can place from the object's shape
    even where the line between two touching nuclei is not visible. The foreground is unchanged.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Labels must be 2D (Y, X), got shape {labels.shape}.")
    fg = labels > 0
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + labels.shape[0], dx : dx + labels.shape[1]] != centre
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[fg] = INTERIOR
    out[fg & edge] = BOUNDARY
    if touching_width > 0 and fg.any():
        out[fg & near_other_object(labels, int(touching_width))] = BOUNDARY
    if core_fraction > 0 and fg.any():
        out[fg & ~object_core(labels, fg & ~edge, float(core_fraction))] = BOUNDARY
    return out


def object_core(labels: np.ndarray, inner: np.ndarray, fraction: float) -> np.ndarray:
    """bool (Y, X): pixels of ``inner`` (objects without their outline) whose distance to the
    outline is at least ``fraction`` of the largest distance in their object."""
    dist = ndi.distance_transform_edt(inner)
    ids = labels[inner]
    if ids.size == 0:
        return np.zeros(labels.shape, bool)
    _, index = np.unique(ids, return_inverse=True)
    largest = np.zeros(int(index.max()) + 1, np.float64)
    np.maximum.at(largest, index, dist[inner])
    core = np.zeros(labels.shape, bool)
    core[inner] = dist[inner] >= fraction * largest[index]
    return core


def near_other_object(labels: np.ndarray, radius: int) -> np.ndarray:
    """bool (Y, X): pixels with a pixel of an object other than their own label within
    ``radius`` px (a disc); background pixels count any object. Largest and smallest object id
    over the disc (background left out of the smallest): another id is near exactly when
    either differs from the pixel's own."""
    labels = np.asarray(labels)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = yy**2 + xx**2 <= radius**2
    top = int(labels.max())
    highest = ndi.maximum_filter(labels, footprint=disc, mode="constant", cval=0)
    lowest = ndi.minimum_filter(np.where(labels > 0, labels, top + 1), footprint=disc,
                                mode="constant", cval=top + 1)
    own = np.where(labels > 0, labels, 0)
    return ((highest > 0) & (highest != own)) | ((lowest <= top) & (lowest != own))


@dataclass
class Targets:
    """What the loss needs for one image.

    Attributes:
        classes: int64 (Y, X) class index per pixel (meaningless where ``mask`` is False).
        weight: float32 (Y, X) per-pixel loss weight, 0 where ``mask`` is False.
        mask: bool (Y, X), True for the pixels that count in the loss.
        n_classes: number of classes the network predicts.
    """

    classes: np.ndarray
    weight: np.ndarray
    mask: np.ndarray
    n_classes: int

    @property
    def n_annotated(self) -> int:
        """Number of pixels that count."""
        return int(np.count_nonzero(self.mask))

    def present_classes(self) -> list[int]:
        """Sorted class indices that occur among the pixels that count."""
        counts = np.bincount(self.classes[self.mask].ravel(), minlength=self.n_classes)
        return [int(c) for c in np.flatnonzero(counts)]


# -- regions -----------------------------------------------------------------------------


def region_boxes(shape: tuple[int, int], region: Any) -> list[tuple[int, int, int, int]]:
    """Rectangles -> integer boxes ``(y0, x0, y1, x1)`` clipped to the image (empty ones dropped).

    Args:
        shape: (Y, X) of the image.
        region: None (the whole image), or a sequence of rectangles, each either 4 numbers
            ``(y0, x0, y1, x1)`` in pixel coordinates or an array of corner points (K, 2)
            as in a napari Shapes layer's ``data`` (its bounding box is used). Fractional
            coordinates are widened to whole pixels.

    Returns:
        list of ``(y0, x0, y1, x1)`` with ``0 <= y0 < y1 <= Y`` and ``0 <= x0 < x1 <= X``.
    """
    h, w = int(shape[0]), int(shape[1])
    if region is None:
        return [(0, 0, h, w)]
    boxes = []
    for rect in region:
        arr = np.asarray(rect, dtype=np.float64)
        if arr.shape == (4,):
            y0, x0, y1, x1 = arr
        elif arr.ndim == 2 and arr.shape[1] >= 2 and arr.shape[0] >= 1:
            pts = arr[:, -2:]  # napari shapes of a stack carry leading plane coordinates
            y0, x0 = pts.min(axis=0)
            y1, x1 = pts.max(axis=0)
        else:
            raise ValueError(
                f"A region rectangle must be (y0, x0, y1, x1) or an array of corner points, got shape "
                f"{arr.shape}; draw rectangles in the Shapes layer."
            )
        if not np.all(np.isfinite([y0, x0, y1, x1])):
            raise ValueError("A region rectangle has non-finite coordinates; redraw it.")
        y0, y1 = sorted((y0, y1))
        x0, x1 = sorted((x0, x1))
        by0, bx0 = max(0, math.floor(y0)), max(0, math.floor(x0))
        by1, bx1 = min(h, math.ceil(y1)), min(w, math.ceil(x1))
        if by1 > by0 and bx1 > bx0:
            boxes.append((by0, bx0, by1, bx1))
    return boxes


def scaled_region(region: Any, shape: tuple[int, int], to_shape: tuple[int, int]) -> Any:
    """``region`` of an image of ``shape`` (Y, X) as boxes of the same image resized to
    ``to_shape``; None stays None (the whole image)."""
    if region is None:
        return None
    (h, w), (th, tw) = shape, to_shape
    return [(y0 * th / h, x0 * tw / w, y1 * th / h, x1 * tw / w)
            for y0, x0, y1, x1 in region_boxes(shape, region)]


def region_mask(shape: tuple[int, int], region: Any) -> np.ndarray:
    """bool (Y, X): True inside any rectangle of ``region`` (everywhere when it is None)."""
    mask = np.zeros((int(shape[0]), int(shape[1])), dtype=bool)
    for y0, x0, y1, x1 in region_boxes(shape, region):
        mask[y0:y1, x0:x1] = True
    return mask


# -- weights ------------------------------------------------------------------------------


def class_balance_weights(classes: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class weights w_c that balance the class frequencies among the counted pixels.

    ``w_c = N / (K * n_c)`` for the K classes present (N counted pixels, n_c of class c), so
    the mean weight over counted pixels is 1, clipped to :data:`CLASS_WEIGHT_RANGE`.

    Returns:
        float32 (n_classes,); 0 for absent classes.
    """
    counts = np.bincount(classes[mask].ravel(), minlength=n_classes)[:n_classes].astype(np.float64)
    present = counts > 0
    out = np.zeros(n_classes, dtype=np.float64)
    if present.any():
        out[present] = counts.sum() / (present.sum() * counts[present])
        out[present] = np.clip(out[present], *CLASS_WEIGHT_RANGE)
    return out.astype(np.float32)


def border_weight(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The separation-border term of the U-Net weight map, ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.

    Ronneberger et al. 2015, eq. 2: d1 and d2 are the distances (px) to the nearest and the
    second-nearest object. Each object's Euclidean distance transform is computed only in
    its bounding box widened by the distance beyond which the term falls below
    ``BORDER_CUTOFF * w0`` (about 3.7 sigma), so the cost grows with the number of objects
    times their size, not with the image area times the number of objects; values below
    the cutoff are 0.

    Args:
        labels: integer (Y, X) instance labels, 0 = background.
        w0: weight of the border term (10 in the paper).
        sigma: its width in pixels (5 in the paper).

    Returns:
        float32 (Y, X), 0 where fewer than two objects are within reach.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    if w0 <= 0 or sigma <= 0 or not labels.any():
        return out
    reach = sigma * math.sqrt(2.0 * math.log(1.0 / BORDER_CUTOFF))
    pad = math.ceil(reach)
    h, w = labels.shape
    d1 = np.full(labels.shape, np.inf, dtype=np.float32)
    d2 = np.full(labels.shape, np.inf, dtype=np.float32)
    ids, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape).astype(np.int32)  # 1..n for objects, 0 for background
    if ids[0] != 0:
        compact += 1
    for k, sl in enumerate(ndi.find_objects(compact), start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - pad), min(h, sl[0].stop + pad)
        x0, x1 = max(0, sl[1].start - pad), min(w, sl[1].stop + pad)
        win = (slice(y0, y1), slice(x0, x1))
        d = ndi.distance_transform_edt(compact[win] != k).astype(np.float32)
        a, b = d1[win], d2[win]
        b[...] = np.where(d < a, a, np.minimum(b, d))
        np.minimum(a, d, out=a)
    s = d1 + d2
    near = s <= reach
    out[near] = w0 * np.exp(-(s[near] ** 2) / (2.0 * sigma**2))
    return out


# -- targets ------------------------------------------------------------------------------


def check_labels(image_shape: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """Validate painted labels against the image's spatial shape (Y, X); return them as an array.

    Raises:
        ValueError: wrong shape, not integers, or negative values.
    """
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(image_shape):
        raise ValueError(
            f"The labels have shape {tuple(labels.shape)} but the image is {tuple(image_shape)}; "
            "paint the labels on a layer of the image's size."
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"The labels hold {labels.dtype} values, not integers; use a Labels layer (integer ids)."
        )
    if labels.size and labels.min() < 0:
        raise ValueError("The labels contain negative values; use 0 for background and 1, 2, ... for labels.")
    return labels


def instance_targets(
    labels: np.ndarray,
    region: Any = None,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    touching_width: int = 0,
    core_fraction: float = 0.0,
    ignore: np.ndarray | None = None,
) -> Targets:
    """Instance labels -> 3-class targets with the U-Net weight map, inside ``region``.

    Classes come from :func:`instance_classes` (with ``touching_width`` and ``core_fraction``). The weight is
    ``w_c(x) + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` (Ronneberger et al. 2015, eq. 2) with ``w_c`` from
    :func:`class_balance_weights` (1 when ``balance`` is False). The border term is added on
    background and boundary pixels, not on object interiors: in the 3-class scheme the
    separation that matters is the gap between objects and the boundary pixels where they
    touch, while the interior is what seeds grow from.

    Each rectangle of ``region`` is processed on its own crop of the labels, so labels
    outside the region have no influence at all (an object cut by a rectangle's edge gets
    no boundary along that edge, as at the image border).

    Args:
        labels: integer (Y, X), one id per object, 0 = background.
        region: see :func:`region_boxes`; None for the whole image.
        w0, sigma: border-term weight and width (px).
        balance: add the class-balancing weights (else w_c = 1).
        touching_width: px of each object next to another object that are boundary too.
        core_fraction: only the core of each object is interior (0: all but the outline).
        ignore: bool (Y, X), True where nothing counts (e.g. nuclei the annotators left out);
            the targets are made as if it were not there, then its pixels are taken out.

    Returns:
        :class:`Targets` with ``n_classes == 3``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Labels must be 2D (Y, X), got shape {labels.shape}.")
    classes = np.zeros(labels.shape, dtype=np.int64)
    border = np.zeros(labels.shape, dtype=np.float32)
    mask = np.zeros(labels.shape, dtype=bool)
    for y0, x0, y1, x1 in region_boxes(labels.shape, region):
        crop = labels[y0:y1, x0:x1]
        cls = instance_classes(crop, touching_width, core_fraction)
        classes[y0:y1, x0:x1] = cls
        b = border_weight(crop, w0, sigma)
        b[cls == INTERIOR] = 0.0
        border[y0:y1, x0:x1] = b
        mask[y0:y1, x0:x1] = True
    return _finish(classes, border, _counted(mask, ignore), 3, balance)


def _counted(mask: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """``mask`` without the pixels of ``ignore`` (same shape, or ValueError)."""
    if ignore is None:
        return mask
    ignore = np.asarray(ignore)
    if ignore.shape != mask.shape:
        raise ValueError(f"The ignore mask has shape {ignore.shape}, the labels {mask.shape}; give one "
                         "mask of the image's size.")
    return mask & ~ignore.astype(bool)


def scribble_targets(
    labels: np.ndarray, n_classes: int, region: Any = None, *, balance: bool = True,
    ignore: np.ndarray | None = None,
) -> Targets:
    """Scribbles -> targets: value k >= 1 is class k - 1, 0 is not annotated (never counts).

    Args:
        labels: integer (Y, X) painted values, 0 = not annotated.
        n_classes: classes of the network; values above it are an error.
        region: optional rectangles (see :func:`region_boxes`) that further restrict the
            pixels that count.
        balance: weight pixels by :func:`class_balance_weights` (else 1).

    Returns:
        :class:`Targets` with ``mask = (labels > 0) & region``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"Labels must be 2D (Y, X), got shape {labels.shape}.")
    top = int(labels.max()) if labels.size else 0
    if top > n_classes:
        raise ValueError(
            f"Label value {top} has no class: this model has {n_classes} classes, so paint with "
            f"values 1 to {n_classes} (0 = not annotated)."
        )
    mask = labels > 0
    if region is not None:
        mask &= region_mask(labels.shape, region)
    mask = _counted(mask, ignore)
    classes = np.where(mask, labels.astype(np.int64) - 1, 0)
    return _finish(classes, np.zeros(labels.shape, dtype=np.float32), mask, n_classes, balance)


def _finish(classes: np.ndarray, extra: np.ndarray, mask: np.ndarray, n_classes: int,
            balance: bool) -> Targets:
    if balance:
        wc = class_balance_weights(classes, mask, n_classes)[classes]
    else:
        wc = np.ones(classes.shape, dtype=np.float32)
    weight = np.where(mask, wc + extra, np.float32(0.0)).astype(np.float32)
    classes = np.where(mask, classes, 0).astype(np.int64)
    return Targets(classes=classes, weight=weight, mask=mask, n_classes=n_classes)


def make_targets(
    image_shape: tuple[int, ...],
    labels: np.ndarray,
    annotation: str = "instances",
    region: Any = None,
    *,
    n_classes: int = 3,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    touching_width: int = 0,
    core_fraction: float = 0.0,
    ignore: np.ndarray | None = None,
) -> Targets:
    """Validated targets for one image.

    Args:
        image_shape: spatial shape (Y, X) of the image the labels were painted on.
        labels: integer (Y, X) labels (see :func:`instance_targets`, :func:`scribble_targets`).
        annotation: ``"instances"`` or ``"scribbles"``.
        region: optional rectangles; None = the whole image.
        n_classes: network classes (scribbles; instances always use 3).
        w0, sigma, balance, touching_width, core_fraction, ignore: see :func:`instance_targets`.

    Raises:
        ValueError: labels of another shape or type, an unknown annotation kind, a label
            value without a class.
    """
    labels = check_labels(tuple(image_shape), labels)
    if annotation == "instances":
        return instance_targets(labels, region, w0=w0, sigma=sigma, balance=balance,
                                touching_width=touching_width, core_fraction=core_fraction, ignore=ignore)
    if annotation == "scribbles":
        return scribble_targets(labels, n_classes, region, balance=balance, ignore=ignore)
    raise ValueError(f"Unknown annotation {annotation!r}: use 'instances' or 'scribbles'.")


def check_annotation(n_annotated: int, classes_present: Sequence[int], has_object: bool,
                     annotation: str) -> None:
    """Refuse a training set with nothing to learn from, from its summary.

    Args:
        n_annotated: pixels that count, over all images.
        classes_present: class indices present among them, over all images.
        has_object: (instances) whether any object id lies among them.
        annotation: ``"instances"`` or ``"scribbles"``.

    Raises:
        ValueError: no pixel counts anywhere; instances without a single object inside the
            region; scribbles of only one class.
    """
    if not n_annotated:
        if annotation == "scribbles":
            raise ValueError("No pixel is annotated: paint scribbles (values 1, 2, ...) inside the region.")
        raise ValueError("No pixel is annotated: the region is empty or outside the image; draw it over "
                         "the image or remove it.")
    if annotation == "instances":
        if not has_object:
            raise ValueError("No object is painted inside the region: paint at least one object (one "
                             "label per object) or move the region over painted objects.")
    else:
        present = sorted(set(classes_present))
        if len(present) < 2:
            raise ValueError(
                f"Only class {present[0] + 1} is painted: paint scribbles of at least two classes so "
                "the network can learn to tell them apart."
            )


def check_annotated(targets: Sequence[Targets], labels: Sequence[np.ndarray], annotation: str) -> None:
    """:func:`check_annotation` for a list of :class:`Targets` and the labels they came from."""
    check_annotation(
        sum(t.n_annotated for t in targets),
        {c for t in targets for c in t.present_classes()},
        any((np.asarray(lab)[t.mask] > 0).any() for t, lab in zip(targets, labels)),
        annotation,
    )
