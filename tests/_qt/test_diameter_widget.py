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
    assert abs(w.result.estimated_diameter / 48 - 1) <= 0.2
