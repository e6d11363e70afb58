"""Intensity normalization from global statistics, never per tile.

A bundle carries a *recipe* (``{"kind": "percentile", "low": 1.0, "high": 99.8}``, optionally
with ``"exclude_saturated": true``: the pixels at the image's maximum value are left out of
the percentiles, so the flat tops of saturated objects cannot set the scale; or
``{"kind": "scale", "divide": 255.0}``); any kind may add ``"clip_high": c``, a ceiling on the
normalized values (objects far brighter than the image's bright level are shown to the network
at ``c``, inside the brightness it was trained on). :func:`compute_stats` turns the recipe into
per-channel ``(offset, scale, ceiling)`` from the whole image (or an evenly spread sample of a
lazy one), and :func:`apply` maps any window with those same numbers, pixel by pixel, so every
tile sees exactly the values the whole image would.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ImageError, reading

#: pixels per channel above which percentiles are estimated from a sample
SAMPLE_PIXELS = 2_000_000



def _sample_plane_indices(shape: tuple[int, ...], target: int) -> tuple[slice, ...]:
    """Strided slices that pick about ``target`` pixels spread over the whole array."""
    total = math.prod(shape)
    if total <= target:
        return tuple(slice(None) for _ in shape)
    step = max(1, math.ceil((total / target) ** (1.0 / len(shape))))
    return tuple(slice(None, None, step) for _ in shape)


def compute_stats(image: Any, recipe: dict[str, Any], channel_axis: int | None = None) -> np.ndarray:
    """Per-channel ``(offset, scale, ceiling)``: ``min((x - offset) * scale, ceiling)`` is normalized.

    Args:
        image: array-like (numpy, dask, zarr) of any shape; read in strided samples when
            it has more than :data:`SAMPLE_PIXELS` pixels per channel.
        recipe: the bundle's normalization recipe.
        channel_axis: axis holding channels, or None for a single channel.

    Returns:
        float64 array of shape (C, 3); the ceiling is ``inf`` without ``clip_high``.

    Raises:
        ImageError: the image is empty, constant or holds NaN/inf values.
    """
    shape = tuple(image.shape)
    if 0 in shape:
        raise ImageError("The image is empty (one of its dimensions is 0); choose another image.")
    n_ch = 1 if channel_axis is None else shape[channel_axis]
    stats = np.zeros((n_ch, 3), dtype=np.float64)
    stats[:, 2] = float(recipe.get("clip_high", math.inf))
    for c in range(n_ch):
        if channel_axis is None:
            plane_shape = shape
        else:
            plane_shape = shape[:channel_axis] + shape[channel_axis + 1 :]
        sl = list(_sample_plane_indices(plane_shape, SAMPLE_PIXELS))
        if channel_axis is not None:
            sl.insert(channel_axis % len(shape), c)
        # float64: a float32 sample would round an int64 image with a large offset to a constant and
        # overflow a float64 image with huge values to infinity
        with reading("the image"):
            sample = np.asarray(image[tuple(sl)]).astype(np.float64, copy=False).ravel()
        if not np.all(np.isfinite(sample)):
            raise ImageError(
                "The image contains NaN or infinite values; replace them (e.g. with 0) before segmenting."
            )
        kind = recipe.get("kind", "percentile")
        if kind == "percentile" and recipe.get("exclude_saturated"):
            sample = _drop_saturated(sample)
        if kind == "percentile":
            lo, hi = np.percentile(sample, [float(recipe.get("low", 1.0)), float(recipe.get("high", 99.8))])
            if hi <= lo:
                lo, hi = float(sample.min()), float(sample.max())
            if hi <= lo:
                raise ImageError(
                    "The image is constant (every pixel has the same value), so there is nothing to segment."
                )
            stats[c, :2] = (lo, 1.0 / (hi - lo))
        elif kind == "scale":
            stats[c, :2] = (float(recipe.get("offset", 0.0)), 1.0 / float(recipe.get("divide", 1.0)))
        elif kind == "none":
            stats[c, :2] = (0.0, 1.0)
        else:
            raise ImageError(f"Unknown normalization {kind!r} in the model file.")
    return stats


def _drop_saturated(sample: np.ndarray) -> np.ndarray:
    """The sample without its pixels at the maximum value (a saturated camera's plateau).

    Kept whole when that would drop half of it or more (an image that is mostly at its
    maximum has no plateau to ignore).
    """
    top = sample.max()
    keep = sample < top
    n_keep = int(np.count_nonzero(keep))
    return sample[keep] if 2 * n_keep > sample.size else sample


def apply(window: np.ndarray, stats: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Normalize a (C, ...) window with ``stats`` from :func:`compute_stats`; float32 result.

    ``stats`` of shape (C, 2) (offset and scale, no ceiling) are accepted too.
    """
    window = np.asarray(window)
    if out is None:
        out = np.empty(window.shape, dtype=np.float32)
    wide = window.dtype.itemsize > 2 and window.dtype != np.float32  # (u)int32/64, float64
    for c in range(window.shape[0]):
        if wide:  # in float64, so large offsets and huge values survive until they are normalized
            out[c] = (window[c] - stats[c, 0]) * stats[c, 1]
        else:
            np.subtract(window[c], stats[c, 0], out=out[c], casting="unsafe")
            out[c] *= np.float32(stats[c, 1])
        if stats.shape[1] > 2 and np.isfinite(stats[c, 2]):
            np.minimum(out[c], np.float32(stats[c, 2]), out=out[c])
    return out
