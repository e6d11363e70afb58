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
    """The built-in model's weights with each recipe: the old one squashes the dim nuclei."""
    image, labels = saturated_field(dim=8, dtype=dtype)
    n = int(labels.max())
    dim = np.where(labels <= n - 2, labels, 0)  # the two saturated nuclei are the last ids
    found = {}
    for name, recipe in (("old", OLD), ("new", NEW)):
        bundle = copy.deepcopy(load_model())
        bundle.metadata["normalization"] = recipe
        pred = segment(bundle, image, device="cpu").labels
        found[name] = match_instances(dim, pred, iou_threshold=0.5)
    assert found["new"].tp >= 0.95 * (n - 2) and found["new"].fp <= 4
    assert found["old"].tp < 0.5 * (n - 2)  # the reason for the new recipe


def test_saturated_plateau_is_left_out_unless_it_is_most_of_the_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 40, size=(200, 200)).astype(np.uint16)
    img[:20, :20] = 65535  # 1 % of the pixels saturated
    _, scale = normalization.compute_stats(img, NEW)[0]
    assert 1 / scale < 100  # the scale comes from the unsaturated pixels
    _, scale_old = normalization.compute_stats(img, OLD)[0]
    assert 1 / scale_old > 60000
    mostly = np.full((50, 50), 255, np.uint8)
    mostly[:10] = 3
    _, s = normalization.compute_stats(mostly, NEW)[0]
    assert np.isfinite(s) and s > 0
