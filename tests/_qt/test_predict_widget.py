import gc
import threading
import time

import dask.array as da
import numpy as np
import pytest

from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.model import UNet, make_metadata, save_bundle


@pytest.fixture
def tiny_model(tiny_model_file):
    return tiny_model_file


@pytest.fixture
def widget(make_napari_viewer, tiny_model):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model)
    w.device_combo.setCurrentText("cpu")
    return viewer, w


def test_the_widget_opens_from_napari_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment (U-Net)")
    assert isinstance(w, SegmentWidget)
    assert w.model_combo.count() >= 1


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.job is not None and w.job.finished, timeout=timeout)


def test_segment_adds_a_labels_layer_of_the_image_shape(widget, qtbot):
    """The sample with the built-in model (the default choice): about its 198 nuclei."""
    viewer, w = widget
    viewer.add_image(nuclei_image(), name="nuclei")
    w.image_combo.setCurrentText("nuclei")
    w.model_combo.setCurrentIndex(0)
    assert w.model_combo.currentText() == "nuclei-dsb2018"
    w.run()
    _wait(qtbot, w)
    labels = viewer.layers["nuclei labels"]
    assert labels.data.shape == nuclei_image().shape
    n_true = len(np.unique(nuclei_labels())) - 1
    n_found = len(np.unique(labels.data)) - 1
    assert abs(n_found - n_true) <= 0.1 * n_true, (n_found, n_true)
    assert f"{n_found} objects found" in w.status.text()
    # the user's layer is untouched
    assert np.array_equal(viewer.layers["nuclei"].data, nuclei_image())


def test_running_again_replaces_only_the_plugins_own_layer(widget, qtbot):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:128, :128], name="img")
    viewer.add_labels(np.zeros((128, 128), np.int32), name="my annotations")
    w.image_combo.setCurrentText("img")
    for _ in range(2):
        w.run()
        _wait(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["img", "my annotations", "img labels"]


def test_mirror_test_option_reaches_the_engine(widget, qtbot, tiny_model):
    from napari_tiled_unet.inference import predict
    from napari_tiled_unet.model import load_model

    viewer, w = widget
    img = nuclei_image()[:96, :160]
    viewer.add_image(img, name="img")
    w.image_combo.setCurrentText("img")
    w.show_probs.setChecked(True)
    w.tta_check.setChecked(True)
    w.run()
    _wait(qtbot, w)
    shown = np.asarray(viewer.layers["img probabilities"].data)
    bundle = load_model(tiny_model)
    expected = predict(bundle, img, device="cpu", tta=True)
    assert np.abs(shown - expected).max() <= 1e-5
    assert np.abs(shown - predict(bundle, img, device="cpu")).max() > 1e-4


def test_cancel_mid_run_leaves_no_layer_and_ends_the_worker(widget, qtbot):
    viewer, w = widget
    viewer.add_image(da.from_array(np.tile(nuclei_image(), (4, 4)), chunks=512), name="big")
    w.image_combo.setCurrentText("big")
    w.window_spin.setValue(128)
    w.batch_spin.setValue(1)
    w.run()
    qtbot.waitUntil(lambda: w.progress.maximum() > 1 and w.progress.value() >= 1, timeout=30_000)
    w.cancel()
    _wait(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert w.job.generator_closed
    gc.collect()
    assert not any(t.name == "tiled-unet-reader" for t in threading.enumerate())
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    assert "Cancelled" in w.status.text()


def test_event_loop_is_never_blocked_for_200_ms_during_a_run(widget, qtbot, monkeypatch):
    """All computing happens in the worker: from Run until the result is handed to napari,
    a 20 ms timer keeps ticking. (napari's own add_labels, which builds vispy visuals, is
    excluded: it takes several hundred ms under software rendering whatever the plugin does.)"""
    from qtpy.QtCore import QTimer

    viewer, w = widget
    viewer.add_image(np.tile(nuclei_image(), (2, 2)), name="img")
    w.image_combo.setCurrentText("img")
    w.window_spin.setValue(256)
    ticks, handed_over = [], []
    show = w._show_result
    monkeypatch.setattr(w, "_show_result", lambda r: handed_over.append(time.perf_counter()) or show(r))
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    w.run()
    _wait(qtbot, w)
    timer.stop()
    assert handed_over, "no result was shown"
    gaps = np.diff([t for t in ticks if t <= handed_over[0]])
    assert len(gaps) > 10
    assert gaps.max() < 0.2, f"event loop blocked for {gaps.max() * 1000:.0f} ms"


def test_resegment_changes_labels_without_running_the_model(widget, qtbot, monkeypatch):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:256, :256], name="img")
    w.image_combo.setCurrentText("img")
    w.run()
    _wait(qtbot, w)
    calls = []
    original = w.bundle.model.forward
    monkeypatch.setattr(w.bundle.model, "forward", lambda *a: calls.append(1) or original(*a))
    before = viewer.layers["img labels"].data.copy()
    w.fg_spin.setValue(0.05)
    w.seed_spin.setValue(0.05)
    w.min_size_spin.setValue(0)
    w.resegment()
    _wait(qtbot, w)
    after = viewer.layers["img labels"].data
    assert calls == []
    assert not np.array_equal(before, after)


