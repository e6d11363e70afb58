"""Training on several sets (training/mixture.py, `train --data`)."""

import numpy as np
import tifffile

from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.cli import main
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.data import Augmentation, PatchSampler, TrainingImage
from napari_tiled_unet.training.mixture import (
    DataSet,
    load_mixture,
    median_diameter,
    parse_data_arg,
    read_license,
    split_components,
)
from napari_tiled_unet.training.targets import make_targets


def _set(root, name, image, labels, n=3, license_line="License: CC0 1.0 (public domain)."):
    (root / name / "images").mkdir(parents=True)
    (root / name / "labels").mkdir()
    (root / name / "README.md").write_text(f"# {name}\n\n## License\n{license_line}\n")
    for k in range(n):
        y = 40 * k
        tifffile.imwrite(root / name / "images" / f"{name}{k}.tif", image[y : y + 192, :192])
        tifffile.imwrite(root / name / "labels" / f"{name}{k}.tif", labels[y : y + 192, :192])
    return root / name


def test_train_on_two_folder_pairs_records_both_sets(tmp_path, capsys):
    img, lab = nuclei_image(), nuclei_labels()
    a = _set(tmp_path, "eightbit", img, lab)
    b = _set(tmp_path, "sixteen", img.astype(np.uint16) * 200, lab, license_line="Apache-2.0 (see LICENSE).")
    out = tmp_path / "m.safetensors"
    assert main(["train", "--data", str(a / "images"), f"{a / 'labels'}:3", "--data", str(b / "images"),
                 str(b / "labels"), "--out", str(out), "--base-channels", "4", "--depth", "2",
                 "--epochs", "1", "--steps-per-epoch", "3", "--patch-size", "64", "--batch-size", "2",
                 "--monitor-per-set", "1", "--exclude-saturated", "--normalization-high", "99",
                 "--normalization-clip", "2"]) == 0
    capsys.readouterr()
    bundle = load_model(out)
    sets = {s["name"]: s for s in bundle.metadata["training"]["sets"]}
    assert set(sets) == {"eightbit", "sixteen"}
    assert sets["eightbit"]["license"] == "CC0-1.0" and sets["sixteen"]["license"] == "Apache-2.0"
    assert sets["eightbit"]["weight"] == 3.0 and sets["sixteen"]["weight"] == 1.0
    assert all(len(s["sha256"]) == 64 and s["n_images"] == 3 for s in sets.values())
    assert sets["eightbit"]["sha256"] != sets["sixteen"]["sha256"]
    assert bundle.metadata["object_diameter"] > 0
    assert bundle.metadata["object_diameter_range"] == [12.0, 64.0]  # what diameter="auto" trusts
    assert bundle.normalization == {"kind": "percentile", "low": 1.0, "high": 99.0, "exclude_saturated": True,
                                    "clip_high": 2.0}
    # fine-tuned on one folder at its own scale: auto must not resize images away from that scale
    tuned = tmp_path / "tuned.safetensors"
    assert main(["train", "--images", str(a / "images"), "--labels", str(a / "labels"), "--base", str(out),
                 "--out", str(tuned), "--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "64",
                 "--batch-size", "2"]) == 0
    capsys.readouterr()
    tuned = load_model(tuned)
    assert "object_diameter_range" not in tuned.metadata
    assert tuned.metadata["object_diameter"] == bundle.metadata["object_diameter"]
    assert tuned.normalization == bundle.normalization  # the base's recipe, ceiling included
    bad = ["train", "--data", str(a / "images"), str(a / "labels"),
           "--out", str(tmp_path / "bad.safetensors"), "--normalization-clip", "0"]
    assert main(bad) == 1
    err = capsys.readouterr().err.strip()
    assert "--normalization-clip" in err and "\n" not in err and not (tmp_path / "bad.safetensors").exists()


def test_held_out_ids_never_reach_training_and_sets_are_drawn_by_weight(tmp_path):
    img, lab = nuclei_image(), nuclei_labels()
    a = _set(tmp_path, "a", img, lab, n=3)
    b = _set(tmp_path, "b", img[:, ::-1].copy(), lab[:, ::-1].copy(), n=1)
    (tmp_path / "held.txt").write_text("a2\n")
    mix, monitor = load_mixture([DataSet(a / "images", a / "labels", 1.0, held_out=tmp_path / "held.txt"),
                                 DataSet(b / "images", b / "labels", 3.0)])
    assert mix.names == ["a/a0", "a/a1", "b/b0"] and monitor == []
    # one set of one image weighs 3, the other (two images) 1: patches come 3:1 from b
    items = []
    for im, lb, w in zip(mix.images, mix.labels, mix.weights):
        it = TrainingImage(im[None], make_targets(im.shape, lb), stats=np.array([[0.0, 1 / 255]]))
        it.sample_weight = w
        items.append(it)
    sampler = PatchSampler(items, 32, 0, Augmentation.none())
    p_b = sampler._p[2]
    assert abs(p_b - 0.75) < 0.02


