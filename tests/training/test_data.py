"""Training patches: sampling, padding, augmentation alignment and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tiled_unet.training.data import (
    IGNORE,
    Augmentation,
    PatchSampler,
    Prefetcher,
    TrainingImage,
    cover_windows,
    elastic_field,
)
from napari_tiled_unet.training.targets import instance_targets, scribble_targets


def _item(size=(96, 80), seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(size, dtype=np.int32)
    for k in range(1, 9):
        y, x = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
        lab[y : y + rng.integers(4, 10), x : x + rng.integers(4, 10)] = k
    t = instance_targets(lab)
    return t, lab


def test_augmentation_keeps_image_and_targets_aligned():
    t, _ = _item()
    # the image *is* the class map, so any misalignment shows as a disagreement
    image = t.classes.astype(np.float32)[None]
    item = TrainingImage(image, t)
    aug = Augmentation(elastic=1.0, intensity=0.0, image_order=0)
    sampler = PatchSampler([item], 48, rng=3, augmentation=aug)
    for _ in range(12):
        img, cls, wt = sampler.patch()
        counted = cls != IGNORE
        assert counted.mean() > 0.3
        np.testing.assert_array_equal(img[0][counted], cls[counted].astype(np.float32))
        # the weight moved with the classes: it is the weight of the class it sits on
        assert (wt[~counted] == 0).all() and (wt[counted] > 0).all()


def test_default_linear_interpolation_stays_aligned_with_nearest_labels():
    t, _ = _item()
    item = TrainingImage(t.classes.astype(np.float32)[None], t)
    sampler = PatchSampler([item], 48, rng=5, augmentation=Augmentation(elastic=1.0, intensity=0.0))
    agree = []
    for _ in range(8):
        img, cls, _ = sampler.patch()
        counted = cls != IGNORE
        agree.append(np.mean(np.abs(img[0][counted] - cls[counted]) < 0.5))
    assert np.mean(agree) > 0.95


def test_same_seed_gives_the_same_patches_and_another_seed_other_ones():
    t, lab = _item()
    image = np.random.default_rng(9).random((1, *lab.shape), dtype=np.float32)

    def draw(seed):
        s = PatchSampler([TrainingImage(image, t)], 32, rng=seed)
        return [s.batch(2) for _ in range(3)]

    a, b, c = draw(7), draw(7), draw(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.classes, y.classes)
        np.testing.assert_array_equal(x.weight, y.weight)
    assert not np.array_equal(a[0].image, c[0].image)


def test_image_smaller_than_the_patch_is_padded_with_mask_false():
    t, _ = _item(size=(20, 30))
    image = np.ones((1, 20, 30), dtype=np.float32)
    sampler = PatchSampler([TrainingImage(image, t)], 64, rng=0, augmentation=Augmentation.none())
    b = sampler.batch(3)
    assert b.image.shape == (3, 1, 64, 64) and b.mask.shape == (3, 64, 64)
    assert b.mask.sum(axis=(1, 2)).tolist() == [600, 600, 600]  # every image pixel, no padding pixel
    assert (b.weight[~b.mask] == 0).all() and (b.classes[~b.mask] == 0).all()
    assert b.classes.dtype == np.int64 and b.weight.dtype == np.float32 and b.mask.dtype == bool


def test_patches_favour_sparsely_annotated_pixels():
    lab = np.zeros((400, 400), dtype=np.uint8)
    lab[300, 50:60] = 1
    lab[40, 350:360] = 2
    t = scribble_targets(lab, n_classes=2)
    item = TrainingImage(np.zeros((1, 400, 400), np.float32), t)
    sampler = PatchSampler([item], 32, rng=1, augmentation=Augmentation.none(), annotated_fraction=0.9)
    hits = np.mean([sampler.patch()[1].__ne__(IGNORE).any() for _ in range(200)])
    assert hits > 0.8  # a uniform placement would hit annotation in about 1 % of patches


def test_counted_pixels_are_drawn_only_among_counted_ones():
    t, _ = _item()
    item = TrainingImage(np.zeros((1, *t.classes.shape), np.float32), t, mask=t.classes == 2)
    rng = np.random.default_rng(0)
    for _ in range(50):
        y, x = item.random_counted_pixel(rng)
        assert t.classes[y, x] == 2


def test_elastic_field_is_smooth_with_the_papers_scale():
    field = elastic_field(np.random.default_rng(0), 128, sigma=10.0, grid=3)
    assert field.shape == (2, 128, 128)
    assert 1.0 < np.abs(field).max() < 60.0
    assert np.abs(np.diff(field, axis=-1)).max() < 2.0  # a 3x3 grid gives a gentle field


def test_validation_windows_cover_every_counted_pixel():
    t, _ = _item(size=(130, 70))
    item = TrainingImage(np.zeros((1, 130, 70), np.float32), t)
    covered = np.zeros(t.mask.shape, bool)
    for y0, x0, h, w in cover_windows(item, max_size=50, multiple=8, margin=4):
        covered[y0 : y0 + h, x0 : x0 + w] = True
    assert covered[item.classes != IGNORE].all()


def test_prefetcher_hands_out_batches_in_the_samplers_order():
    t, lab = _item()
    image = np.random.default_rng(2).random((1, *lab.shape), dtype=np.float32)
    direct = PatchSampler([TrainingImage(image, t)], 32, rng=4)
    expected = [direct.batch(2) for _ in range(3)]
    pf = Prefetcher(PatchSampler([TrainingImage(image, t)], 32, rng=4), 2)
    try:
        for e in expected:
            got = pf.next()
            np.testing.assert_array_equal(got.image, e.image)
            assert pf.rng_state == e.rng_state
    finally:
        pf.close()


def test_training_image_refuses_mismatched_targets():
    t, _ = _item()
    with pytest.raises(ValueError, match="differ in shape"):
        TrainingImage(np.zeros((1, 10, 10), np.float32), t)
