"""No object lies inside another: post-processing merges enclosed fragments into their nucleus."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tiled_unet._synthetic import chromocentre_field, fragment_probabilities
from napari_tiled_unet.enclosed import absorb_enclosed, euler_numbers
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.postprocess import instances_blockwise, instances_from_probabilities


def enclosed_pairs(labels: np.ndarray) -> list[tuple[int, int]]:
    """(inner, outer) pairs where object ``inner`` lies in a hole of object ``outer`` (each object
    hole-filled on the whole image with scipy's binary_fill_holes)."""
    pairs = []
    for outer in np.unique(labels[labels > 0]).tolist():
        mask = labels == outer
        inside = labels[ndi.binary_fill_holes(mask) & ~mask]
        pairs += [(inner, outer) for inner in np.unique(inside[inside > 0]).tolist()]
    return pairs


def one_by_one(labels: np.ndarray) -> np.ndarray:
    """The rule, slowly: each object in turn takes every pixel its hole-filled mask adds."""
    labels = labels.copy()
    for ident in np.unique(labels[labels > 0]).tolist():
        mask = labels == ident
        labels[ndi.binary_fill_holes(mask) & ~mask] = ident
    return labels


def square(labels, top, left, size, ident):
    labels[top:top + size, left:left + size] = ident


def test_a_fragment_in_a_ring_of_background_and_one_touching_the_nucleus_from_inside_are_merged():
    lab = np.zeros((50, 60), np.int32)
    square(lab, 5, 5, 36, 1)  # the nucleus ...
    lab[13:25, 13:25] = 0  # ... a ring of background ...
    square(lab, 16, 16, 6, 2)  # ... around a bright-spot fragment
    square(lab, 28, 6, 8, 3)  # a fragment touching the nucleus' border from inside
    out = absorb_enclosed(lab.copy())
    assert enclosed_pairs(lab) == [(2, 1), (3, 1)]
    assert set(np.unique(out).tolist()) == {0, 1}
    assert (out[5:41, 5:41] == 1).all()  # fragments and the background ring: all the nucleus


def test_separate_objects_and_one_reaching_out_of_the_nucleus_are_kept():
    lab = np.zeros((50, 80), np.int32)
    square(lab, 5, 5, 30, 1)
    square(lab, 10, 45, 20, 2)  # a neighbour beside the nucleus
    lab[15:21, 30:40] = 3  # bites into the nucleus' edge but reaches the background outside
    lab[36:40, 5:9] = 4  # touches the nucleus from outside
    square(lab, 0, 60, 12, 5)  # at the image's edge
    assert enclosed_pairs(lab) == []
    assert np.array_equal(absorb_enclosed(lab.copy()), lab)


def test_nested_diagonal_and_jointly_enclosed_cases():
    lab = np.zeros((40, 70), np.int32)
    square(lab, 2, 2, 30, 1)
    lab[6:28, 6:28] = 0
    square(lab, 8, 8, 18, 2)  # inside 1 ...
    lab[11:23, 11:23] = 0
    square(lab, 14, 14, 6, 3)  # ... and 3 inside 2: all become 1
    # a ring closed only at its corners (8-connected) still encloses, as in binary_fill_holes
    ring = np.zeros((9, 9), bool)
    ring[0, 1:-1] = ring[-1, 1:-1] = ring[1:-1, 0] = ring[1:-1, -1] = True
    lab[5:14, 40:49][ring] = 4
    lab[8:11, 43:46] = 5
    lab[20:36, 40:48] = 6  # 6 and 7 surround 8 together; neither alone does
    lab[20:36, 48:56] = 7
    lab[24:32, 44:52] = 8
    expected = one_by_one(lab)
    out = absorb_enclosed(lab.copy())
    assert np.array_equal(out, expected)
    assert (out[2:32, 2:32] == 1).all() and (out[8:11, 43:46] == 4).all()
    assert (out == 8).sum() == 64
    # an inner object that fills its host's hole edge to edge and holds a fragment itself
    lab = np.ones((20, 20), np.int32)
    lab[0, 0] = 0
    square(lab, 4, 4, 12, 2)
    lab[8:12, 8:12] = 0
    lab[9:11, 9:11] = 3
    assert np.array_equal(absorb_enclosed(lab.copy()), one_by_one(lab))
    assert set(np.unique(absorb_enclosed(lab)).tolist()) == {0, 1}


def test_merge_equals_the_slow_rule_on_random_labels():
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(300):
        shape = tuple(rng.integers(2, 24, size=2))
        raw = rng.integers(1, 3, size=shape) * (rng.random(shape) < 0.75)
        lab = np.zeros(shape, np.int64)
        for v in (1, 2):  # regions of one value, 4-connected: objects as the watershed makes them
            part, _ = ndi.label(raw == v)
            lab[raw == v] = part[raw == v] + lab.max()
        expected = one_by_one(lab)
        assert np.array_equal(absorb_enclosed(lab.copy()), expected)
        sparse = np.where(lab > 0, lab * 1_000_003 + 5, 0)  # a block's global ids
        assert np.array_equal(absorb_enclosed(sparse), np.where(expected > 0, expected * 1_000_003 + 5, 0))
        changed += not np.array_equal(expected, lab)
    assert changed > 50


def test_euler_numbers_match_scikit_image():
    from skimage.measure import euler_number

    rng = np.random.default_rng(1)
    for _ in range(100):
        lab = rng.integers(0, 4, size=tuple(rng.integers(1, 14, size=2)))
        present, euler = euler_numbers(lab, 3)
        for k in (1, 2, 3):
            mask = np.pad(lab == k, 1)
            assert present[k] == mask.any()
            assert euler[k] == (euler_number(mask, connectivity=2) if mask.any() else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nuclei-v2", "nuclei-dsb2018"])
def test_builtin_model_on_chromocentres_leaves_no_object_inside_another(monkeypatch, name):
    from napari_tiled_unet import postprocess
    from napari_tiled_unet.model.bundle import load_model
    from napari_tiled_unet.segmentation import segment

    image, truth = chromocentre_field()  # 90 px nuclei, each with 4-7 bright spots
    labels = segment(load_model(name), image, device="cpu").labels
    assert enclosed_pairs(labels) == []
    assert match_instances(truth, labels, iou_threshold=0.5).tp >= 0.7 * truth.max()
    if name == "nuclei-dsb2018":  # its fragments at the spots are what the merge is for
        monkeypatch.setattr(postprocess, "absorb_enclosed", lambda labels: labels)  # without the merge
        assert len(enclosed_pairs(segment(load_model(name), image, device="cpu").labels)) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("block", [48, 100])
def test_blockwise_merge_equals_in_memory(block):
    prob = fragment_probabilities((170, 230), big=80, seed=3)  # nuclei 56 px wide, blocks smaller
    whole = instances_from_probabilities(prob, min_size=4)
    out = instances_blockwise(prob, block_size=block, overlap=58, min_size=4)
    assert out.attrs["exact"]
    blocks = out[:]
    assert enclosed_pairs(whole) == [] and enclosed_pairs(blocks) == []
    assert np.array_equal(whole > 0, blocks > 0)
    assert match_instances(whole, blocks, iou_threshold=0.99).f1 == 1.0
