"""Semantic models: training from scratch on scribbles, refusals, class maps and their scores."""

import json

import numpy as np
import pytest
import tifffile

from napari_tiled_unet.cli import main
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.loop import new_bundle

TINY = ["--base-channels", "4", "--depth", "2", "--patch-size", "64", "--batch-size", "2",
        "--steps-per-epoch", "3", "--epochs", "1", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _three_class_set(folder, n=3, size=64):
    """Synthetic images of 3 classes, every pixel painted: 1 dark background, 2 bright disks,
    3 grey squares."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        labels = np.ones((size, size), np.uint8)
        cy, cx = rng.integers(12, size - 12, 2)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 2
        y0, x0 = rng.integers(0, size - 12, 2)
        labels[y0 : y0 + 10, x0 : x0 + 10] = 3
        image = np.choose(labels - 1, [20, 220, 120]).astype(np.float32) + rng.normal(0, 8, labels.shape)
        for sub, array in (("images", np.clip(image, 0, 255).astype(np.uint8)), ("labels", labels)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / sub / f"s{k}.tif", array)
    return folder / "images", folder / "labels"


def _files(folder):
    return sorted(p.name for p in folder.rglob("*"))


def test_scribbles_from_scratch_make_a_semantic_model_whose_class_map_segment_writes(tmp_path, capsys):
    images, labels = _three_class_set(tmp_path / "set")
    out = tmp_path / "classes.safetensors"
    rc = main(["train", "--annotation", "scribbles", "--classes", "background,disk,square",
               "--images", str(images), "--labels", str(labels), "--out", str(out), *TINY])
    assert rc == 0, capsys.readouterr().err
    assert "semantic, classes background, disk, square" in capsys.readouterr().out
    bundle = load_model(out)
    assert bundle.task == "semantic" and bundle.model.n_classes == 3
    assert bundle.class_names == ["background", "disk", "square"]
    record = bundle.metadata["training"]
    assert record["from_scratch"] and record["annotation"] == "scribbles" and record["task"] == "semantic"
    assert record["classes"] == ["background", "disk", "square"]
    assert record["classes_from"] == "class names given"

    rc = main(["segment", str(images), "-o", str(tmp_path / "pred"), "-m", str(out), "--probabilities",
               "--device", "cpu", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)["segmented"]
    assert len(rows) == 3 and set(rows[0]["classes"]) == {"background", "disk", "square"}
    assert abs(sum(rows[0]["classes"].values()) - 1) < 1e-3
    classes = tifffile.imread(tmp_path / "pred" / "s0_labels.tif")
    assert classes.shape == (64, 64) and set(np.unique(classes)) <= {0, 1, 2}
    probs = [tifffile.imread(tmp_path / "pred" / f"s0_prob_{c}.tif")
             for c in ("background", "disk", "square")]
    assert all(p.dtype == np.float32 for p in probs)
    assert np.allclose(np.sum(probs, axis=0), 1, atol=1e-4)
    assert np.array_equal(np.argmax(probs, axis=0), classes)


def test_without_class_names_the_largest_label_value_gives_the_class_count(tmp_path, capsys):
    images, labels = _three_class_set(tmp_path / "set", n=2)
    out = tmp_path / "m.safetensors"
    assert main(["train", "--annotation", "scribbles", "--images", str(images), "--labels", str(labels),
                 "--out", str(out), "--val-fraction", "0", *TINY]) == 0
    bundle = load_model(out)
    assert bundle.task == "semantic" and bundle.class_names == ["class 1", "class 2", "class 3"]
    assert bundle.metadata["training"]["classes_from"] == "largest label value (3)"
    assert "classes_from" not in bundle.metadata  # only in the record


@pytest.mark.parametrize(
    ("base", "extra", "message"),
    [
        ("instances", [], "label values up to 5, but tiny is an instances model"),
        ("semantic", [], "label values up to 5, but tiny has 3 classes"),
        ("semantic", ["--classes", "a,b,c,d,e"], "has the classes a, b, c, not a, b, c, d, e"),
    ],
)
def test_scribbles_that_do_not_fit_the_base_model_are_refused_and_nothing_is_written(
    tmp_path, capsys, base, extra, message
):
    images, labels = _three_class_set(tmp_path / "set", n=2)
    five = tifffile.imread(labels / "s0.tif")
    five[:4, :4], five[-4:, -4:] = 4, 5  # five classes painted
    tifffile.imwrite(labels / "s0.tif", five)
    kwargs = {"class_names": ["a", "b", "c"]} if base == "semantic" else {}
    model = new_bundle(base, base_channels=4, depth=2, seed=0, name="tiny", **kwargs)
    model_file = model.save(tmp_path / "base.safetensors")
    before = _files(tmp_path)
    out = tmp_path / "out" / "tuned.safetensors"
    out.parent.mkdir()
    rc = main(["train", "--base", str(model_file), "--annotation", "scribbles", "--images", str(images),
               "--labels", str(labels), "--out", str(out), "--checkpoint", str(tmp_path / "out" / "ck.pt"),
               *extra, *TINY])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err, err
    assert "from scratch" in err
    assert not any((tmp_path / "out").iterdir())  # no model, no checkpoint
    assert set(_files(tmp_path)) == set(before) | {"out"}
    assert load_model(model_file).class_names == model.class_names


def test_class_names_need_scribbles(tmp_path, capsys):
    images, labels = _three_class_set(tmp_path / "set", n=1)
    rc = main(["train", "--classes", "a,b", "--images", str(images), "--labels", str(labels),
               "--out", str(tmp_path / "m.safetensors"), *TINY])
    assert rc == 1 and "--annotation scribbles" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def _semantic_pair(folder):
    """Two images of class maps. Image a, by hand (classes 0, 1, 2):

        truth   1 1 0 2     prediction   1 1 0 2
                1 1 0 2                  0 1 0 2

    pixel error 1/8. Segments of the truth: A = the 4 pixels of class 1, B = the 2 of class 2;
    of the prediction: P = 3 pixels of class 1, Q = the 2 of class 2, and the predicted class 0
    pixel inside A counts as a segment of its own. Restricted to the truth's foreground (6 px):
    sum n_ij^2 = 3^2 + 2^2 + 1 = 14, sum over predicted segments 3^2 + 2^2 + 1 = 14, over true
    ones 4^2 + 2^2 = 20: split 0.7, merge 1.0, Rand F = 1.4 / 1.7, Rand error 3/17.
    Image b is predicted exactly (errors 0).
    """
    gt = np.array([[1, 1, 0, 2], [1, 1, 0, 2]], np.uint8)
    pred = np.array([[1, 1, 0, 2], [0, 1, 0, 2]], np.uint8)
    for sub, arrays in (("gt", (gt, gt)), ("pred", (pred, gt))):
        (folder / sub).mkdir(parents=True)
        for name, a in zip("ab", arrays):
            tifffile.imwrite(folder / sub / f"{name}.tif", a)
    return str(folder / "pred"), str(folder / "gt")


def test_evaluate_semantic_prints_hand_computed_pixel_and_rand_errors(tmp_path, capsys):
    pred, gt = _semantic_pair(tmp_path)
    assert main(["evaluate", "--semantic", "--pred", pred, "--gt", gt, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    a, b = report["images"]
    assert a["pixel_error"] == pytest.approx(1 / 8) and a["rand_error"] == pytest.approx(3 / 17)
    assert b["pixel_error"] == 0 and b["rand_error"] == pytest.approx(0)
    assert report["total"]["pixel_error"] == pytest.approx(1 / 16)
    assert report["total"]["rand_error"] == pytest.approx(3 / 34)
    assert main(["evaluate", "--semantic", "--pred", pred, "--gt", gt]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:1].isalpha()}
    assert lines["a"] == ["8", "0.1250", "0.1765"]
    assert lines["total"] == ["16", "0.0625", "0.0882"]
    assert "pixel error" in text and "Rand error" in text


def test_evaluate_against_scribbles_leaves_unpainted_pixels_out(tmp_path, capsys):
    pred, gt = _semantic_pair(tmp_path)
    scribbles = np.array([[2, 2, 1, 3], [0, 2, 1, 3]], np.uint8)  # the truth + 1; the missed pixel unpainted
    tifffile.imwrite(tmp_path / "gt" / "a.tif", scribbles)
    assert main(["evaluate", "--gt-scribbles", "--pred", pred, "--gt", gt, "--json"]) == 0
    a = json.loads(capsys.readouterr().out)["images"][0]
    assert (a["pixels"], a["pixel_error"], a["rand_error"]) == (7, 0.0, pytest.approx(0))


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        (np.arange(64).reshape(8, 8), None, "label values up to 63, one class each: if they are objects"),
        (np.arange(4).reshape(2, 2), ["a", "b"], "Label value 3 has no class: 2 class names are given"),
        (np.ones((4, 4), np.uint8), None, "Only label value 1 is painted"),
        (np.zeros((4, 4), np.uint8), None, "No pixel is annotated"),
    ],
)
def test_a_new_model_refuses_scribbles_it_cannot_name(labels, names, message):
    from napari_tiled_unet.training.loop import new_bundle_for_annotation

    with pytest.raises(ValueError, match=message):
        new_bundle_for_annotation("scribbles", [labels], names)