def test_a_stack_runs_plane_by_plane(widget, qtbot):
    viewer, w = widget
    stack = np.stack([nuclei_image()[:128, :160]] * 3)
    viewer.add_image(stack, name="stack")
    w.image_combo.setCurrentText("stack")
    w.run()
    _wait(qtbot, w)
    assert viewer.layers["stack labels"].data.shape == stack.shape


def test_large_results_stay_on_disk_and_display_lazily(widget, qtbot, monkeypatch):
    """Above LARGE_PIXELS the probabilities and labels go to zarr and napari gets a lazy
    multiscale pyramid; the objects are the same as in memory (up to their numbering)."""
    import napari_tiled_unet._qt.predict_widget as pw
    from napari_tiled_unet.metrics import match_instances

    viewer, w = widget
    img = nuclei_image()
    viewer.add_image(img, name="img")
    w.image_combo.setCurrentText("img")
    w.run()
    _wait(qtbot, w)
    in_memory = np.asarray(viewer.layers["img labels"].data).copy()
    monkeypatch.setattr(pw, "LARGE_PIXELS", 256 * 256)
    monkeypatch.setattr(pw, "PYRAMID_TOP", 256)
    w.run()
    _wait(qtbot, w)
    layer = viewer.layers["img labels"]
    assert layer.multiscale and len(layer.data) == 3
    assert isinstance(layer.data[0], da.Array) and layer.data[0].shape == img.shape
    on_disk = layer.data[0].compute()
    m = match_instances(in_memory, on_disk, 0.99)
    assert m.tp == m.n_true == m.n_pred  # the same objects
    assert [lyr.name for lyr in viewer.layers] == ["img", "img labels"]
    # re-segmenting a large result also stays on disk
    w.min_size_spin.setValue(200)
    w.resegment()
    _wait(qtbot, w)
    layer = viewer.layers["img labels"]
    assert layer.multiscale and layer.data[0].compute().max() < on_disk.max()


