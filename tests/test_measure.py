"""Per-object measurements: the table, physical units, blockwise = in memory, CSV."""

import csv

import dask.array as da
import numpy as np
import pytest
import zarr
from skimage.measure import regionprops_table

from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.measure import measure_objects, objects_csv_path, write_csv


@pytest.fixture(scope="module")
def sample():
    return nuclei_labels(), nuclei_image()


def _assert_tables_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        if k.startswith("centroid"):  # the same mean, summed from another origin
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-9, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_one_row_per_object_and_the_areas_sum_to_the_foreground(sample):
    labels, image = sample
    table = measure_objects(labels, image)
    assert list(table) == ["label", "area_px", "centroid_y_px", "centroid_x_px", "intensity_mean",
                           "intensity_max", "eccentricity", "solidity"]
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(table["label"], ids) and len(ids) == 198
    assert table["area_px"].sum() == np.count_nonzero(labels)
    one = labels == ids[57]
    assert table["intensity_mean"][57] == pytest.approx(image[one].mean())
    assert table["intensity_max"][57] == image[one].max()
    assert table["centroid_y_px"][57] == pytest.approx(np.nonzero(one)[0].mean())
    assert np.all((table["solidity"] > 0) & (table["solidity"] <= 1))
    assert np.all((table["eccentricity"] >= 0) & (table["eccentricity"] < 1))


def test_physical_columns_follow_the_pixel_size(sample):
    labels, image = sample
    pixels = measure_objects(labels, image)
    table = measure_objects(labels, image, scale=(0.5, 0.25), unit="um")
    assert [k for k in table if k not in pixels] == ["area_um2", "centroid_y_um", "centroid_x_um"]
    physical = regionprops_table(labels, properties=("area", "centroid", "eccentricity"), spacing=(0.5, 0.25))
    np.testing.assert_allclose(table["area_um2"], physical["area"])
    np.testing.assert_allclose(table["area_um2"], pixels["area_px"] * 0.125)
    np.testing.assert_allclose(table["centroid_y_um"], pixels["centroid_y_px"] * 0.5)
    np.testing.assert_allclose(table["centroid_x_um"], pixels["centroid_x_px"] * 0.25)
    np.testing.assert_allclose(table["centroid_x_px"], pixels["centroid_x_px"])
    # shape in physical space: non-square pixels change eccentricity, not solidity
    np.testing.assert_allclose(table["eccentricity"], physical["eccentricity"])
    assert not np.allclose(table["eccentricity"], pixels["eccentricity"])
    np.testing.assert_allclose(table["solidity"], pixels["solidity"])
    # a pixel size without a unit still gives physical columns, named "scaled"
    assert "area_scaled" in measure_objects(labels, scale=(2.0, 2.0))
    assert "area_um2" in measure_objects(labels, scale=(1.0, 1.0), unit="um")


def test_blockwise_equals_in_memory_with_objects_across_chunk_borders(sample, tmp_path):
    labels, image = sample
    labels = labels.copy()
    # one id for two objects far apart (in blocks that share no border): still one row
    far = labels[400:, 600:]
    labels[labels == far[far > 0][0]] = int(labels[labels > 0][0])
    store = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=labels.shape, chunks=(48, 64),
                            dtype="int32")
    store[:] = labels
    expected = measure_objects(labels, image)
    # objects cut by the 48x64 grid of chunks (blocks of 96x128 with block_size 100)
    cut = set()
    for edges, axis in ((range(96, labels.shape[0], 96), 0), (range(128, labels.shape[1], 128), 1)):
        for e in edges:
            before, after = np.take(labels, e - 1, axis=axis), np.take(labels, e, axis=axis)
            cut |= set(before[(before == after) & (before > 0)].tolist())
    assert len(cut) > 20
    blockwise = measure_objects(store, da.from_array(image, chunks=100), block_size=100)
    _assert_tables_equal(blockwise, expected)
    # a scale and an RGB image go through the blockwise path in the same way
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)
    _assert_tables_equal(measure_objects(store, rgb, scale=(0.3, 0.3), unit="um", block_size=64),
                         measure_objects(labels, rgb, scale=(0.3, 0.3), unit="um"))


def test_channels_and_stacks(sample):
    labels, image = sample
    labels, image = labels[:200, :300], image[:200, :300]
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)
    last = measure_objects(labels, rgb)
    first = measure_objects(labels, np.moveaxis(rgb, -1, 0))
    assert [k for k in last if k.startswith("intensity_mean")] == [f"intensity_mean_{c}" for c in range(3)]
    _assert_tables_equal(last, first)
    np.testing.assert_allclose(last["intensity_mean_0"], measure_objects(labels, image)["intensity_mean"])
    # a stack of planes, ids unique across planes as the plugin writes them
    second = np.where(labels > 0, labels + labels.max(), 0)
    stack = np.stack([labels, second])
    table = measure_objects(stack, np.stack([image, image]), scale=(2.0, 0.5, 0.5), unit="um")
    n = len(np.unique(labels)) - 1
    assert list(table["plane"]) == [0] * n + [1] * n
    assert list(table["z_um"]) == [0.0] * n + [2.0] * n
    assert table["area_px"].sum() == np.count_nonzero(stack)
    with pytest.raises(ValueError, match="does not match"):
        measure_objects(labels, image[:100])


def test_csv_round_trip_and_no_silent_overwrite(sample, tmp_path):
    labels, image = sample
    table = measure_objects(labels, image, scale=(0.5, 0.5), unit="um")
    path = write_csv(table, tmp_path / "objects.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(table)
    assert len(rows) == 1 + len(table["label"])
    back = {k: np.array([r[i] for r in rows[1:]], dtype=table[k].dtype) for i, k in enumerate(rows[0])}
    _assert_tables_equal(back, table)
    for k in table:  # floats are written in full (repr), so the round trip is exact
        assert np.array_equal(back[k], table[k])
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_csv({"label": np.array([1])}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["objects.csv"]  # no temporary file left
    assert objects_csv_path(tmp_path / "cells_labels.tif").name == "cells_objects.csv"
    assert objects_csv_path(tmp_path / "x_labels.zarr").name == "x_objects.csv"


def test_a_large_numpy_map_is_measured_block_by_block_with_progress_and_cancel(sample):
    import threading

    from napari_tiled_unet.events import Progress, run_to_end
    from napari_tiled_unet.measure import measure_objects_iter

    labels, image = sample
    events = []
    table = run_to_end(measure_objects_iter(labels, image, block_size=256), events.append)  # 3 x 3 blocks
    assert all(isinstance(e, Progress) and e.stage == "measure" for e in events)
    assert events[-1].done == events[-1].total == 18
    _assert_tables_equal(table, measure_objects(labels, image))
    # closing the generator (Cancel) stops it; no measuring thread goes on
    gen = measure_objects_iter(labels, image, block_size=128)
    next(gen)
    gen.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("postprocess")]
