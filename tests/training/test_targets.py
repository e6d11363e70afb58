"""Painted labels -> training targets, weight map and the mask of pixels that count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tiled_unet.training.targets import (
    BOUNDARY,
    INTERIOR,
    border_weight,
    check_annotated,
    instance_classes,
    instance_targets,
    make_targets,
    region_boxes,
    scribble_targets,
)


def _two_squares(gap: int, size: int = 64) -> np.ndarray:
    lab = np.zeros((size, size), dtype=np.uint16)
    lab[20:30, 10:20] = 1
    lab[20:30, 20 + gap : 30 + gap] = 2
    return lab


def test_instance_classes_split_touching_objects_by_boundary_pixels():
    lab = _two_squares(gap=0)
    cls = instance_classes(lab)
    assert cls.dtype == np.uint8
    assert cls[25, 19] == BOUNDARY and cls[25, 20] == BOUNDARY  # where the two touch
    assert cls[25, 15] == INTERIOR and cls[5, 5] == 0


def test_border_weight_is_larger_between_close_objects_than_far_from_them():
    lab = _two_squares(gap=3)
    t = instance_targets(lab)
    between = t.weight[25, 21]  # background pixel in the 3-px gap
    far = t.weight[55, 55]  # background far from both
    beside_one = t.weight[25, 5]  # background next to one object only
    assert between > 5 * far
    assert between > 2 * beside_one
    assert t.weight.dtype == np.float32 and t.classes.dtype == np.int64 and t.mask.dtype == bool


def test_border_weight_equals_brute_force_distances():
    rng = np.random.default_rng(1)
    lab = np.zeros((48, 48), dtype=np.int32)
    for k in range(1, 7):
        y, x = rng.integers(0, 42, 2)
        lab[y : y + 5, x : x + 6] = k
    from scipy import ndimage as ndi

    ids = [k for k in np.unique(lab) if k]
    dist = np.stack([ndi.distance_transform_edt(lab != k) for k in ids])
    dist.sort(axis=0)
    expected = 10.0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * 5.0**2))
    got = border_weight(lab, w0=10.0, sigma=5.0)
    # exact where the term is above the documented cutoff (1e-3 * w0), 0 or tiny below it
    assert np.allclose(got, np.where(expected >= 1e-2, expected, got), atol=1e-4)
    assert np.all(got[expected < 1e-2] <= 1e-2 + 1e-6)


def test_scribble_value_zero_never_counts_and_value_k_is_class_k_minus_1():
    lab = np.zeros((16, 16), dtype=np.uint8)
    lab[2, 2:6] = 1
    lab[10, 4:9] = 3
    t = scribble_targets(lab, n_classes=3)
    assert t.mask.sum() == 9
    assert not t.mask[lab == 0].any()
    assert (t.weight[lab == 0] == 0).all()
    assert set(t.classes[t.mask].tolist()) == {0, 2}
    assert t.present_classes() == [0, 2]


def test_labels_outside_the_region_have_no_influence_on_targets():
    rng = np.random.default_rng(0)
    lab = _two_squares(gap=2)
    region = [(15, 5, 40, 35)]
    other = lab.copy()
    outside = np.ones(lab.shape, dtype=bool)
    outside[15:40, 5:35] = False
    other[outside] = rng.integers(0, 9, outside.sum())
    a, b = instance_targets(lab, region), instance_targets(other, region)
    assert not a.mask[outside].any()
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.classes[a.mask], b.classes[b.mask])
    np.testing.assert_array_equal(a.weight, b.weight)


def test_region_accepts_napari_rectangle_corners_and_clips_to_the_image():
    corners = np.array([[2.5, 3.0], [2.5, 10.2], [8.0, 10.2], [8.0, 3.0]])
    assert region_boxes((20, 20), [corners, (15, 15, 40, 40), (30, 30, 40, 40)]) == [
        (2, 3, 8, 11),
        (15, 15, 20, 20),
    ]


def test_labels_of_another_shape_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"labels have shape \(10, 12\) but the image is \(10, 10\)"):
        make_targets((10, 10), np.zeros((10, 12), dtype=np.uint8))


def test_scribble_value_without_a_class_is_refused():
    lab = np.zeros((8, 8), dtype=np.uint8)
    lab[1, 1], lab[2, 2] = 1, 4
    with pytest.raises(ValueError, match="paint with values 1 to 3"):
        make_targets((8, 8), lab, "scribbles", n_classes=3)


def test_nothing_annotated_and_single_scribble_class_are_refused():
    empty = np.zeros((8, 8), dtype=np.uint8)
    t = make_targets((8, 8), empty, "scribbles")
    with pytest.raises(ValueError, match="No pixel is annotated"):
        check_annotated([t], [empty], "scribbles")
    t = make_targets((8, 8), empty, "instances")
    with pytest.raises(ValueError, match="No object is painted"):
        check_annotated([t], [empty], "instances")
    one = empty.copy()
    one[3, 3:6] = 2
    t = make_targets((8, 8), one, "scribbles")
    with pytest.raises(ValueError, match="at least two classes"):
        check_annotated([t], [one], "scribbles")


def test_touching_width_widens_the_boundary_only_where_objects_touch():
    lab = _two_squares(gap=0)  # squares at x 10..19 and 20..29, touching between 19 and 20
    thin, wide = instance_classes(lab), instance_classes(lab, touching_width=3)
    row = 25
    assert [int(c) for c in thin[row, 15:25]] == [1, 1, 1, 1, 2, 2, 1, 1, 1, 1]
    assert [int(c) for c in wide[row, 15:25]] == [1, 1, 2, 2, 2, 2, 2, 2, 1, 1]  # a 6 px band
    # against the background the outline stays 1 px: the foreground is the same
    assert wide[row, 10] == BOUNDARY and wide[row, 11] == INTERIOR
    assert np.array_equal(wide > 0, lab > 0)
    # objects apart by more than the width: nothing changes
    apart = _two_squares(gap=4)
    assert np.array_equal(instance_classes(apart, touching_width=3), instance_classes(apart))


def test_touching_width_equals_distances_to_other_objects_brute_force():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:48, :48]
    lab = np.zeros((48, 48), np.int32)
    for k in range(1, 9):  # overlapping discs: later ones cut into earlier ones
        cy, cx, r = rng.integers(6, 42), rng.integers(6, 42), rng.integers(4, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    width = 2
    got = instance_classes(lab, touching_width=width) == BOUNDARY
    expected = instance_classes(lab) == BOUNDARY
    points = np.argwhere(lab > 0)
    for y, x in points:
        others = (lab > 0) & (lab != lab[y, x])
        near = others & ((yy - y) ** 2 + (xx - x) ** 2 <= width * width)
        expected[y, x] |= bool(near.any())
    assert np.array_equal(got, expected)
    assert got.sum() > (instance_classes(lab) == BOUNDARY).sum()  # the field has touching discs


def test_core_fraction_keeps_one_central_core_per_nucleus_and_the_foreground():
    yy, xx = np.mgrid[:48, :80]
    lab = np.zeros((48, 80), np.int32)
    centres = ((24, 24), (24, 52))  # discs of radius 16 that overlap: the second cuts into the first
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16**2] = k
    plain, core = instance_classes(lab), instance_classes(lab, core_fraction=0.5)
    assert np.array_equal(core > 0, lab > 0)  # the objects' extent is unchanged
    gaps = []
    for k, (cy, cx) in enumerate(centres, start=1):
        inside = (core == INTERIOR) & (lab == k)
        _, n = ndi.label(inside)
        assert n == 1 and inside[cy, cx]  # one core, on the centre
        assert inside.sum() < 0.45 * (plain[lab == k] == INTERIOR).sum()  # a core, not the interior
        gaps.append(np.flatnonzero(inside[cy]))
    # where the two nuclei meet (x 38), both cores stay at least 6 px away: a wide band between seeds
    assert gaps[0].max() <= 38 - 6 and gaps[1].min() >= 38 + 6
    assert np.array_equal(instance_classes(lab, core_fraction=0.0), plain)


def test_train_touching_width_and_keep_are_recorded_and_a_bad_width_is_one_sentence(tmp_path, capsys,
                                                                                     tiny_train_args):
    from napari_tiled_unet.cli import main
    from napari_tiled_unet.model.bundle import load_model

    out = tmp_path / "t.safetensors"
    common = [*tiny_train_args, "--out", str(out)]
    assert main([*common, "--touching-width", "2", "--core-fraction", "0.3", "--keep", "last"]) == 0
    record = load_model(out).metadata["training"]
    assert record["touching_width"] == 2 and record["keep"] == "last" and record["core_fraction"] == 0.3
    out.unlink()
    capsys.readouterr()
    assert main([*common, "--touching-width", "-1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "touching_width" in err and "\n" not in err and not out.exists()
    assert main([*common, "--core-fraction", "1.5"]) == 1
    err = capsys.readouterr().err.strip()
    assert "core_fraction" in err and "\n" not in err and not out.exists()