def test_parse_data_weight_and_license():
    ds = parse_data_arg(["x/images", "x/labels:2.5"])
    assert ds.weight == 2.5 and str(ds.labels) == "x/labels"
    assert parse_data_arg("x/images C:/labels").weight == 1.0


def test_cut_ids_become_one_id_per_piece_and_diameter():
    lab = np.zeros((40, 40), np.uint16)
    lab[2:12, 2:12] = 5
    lab[20:30, 20:30] = 5  # the same id twice, far apart (a nucleus cut by a neighbour)
    lab[2:12, 25:35] = 2
    out = split_components(lab)
    assert out.max() == 3 and len(np.unique(out[lab == 5])) == 2
    assert abs(median_diameter(out) - np.sqrt(400 / np.pi)) < 1e-6


def test_license_read_from_real_sets():
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "shared" / "data"
    expected = {"kromp-sbsst265": "CC0-1.0", "bitdepth-nucseg": "Apache-2.0",
                "aitslab-bioimaging1": "CC-BY-4.0", "dsb2018-fluo-train": "CC0-1.0"}
    for name, lic in expected.items():
        if (root / name).is_dir():
            assert read_license(root / name) == lic, name


def test_ignore_masks_keep_nuclei_the_annotators_left_out_from_being_trained_as_background(tmp_path, capsys):
    """A set whose annotators left some nuclei out (Kromp's out-of-focus ones): with
    ``ignore=FOLDER`` in the list file those pixels count neither as nucleus nor as background,
    also where the image is resized into the trained diameter range; the record names the masks."""
    from napari_tiled_unet.training.config import TrainConfig
    from napari_tiled_unet.training.data import IGNORE
    from napari_tiled_unet.training.dataset import TrainingSet
    from napari_tiled_unet.training.mixture import read_list_file

    img, lab = nuclei_image(), nuclei_labels()
    a = _set(tmp_path, "partial", img, lab, n=2)
    (a / "ignore").mkdir()
    left_out = {}
    for k in range(2):
        labels = tifffile.imread(a / "labels" / f"partial{k}.tif")
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        gone = int(ids[np.argmax(areas)])  # the annotators skipped the largest nucleus
        left_out[k] = labels == gone
        kept = np.where(left_out[k], 0, labels).astype(labels.dtype)
        tifffile.imwrite(a / "labels" / f"partial{k}.tif", kept)
        if k == 0:  # image 1 has no mask file: it counts everywhere
            tifffile.imwrite(a / "ignore" / f"partial{k}.tif", left_out[k].astype(np.uint8))
    (tmp_path / "list.txt").write_text("partial/images partial/labels 1 ignore=partial/ignore\n")
    sets = read_list_file(tmp_path / "list.txt")
    assert sets[0].ignore == a / "ignore"
    diam = median_diameter(nuclei_labels())
    for low in (12.0, 1.5 * diam):  # own scale, then enlarged 1.5x onto the range's lower bound
        mix, _ = load_mixture(sets, min_diameter=low)
        assert mix.ignore[1] is None and mix.ignore[0].shape == mix.labels[0].shape
        assert mix.record[0]["n_ignore_masks"] == 1 and 0 < mix.record[0]["ignored_fraction"] < 0.05
        ts = TrainingSet(load_model("nuclei-dsb2018"), mix.images, mix.labels, TrainConfig(val_fraction=0),
                         ignore=mix.ignore)
        masked, unmasked = (ts._slots[k].item.classes for k in (0, 1))
        # the left-out nucleus: not counted where masked, trained as background where not
        assert (masked[mix.ignore[0]] == IGNORE).all()
        assert (masked[~mix.ignore[0]] != IGNORE).all()
        assert (unmasked != IGNORE).all()
    out = tmp_path / "m.safetensors"
    listed = ["train", "--data-list", str(tmp_path / "list.txt")]
    assert main([*listed, "--out", str(out), "--base-channels", "4", "--depth", "2", "--epochs", "1",
                 "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2",
                 "--monitor-per-set", "0"]) == 0
    capsys.readouterr()
    record = load_model(out).metadata["training"]["sets"][0]
    assert record["ignore"] == str(a / "ignore") and len(record["ignore_sha256"]) == 64
    tifffile.imwrite(a / "ignore" / "partial0.tif", np.zeros((10, 10), np.uint8))
    assert main([*listed, "--out", str(tmp_path / "bad.safetensors"), "--epochs", "1",
                 "--steps-per-epoch", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert "partial0" in err and "ignore mask" in err and "\n" not in err
    assert not (tmp_path / "bad.safetensors").exists()
