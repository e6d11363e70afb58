"""The built-in nuclei model: loads by name, says how it was made, and finds nuclei."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model import load_model, zoo
from napari_tiled_unet.segmentation import segment

REPO = Path(__file__).resolve().parents[2]
VAL_IDS = REPO / "benchmarks" / "data" / "dsb2018_val_ids.txt"


@pytest.fixture(scope="module")
def builtin():
    assert zoo.DEFAULT is not None, "no built-in model is registered"
    return load_model()


def _held_out_ids() -> set[str]:
    """Every set's held-out ids, bare and as ``set/id`` (the forms training records use)."""
    ids = set()
    for f in (REPO / "benchmarks" / "data").glob("*_val_ids.txt"):
        lines = [line for line in f.read_text().splitlines() if line.strip() and not line.startswith("#")]
        ids |= {line.split()[0] for line in lines}
    return ids


@pytest.mark.parametrize("name", list(zoo.BUILTIN))
def test_loads_by_name_with_complete_metadata(name):
    assert zoo.DEFAULT in zoo.available() and zoo.available()[0] == zoo.DEFAULT  # offered first
    assert zoo.path(name).stat().st_size <= 10 * 2**20  # ships inside the package
    bundle = load_model(name)
    meta = bundle.metadata
    assert bundle.task == "instances" and bundle.n_channels == 1
    assert meta["class_names"] == ["background", "interior", "boundary"]
    record = meta["training"]
    for key in ("data", "annotation", "epochs", "steps", "seed", "time_s", "metrics", "package_version",
                "validation", "device", "precision"):
        assert record.get(key) not in (None, ""), key
    assert record["data"]["n_images"] > 400
    assert record["metrics"]["f1@0.5"] > 0.8
    # trained in phases, each continuing from the last: the record holds every phase, back to
    # the one that started from random weights, and none of them trained on a held-out image
    # that the project's figures are measured on (benchmarks/data/*_val_ids.txt)
    phases = [record]
    while "base_training" in phases[-1]:
        phases.append(phases[-1]["base_training"])
    assert phases[-1]["from_scratch"] and all(not p["from_scratch"] for p in phases[:-1])
    held_out = _held_out_ids()
    assert len(held_out) > 100
    for p in phases:
        watched = set(p["validation"]["names"])  # set aside whole, never trained on
        trained = {n.split("/")[-1] for n in p["data"]["names"] if n not in watched}
        assert len(trained) > 400 and not trained & held_out


def test_segments_the_shipped_sample_within_10_percent_of_the_true_count(builtin):
    # the sample (DSB2018 image 150b0ffa318c) is in the held-out validation split
    assert "150b0ffa318c" in VAL_IDS.read_text()
    n_true = len(np.unique(nuclei_labels())) - 1
    result = segment(builtin, nuclei_image(), device="cpu")
    assert abs(result.n_objects - n_true) <= 0.1 * n_true, (result.n_objects, n_true)
    assert match_instances(nuclei_labels(), result.labels, 0.5).f1 > 0.8


def test_beats_the_classical_baseline_on_validation_images(builtin, dsb_dir):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from baseline_otsu import otsu_watershed, read_ids

    ids = read_ids(VAL_IDS)[:8]
    ours, theirs = [], []
    for i in ids:
        img = tifffile.imread(dsb_dir / "images" / f"{i}.tif")
        gt = tifffile.imread(dsb_dir / "labels" / f"{i}.tif")
        ours.append(match_instances(gt, segment(builtin, img, device="cpu").labels, 0.5))
        theirs.append(match_instances(gt, otsu_watershed(img), 0.5))
    ap_ours, ap_theirs = Matching.pooled(ours).ap, Matching.pooled(theirs).ap
    assert ap_ours > ap_theirs, (ap_ours, ap_theirs)
