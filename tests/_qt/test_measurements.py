"""The Segment widget's measurements: Labels features, the Objects table, Export CSV…, Save labels…

Real clicks in napari under Xvfb; the one stand-in is the file dialog (``ask_save_path``), which
returns the path a user would have chosen.
"""

import numpy as np
import pandas as pd
import tifffile
from qtpy.QtCore import Qt

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.measure import measure_objects


def _segment(qtbot, w, name):
    w.image_combo.setCurrentText(name)
    qtbot.mouseClick(w.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.job is not None and not w.busy, timeout=60_000)  # run and display done


def _choose(monkeypatch, w, path):
    """The save dialog answers ``path`` (as if the user had typed it and confirmed)."""
    asked = []
    monkeypatch.setattr(w, "ask_save_path", lambda *args: asked.append(args) or str(path))
    return asked


def test_features_table_on_the_sample_one_row_per_object(widget, qtbot):
    """The shipped sample with the built-in model: its ~198 nuclei, one row each."""
    viewer, w = widget
    viewer.add_image(nuclei_image(), name="nuclei")
    w.model_combo.setCurrentText("nuclei-dsb2018")
    _segment(qtbot, w, "nuclei")
    layer = viewer.layers["nuclei labels"]
    ids = np.unique(layer.data[layer.data > 0])
    features = layer.features
    assert abs(len(ids) - 198) <= 20
    assert list(features["index"]) == list(ids)  # one row per object, napari's label index
    assert features["area_px"].sum() == np.count_nonzero(layer.data)
    assert f"{len(ids)} objects found" in w.status.text()
    # napari shows the object's measurements beside the label under the cursor
    k = len(ids) // 2
    y, x = np.argwhere(layer.data == features["index"].iloc[k])[0]
    status = layer.get_status((y, x), world=True)
    text = status["coordinates"] if isinstance(status, dict) else status
    assert f"area_px: {features['area_px'].iloc[k]}," in text
    assert "centroid_x_px" in text and "solidity" in text and "_pixel" not in text
    # the Objects dock lists them; clicking a row selects that object
    table = w._table
    assert table.isVisibleTo(viewer.window._qt_window) and table.model.rowCount() == len(ids)
    assert table.title.text().startswith(f"nuclei labels: {len(ids)} objects")
    # below the canvas, where its columns fit, not in the right column where it would push the
    # Segment widget's status out of sight
    dock = table.parent()
    assert dock.parent().dockWidgetArea(dock) == Qt.DockWidgetArea.BottomDockWidgetArea
    index = table.proxy.index(3, 0)
    qtbot.mouseClick(table.view.viewport(), Qt.MouseButton.LeftButton,
                     pos=table.view.visualRect(index).center())
    assert layer.selected_label == ids[3]


def test_export_csv_round_trips_and_reflects_corrections(widget, qtbot, monkeypatch, tmp_path):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:256, :256], name="img")
    _segment(qtbot, w, "img")
    layer = viewer.layers["img labels"]
    path = tmp_path / "objects.csv"
    asked = _choose(monkeypatch, w, path)
    qtbot.mouseClick(w.export_button, Qt.MouseButton.LeftButton)
    assert asked and asked[0][1] == "img labels objects.csv"
    back = pd.read_csv(path)
    expected = layer.features.rename(columns={"index": "label"})
    assert list(back.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False, check_exact=True)
    # a correction painted with the brush: the next export measures the labels again
    new = int(layer.data.max()) + 1
    layer.brush_size = 5
    layer.paint((200, 200), new)
    assert "edited since" in w._table.title.text()
    path2 = tmp_path / "after.csv"
    _choose(monkeypatch, w, path2)
    qtbot.mouseClick(w.export_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(path2.exists, timeout=30_000)
    after = pd.read_csv(path2)
    assert new in set(after["label"]) and new not in set(back["label"])
    assert after["area_px"].sum() == np.count_nonzero(layer.data)
    # a cancelled dialog writes nothing
    _choose(monkeypatch, w, "")
    qtbot.mouseClick(w.export_button, Qt.MouseButton.LeftButton)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.csv", "objects.csv"]


def test_physical_units_follow_the_layer_scale(widget, qtbot):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:256, :256], name="img", scale=(0.5, 0.25), units=("um", "um"))
    _segment(qtbot, w, "img")
    f = viewer.layers["img labels"].features
    np.testing.assert_allclose(f["area_um2"], f["area_px"] * 0.125)
    np.testing.assert_allclose(f["centroid_y_um"], f["centroid_y_px"] * 0.5)
    np.testing.assert_allclose(f["centroid_x_um"], f["centroid_x_px"] * 0.25)
    assert "area_um2" in w._table.model.names
    # the user closes the Objects dock: the next result opens it again
    viewer.window.remove_dock_widget(w._table)
    _segment(qtbot, w, "img")
    assert w._table.isVisibleTo(viewer.window._qt_window)


def test_save_labels_writes_the_layer_with_its_edits(widget, qtbot, monkeypatch, tmp_path):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:128, :160], name="img")
    _segment(qtbot, w, "img")
    layer = viewer.layers["img labels"]
    layer.paint((60, 60), 77)
    target = tmp_path / "mine.tif"
    target.write_bytes(b"an older file the user agreed to replace in the dialog")
    _choose(monkeypatch, w, target)
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w._side_job.finished, timeout=30_000)
    assert np.array_equal(tifffile.imread(target), layer.data)
    assert "saved" in w.status.text()
    # a name typed without a suffix gets .tif, but never replaces a file the dialog did not name
    (tmp_path / "other.tif").write_bytes(b"keep")
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    _choose(monkeypatch, w, tmp_path / "other")
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    assert errors and "already exists" in errors[0]
    assert (tmp_path / "other.tif").read_bytes() == b"keep"


def test_a_large_result_is_measured_blockwise_and_saved_tile_by_tile(widget, qtbot, monkeypatch, tmp_path):
    import napari_tiled_unet._qt.predict_widget as pw
    import napari_tiled_unet._qt.result_layers as result_layers

    monkeypatch.setattr(pw, "LARGE_PIXELS", 256 * 256)
    monkeypatch.setattr(result_layers, "PYRAMID_TOP", 256)
    viewer, w = widget
    img = nuclei_image()
    viewer.add_image(img, name="img")
    _segment(qtbot, w, "img")
    layer = viewer.layers["img labels"]
    assert layer.multiscale
    labels = layer.data[0].compute()
    expected = measure_objects(labels, img)
    assert list(layer.features["index"]) == list(expected["label"])
    np.testing.assert_allclose(layer.features["solidity"], expected["solidity"])
    _choose(monkeypatch, w, tmp_path / "big.tif")
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w._side_job.finished, timeout=30_000)
    assert np.array_equal(tifffile.imread(tmp_path / "big.tif"), labels)
    # or as a zarr folder, which is never replaced
    import zarr

    _choose(monkeypatch, w, tmp_path / "big.zarr")
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w._side_job.finished, timeout=30_000)
    assert np.array_equal(zarr.open_array(str(tmp_path / "big.zarr"), mode="r")[:], labels)
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    qtbot.mouseClick(w.save_labels_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w._side_job.finished, timeout=30_000)
    assert errors and "already exists" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "big.zarr"]
