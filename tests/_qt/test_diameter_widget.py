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
    w.model_combo.setCurrentText("nuclei-dsb2018")  # one diameter, no range: auto always rescales
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


def test_learning_from_corrections_of_a_shrunk_image_trains_at_that_scale_and_keeps_auto(make_napari_viewer,
                                                                                          qtbot):
    """Large nuclei that nuclei-v2 segmented at 0.6x: Learn from my corrections fine-tunes it on
    the image at that scale (the sizes it knows), and the fine-tuned model keeps segmenting at
    it (auto), in the preview too; a result of another model is learned at the image's own size."""
    from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
    from napari_tiled_unet._qt.session import ModelSession
    from napari_tiled_unet.objectsize import prefers_auto

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(seg)
    seg.device_combo.setCurrentText("cpu")
    seg.model_combo.setCurrentText("nuclei-v2")
    image, truth = disc_field(shape=(320, 320), diameter=110, seed=5)
    viewer.add_image(image, name="large nuclei")
    seg.image_combo.setCurrentText("large nuclei")
    seg.run()
    qtbot.waitUntil(lambda: not seg.busy, timeout=180_000)
    result = viewer.layers["large nuclei labels"]
    scale = seg.result.scale
    assert scale < 0.75 and result.metadata["napari_tiled_unet"]["scale"] == scale
    # the user redraws one nucleus
    k = int(truth[160, 160]) or int(truth.max())
    data = result.data.copy()
    data[truth == k] = data.max() + 1
    result.data = data
    ft = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(ft)
    ft.model_combo.setCurrentText("nuclei-dsb2018")
    ft.budget_spin.setValue(2)
    ft.steps_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")
    ft.corrections.learn_button.click()
    assert ft.running, ft.status.text()
    assert ft.model_combo.currentText() == "nuclei-v2" and ft.trainer.data.scale == scale
    assert f"at {scale:.2f}x the image's size" in ft.status.text()
    (item,) = ft.trainer.train_items
    assert abs(item.classes.shape[0] / 320 - scale) < 0.01  # the image, shrunk as for segmenting
    qtbot.waitUntil(lambda: not ft.running, timeout=180_000)
    done = ft.status.text()
    assert done.startswith("Done after") and f"at {scale:.2f}x the image's size" in done
    assert ft.bundle is not None and prefers_auto(ft.bundle)
    assert ft.bundle.metadata["object_diameter_range"] == [12.0, 64.0]
    # the preview of the fine-tuned model segments at the same scale
    ft.image_combo.setCurrentText("large nuclei")
    ft.preview_button.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=180_000)
    preview = [lyr for lyr in viewer.layers if "preview" in lyr.name.lower()]
    assert preview and preview[0].data.max() >= 3
    # live training on the same result trains at that scale too, and its result keeps auto
    ft.labels_combo.setCurrentText("large nuclei labels")
    ft.corrections.live_button.click()
    assert ft.corrections.running and ft.corrections.live.scale == scale
    assert f"at {scale:.2f}x the image's size" in ft.corrections.status.text()
    assert ft.corrections.live.window == (0, 0, 320, 320)  # the user's pixels, not the resized image's
    ft.corrections.live_button.click()  # Stop (keep the best)
    qtbot.waitUntil(lambda: not ft.corrections.running, timeout=120_000)
    assert ft.bundle.metadata["training"]["mode"] == "live" and prefers_auto(ft.bundle)
    # a result the picked base did not write is learned at the image's own size
    ft.model_combo.setCurrentText("nuclei-dsb2018")
    assert ft.make_trainer().data.scale is None
