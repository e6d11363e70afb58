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
    return load_model()


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
                 "--diameter", "auto", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["segmented"][0]
    assert abs(row["estimated_diameter"] / 44 - 1) <= 0.2
    assert tifffile.imread(row["output"]).shape == image.shape
    bad = ["segment", str(tmp_path / "discs.tif"), "-o", str(tmp_path / "o2"), "--diameter", "big"]
    assert main(bad) == 1
    assert "diameter" in capsys.readouterr().err
