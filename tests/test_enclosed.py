"""No object lies inside another (post-processing merges enclosed fragments)."""

import numpy as np
import pytest

from napari_tiled_unet._synthetic import chromocentre_field
from napari_tiled_unet.model import zoo
from napari_tiled_unet.postprocess import _absorb_enclosed, instances_blockwise, instances_from_probabilities
from napari_tiled_unet.segmentation import segment


def enclosed_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(inner, outer) pairs where every path from object `inner` to the image's edge crosses
    object `outer` (checked on the whole image, object by object)."""
    from scipy import ndimage as ndi

    pairs = []
    for outer in range(1, int(labels.max()) + 1):
        regions, _ = ndi.label(labels != outer)
        edge = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
        shut_in = ~np.isin(regions, edge) & (regions > 0)
        for inner in np.unique(labels[shut_in]):
            if inner:
                pairs.append((int(inner), outer))
    return pairs


def test_builtin_model_on_chromocentres_leaves_no_object_inside_another():
    image, truth = chromocentre_field()
    labels = segment(zoo.load(), image, device="cpu").labels
    assert enclosed_pairs(labels) == []
    # every true nucleus is still found (fragments that touch the background may remain)
    from napari_tiled_unet.metrics import match_instances

    assert match_instances(truth, labels, iou_threshold=0.5).tp >= 0.7 * truth.max()


def test_fragment_inside_a_ring_of_background_inside_a_nucleus_is_merged():
    lab = np.zeros((40, 40), np.int64)
    lab[5:35, 5:35] = 1
    lab[15:25, 15:25] = 0  # a background ring …
    lab[18:22, 18:22] = 2  # … around a fragment
    lab[0:3, 30:40] = 3  # an object at the edge stays
    out = _absorb_enclosed(lab.copy())
    assert set(np.unique(out)) == {0, 1, 3}
    assert (out[5:35, 5:35] == 1).all()


@pytest.mark.parametrize("block", [48, 64])
def test_blockwise_merge_equals_in_memory(block):
    rng = np.random.default_rng(0)
    prob = np.zeros((3, 160, 160), np.float32)
    prob[0] = 1.0
    yy, xx = np.mgrid[:160, :160]
    for cy, cx in rng.uniform(25, 135, size=(6, 2)):
        d = np.hypot(yy - cy, xx - cx)
        nucleus, ring, spot = d < 16, (d >= 5) & (d < 7), d < 3.5
        prob[:, nucleus] = np.array([0.0, 0.9, 0.1])[:, None]
        prob[:, ring & nucleus] = np.array([0.0, 0.1, 0.9])[:, None]  # a boundary ring around a spot
        prob[:, spot] = np.array([0.0, 0.95, 0.05])[:, None]
    whole = instances_from_probabilities(prob, 0.5, 0.7, 4)
    blocks = np.asarray(instances_blockwise(prob, block_size=block, overlap=40, foreground_threshold=0.5,
                                            seed_threshold=0.7, min_size=4))
    assert enclosed_pairs(whole) == []
    from napari_tiled_unet.metrics import match_instances

    assert match_instances(whole, blocks, iou_threshold=0.99).f1 == 1.0
