"""Training patches: sampling that favours annotated pixels, and augmentation.

Every random choice comes from one :class:`numpy.random.Generator`, so a seed reproduces
the exact sequence of patches, and saving the generator's state in a checkpoint lets a
resumed run draw the patches the interrupted one would have drawn.

Augmentation moves image, classes, weight and mask together: flips, 90-degree rotations,
and the elastic deformation of the U-Net paper (Ronneberger et al. 2015, section 3.1:
random displacements on a coarse 3x3 grid with a 10 px standard deviation, interpolated
bicubically to a per-pixel field); the image is then resampled linearly, the targets by
nearest neighbour. Intensity changes (scale, shift, gamma, gaussian noise) touch the
image only.

Targets are stored compactly (uint8 classes with :data:`IGNORE` for pixels that do not
count, float16 weights) and images may stay in their own dtype with the normalization
statistics applied per patch, which equals global normalization (the statistics come
from the whole image); this bounds the memory of a large training set to about
4 bytes per pixel for 8-bit images.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .. import normalization
from .._readahead import ReadAhead
from .targets import Targets

log = logging.getLogger(__name__)

#: stored class value of pixels that do not count in the loss
IGNORE = 255
#: sampling blocks (px) used to draw uniformly among annotated pixels without index arrays
BLOCK = 16


@dataclass(frozen=True)
class Augmentation:
    """What random changes a training patch receives.

    Attributes:
        flips: random horizontal flip (with ``rotations`` this gives all 8 symmetries).
        rotations: random multiple of 90 degrees.
        elastic: probability of the elastic deformation.
        elastic_sigma: standard deviation (px) of the coarse-grid displacements (10 in the paper).
        elastic_grid: nodes per side of the coarse grid (3 in the paper).
        intensity: probability of each intensity change (scale, shift, gamma, noise).
        scale: range of the multiplicative intensity factor.
        shift: the additive shift is uniform in ``[-shift, shift]`` (normalized units).
        gamma: the gamma exponent is ``exp(u)`` with ``u`` uniform in ``[-gamma, gamma]``,
            applied to positive values.
        noise: the gaussian noise standard deviation is uniform in ``[0, noise]``.
        image_order: interpolation order of the image under deformation (1 linear; targets
            always use 0, nearest neighbour).
    """

    flips: bool = True
    rotations: bool = True
    elastic: float = 0.5
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    intensity: float = 0.5
    scale: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.1
    gamma: float = 0.3
    noise: float = 0.05
    image_order: int = 1
    # -- for a generalist model (all off by default; see :meth:`generalist`) ---------------
    scale_range: tuple[float, float] | None = None
    diameter_range: tuple[float, float] = (8.0, 96.0)
    object_brightness: float = 0.0
    object_brightness_range: tuple[float, float] = (0.35, 3.0)
    saturate: float = 0.0
    background: float = 0.0
    blur: float = 0.0
    blur_sigma: float = 1.5
    shot_noise: float = 0.0
    bit_depth: float = 0.0

    @classmethod
    def generalist(cls) -> Augmentation:
        """Everything a model for images from other microscopes should see (docs/models.md).

        - ``scale_range`` 0.5-2x (log-uniform zoom of the patch; objects kept between
          ``diameter_range`` px where the image's object diameter is known): labs image
          the same nuclei at 10x-63x;
        - ``object_brightness``: each object's signal above the background multiplied by its
          own factor (0.35-3x, log-uniform), so dim and bright nuclei lie side by side as in
          mitotic, apoptotic or unevenly stained fields;
        - ``saturate``: the brightest part of the patch clipped flat, as on an over-exposed
          camera (a few saturated nuclei per field);
        - ``background``: a constant offset and a linear gradient (uneven illumination,
          out-of-focus glow, camera offset);
        - ``blur``: gaussian blur up to 1.5 px (defocus, lower-NA objectives);
        - ``shot_noise`` beside the gaussian noise: photon noise grows with the signal;
        - ``bit_depth``: the intensities rounded to 16-256 levels (8-bit exports and dim
          16-bit acquisitions that use few grey levels);
        - gamma and contrast (``scale``, ``shift``, ``gamma``) wider than the default.
        """
        return cls(elastic=0.3, intensity=0.5, scale=(0.6, 1.6), shift=0.15, gamma=0.5, noise=0.08,
                   scale_range=(0.5, 2.0), object_brightness=0.5, saturate=0.15, background=0.3,
                   blur=0.25, shot_noise=0.3, bit_depth=0.15)

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all (patches are plain crops)."""
        return cls(flips=False, rotations=False, elastic=0.0, intensity=0.0)


class TrainingImage:
    """One image and its targets in compact form, ready to cut patches from.

    Args:
        image: (C, Y, X) array: float32 already normalized when ``stats`` is None, else any
            numeric dtype normalized per patch with ``stats``.
        targets: the image's :class:`~napari_tiled_unet.training.targets.Targets`.
        stats: float64 (C, 3) statistics from :func:`napari_tiled_unet.normalization.compute_stats`.
        mask: optional bool (Y, X) that replaces ``targets.mask`` (e.g. the training or the
            validation part of the annotated area).
        name: shown in messages.
    """

    def __init__(self, image: np.ndarray, targets: Targets, stats: np.ndarray | None = None,
                 mask: np.ndarray | None = None, name: str = "") -> None:
        if image.ndim != 3:
            raise ValueError(f"Training images must be (C, Y, X), got shape {image.shape}.")
        if image.shape[1:] != targets.classes.shape:
            raise ValueError(f"Image {image.shape[1:]} and targets {targets.classes.shape} differ in shape.")
        if targets.n_classes >= IGNORE:
            raise ValueError(f"At most {IGNORE - 1} classes can be trained, got {targets.n_classes}.")
        self.image = image
        self.stats = stats
        self.name = name
        #: relative chance of drawing this image (times its counted pixels)
        self.sample_weight = 1.0
        #: median object diameter (px) when known, for scale augmentation
        self.diameter: float | None = None
        self.n_classes = targets.n_classes
        mask = targets.mask if mask is None else (mask & targets.mask)
        self.classes = np.where(mask, targets.classes, IGNORE).astype(np.uint8)
        self.weight = np.where(mask, targets.weight, 0).astype(np.float16)
        self._index_blocks(mask)

    def restrict(self, mask: np.ndarray) -> TrainingImage:
        """The same image counting only where ``mask`` (bool (Y, X)) is True too.

        The image and weight arrays are shared, only the classes are copied.
        """
        out = copy.copy(self)
        out.classes = np.where(mask, self.classes, IGNORE).astype(np.uint8)
        out._index_blocks(out.classes != IGNORE)
        return out

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape (Y, X)."""
        return tuple(self.classes.shape)

    @property
    def n_counted(self) -> int:
        """Pixels that count in the loss."""
        return int(self._cum[-1]) if self._cum.size else 0

    def _index_blocks(self, mask: np.ndarray) -> None:
        h, w = mask.shape
        by, bx = -(-h // BLOCK), -(-w // BLOCK)
        padded = np.zeros((by * BLOCK, bx * BLOCK), dtype=bool)
        padded[:h, :w] = mask
        counts = padded.reshape(by, BLOCK, bx, BLOCK).sum(axis=(1, 3), dtype=np.int64)
        self._blocks_x = bx
        self._cum = np.cumsum(counts.ravel())

    def counted_bbox(self) -> tuple[int, int, int, int] | None:
        """``(y0, x0, y1, x1)`` of the pixels that count, or None when none do."""
        rows = np.flatnonzero((self.classes != IGNORE).any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero((self.classes != IGNORE).any(axis=0))
        return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

    def random_counted_pixel(self, rng: np.random.Generator) -> tuple[int, int]:
        """A pixel drawn uniformly among those that count."""
        r = int(rng.integers(self.n_counted))
        b = int(np.searchsorted(self._cum, r, side="right"))
        before = int(self._cum[b - 1]) if b else 0
        y0, x0 = (b // self._blocks_x) * BLOCK, (b % self._blocks_x) * BLOCK
        block = self.classes[y0 : y0 + BLOCK, x0 : x0 + BLOCK] != IGNORE
        idx = np.flatnonzero(block)[r - before]
        return y0 + int(idx // block.shape[1]), x0 + int(idx % block.shape[1])

    def window(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cut a window that may reach outside the image.

        Outside, the image is mirrored (symmetric padding), the classes are :data:`IGNORE`
        and the weight is 0, so padding never counts.

        Returns:
            image float32 (C, h, w) normalized, classes uint8 (h, w), weight float32 (h, w).
        """
        H, W = self.shape
        sy0, sy1 = max(0, y0), min(H, y0 + h)
        sx0, sx1 = max(0, x0), min(W, x0 + w)
        if sy1 <= sy0 or sx1 <= sx0:  # entirely outside: nothing to mirror
            c = self.image.shape[0]
            return (np.zeros((c, h, w), np.float32), np.full((h, w), IGNORE, np.uint8),
                    np.zeros((h, w), np.float32))
        img = np.asarray(self.image[:, sy0:sy1, sx0:sx1])
        img = normalization.apply(img, self.stats) if self.stats is not None else img.astype(np.float32)
        cls = self.classes[sy0:sy1, sx0:sx1]
        wt = np.where(cls != IGNORE, self.weight[sy0:sy1, sx0:sx1], 0).astype(np.float32)
        pads = ((sy0 - y0, y0 + h - sy1), (sx0 - x0, x0 + w - sx1))
        if any(p for pair in pads for p in pair):
            img = np.pad(img, ((0, 0), *pads), mode="symmetric")
            cls = np.pad(cls, pads, constant_values=IGNORE)
            wt = np.pad(wt, pads, constant_values=0.0)
        return img, cls, wt


@dataclass
class Batch:
    """A batch of training patches.

    Attributes:
        image: float32 (B, C, P, P) normalized images.
        classes: int64 (B, P, P) class indices (0 where ``mask`` is False).
        weight: float32 (B, P, P) loss weights (0 where ``mask`` is False).
        mask: bool (B, P, P) pixels that count.
        rng_state: the sampler's generator state after drawing this batch.
    """

    image: np.ndarray
    classes: np.ndarray
    weight: np.ndarray
    mask: np.ndarray
    rng_state: dict[str, Any] | None = None


def elastic_field(rng: np.random.Generator, size: int, sigma: float = 10.0, grid: int = 3) -> np.ndarray:
    """Per-pixel displacements of the U-Net elastic deformation.

    Displacements drawn from N(0, sigma) on a ``grid`` x ``grid`` coarse grid spanning the
    patch (corners on the corner pixels), interpolated bicubically.

    Returns:
        float64 (2, size, size): displacement in y and in x, pixels.
    """
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    field = np.empty((2, size, size), dtype=np.float64)
    zoom = (size - 1) / (grid - 1) if size > 1 else 1.0
    for a in range(2):
        up = ndi.zoom(coarse[a], zoom, order=3, mode="nearest", grid_mode=False)
        if up.shape != (size, size):  # rounding of the zoomed size
            up = np.pad(up, [(0, max(0, size - s)) for s in up.shape], mode="edge")[:size, :size]
        field[a] = up
    return field


class PatchSampler:
    """Draws augmented training patches, favouring annotated pixels.

    An image is chosen with probability proportional to its number of counted pixels; with
    probability ``annotated_fraction`` the patch is placed around a counted pixel drawn
    uniformly (else around any pixel of the image). Patches stay inside images at least as
    large as the patch; smaller images are padded (mask False in the padding).

    Args:
        items: the training images (only those with counted pixels are drawn).
        patch_size: side P of the square patches (px).
        rng: a :class:`numpy.random.Generator` or a seed.
        augmentation: what to change at random (:class:`Augmentation`).
        annotated_fraction: probability that a patch is centred on an annotated pixel.
    """

    def __init__(self, items: Sequence[TrainingImage], patch_size: int, rng: np.random.Generator | int = 0,
                 augmentation: Augmentation | None = None, annotated_fraction: float = 0.9) -> None:
        self.items = [it for it in items if it.n_counted > 0]
        if not self.items:
            raise ValueError("No annotated pixel to train on; paint labels inside the region.")
        self.patch_size = int(patch_size)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.annotated_fraction = float(annotated_fraction)
        counts = np.array([it.n_counted * it.sample_weight for it in self.items], dtype=np.float64)
        self._p = counts / counts.sum()

    def patch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented patch: image float32 (C, P, P), classes uint8 (P, P), weight float32 (P, P)."""
        rng, aug, P = self.rng, self.augmentation, self.patch_size
        item = self.items[int(rng.choice(len(self.items), p=self._p))]
        H, W = item.shape
        zoom = self._zoom(item)
        S = math.ceil(P / zoom)  # the patch's extent in image pixels
        if rng.random() < self.annotated_fraction:
            cy, cx = item.random_counted_pixel(rng)
        else:
            cy, cx = int(rng.integers(H)), int(rng.integers(W))
        # place the patch around the pixel, kept inside the image when the image is large enough
        y0 = int(np.clip(cy - S // 2 + rng.integers(-(S // 4), S // 4 + 1), min(0, H - S), max(0, H - S)))
        x0 = int(np.clip(cx - S // 2 + rng.integers(-(S // 4), S // 4 + 1), min(0, W - S), max(0, W - S)))
        field = None
        if aug.elastic > 0 and rng.random() < aug.elastic:
            field = elastic_field(rng, P, aug.elastic_sigma, aug.elastic_grid) / zoom
        if field is not None or zoom != 1.0:
            m = (math.ceil(np.abs(field).max()) if field is not None else 0) + 1
            img, cls, wt = item.window(y0 - m, x0 - m, S + 2 * m, S + 2 * m)
            coords = (np.mgrid[0:P, 0:P].astype(np.float64) + 0.5) / zoom - 0.5 + m
            if field is not None:
                coords += field
            img = np.stack([ndi.map_coordinates(ch, coords, order=aug.image_order, mode="mirror",
                                                prefilter=False, output=np.float32) for ch in img])
            cls = ndi.map_coordinates(cls, coords, order=0, mode="constant", cval=IGNORE, output=np.uint8)
            wt = ndi.map_coordinates(wt, coords, order=0, mode="constant", cval=0.0, output=np.float32)
        else:
            img, cls, wt = item.window(y0, x0, P, P)
        k = int(rng.integers(4)) if aug.rotations else 0
        flip = bool(aug.flips and rng.random() < 0.5)
        img, cls, wt = (_orient(a, k, flip) for a in (img, cls, wt))
        img = self._appearance(img, cls)
        img = self._intensity(img)
        return img, cls, wt

    def _zoom(self, item: TrainingImage) -> float:
        """The patch's zoom factor (1 without scale augmentation)."""
        aug = self.augmentation
        if aug.scale_range is None:
            return 1.0
        lo, hi = np.log(aug.scale_range)
        zoom = float(np.exp(self.rng.uniform(lo, hi)))
        if item.diameter:  # keep the objects inside the diameter range the model is meant for
            lo, hi = aug.diameter_range[0] / item.diameter, aug.diameter_range[1] / item.diameter
            zoom = float(np.clip(zoom, lo, max(lo, hi)))
        return zoom

    def _appearance(self, img: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """Per-object brightness, saturation, background and blur (the generalist augmentations)."""
        aug, rng = self.augmentation, self.rng
        if aug.object_brightness > 0 and rng.random() < aug.object_brightness:
            objects, n = ndi.label(cls == 1)  # interiors; boundaries (class 2) separate touching objects
            if n:
                lo, hi = np.log(aug.object_brightness_range)
                factor = np.exp(rng.uniform(lo, hi, size=n + 1)).astype(np.float32)
                factor[0] = 1.0
                # each object's factor also covers its outline: the nearest object within 3 px
                dist, (iy, ix) = ndi.distance_transform_edt(objects == 0, return_indices=True)
                near = objects[iy, ix]
                near[dist > 3] = 0
                fmap = ndi.gaussian_filter(factor[near], 1.0)
                floor = np.percentile(img, 5, axis=(-2, -1), keepdims=True).astype(np.float32)
                img = floor + (img - floor) * fmap
        if aug.saturate > 0 and rng.random() < aug.saturate:
            img = np.minimum(img, np.float32(np.quantile(img, rng.uniform(0.9, 0.995))))
        if aug.background > 0 and rng.random() < aug.background:
            h, w = img.shape[-2:]
            gy, gx = rng.uniform(-0.2, 0.2, size=2)
            ramp = gy * (np.arange(h)[:, None] / h - 0.5) + gx * (np.arange(w)[None, :] / w - 0.5)
            img = img + np.float32(rng.uniform(-0.05, 0.3)) + ramp.astype(np.float32)
        if aug.blur > 0 and rng.random() < aug.blur:
            sigma = rng.uniform(0.3, aug.blur_sigma)
            img = np.stack([ndi.gaussian_filter(ch, sigma) for ch in img])
        return img.astype(np.float32, copy=False)

    def _intensity(self, img: np.ndarray) -> np.ndarray:
        aug, rng = self.augmentation, self.rng
        if aug.intensity <= 0:
            return img
        if rng.random() < aug.intensity:
            img = img * np.float32(rng.uniform(*aug.scale))
        if rng.random() < aug.intensity:
            img = img + np.float32(rng.uniform(-aug.shift, aug.shift))
        if rng.random() < aug.intensity:
            g = np.float32(math.exp(rng.uniform(-aug.gamma, aug.gamma)))
            img = np.where(img > 0, np.power(np.maximum(img, 0), g), img)
        if rng.random() < aug.intensity:
            std = rng.uniform(0.0, aug.noise)
            img = img + rng.normal(0.0, std, size=img.shape).astype(np.float32)
        if aug.shot_noise > 0 and rng.random() < aug.shot_noise:
            k = rng.uniform(0.0, 0.02)
            img = img + (np.sqrt(np.maximum(img, 0) * k) * rng.normal(size=img.shape)).astype(np.float32)
        if aug.bit_depth > 0 and rng.random() < aug.bit_depth:
            levels = float(rng.choice([16, 32, 64, 256]))
            img = np.round(img * levels) / levels
        return img.astype(np.float32, copy=False)

    def batch(self, batch_size: int) -> Batch:
        """``batch_size`` patches stacked into a :class:`Batch`."""
        patches = [self.patch() for _ in range(batch_size)]
        cls = np.stack([p[1] for p in patches])
        mask = cls != IGNORE
        return Batch(
            image=np.stack([p[0] for p in patches]),
            classes=np.where(mask, cls, 0).astype(np.int64),
            weight=np.stack([p[2] for p in patches]),
            mask=mask,
            rng_state=self.rng.bit_generator.state,
        )


def _orient(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    if k:
        a = np.rot90(a, k, axes=(-2, -1))
    if flip:
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def cover_windows(item: TrainingImage, max_size: int = 1024, multiple: int = 1,
                  margin: int = 0) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, x0, h, w)`` that cover the counted pixels of ``item``, for validation.

    The counted bounding box, widened by ``margin`` pixels of context inside the image, is
    split into pieces of at most ``max_size`` per side; sizes are rounded up to ``multiple``
    where the image allows, so the network needs no padding.
    """
    box = item.counted_bbox()
    if box is None:
        return []
    H, W = item.shape
    y0, x0 = max(0, box[0] - margin), max(0, box[1] - margin)
    y1, x1 = min(H, box[2] + margin), min(W, box[3] + margin)
    ny, nx = -(-(y1 - y0) // max_size), -(-(x1 - x0) // max_size)
    hs, ws = -(-(y1 - y0) // ny), -(-(x1 - x0) // nx)
    out = []
    for i in range(ny):
        for j in range(nx):
            wy0, wx0 = y0 + i * hs, x0 + j * ws
            h, w = min(hs, y1 - wy0), min(ws, x1 - wx0)
            h2 = min(-(-h // multiple) * multiple, max(h, H))
            w2 = min(-(-w // multiple) * multiple, max(w, W))
            out.append((max(0, min(wy0, H - h2)), max(0, min(wx0, W - w2)), h2, w2))
    return out


class Prefetcher:
    """Draws batches in a background thread, a few ahead, in the sampler's order.

    The sampler's state is only touched by the thread; :attr:`rng_state` is the state after
    the last batch *handed out*, which is what a checkpoint must save to resume exactly.

    Args:
        sampler: the :class:`PatchSampler`.
        batch_size: patches per batch.
        depth: batches drawn ahead.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, depth: int = 2) -> None:
        self.rng_state = sampler.rng.bit_generator.state
        self._reader = ReadAhead(iter(lambda: sampler.batch(batch_size), None), depth, name="patch-sampler")

    def next(self) -> Batch:
        """The next batch (raises what the sampling thread raised)."""
        item = next(self._reader)
        self.rng_state = item.rng_state
        return item

    def close(self) -> None:
        """Stop the thread (within one batch) and drop what it drew ahead."""
        self._reader.close()
