"""Normalization that survives saturated objects (recipe ``exclude_saturated``)."""

import copy

import numpy as np
import pytest

from napari_tiled_unet import normalization
from napari_tiled_unet._synthetic import saturated_field
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model import load_model
from napari_tiled_unet.segmentation import segment

OLD = {"kind": "percentile", "low": 1.0, "high": 99.8}
NEW = {"kind": "percentile", "low": 1.0, "high": 99.0, "exclude_saturated": True}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_dim_nuclei_next_to_two_saturated_ones_are_found(dtype):
    """nuclei-dsb2018's weights (trained without brightness augmentation) with each recipe: the
    old one squashes the dim nuclei; and the default model with its own recipe finds them all."""
    image, labels = saturated_field(dim=8, dtype=dtype)
    n = int(labels.max())
    dim = np.where(labels <= n - 2, labels, 0)  # the two saturated nuclei are the last ids
    found = {}
    for name, recipe in (("old", OLD), ("new", NEW)):
        bundle = copy.deepcopy(load_model("nuclei-dsb2018"))
        bundle.metadata["normalization"] = recipe
        pred = segment(bundle, image, device="cpu").labels
        found[name] = match_instances(dim, pred, iou_threshold=0.5)
    assert found["new"].tp >= 0.95 * (n - 2) and found["new"].fp <= 4
    assert found["old"].tp < 0.5 * (n - 2)  # the reason for the new recipe
    default = match_instances(labels, segment(load_model(), image, device="cpu").labels, iou_threshold=0.5)
    assert default.tp >= 0.95 * n and default.fp <= 1


def test_no_false_objects_around_saturated_nuclei_with_the_ceiling():
    """Saturated nuclei normalized to 5-15x the bright level drew false objects around them from
    the default model; its recipe's ceiling (clip_high) shows them at 2x, and they go."""
    model = load_model()
    assert model.normalization.get("clip_high") == 2.0
    without = copy.deepcopy(model)
    without.metadata["normalization"] = {k: v for k, v in model.normalization.items() if k != "clip_high"}
    false = {"with": 0, "without": 0}
    for seed in range(4):
        image, labels = saturated_field(dim=12, n_saturated=4, seed=seed)
        for name, bundle in (("with", model), ("without", without)):
            m = match_instances(labels, segment(bundle, image, device="cpu").labels, iou_threshold=0.5)
            assert m.tp >= 0.95 * labels.max()
            false[name] += m.fp
    assert false["with"] <= 1 and false["without"] >= 5, false


def test_the_ceiling_is_exact_per_pixel_and_leaves_other_values_alone():
    img = np.array([[0, 50, 100, 255]], np.uint8)
    plain = {"kind": "scale", "divide": 50.0}
    stats = normalization.compute_stats(img, {**plain, "clip_high": 1.5})
    out = normalization.apply(img[None], stats)[0]
    np.testing.assert_allclose(out, [[0.0, 1.0, 1.5, 1.5]])
    np.testing.assert_allclose(normalization.apply(img[None], normalization.compute_stats(img, plain))[0],
                               [[0.0, 1.0, 2.0, 5.1]])


def test_saturated_plateau_is_left_out_unless_it_is_most_of_the_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 40, size=(200, 200)).astype(np.uint16)
    img[:20, :20] = 65535  # 1 % of the pixels saturated
    _, scale, _ = normalization.compute_stats(img, NEW)[0]
    assert 1 / scale < 100  # the scale comes from the unsaturated pixels
    _, scale_old, _ = normalization.compute_stats(img, OLD)[0]
    assert 1 / scale_old > 60000
    mostly = np.full((50, 50), 255, np.uint8)
    mostly[:10] = 3
    _, s, _ = normalization.compute_stats(mostly, NEW)[0]
    assert np.isfinite(s) and s > 0
