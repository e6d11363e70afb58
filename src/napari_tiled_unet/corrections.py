"""Learning from corrections: the part of a corrected result layer that counts for training.

The user segments an image, then fixes the result layer with napari's brush, eraser and
fill. Fine-tuning on the whole corrected layer would treat every untouched pixel as correct,
so it is restricted to the **region that counts**: every pixel whose label differs from what
the plugin wrote, widened by a margin, cut into rectangles (one per group of nearby edits)
that the trainer takes like the rectangles of a napari Shapes layer.

**Untouched areas.** Inside the margin, untouched pixels count as they are: a user who
redraws a nucleus looks at its surroundings, so the background around the fix, the neighbour
it was merged with and the boundary between them are confirmed, and the network learns the
corrected object *in its context* (without it, erasing a false object would teach
"background here" from its pixels alone, and splitting a merged pair would teach only the cut
line). Far from every edit, untouched pixels do not count: a user who fixed 10 objects has not
checked the 300 others, and counting them as correct would teach the model its own mistakes
there, and those pixels would outnumber the corrected ones many times over. A user who did
check the whole image can say so (``untouched="correct"``), which makes the whole layer the
annotation.

Everything here is numpy: no Qt, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: default margin (px) around the edits when the model's object diameter is unknown
DEFAULT_MARGIN = 16
UNTOUCHED = ("ignore", "correct")


@dataclass
class CorrectionRegion:
    """Where a corrected result layer counts for training.

    Attributes:
        edited: bool (Y, X), the pixels whose label differs from what the plugin wrote.
        boxes: rectangles ``(y0, x0, y1, x1)`` (end exclusive) that count: the edits widened by
            ``margin`` px, one rectangle per group of overlapping widened edits, clipped to the
            image; the whole image when ``untouched == "correct"``.
        margin: the margin used (px).
        untouched: ``"ignore"`` (untouched pixels count only inside the margin) or ``"correct"``.
    """

    edited: np.ndarray
    boxes: list[tuple[int, int, int, int]]
    margin: int
    untouched: str

    @property
    def n_edited(self) -> int:
        """Number of edited pixels."""
        return int(np.count_nonzero(self.edited))

    def mask(self) -> np.ndarray:
        """bool (Y, X): True inside the rectangles that count."""
        out = np.zeros(self.edited.shape, dtype=bool)
        for y0, x0, y1, x1 in self.boxes:
            out[y0:y1, x0:x1] = True
        return out

    def describe(self) -> str:
        """One line for the widget and the log."""
        if self.untouched == "correct":
            return f"{self.n_edited} edited pixels; the whole layer counts (untouched = correct)"
        area = int(self.mask().sum())
        return (f"{self.n_edited} edited pixels in {len(self.boxes)} area(s) of "
                f"{area / self.edited.size:.1%} of the image (margin {self.margin} px)")


def margin_for(object_diameter: float | None) -> int:
    """The margin around edits: one object diameter (a neighbour's worth of context), 8-64 px;
    :data:`DEFAULT_MARGIN` when the diameter is unknown."""
    if not object_diameter or not np.isfinite(object_diameter) or object_diameter <= 0:
        return DEFAULT_MARGIN
    return int(np.clip(round(float(object_diameter)), 8, 64))


def edited_pixels(written: np.ndarray, current: np.ndarray) -> np.ndarray:
    """bool (Y, X): where ``current`` (the layer now) differs from ``written`` (what the plugin wrote).

    A changed id counts as an edit even when the object keeps its shape (a fill with another
    id): what the user touched is what the user checked.

    Raises:
        ValueError: arrays of different shapes, or not 2D.
    """
    written, current = np.asarray(written), np.asarray(current)
    if written.shape != current.shape:
        raise ValueError(f"The corrected layer {current.shape} and the segmentation it came from "
                         f"{written.shape} differ in shape; correct the result layer itself.")
    if written.ndim != 2:
        raise ValueError(f"Corrections are read from one 2D plane at a time, got shape {written.shape}.")
    return written != current


def merge_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Rectangles that overlap or touch are replaced by their bounding box, until none do.

    Merging keeps the instance targets whole: an object that lies in two overlapping
    rectangles would otherwise get a boundary along each rectangle's edge.
    """
    out = [tuple(int(v) for v in b) for b in boxes]
    changed = True
    while changed:
        changed = False
        merged: list[tuple[int, int, int, int]] = []
        for b in out:
            for k, m in enumerate(merged):
                if b[0] <= m[2] and m[0] <= b[2] and b[1] <= m[3] and m[1] <= b[3]:
                    merged[k] = (min(b[0], m[0]), min(b[1], m[1]), max(b[2], m[2]), max(b[3], m[3]))
                    changed = True
                    break
            else:
                merged.append(b)
        out = merged
    return sorted(out)


def edited_objects_diameter(current: np.ndarray, edited: np.ndarray) -> float | None:
    """Median equivalent diameter (px) of the objects the user drew or touched (None without any)."""
    from .objectsize import estimate_diameter

    ids = np.unique(current[edited])
    ids = ids[ids != 0]
    if ids.size == 0:
        return None
    return estimate_diameter(np.where(np.isin(current, ids), current, 0))


def correction_region(written: np.ndarray, current: np.ndarray, margin: int | None = None,
                      untouched: str = "ignore") -> CorrectionRegion:
    """The region that counts when training on a corrected result layer.

    Args:
        written: (Y, X) labels as the plugin wrote them.
        current: (Y, X) the same layer after the user's corrections.
        margin: px added around the edits on every side; None: one diameter of the objects
            drawn or touched (:func:`margin_for`), :data:`DEFAULT_MARGIN` when only erased.
        untouched: ``"ignore"`` (default; see the module docstring) or ``"correct"`` (the user
            checked the whole layer: every pixel counts).

    Raises:
        ValueError: shapes differ, nothing was edited, a negative margin or an unknown
            ``untouched``, each with one sentence saying what to do.
    """
    if untouched not in UNTOUCHED:
        raise ValueError(f"Unknown treatment of untouched pixels {untouched!r}: use 'ignore' or 'correct'.")
    if margin is not None and margin < 0:
        raise ValueError(f"The margin around edits must be 0 px or more, got {margin}.")
    edited = edited_pixels(written, current)
    if not edited.any():
        raise ValueError("The result layer has not been corrected yet: fix some objects with the brush, "
                         "eraser or fill (or pick the labels layer you corrected), then train.")
    if margin is None:
        margin = margin_for(edited_objects_diameter(np.asarray(current), edited))
    h, w = edited.shape
    if untouched == "correct":
        return CorrectionRegion(edited, [(0, 0, h, w)], int(margin), untouched)
    # group edits whose widened boxes would touch: label the edits dilated by the margin on a
    # coarse grid (cheap for large images), then take each group's box of edited pixels
    step = max(1, int(margin) // 2)
    coarse = _block_any(edited, step)
    reach = max(1, -(-2 * int(margin) // step))
    groups, _n = ndi.label(ndi.binary_dilation(coarse, np.ones((2 * reach + 1,) * 2, bool)))
    boxes = []
    for sl in ndi.find_objects(groups):
        if sl is None:
            continue
        ys, xs = slice(sl[0].start * step, sl[0].stop * step), slice(sl[1].start * step, sl[1].stop * step)
        sub = edited[ys, xs]
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        if rows.size == 0:
            continue
        y0, y1 = ys.start + rows[0] - margin, ys.start + rows[-1] + 1 + margin
        x0, x1 = xs.start + cols[0] - margin, xs.start + cols[-1] + 1 + margin
        boxes.append((max(0, y0), max(0, x0), min(h, y1), min(w, x1)))
    return CorrectionRegion(edited, merge_boxes(boxes), int(margin), untouched)


def _block_any(mask: np.ndarray, step: int) -> np.ndarray:
    """bool: True for each ``step`` x ``step`` block of ``mask`` holding a True pixel."""
    if step == 1:
        return mask
    h, w = mask.shape
    by, bx = -(-h // step), -(-w // step)
    padded = np.zeros((by * step, bx * step), dtype=bool)
    padded[:h, :w] = mask
    return padded.reshape(by, step, bx, step).any(axis=(1, 3))
