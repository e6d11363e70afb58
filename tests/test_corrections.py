"""The region that counts when learning from a corrected result layer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tiled_unet.corrections import correction_region, margin_for, merge_boxes


def _written() -> np.ndarray:
    """A 'segmentation' of 400x500 with a grid of square objects."""
    lab = np.zeros((400, 500), np.uint16)
    k = 1
    for y in range(20, 380, 60):
        for x in range(20, 480, 60):
            lab[y : y + 30, x : x + 30] = k
            k += 1
    return lab


def test_region_covers_the_edits_and_leaves_far_untouched_areas_out():
    written = _written()
    current = written.copy()
    current[20:50, 20:50] = 0  # erase a false object (top left)
    current[200:260, 300:330] = 99  # draw a missed nucleus (centre right)
    current[205:215, 320:340] = 98  # a neighbouring stroke: joins the same area
    region = correction_region(written, current, margin=10)
    mask = region.mask()
    edited = written != current
    assert mask[edited].all(), "every edited pixel counts"
    # the margin: pixels right next to an edit count too (the context of the fix)
    assert mask[10:60, 10:60].all() and mask[190:270, 290:350].all()
    # far from every edit nothing counts: the objects the user never looked at
    assert not mask[320:400, :].any() and not mask[:, 420:].any() and not mask[100:180, 100:280].any()
    assert len(region.boxes) == 2  # the two nearby strokes are one area
    assert mask.mean() < 0.1
    assert "2 area(s)" in region.describe()


def test_region_when_the_user_checked_everything_and_when_nothing_was_edited():
    written = _written()
    current = written.copy()
    current[20:50, 20:50] = 0
    region = correction_region(written, current, untouched="correct")
    assert region.mask().all()
    with pytest.raises(ValueError, match="not been corrected"):
        correction_region(written, written.copy())
    with pytest.raises(ValueError, match="differ in shape"):
        correction_region(written, current[:-1])
    with pytest.raises(ValueError, match="'ignore' or 'correct'"):
        correction_region(written, current, untouched="maybe")


def test_margin_and_box_merging():
    assert margin_for(None) == 16 and margin_for(30.2) == 30 and margin_for(500) == 64 and margin_for(2) == 8
    # overlapping or touching rectangles become one, chains included; far ones stay apart
    assert merge_boxes([(0, 0, 10, 10), (10, 5, 20, 15), (18, 14, 30, 30), (50, 50, 60, 60)]) == [
        (0, 0, 30, 30), (50, 50, 60, 60)]


def test_edits_at_the_image_border_stay_inside():
    written = np.zeros((64, 64), np.int32)
    current = written.copy()
    current[0:3, 60:64] = 5
    region = correction_region(written, current, margin=8)
    assert region.boxes == [(0, 52, 11, 64)]


def test_the_margin_follows_the_size_of_the_objects_corrected():
    written = np.zeros((300, 300), np.int32)
    current = written.copy()
    yy, xx = np.mgrid[:300, :300]
    current[(yy - 150) ** 2 + (xx - 150) ** 2 < 20**2] = 3  # a missed nucleus, 40 px across
    region = correction_region(written, current)
    assert region.margin == 40
    assert region.boxes == [(131 - 40, 131 - 40, 170 + 40, 170 + 40)]
