"""Painted labels -> training targets and the mask of pixels that count."""

from __future__ import annotations

import numpy as np

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def instance_classes(labels: np.ndarray) -> np.ndarray:
    """Instance labels (Y, X) -> classes (Y, X) uint8: 0 background, 1 interior, 2 boundary.

    A pixel is boundary when it belongs to an object and one of its 4-neighbours belongs to
    another label (background or another object), so touching objects are always split by
    boundary pixels and each object's interior is what the seeds are grown from.
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
    return out

