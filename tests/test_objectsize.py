"""Object diameter: rescaling to the model's object size and back (objectsize.py, segment(diameter=))."""

import numpy as np
import pytest

from napari_tiled_unet._synthetic import disc_field
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model import load_model
from napari_tiled_unet.objectsize import model_diameter, resize
from napari_tiled_unet.segmentation import segment


@pytest.fixture(scope="module")
def builtin():
    """The built-in model that records one diameter and no range of sizes (nuclei-v2 has one)."""
    return load_model("nuclei-dsb2018")


@pytest.mark.slow
def test_diameter_rescaling_matches_the_field_downscaled_to_the_model_size(builtin):
    image, truth = disc_field(diameter=60)
    result = segment(builtin, image, device="cpu", diameter=60)
    assert result.labels.shape == image.shape and result.diameter == 60
    # the same field shrunk by hand to the model's diameter, segmented without rescaling
    factor = model_diameter(builtin) / 60
    small_shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    small = resize(image, "YX", small_shape).round().astype(np.uint8)
    by_hand = segment(builtin, small, device="cpu").labels
    by_hand_full = resize(by_hand, "YX", image.shape, order=0).astype(np.int32)
    m = match_instances(by_hand_full, result.labels, iou_threshold=0.5)
    assert m.f1 >= 0.95
    # and both find the discs
    assert match_instances(truth, result.labels, iou_threshold=0.5).f1 >= 0.9


@pytest.mark.slow
def test_auto_diameter_estimates_within_20_percent(builtin):
    image, _ = disc_field(diameter=60, seed=1)
    result = segment(builtin, image, device="cpu", diameter="auto")
    assert result.estimated_diameter is not None
    assert abs(result.estimated_diameter / 60 - 1) <= 0.2
    assert result.labels.shape == image.shape


def test_labels_come_back_at_the_input_shape(builtin):
    image, _ = disc_field(shape=(151, 133), diameter=40)
    result = segment(builtin, image, device="cpu", diameter=40)
    assert result.labels.shape == (151, 133)
    assert result.probabilities.shape[-2:] == (151, 133)
    assert result.n_objects >= 3


def test_a_bad_diameter_is_one_sentence(builtin):
    image, _ = disc_field(shape=(64, 64), diameter=20)
    for bad in (0, -3, "big", float("nan")):
        with pytest.raises(ValueError, match="diameter"):
            segment(builtin, image, device="cpu", diameter=bad)


def test_cli_segment_with_auto_diameter_shows_the_estimate(tmp_path, capsys):
    import json

    import tifffile

    from napari_tiled_unet.cli import main

    image, _ = disc_field(shape=(200, 260), diameter=44, seed=2)
    tifffile.imwrite(tmp_path / "discs.tif", image)
    assert main(["segment", str(tmp_path / "discs.tif"), "-o", str(tmp_path / "out"), "--device", "cpu",
                 "--diameter", "auto", "--json", "-m", "nuclei-dsb2018"]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    assert abs(row["estimated_diameter"] / 44 - 1) <= 0.2
    expected = model_diameter(load_model("nuclei-dsb2018")) / row["estimated_diameter"]
    assert row["scale"] == pytest.approx(expected, rel=0.15)
    assert tifffile.imread(row["output"]).shape == image.shape
    bad = ["segment", str(tmp_path / "discs.tif"), "-o", str(tmp_path / "o2"), "--diameter", "big"]
    assert main(bad) == 1
    assert "diameter" in capsys.readouterr().err


def _with_range(bundle, lo, hi):
    import copy

    ranged = copy.deepcopy(bundle)
    ranged.metadata["object_diameter_range"] = [lo, hi]
    return ranged


def test_auto_factor_follows_the_models_range(builtin):
    from napari_tiled_unet.objectsize import auto_factor

    ranged = _with_range(builtin, 12, 64)
    assert auto_factor(ranged, 30.0) == 1.0  # inside: the image's own scale
    assert auto_factor(ranged, 107.0) == pytest.approx(64 / 107)  # onto the nearer bound
    assert auto_factor(ranged, 8.0) == pytest.approx(12 / 8)
    assert auto_factor(builtin, 55.0) == pytest.approx(model_diameter(builtin) / 55)  # no range: one diameter
    assert auto_factor(builtin, 0.5) == 4.0  # specks never ask for more than the largest enlargement


@pytest.mark.slow
def test_auto_keeps_objects_inside_the_range_at_their_own_scale_and_shrinks_larger_ones(builtin):
    ranged = _with_range(builtin, 12, 64)
    image, truth = disc_field(diameter=36, seed=3)
    inside = segment(ranged, image, device="cpu", diameter="auto")
    assert inside.scale == 1.0 and abs(inside.estimated_diameter / 36 - 1) <= 0.2
    np.testing.assert_array_equal(inside.labels, segment(builtin, image, device="cpu").labels)
    large, truth = disc_field(shape=(480, 480), diameter=110, seed=4)
    result = segment(ranged, large, device="cpu", diameter="auto")
    assert result.labels.shape == large.shape
    assert abs(result.estimated_diameter / 110 - 1) <= 0.2
    assert result.scale == pytest.approx(64 / result.estimated_diameter, rel=0.15)  # onto the upper bound
    assert match_instances(truth, result.labels, iou_threshold=0.5).f1 >= 0.9


def test_cli_segment_uses_auto_by_default_for_a_model_with_a_range_as_the_widget_does(tmp_path, capsys,
                                                                                      builtin):
    import json

    import tifffile
    import zarr

    from napari_tiled_unet.cli import main

    ranged = tmp_path / "ranged.safetensors"
    _with_range(builtin, 12, 30).save(ranged)  # 44 px discs lie above this range
    image, _ = disc_field(shape=(200, 260), diameter=44, seed=2)
    tifffile.imwrite(tmp_path / "discs.tif", image)
    common = ["segment", str(tmp_path / "discs.tif"), "--device", "cpu", "--json", "-m", str(ranged)]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    assert abs(row["estimated_diameter"] / 44 - 1) <= 0.2 and row["scale"] < 0.8
    # 'none' keeps every image at its own scale, as before
    assert main([*common, "-o", str(tmp_path / "b"), "--diameter", "none"]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    assert "estimated_diameter" not in row and "scale" not in row
    # a model without a range: no diameter unless asked for
    plain = ["segment", str(tmp_path / "discs.tif"), "--device", "cpu", "--json", "-o", str(tmp_path / "c"),
             "-m", "nuclei-dsb2018"]
    assert main(plain) == 0
    assert "estimated_diameter" not in json.loads(capsys.readouterr().out)["segmented"][0]
    # the default model records a range: auto without asking; 44 px lies inside it, so no rescaling
    assert main(["segment", str(tmp_path / "discs.tif"), "--device", "cpu", "--json",
                 "-o", str(tmp_path / "e")]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    assert abs(row["estimated_diameter"] / 44 - 1) <= 0.2 and row["scale"] == 1.0
    # labels that go to a zarr store are not rescaled: the default gives way with a warning
    zarr.save_array(str(tmp_path / "discs.zarr"), image)
    assert main(["segment", str(tmp_path / "discs.zarr"), "--device", "cpu", "--json", "-m", str(ranged),
                 "-o", str(tmp_path / "d")]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out)["segmented"][0]
    assert "own scale" in out.err and "scale" not in row and row["objects"] >= 5