class _RecordingArray:
    """An array that records the size of every read made outside the main thread."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.worker_reads = []

    def __getitem__(self, key):
        out = self.data[key]
        if threading.current_thread() is not threading.main_thread():
            self.worker_reads.append(out.size)
        return out


def test_a_dask_layer_is_never_converted_to_numpy_whole(widget, qtbot):
    viewer, w = widget
    rec = _RecordingArray(np.tile(nuclei_image(), (3, 3)))
    viewer.add_image(da.from_array(rec, chunks=(512, 512)), name="lazy")
    w.image_combo.setCurrentText("lazy")
    w.run()
    _wait(qtbot, w)
    assert viewer.layers["lazy labels"].data.shape == rec.shape
    assert rec.worker_reads and max(rec.worker_reads) <= 512 * 512


@pytest.fixture
def _capture_error_notifications(monkeypatch):
    """The messages napari shows as error notifications."""

    def start():
        errors = []
        monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
        return errors

    return start


@pytest.mark.parametrize(
    "data,message",
    [
        (np.zeros((4, 5, 6, 7, 8), np.uint8), "dimensions"),
        (np.full((64, 64), 3, np.uint8), "constant"),
        (np.where(np.eye(64) > 0, np.nan, 1.0).astype(np.float32), "NaN"),
    ],
)
def test_bad_images_notify_and_leave_the_layers_as_they_were(widget, qtbot, data, message,
                                                             _capture_error_notifications):
    viewer, w = widget
    viewer.add_image(data, name="bad")
    errors = _capture_error_notifications()
    w.image_combo.setCurrentText("bad")
    w.run()
    _wait(qtbot, w)
    assert errors and message in errors[0]
    assert [layer.name for layer in viewer.layers] == ["bad"]


def test_channel_mismatch_notifies(widget, qtbot, tmp_path, _capture_error_notifications):
    viewer, w = widget
    net = UNet(3, 3, base_channels=4, depth=2).eval()
    w.add_model_file(save_bundle(net, tmp_path / "rgb.safetensors", make_metadata(net)))
    viewer.add_image(nuclei_image()[:64, :64], name="gray")
    errors = _capture_error_notifications()
    w.image_combo.setCurrentText("gray")
    w.run()
    _wait(qtbot, w)
    assert errors and "expects 3 channels" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["gray"]


def test_gpu_out_of_memory_after_back_off_notifies(widget, qtbot, monkeypatch, _capture_error_notifications):
    """A device that never has memory: the engine halves batch and window, warns each time,
    then gives up with one sentence; no layer is added."""
    import torch

    from napari_tiled_unet.model.unet import UNet

    def no_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    viewer, w = widget
    viewer.add_image(nuclei_image()[:128, :128], name="img")
    w.image_combo.setCurrentText("img")
    w.batch_spin.setValue(2)
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    monkeypatch.setattr(UNet, "forward", no_memory)
    errors = _capture_error_notifications()
    w.run()
    _wait(qtbot, w)
    assert any("continuing with 1 window(s) per batch" in m for m in warnings)
    assert errors and "Out of GPU memory even with the smallest window" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["img"]


def test_unreadable_model_file_notifies(widget, qtbot, tmp_path, _capture_error_notifications):
    viewer, w = widget
    bad = tmp_path / "broken.safetensors"
    bad.write_text("nonsense")
    w.add_model_file(bad)
    viewer.add_image(nuclei_image()[:64, :64], name="img")
    errors = _capture_error_notifications()
    w.run()
    assert errors and "not a safetensors model file" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["img"]


def test_sample_labels_match_the_sample_image():
    assert nuclei_labels().shape == nuclei_image().shape
    assert len(np.unique(nuclei_labels())) - 1 == 198


def test_resegmenting_a_large_result_shows_blocks_and_cancels(widget, qtbot, monkeypatch):
    """Re-segmenting a result kept on disk counts the post-processing's blocks in the status
    line ("Labels: k/n"), and Cancel stops it: the labels shown stay the previous ones, no
    thread works on."""
    import napari_tiled_unet._qt.predict_widget as pw

    monkeypatch.setattr(pw, "LARGE_PIXELS", 256 * 256)
    viewer, w = widget
    viewer.add_image(np.tile(nuclei_image(), (6, 5)), name="img")  # 3120 x 3480: 16 blocks
    w.image_combo.setCurrentText("img")
    w.run()
    _wait(qtbot, w, timeout=180_000)
    before = viewer.layers["img labels"].data[0]
    before_values = before[::64, ::64].compute()
    w.min_size_spin.setValue(200)
    w.resegment()
    qtbot.waitUntil(lambda: w.status.text().startswith("Labels: "), timeout=60_000)
    assert "/48, " in w.status.text()  # 16 blocks, three passes
    w.cancel()
    _wait(qtbot, w)
    assert w.status.text() == "Cancelled: the previous result is kept."
    assert viewer.layers["img labels"].data[0] is before
    assert np.array_equal(before[::64, ::64].compute(), before_values)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("postprocess")]


def test_a_semantic_model_shows_its_class_names_on_the_labels_layer(widget, qtbot, tmp_path):
    from napari_tiled_unet.training.loop import new_bundle

    viewer, w = widget
    model = new_bundle("semantic", class_names=["background", "membrane", "cell"], base_channels=4, depth=2)
    w.add_model_file(model.save(tmp_path / "classes.safetensors"))
    viewer.add_image(nuclei_image()[:96, :96], name="em")
    w.image_combo.setCurrentText("em")
    w.run()
    _wait(qtbot, w)
    layer = viewer.layers["em labels"]
    assert set(np.unique(layer.data)) <= {0, 1, 2}
    assert list(layer.features["class"]) == ["background", "membrane", "cell"]
    value = int(layer.data[40, 40])
    status = layer.get_status((40, 40), world=True)
    assert ["background", "membrane", "cell"][value] in str(status)  # the name under the mouse
