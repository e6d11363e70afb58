"""Object diameter: rescaling to the model's object size and back (objectsize.py, segment(diameter=))."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model import zoo
from napari_tiled_unet.objectsize import model_diameter, resize
from napari_tiled_unet.segmentation import segment


def disc_field(shape=(480, 520), diameter=60.0, seed=0):
    """Bright discs of one diameter on a dim background (blurred, noisy), and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    step = int(diameter * 1.35)
    k = 0
    for cy in range(step // 2, shape[0] - step // 2 + 1, step):
        for cx in range(step // 2, shape[1] - step // 2 + 1, step):
            k += 1
            y, x = cy + rng.integers(-5, 6), cx + rng.integers(-5, 6)
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= (diameter / 2) ** 2] = k
    brightness = rng.uniform(120, 200, size=k + 1)
    brightness[0] = 20
    image = ndi.gaussian_filter(brightness[labels], diameter / 30) + rng.normal(0, 3, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def builtin():
    return zoo.load()


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
    image, truth = disc_field(diameter=60, seed=1)
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
    assert main(["segment", str(tmp_path / "discs.tif"), "-o", str(tmp_path / "o2"), "--diameter", "big"]) == 1
    assert "diameter" in capsys.readouterr().err
