"""Generalist augmentation (training/data.py): zoom and per-object brightness act as documented."""

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from napari_tiled_unet._synthetic import disc_field
from napari_tiled_unet.training.data import Augmentation, PatchSampler, TrainingImage
from napari_tiled_unet.training.targets import make_targets


def _item(diameter=20.0):
    image, labels = disc_field(shape=(256, 256), diameter=diameter, seed=0)
    item = TrainingImage(image[None], make_targets(image.shape, labels), stats=np.array([[20.0, 1 / 180]]))
    item.diameter = diameter
    return item


def _interior_areas(cls):
    """Areas of the interiors that do not touch the patch's edge."""
    parts, _ = ndi.label(cls == 1)
    areas = np.bincount(parts.ravel())
    edge = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
    areas[edge] = 0
    return areas[areas > 0]


def test_zoom_scales_objects_and_keeps_them_in_the_diameter_range():
    plain = Augmentation.none()
    base = np.median(_interior_areas(PatchSampler([_item()], 96, 0, plain).patch()[1]))
    twice = PatchSampler([_item()], 96, 0, replace(plain, scale_range=(2.0, 2.0)))
    areas = np.concatenate([_interior_areas(twice.patch()[1]) for _ in range(4)])
    assert 3.0 < np.median(areas) / base < 5.0  # 2x per side: ~4x the area
    # a 60 px object zoomed 2x would exceed the 96 px bound: the zoom is held at 96 / 60
    capped = PatchSampler([_item(60.0)], 96, 0, replace(plain, scale_range=(2.0, 2.0)))
    assert capped._zoom(capped.items[0]) == 96 / 60


def test_per_object_brightness_makes_dim_and_bright_objects_side_by_side():
    aug = replace(Augmentation.none(), object_brightness=1.0, intensity=0.0)
    sampler = PatchSampler([_item()], 128, 1, aug)
    img, cls, _ = sampler.patch()
    parts, n = ndi.label(cls == 1)
    means = np.asarray(ndi.mean(img[0], parts, np.arange(1, n + 1)))
    _, plain_cls, _ = PatchSampler([_item()], 128, 1, Augmentation.none()).patch()
    assert n >= 4
    assert means.max() / max(means.min(), 1e-3) > 2.0  # the discs are 120-200 before: ratio < 1.7
    assert set(np.unique(cls)) == set(np.unique(plain_cls))  # targets untouched by intensity changes


def test_generalist_patches_are_finite_and_targets_stay_valid():
    sampler = PatchSampler([_item()], 64, 2, Augmentation.generalist())
    batch = sampler.batch(6)
    assert np.isfinite(batch.image).all() and batch.image.shape == (6, 1, 64, 64)
    assert set(np.unique(batch.classes[batch.mask])) <= {0, 1, 2}
