"""Synthetic fluorescence fields with known objects, for tests and benchmarks.

Every field is blurred and noisy like a widefield image and comes with its true labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _grid_discs(shape: tuple[int, int], diameter: float, spacing: float, rng: np.random.Generator,
                jitter: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    step = int(diameter * spacing)
    k = 0
    for cy in range(step // 2, shape[0] - step // 2 + 1, step):
        for cx in range(step // 2, shape[1] - step // 2 + 1, step):
            k += 1
            y, x = cy + rng.integers(-jitter, jitter + 1), cx + rng.integers(-jitter, jitter + 1)
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= (diameter / 2) ** 2] = k
    return labels


def disc_field(shape: tuple[int, int] = (480, 520), diameter: float = 60.0, seed: int = 0,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs of one diameter on a dim background -> (uint8 image, int32 labels)."""
    rng = np.random.default_rng(seed)
    labels = _grid_discs(shape, diameter, 1.35, rng)
    brightness = rng.uniform(120, 200, size=labels.max() + 1)
    brightness[0] = 20
    image = ndi.gaussian_filter(brightness[labels], diameter / 30) + rng.normal(0, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def saturated_field(shape: tuple[int, int] = (320, 320), diameter: float = 24.0, n_saturated: int = 2,
                    dim: float = 30.0, seed: int = 0, dtype: type = np.uint8,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Dim nuclei (``dim`` above the background, in 8-bit units) and ``n_saturated`` large ones
    clipped at the type's maximum -> (image, labels); the saturated ones are the last ids."""
    rng = np.random.default_rng(seed)
    labels = _grid_discs(shape, diameter, 1.6, rng, jitter=3)
    n = int(labels.max())
    top = float(np.iinfo(dtype).max)
    unit = top / 255.0
    level = np.full(n + 1, 0.0)
    level[1:] = rng.uniform(0.8, 1.2, size=n) * dim * unit
    bright = n - n_saturated + 1
    for k in range(bright, n + 1):  # the last ones: larger, far brighter than the camera can hold
        level[k] = 20 * top
        labels[ndi.binary_dilation(labels == k, iterations=int(diameter // 4)) & (labels == 0)] = k
    background = 10 * unit
    image = ndi.gaussian_filter(background + level[labels], 1.0) + rng.normal(0, 2 * unit, shape)
    return np.clip(image, 0, top).astype(dtype), labels


def chromocentre_field(shape: tuple[int, int] = (384, 384), diameter: float = 90.0, seed: int = 0,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Large nuclei with several small, very bright spots inside each (mouse-cell chromocentres)
    -> (uint8 image, int32 labels of the nuclei)."""
    rng = np.random.default_rng(seed)
    labels = _grid_discs(shape, diameter, 1.3, rng)
    n = int(labels.max())
    signal = np.where(labels > 0, 40.0, 12.0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        cy, cx = ys.mean(), xs.mean()
        for _ in range(rng.integers(4, 8)):
            r, a = rng.uniform(0, diameter / 3), rng.uniform(0, 2 * np.pi)
            sy, sx = cy + r * np.sin(a), cx + r * np.cos(a)
            signal += 200 * np.exp(-((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * rng.uniform(3, 5) ** 2))
    image = ndi.gaussian_filter(signal, 1.0) + rng.normal(0, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels
