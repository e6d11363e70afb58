import json

import numpy as np
import pytest
import tifffile

from napari_tiled_unet.metrics import (
    average_precision,
    evaluate_folders,
    format_evaluation,
    match_instances,
    pixel_error,
    rand_error,
)


def boxes(shape, spec):
    out = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(spec, start=1):
        out[y0:y1, x0:x1] = i
    return out


# four 10 x 10 objects
GT = boxes((40, 60), [(0, 10, 0, 10), (0, 10, 20, 30), (20, 30, 0, 10), (20, 30, 20, 30)])


def counts(m):
    return m.tp, m.fp, m.fn


def test_perfect_match_whatever_the_ids():
    m = match_instances(GT, GT * 7 + 3 * (GT > 0))  # other, non-consecutive ids
    assert counts(m) == (4, 0, 0) and (m.n_true, m.n_pred) == (4, 4)
    assert m.f1 == m.ap == m.precision == m.recall == m.mean_matched_iou == 1.0
    assert average_precision(GT, GT) == 1.0


def test_one_missed_object():
    pred = GT.copy()
    pred[pred == 4] = 0
    m = match_instances(GT, pred)
    assert counts(m) == (3, 0, 1)
    assert m.ap == pytest.approx(3 / 4) and m.f1 == pytest.approx(6 / 7)
    assert m.recall == 0.75 and m.precision == 1.0


def test_one_false_object():
    pred = GT.copy()
    pred[35:40, 50:60] = 9
    m = match_instances(GT, pred)
    assert counts(m) == (4, 1, 0)
    assert m.ap == pytest.approx(4 / 5) and m.precision == pytest.approx(0.8) and m.recall == 1.0


def test_a_merge_loses_both_objects_and_adds_a_false_one():
    pred = GT.copy()
    pred[0:10, 0:30] = 1  # objects 1 and 2 merged, with the gap between them
    m = match_instances(GT, pred)
    # IoU of the merged object with either original is 100 / 300 < 0.5
    assert counts(m) == (2, 1, 2)
    assert m.ap == pytest.approx(2 / 5)
    # at a low threshold the merged object matches one of the two, never both
    assert counts(match_instances(GT, pred, 0.3)) == (3, 0, 1)


def test_a_split_gives_one_match_and_one_false_object():
    pred = GT.copy()
    pred[0:10, 0:3] = 8  # object 1 cut: 70 % keeps its id
    m = match_instances(GT, pred)
    assert counts(m) == (4, 1, 0)
    assert m.mean_matched_iou == pytest.approx((0.7 + 3) / 4)


def test_empty_prediction_and_empty_ground_truth():
    empty = np.zeros_like(GT)
    m = match_instances(GT, empty)
    assert counts(m) == (0, 0, 4) and (m.f1, m.ap, m.recall, m.precision) == (0.0, 0.0, 0.0, 0.0)
    m = match_instances(empty, GT)
    assert counts(m) == (0, 4, 0) and (m.f1, m.ap, m.recall, m.precision) == (0.0, 0.0, 0.0, 0.0)
    m = match_instances(empty, empty)
    assert counts(m) == (0, 0, 0) and m.f1 == m.ap == 1.0
    assert average_precision(GT, empty) == 0.0


