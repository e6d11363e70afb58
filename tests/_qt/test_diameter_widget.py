"""The Segment widget's "object diameter" setting."""

from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._synthetic import disc_field


def test_auto_diameter_shows_the_estimate_and_keeps_the_image_shape(make_napari_viewer, qtbot, monkeypatch):
    from napari_tiled_unet._qt.session import ModelSession

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer, session=ModelSession())  # this session's "last used" stays as it was
    viewer.window.add_dock_widget(w)
    w.device_combo.setCurrentText("cpu")
    image, _ = disc_field(shape=(180, 220), diameter=48, seed=3)
    viewer.add_image(image, name="discs")
    w.image_combo.setCurrentText("discs")
    w.model_combo.setCurrentIndex(0)
    w.diameter_auto.setChecked(True)
    assert not w.diameter_spin.isEnabled()
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=120_000)
    assert viewer.layers["discs labels"].data.shape == image.shape
    assert "Estimated object diameter" in w.status.text()
    assert f"at {w.result.scale:.2f}x its size" in w.status.text()
    assert abs(w.result.estimated_diameter / 48 - 1) <= 0.2


def test_a_model_that_records_its_range_of_sizes_segments_with_auto_diameter(make_napari_viewer, qtbot,
                                                                             monkeypatch):
    """nuclei-v2 records the sizes it was trained on: choosing it ticks "auto", so large nuclei
    are shrunk into that range on the first try; nuclei-dsb2018 does not, and unticks it. A
    large image, whose results go to disk, is segmented at its own scale with a warning."""
    import napari.utils.notifications as notifications

    import napari_tiled_unet._qt.predict_widget as pw
    from napari_tiled_unet._qt.session import ModelSession
    from napari_tiled_unet.metrics import match_instances

    warnings = []
    monkeypatch.setattr(notifications, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(w)
    w.device_combo.setCurrentText("cpu")
    w.model_combo.setCurrentText("nuclei-dsb2018")
    assert not w.diameter_auto.isChecked()
    w.model_combo.setCurrentText("nuclei-v2")
    assert w.diameter_auto.isChecked()
    image, truth = disc_field(shape=(400, 400), diameter=110, seed=5)
    viewer.add_image(image, name="large nuclei")
    w.image_combo.setCurrentText("large nuclei")
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert w.result.scale < 0.75 and "x its size" in w.status.text()
    labels = viewer.layers["large nuclei labels"].data
    assert viewer.layers["large nuclei labels"].metadata["napari_tiled_unet"]["model"] == "nuclei-v2"
    assert labels.shape == image.shape and match_instances(truth, labels, 0.5).f1 >= 0.9
    monkeypatch.setattr(pw, "LARGE_PIXELS", 256 * 256)
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=180_000)
    assert any("segmented at its own scale" in m for m in warnings)
    assert w.result.scale is None and "x its size" not in w.status.text()
    w.model_combo.setCurrentText("nuclei-dsb2018")
    assert not w.diameter_auto.isChecked()
