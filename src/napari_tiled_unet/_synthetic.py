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


def fragment_probabilities(shape: tuple[int, int] = (256, 256), spacing: int = 12, big: int = 128,
                           seed: int = 0) -> np.ndarray:
    """3-class probabilities (background, interior, boundary) such as a network gives on a dense
    field: small nuclei on a jittered grid (one per ``spacing`` px cell) and, in about 40 % of the
    ``big`` px cells, a large nucleus holding three bright spots, each inside a boundary ring of
    its own (so each spot grows an object inside the nucleus) -> float32 (3, Y, X)."""
    rng = np.random.default_rng(seed)
    y, x = np.arange(shape[0])[:, None], np.arange(shape[1])[None, :]

    def cells(step: int, jitter: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel: its cell's index (row, column) and the offset (dy, dx) from its centre."""
        iy, ix = y // step, x // step
        grid = (shape[0] // step + 1, shape[1] // step + 1)
        jy, jx = (rng.uniform(-jitter, jitter, grid) for _ in range(2))
        return iy, ix, (y - (iy * step + step / 2 + jy[iy, ix]), x - (ix * step + step / 2 + jx[iy, ix]))

    iy, ix, (dy, dx) = cells(spacing, 1.0)
    radius = rng.uniform(3.0, 4.5, (shape[0] // spacing + 1, shape[1] // spacing + 1))[iy, ix]
    d = np.hypot(dy, dx)
    small, small_edge = d < radius, d >= radius - 1.5
    by, bx, (dy, dx) = cells(big, 8.0)
    n_big = (shape[0] // big + 1, shape[1] // big + 1)
    in_big = (rng.random(n_big) < 0.4)[by, bx]
    reach = 0.35 * big
    d = np.hypot(dy, dx)
    nucleus, ring = in_big & (d < reach), in_big & (d < reach) & (d >= reach - 2)
    spot, spot_ring = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(3):
        r, a = (rng.uniform(0, reach / 2, n_big)[by, bx], rng.uniform(0, 2 * np.pi, n_big)[by, bx])
        ds = np.hypot(dy - r * np.sin(a), dx - r * np.cos(a))
        spot |= nucleus & (ds < 3)
        spot_ring |= nucleus & (ds >= 4.5) & (ds < 6.5)
    small &= ~in_big
    prob = np.zeros((3, *shape), np.float32)
    prob[0] = 1.0
    for where, p in ((small, (0.0, 0.9, 0.1)), (small & small_edge, (0.05, 0.15, 0.8)),
                     (nucleus, (0.0, 0.9, 0.1)), (ring | spot_ring, (0.0, 0.1, 0.9)),
                     (spot, (0.0, 0.95, 0.05))):
        prob[:, where] = np.array(p, np.float32)[:, None]
    return prob
