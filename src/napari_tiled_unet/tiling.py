"""Tile geometry for a U-Net: halo, aligned windows, kept centres, blend weights.

Pure numpy, no torch. Two modes:

* **exact**: windows start on multiples of ``2**depth`` so that every pooling grid lines up
  with the whole image's; each window keeps only the part of its output that the zero
  padding at the window's edges cannot reach (the *halo*, :func:`exact_halo`); border windows
  are pulled inside the image instead of padded. The stitched result then equals the
  whole-image forward pass.
* **blend**: overlapping windows (still aligned) whose outputs are averaged with gaussian or
  cosine weights accumulated in float32.

:class:`TileSettings` is the one value that carries a front end's tiling choices (mode,
window, batch, blend, a chunk-aligned or ready plan) down to the engine; it makes the plan.
The two modes write their windows through two output sinks with one interface
(:class:`ExactSink`, :class:`BlendSink`, chosen by :func:`sink_for`): the engine only
calls ``put`` per window and ``close`` at the end of a plane.

Coordinates refer to the image padded at its far end to a multiple of ``2**depth``, exactly
as :class:`~napari_tiled_unet.model.unet.UNet` pads a whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from itertools import product
from typing import Any, Protocol

import numpy as np

from . import settings
from .errors import SettingsError

#: bytes of activations per pixel and per base channel at float32 (a conservative estimate of
#: the peak of an inference pass of the UNet; the concatenations of the last level dominate)
BYTES_PER_PIXEL_PER_BASE_CHANNEL = 24


def exact_halo(depth: int, bilinear: bool = False) -> int:
    """Distance (pixels) that a window edge's zero padding reaches into the U-Net's output.

    Follows the contaminated band through the network, one edge at a time: a 3x3 convolution
    with zero padding widens it by one pixel of its level, an aligned 2x2 max-pool halves it
    (rounding up), a 2x2 stride-2 transposed convolution (or upsampling) doubles it, and a
    concatenation takes the wider of its inputs. For the paper's depth 4 this gives 94 px.

    Args:
        depth: number of poolings of the U-Net.
        bilinear: bilinear upsampling (one more pixel of reach per level from interpolation).

    Returns:
        The halo in input pixels; outputs farther than this from a window edge are exact.
    """
    band = 2  # inc: two padded 3x3 convolutions
    skips = [band]
    for _ in range(depth):
        band = math.ceil(band / 2) + 2
        skips.append(band)
    skips.pop()
    for _ in range(depth):
        band = 2 * band + (1 if bilinear else 0)
        band = max(band, skips.pop()) + 2
    return band


@dataclass(frozen=True)
class Window:
    """One tile: read ``[y0:y1, x0:x1]`` of the padded image, keep ``[ky0:ky1, kx0:kx1]``.

    All coordinates are in padded-image pixels; the kept box lies inside the window.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    ky0: int
    ky1: int
    kx0: int
    kx1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


@dataclass(frozen=True)
class TilePlan:
    """Windows covering an image of ``shape`` (padded to ``padded_shape``)."""

    shape: tuple[int, int]
    padded_shape: tuple[int, int]
    window: tuple[int, int]
    halo: int
    mode: str
    windows: tuple[Window, ...]

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def computed_pixels(self) -> int:
        """Pixels pushed through the network, for comparison with ``prod(shape)``."""
        return sum(w.shape[0] * w.shape[1] for w in self.windows)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def _floor_to(n: int, m: int) -> int:
    return n // m * m


