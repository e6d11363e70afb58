"""``napari-tiled-unet segment --measure``: one objects CSV beside each label file."""

import csv

import numpy as np
import tifffile

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.cli import main


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_measure_writes_one_row_per_object_beside_each_label_file(tmp_path, capsys):
    # the built-in model: the tiny untrained one finds one object enclosing a few (merged into it)
    images = tmp_path / "images"
    images.mkdir()
    img = nuclei_image()
    tifffile.imwrite(images / "a.tif", img[:200, :260])
    tifffile.imwrite(images / "b.tif", img[250:, 300:])
    out = tmp_path / "out"
    assert main(["segment", str(images), "-o", str(out), "-m", "nuclei-dsb2018", "--measure"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "a_objects.csv", "b_labels.tif",
                                                     "b_objects.csv"]
    for name, part in (("a", img[:200, :260]), ("b", img[250:, 300:])):
        labels = tifffile.imread(out / f"{name}_labels.tif")
        rows = _rows(out / f"{name}_objects.csv")
        ids = np.unique(labels[labels > 0])
        assert len(ids) >= 5
        assert [int(r["label"]) for r in rows] == list(ids)  # one row per object
        assert sum(int(r["area_px"]) for r in rows) == np.count_nonzero(labels)
        first = labels == ids[0]
        assert float(rows[0]["intensity_mean"]) == part[first].mean()
    # a second run keeps the CSV unless --overwrite, like the label files
    before = (out / "a_objects.csv").read_bytes()
    assert main(["segment", str(images / "a.tif"), "-o", str(out), "-m", "nuclei-dsb2018",
                 "--measure"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "a_objects.csv").read_bytes() == before


def test_measure_a_zarr_result_blockwise(tmp_path, tiny_model_file):
    import zarr

    img = np.tile(nuclei_image(), (1, 2))[:, :1200]
    z = zarr.open_array(str(tmp_path / "wide.zarr"), mode="w", shape=img.shape, chunks=(256, 256),
                        dtype=img.dtype)
    z[:] = img
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "wide.zarr"), "-o", str(out), "-m", str(tiny_model_file),
                 "--measure"]) == 0
    labels = zarr.open_array(str(out / "wide_labels.zarr"), mode="r")[:]
    rows = _rows(out / "wide_objects.csv")
    assert [int(r["label"]) for r in rows] == list(np.unique(labels[labels > 0]))
    assert sum(int(r["area_px"]) for r in rows) == np.count_nonzero(labels)