def test_low_thresholds_match_one_to_one_and_maximise_matches():
    gt = boxes((10, 30), [(0, 10, 0, 10), (0, 10, 10, 20), (0, 10, 20, 30)])
    pred = boxes((10, 30), [(0, 10, 4, 17), (0, 10, 17, 20)])
    # IoU: pred 1 with true 1: 0.35, with true 2: 0.44; pred 2 with true 2: 0.3. Taking the best
    # pair first would match pred 1 to true 2 and leave pred 2 alone; the assignment finds two.
    assert counts(match_instances(gt, pred, 0.25)) == (2, 0, 1)
    assert counts(match_instances(gt, pred, 0.5)) == (0, 2, 3)
    assert average_precision(gt, pred, thresholds=(0.25, 0.5)) == pytest.approx((2 / 3 + 0) / 2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same image"):
        match_instances(GT, GT[:10])


def test_pixel_error():
    assert pixel_error(GT > 0, GT > 0) == 0.0
    assert pixel_error(np.zeros((2, 2)), np.array([[0, 1], [1, 1]])) == 0.75


def test_rand_error_scores_merges_and_splits_on_the_true_foreground():
    assert rand_error(GT * 3, GT) == pytest.approx(0.0)
    background_differs = GT.copy()
    background_differs[35:, 50:] = 5  # outside the true foreground: ignored
    assert rand_error(background_differs, GT) == pytest.approx(0.0)
    merged = (GT > 0).astype(int)  # all four objects one segment: V_split 1, V_merge 1/4
    assert rand_error(merged, GT) == pytest.approx(1 - 2 * 1 * 0.25 / 1.25)
    split = GT.copy()
    split[GT == 1] = 0  # object 1 predicted as background: 100 single-pixel segments
    s2, t2, p2 = 3 * 100**2 + 100, 4 * 100**2, 3 * 100**2 + 100
    v_split, v_merge = p2 / t2, p2 / s2
    assert rand_error(split, GT) == pytest.approx(1 - 2 * v_split * v_merge / (v_split + v_merge))
    assert rand_error(GT, np.zeros_like(GT)) == 0.0


def write_pair_folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    tifffile.imwrite(gt_dir / "a.tif", GT)
    tifffile.imwrite(gt_dir / "b.tif", GT)
    tifffile.imwrite(gt_dir / "c.tif", GT)  # no prediction: listed and skipped
    tifffile.imwrite(pred_dir / "a_labels.tif", GT)
    missed = GT.copy()
    missed[missed == 1] = 0
    tifffile.imwrite(pred_dir / "b_labels.tiff", missed)
    return pred_dir, gt_dir


def test_evaluate_folders_pools_counts_over_images(tmp_path):
    pred_dir, gt_dir = write_pair_folders(tmp_path)
    report = evaluate_folders(pred_dir, gt_dir)
    assert [r["name"] for r in report["images"]] == ["a", "b"]
    total = report["total"]
    assert total["images"] == 2 and (total["n_true"], total["n_pred"]) == (8, 7)
    at = total["matching"]["0.5"]
    assert (at["tp"], at["fp"], at["fn"]) == (7, 0, 1)
    assert at["ap"] == pytest.approx(7 / 8) and at["f1"] == pytest.approx(14 / 15)
    assert total["matching"]["0.75"]["tp"] == 7 and total["mean_matched_iou"] == 1.0
    assert report["unpaired"] == {"pred": [], "gt": ["c.tif"]}
    assert report["images"][1]["matching"]["0.5"]["recall"] == 0.75
    text = format_evaluation(report)
    assert "F1@0.5" in text and "AP@0.75" in text and "0.933" in text and "c.tif" in text
    assert json.loads(json.dumps(report)) == report


def test_evaluate_folders_refuses_what_it_cannot_pair(tmp_path):
    pred_dir, gt_dir = write_pair_folders(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "zzz.tif", GT)
    with pytest.raises(ValueError, match="No file names match"):
        evaluate_folders(other, gt_dir)
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", gt_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no \.tif"):
        evaluate_folders(pred_dir, empty)
    tifffile.imwrite(pred_dir / "a_labels.tif", GT[:20])
    with pytest.raises(ValueError, match="shape"):
        evaluate_folders(pred_dir, gt_dir)


def test_class_overlap_counts_give_the_iou_per_class():
    from napari_tiled_unet.metrics import class_overlap_counts

    gt = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    inter, union = class_overlap_counts(gt, pred, 4)
    # class 0: 2 common of {0,1,2}; class 1: 1 of {2,3,4}; class 2: 1 of {4,5}; class 3 absent
    assert inter.tolist() == [2, 1, 1, 0] and union.tolist() == [3, 3, 2, 0]
    with pytest.raises(ValueError):
        class_overlap_counts(gt, pred[:-1], 4)