def plan_axis_exact(length: int, window: int, halo: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Windows along one axis in exact mode.

    Args:
        length: padded length (a multiple of ``multiple``).
        window: window length (a multiple of ``multiple``); capped at ``length``.
        halo: pixels at an inner window edge that are not exact.
        multiple: window starts are multiples of this (``2**depth``).

    Returns:
        ``(start, stop, keep_start, keep_stop)`` per window; the kept parts tile
        ``[0, length)`` without gaps or overlap.

    Raises:
        ValueError: the window is too small to keep anything past its halo.
    """
    if window >= length:
        return [(0, length, 0, length)]
    if window - 2 * halo < multiple:
        raise ValueError(
            f"A window of {window} px is too small for the network's halo of {halo} px; "
            f"use at least {_ceil_to(2 * halo + multiple, multiple)} px."
        )
    starts = [0]
    while starts[-1] + window < length:
        nxt = min(_floor_to(starts[-1] + window - 2 * halo, multiple), length - window)
        starts.append(nxt)
    out = []
    keep_start = 0
    for i, s in enumerate(starts):
        if i + 1 < len(starts):
            # the seam may lie anywhere in [next start + halo, this stop - halo]; taking the
            # low end keeps the halo tight, so a halo that is too small shows at once
            lo, _hi = starts[i + 1] + halo, s + window - halo
            keep_stop = lo
        else:
            keep_stop = length
        out.append((s, s + window, keep_start, keep_stop))
        keep_start = keep_stop
    return out


def plan_axis_blend(
    length: int, window: int, overlap: float, multiple: int
) -> list[tuple[int, int, int, int]]:
    """Windows along one axis in blend mode: about ``overlap`` of each window shared with its
    neighbour, starts on multiples of ``multiple``, the last window ending at ``length``."""
    if window >= length:
        return [(0, length, 0, length)]
    step = max(multiple, _floor_to(int(window * (1.0 - overlap)), multiple))
    n = 1 + math.ceil((length - window) / step)
    starts = sorted({min(_floor_to(round(i * (length - window) / (n - 1)), multiple), length - window)
                     for i in range(n)})
    return [(s, s + window, s, s + window) for s in starts]


def auto_window(
    padded_shape: tuple[int, int],
    halo: int,
    multiple: int,
    max_pixels: int,
) -> tuple[int, int]:
    """The window (height, width) that fits ``max_pixels`` and computes the fewest pixels.

    Rectangular windows are allowed: a band the full width of the image wastes halo on one
    axis only. Ties go to fewer windows.
    """
    hp, wp = padded_shape
    if hp * wp <= max_pixels:
        return (hp, wp)
    least = _ceil_to(2 * halo + multiple, multiple)
    best = None
    for wy in range(min(least, hp), hp + multiple, multiple):
        wy = min(wy, hp)
        wx = min(wp, _floor_to(max_pixels // wy, multiple))
        if wx < min(least, wp):
            continue
        ny = len(plan_axis_exact(hp, wy, halo, multiple))
        nx = len(plan_axis_exact(wp, wx, halo, multiple))
        cost = (ny * wy * nx * wx, ny * nx)
        if best is None or cost < best[0]:
            best = (cost, (wy, wx))
    if best is None:
        return (min(least, hp), min(least, wp))
    return best[1]


def plan_tiles(
    shape: tuple[int, int],
    depth: int,
    *,
    mode: str = "exact",
    window: int | tuple[int, int] | None = None,
    halo: int | None = None,
    overlap: float = 0.25,
    max_pixels: int = 1024 * 1024,
    bilinear: bool = False,
    shift: int = 0,
) -> TilePlan:
    """Plan the windows for a 2D image of ``shape`` and a U-Net of ``depth``.

    Args:
        shape: (height, width) of the image, any size from 1x1.
        depth: the U-Net's number of poolings; windows align to ``2**depth``.
        mode: ``"exact"`` or ``"blend"``.
        window: window size (rounded up to a multiple of ``2**depth``), or None to choose the
            cheapest window of at most ``max_pixels`` pixels.
        halo: override the derived halo (exact mode); tests use it for negative controls.
        overlap: fraction of a window shared with its neighbour (blend mode).
        max_pixels: memory budget of one window, in pixels (when ``window`` is None).
        bilinear: the network upsamples bilinearly (affects the derived halo).
        shift: move every window but the first on each axis by this many pixels (breaks the
            alignment on purpose; only for negative controls in tests).

    Returns:
        The :class:`TilePlan`.
    """
    if mode not in ("exact", "blend"):
        raise ValueError(f"Unknown tiling mode {mode!r}: use 'exact' or 'blend'.")
    multiple = 2**depth
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"Cannot tile an empty image of shape {shape}.")
    padded = (_ceil_to(h, multiple), _ceil_to(w, multiple))
    if halo is None:
        halo = exact_halo(depth, bilinear)
    if window is None:
        win = auto_window(padded, halo, multiple, max_pixels)
    else:
        wy, wx = (window, window) if isinstance(window, int) else window
        win = (min(_ceil_to(wy, multiple), padded[0]), min(_ceil_to(wx, multiple), padded[1]))
    if mode == "exact":
        ys = plan_axis_exact(padded[0], win[0], halo, multiple)
        xs = plan_axis_exact(padded[1], win[1], halo, multiple)
    else:
        ys = plan_axis_blend(padded[0], win[0], overlap, multiple)
        xs = plan_axis_blend(padded[1], win[1], overlap, multiple)
    if shift:
        ys = [_shifted(a, shift, padded[0]) for a in ys]
        xs = [_shifted(a, shift, padded[1]) for a in xs]
    windows = tuple(Window(y[0], y[1], x[0], x[1], y[2], y[3], x[2], x[3]) for y, x in product(ys, xs))
    return TilePlan((h, w), padded, win, halo, mode, windows)


def _shifted(axis: tuple[int, int, int, int], shift: int, length: int) -> tuple[int, int, int, int]:
    start, stop, k0, k1 = axis
    if start == 0:
        return axis
    s = max(0, min(start - shift, length - (stop - start)))
    return (s, s + stop - start, k0, k1)


def blend_weights(shape: tuple[int, int], kind: str = "gaussian") -> np.ndarray:
    """Per-pixel weights (float32, shape ``shape``) for blending overlapping windows.

    ``gaussian``: sigma = 1/8 of the window per axis (as in nnU-Net), ``cosine``: a Hann
    window. Both are floored at 1e-4 of the peak so that pixels covered by one window only
    (image corners) are still defined.
    """

    def axis(n: int) -> np.ndarray:
        t = np.arange(n, dtype=np.float64) + 0.5
        if kind == "gaussian":
            sigma = n / 8.0
            return np.exp(-0.5 * ((t - n / 2.0) / sigma) ** 2)
        if kind == "cosine":
            return np.sin(np.pi * t / n) ** 2
        raise ValueError(f"Unknown blend weighting {kind!r}: use 'gaussian' or 'cosine'.")

    w = np.outer(axis(shape[0]), axis(shape[1]))
    w /= w.max()
    return np.maximum(w, 1e-4).astype(np.float32)


def chunk_plan(shape: tuple[int, int], depth: int, chunk: int, halo: int | None = None) -> TilePlan:
    """An exact-mode plan whose windows each keep one ``chunk`` x ``chunk`` output block.

    ``chunk`` must be a multiple of ``2**depth``. Windows extend a halo (rounded to the
    alignment) beyond their block and are pulled inside the (padded) image at the borders.
    Tasks of the cluster path then write disjoint chunks of the output store.
    """
    m = 2**depth
    if chunk % m:
        raise ValueError(f"The chunk size {chunk} must be a multiple of {m}.")
    halo = exact_halo(depth) if halo is None else halo
    h, w = shape
    hp, wp = _ceil_to(h, m), _ceil_to(w, m)
    ext = _ceil_to(halo, m)
    win = (min(chunk + 2 * ext, hp), min(chunk + 2 * ext, wp))

    def axis(length: int, size: int) -> list[tuple[int, int, int, int]]:
        out = []
        for k0 in range(0, length, chunk):
            k1 = min(k0 + chunk, length)
            s = min(max(k0 - ext, 0), length - size)
            out.append((s, s + size, k0, k1))
        return out

    ys, xs = axis(hp, win[0]), axis(wp, win[1])
    windows = tuple(Window(y[0], y[1], x[0], x[1], y[2], y[3], x[2], x[3]) for y in ys for x in xs)
    return TilePlan((h, w), (hp, wp), win, halo, "exact", windows)


#: output chunk side of chunk-aligned plans when no window size is asked for
DEFAULT_CHUNK = 1024

BLENDS = ("gaussian", "cosine")


@dataclass(frozen=True)
class TileSettings:
    """A front end's tiling choices, passed down whole to the engine.

    Attributes:
        mode: ``"exact"`` (the result equals the whole-image pass) or ``"blend"``.
        window: window size in pixels (int or (h, w)); None: chosen from the memory budget.
        overlap: blend mode: fraction of a window shared with its neighbour.
        blend: blend mode weights, ``"gaussian"`` or ``"cosine"``.
        batch_size: windows per forward pass; None: chosen from the memory budget.
        halo: override the derived halo (exact mode; tests and experiments).
        chunk: exact mode: a chunk-aligned plan (:func:`chunk_plan`) whose windows each keep
            one ``chunk`` x ``chunk`` block (the zarr and cluster paths).
        plan: a ready :class:`TilePlan` (overrides everything above but ``batch_size``).

    The values are checked when the settings are made (one sentence per bad value).
    """

    mode: str = "exact"
    window: int | tuple[int, int] | None = None
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int | None = None
    halo: int | None = None
    chunk: int | None = None
    plan: TilePlan | None = None

    def __post_init__(self) -> None:
        settings.prediction(self.batch_size, self.window, self.overlap)
        if self.mode not in ("exact", "blend"):
            raise SettingsError(f"Unknown tiling mode {self.mode!r}: use 'exact' or 'blend'.")
        if self.blend not in BLENDS:
            raise SettingsError(f"Unknown blend weighting {self.blend!r}: use 'gaussian' or 'cosine'.")
        if self.chunk is not None:
            settings.integer("The chunk size", self.chunk, 1)
            if self.mode != "exact":
                raise SettingsError("Chunk-aligned tiling (zarr outputs, the dask cluster) keeps exact "
                                    "windows; use the exact mode there.")

    def aligned_to_chunks(self, depth: int, halo: int | None = None) -> TileSettings:
        """These settings with a chunk-aligned plan, for exact mode (blend mode is returned as
        it is): the chunk is the largest multiple of ``2**depth`` whose windows (chunk plus
        a halo on each side) fit the asked window, else :data:`DEFAULT_CHUNK`."""
        if self.mode != "exact" or self.plan is not None or self.chunk is not None:
            return self
        if self.window is None:
            return replace(self, chunk=DEFAULT_CHUNK)
        m = 2**depth
        ext = _ceil_to(exact_halo(depth) if halo is None else halo, m)
        side = min(self.window) if isinstance(self.window, (tuple, list)) else int(self.window)
        return replace(self, chunk=max(_floor_to(side - 2 * ext, m), m))

    def make_plan(self, shape: tuple[int, int], depth: int, *, max_pixels: int = 1024 * 1024,
                  bilinear: bool = False) -> TilePlan:
        """The windows for a plane of ``shape`` and a U-Net of ``depth``."""
        if self.plan is not None:
            if self.plan.shape != tuple(shape):
                raise ValueError(f"The tile plan is for shape {self.plan.shape}, not {tuple(shape)}.")
            return self.plan
        if self.chunk is not None:
            return chunk_plan(shape, depth, self.chunk, self.halo)
        return plan_tiles(shape, depth, mode=self.mode, window=self.window, halo=self.halo,
                          overlap=self.overlap, max_pixels=max_pixels, bilinear=bilinear)

    def smaller(self, window: tuple[int, int]) -> TileSettings:
        """These settings with ``window`` and no ready or chunk-aligned plan (out-of-memory back-off)."""
        return replace(self, window=window, plan=None, chunk=None)


# -- output sinks: where the windows' probabilities go ------------------------------------


class Sink(Protocol):
    """Receives each window's probabilities (C, wy, wx) and writes the plane's output."""

    def put(self, window: Window, probs: np.ndarray) -> None: ...

    def close(self) -> None: ...


class ExactSink:
    """Exact mode: each window's kept centre is written to ``target`` as it comes."""

    def __init__(self, plan: TilePlan, target: Any) -> None:
        self.target = target
        self.height, self.width = plan.shape

    def put(self, w: Window, probs: np.ndarray) -> None:
        ky1, kx1 = min(w.ky1, self.height), min(w.kx1, self.width)
        if ky1 > w.ky0 and kx1 > w.kx0:
            self.target[:, w.ky0 : ky1, w.kx0 : kx1] = probs[:, w.ky0 - w.y0 : ky1 - w.y0,
                                                             w.kx0 - w.x0 : kx1 - w.x0]

    def close(self) -> None:
        """Nothing is held back."""


class BlendSink:
    """Blend mode: windows are accumulated with weights in float32 and written, normalized,
    when the plane is done."""

    def __init__(self, plan: TilePlan, target: Any, n_classes: int, kind: str = "gaussian") -> None:
        self.target = target
        self.height, self.width = plan.shape
        self.weights = blend_weights(plan.window, kind)
        self.acc = np.zeros((n_classes, *plan.padded_shape), dtype=np.float32)
        self.norm = np.zeros(plan.padded_shape, dtype=np.float32)

    def put(self, w: Window, probs: np.ndarray) -> None:
        self.acc[:, w.y0 : w.y1, w.x0 : w.x1] += probs * self.weights
        self.norm[w.y0 : w.y1, w.x0 : w.x1] += self.weights

    def close(self) -> None:
        self.acc /= self.norm
        self.target[:, : self.height, : self.width] = self.acc[:, : self.height, : self.width]


def sink_for(plan: TilePlan, target: Any, n_classes: int, blend: str = "gaussian") -> Sink:
    """The sink of ``plan``'s mode, writing into ``target`` ((C, Y, X) array-like)."""
    if plan.mode == "blend":
        return BlendSink(plan, target, n_classes, blend)
    return ExactSink(plan, target)
