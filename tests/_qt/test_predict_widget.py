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


def test_the_widget_opens_from_napari_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment (U-Net)")
    assert isinstance(w, SegmentWidget)
    assert w.model_combo.count() >= 1
    # each built-in model tells, on hover, which images it suits, in both widgets' pickers
    from qtpy.QtCore import Qt

    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune (U-Net)")
    for combo in (w.model_combo, ft.model_combo):
        tip = Qt.ItemDataRole.ToolTipRole
        tips = {combo.itemText(i): combo.itemData(i, tip) for i in range(combo.count())}
        assert "other labs" in tips["nuclei-v2"] and "like DSB2018" in tips["nuclei-dsb2018"]


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def test_segment_adds_a_labels_layer_of_the_image_shape(widget, qtbot):
    """The sample with the built-in model (the default choice): about its 198 nuclei."""
    viewer, w = widget
    viewer.add_image(nuclei_image(), name="nuclei")
    w.image_combo.setCurrentText("nuclei")
    w.model_combo.setCurrentIndex(0)
    assert w.model_combo.currentText() == "nuclei-v2" and w.diameter_auto.isChecked()  # default, auto
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
    w.run()
    _wait(qtbot, w)
    result = viewer.layers["img labels"]
    assert result.visible  # (added hidden, shown on the next turn of the event loop)
    result.visible = False  # the user hides it; the next run writes into it and leaves it hidden
    w.run()
    _wait(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["img", "my annotations", "img labels"]
    assert viewer.layers["img labels"] is result and not result.visible


def test_mirror_test_option_reaches_the_engine(widget, qtbot, tiny_model):
    from napari_tiled_unet.inference import predict
    from napari_tiled_unet.model import load_model

    viewer, w = widget
    img = nuclei_image()[:96, :160]
    viewer.add_image(img, name="img")
    w.image_combo.setCurrentText("img")
    w.show_probs.setChecked(True)
    w.tta_check.setChecked(True)
    w.precision_combo.setCurrentText("fp32")
    w.run()
    _wait(qtbot, w)
    bundle = load_model(tiny_model)
    names = bundle.class_names
    shown = np.stack([np.asarray(viewer.layers[f"img {n} probability"].data) for n in names[1:]])
    expected = predict(bundle, img, device="cpu", tta=True)[1:]
    assert np.abs(shown - expected).max() <= 1e-5
    assert np.abs(shown - predict(bundle, img, device="cpu")[1:]).max() > 1e-4
    # one layer per foreground class, below the labels (which they must not cover)
    assert [layer.name for layer in viewer.layers] == ["img", *(f"img {n} probability" for n in names[1:]),
                                                        "img labels"]


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


def test_the_event_loop_stays_free_while_a_4096_image_is_segmented_and_shown(widget, qtbot, event_loop_watch):
    """Click on Segment and wait until the labels and both probability layers are on screen,
    4096x4096: the event loop is never held for 200 ms, from the click through prediction,
    post-processing (counted in blocks), measuring and the adding of the three layers.

    Held means the wall time between two ticks of a 20 ms timer minus the time the main thread
    waited for a CPU that other processes had (this machine's two cores are shared with other
    work; the raw wall-clock gaps are in the message).

    One call no plugin can split is napari's own adding of the 4096x4096 labels layer (its
    visuals; 0.13-0.24 s of CPU on this shared VM, depending on the host's load). It is measured
    here, on an equal hidden layer, just before the run: where it alone takes more than 170 ms,
    the budget is that cost plus 30 ms instead of 200 ms."""
    import time

    viewer, w = widget
    viewer.add_image(np.tile(nuclei_image(), (8, 8))[:4096, :4096], name="img")
    w.image_combo.setCurrentText("img")
    w.show_probs.setChecked(True)
    qtbot.wait(200)
    floors = []
    for _ in range(2):
        cpu = time.thread_time()
        probe = viewer.add_labels(np.zeros((4096, 4096), np.uint16), visible=False)
        floors.append(time.thread_time() - cpu)
        viewer.layers.remove(probe)
        qtbot.wait(50)
    budget = max(0.2, min(floors) + 0.03)
    counts = set()
    event_loop_watch.label = lambda: counts.add(w.status.text().split(",")[0]) or w.status.text()[:40]
    event_loop_watch.start()
    w.run_button.click()
    _wait(qtbot, w, timeout=300_000)
    qtbot.wait(300)  # the layers are drawn
    event_loop_watch.stop()
    names = [layer.name for layer in viewer.layers]
    assert names == ["img", "img interior probability", "img boundary probability", "img labels"], names
    wall, blocked, _, _ = event_loop_watch.gaps()
    assert len(wall) > 50
    assert blocked.max() < budget, (f"{event_loop_watch.worst()}; longest wall gap {wall.max():.3f} s; "
                                    f"display steps (name, wall, CPU): {w.step_times}; napari's add of an "
                                    f"equal labels layer: {floors} s of CPU, budget {budget:.3f} s")
    # the in-memory post-processing was counted in blocks (64 of 512 px, three passes)
    assert len({c for c in counts if c.startswith("Labels: ") and c.endswith("/192")}) > 10, counts


def test_in_memory_post_processing_counts_its_blocks_and_cancels(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.tile(nuclei_image(), (6, 5))[:3072, :3072], name="img")  # in memory: 36 blocks
    w.image_combo.setCurrentText("img")
    w.run_button.click()
    qtbot.waitUntil(lambda: w.status.text().startswith("Labels: "), timeout=120_000)
    assert "/108, " in w.status.text() and w.progress.maximum() == 108  # of 512 px, three passes
    w.cancel_button.click()
    _wait(qtbot, w)
    assert w.status.text() == "Cancelled: nothing was added."
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("postprocess")]


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
    # the tiny untrained model calls nearly everything foreground (one object, enclosed pieces
    # merged into it): demand near-certainty instead, so the labels must change
    w.fg_spin.setValue(0.99)
    w.seed_spin.setValue(0.99)
    w.min_size_spin.setValue(0)
    w.resegment()
    _wait(qtbot, w)
    after = viewer.layers["img labels"].data
    assert calls == []
    assert not np.array_equal(before, after)


def test_a_stack_runs_plane_by_plane(widget, qtbot, monkeypatch):
    viewer, w = widget
    stack = np.stack([nuclei_image()[:128, :160]] * 3)
    viewer.add_image(stack, name="stack")
    w.image_combo.setCurrentText("stack")
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    w.run()  # three planes or three channels? the widget asks
    assert errors and "holds channels or planes" in errors[0] and w.job is None
    assert not w.channel_row.isHidden()
    w.channel_axis_combo.setCurrentText("none (3 planes)")
    w.run()
    _wait(qtbot, w)
    assert viewer.layers["stack labels"].data.shape == stack.shape


def test_large_results_stay_on_disk_and_display_lazily(widget, qtbot, monkeypatch):
    """Above LARGE_PIXELS the probabilities and labels go to zarr and napari gets a lazy
    multiscale pyramid; the objects are the same as in memory (up to their numbering)."""
    import napari_tiled_unet._qt.predict_widget as pw
    import napari_tiled_unet._qt.result_layers as result_layers
    from napari_tiled_unet.metrics import match_instances

    viewer, w = widget
    img = nuclei_image()
    viewer.add_image(img, name="img")
    w.image_combo.setCurrentText("img")
    w.run()
    _wait(qtbot, w)
    in_memory = np.asarray(viewer.layers["img labels"].data).copy()
    monkeypatch.setattr(pw, "LARGE_PIXELS", 256 * 256)
    monkeypatch.setattr(result_layers, "PYRAMID_TOP", 256)
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


def test_a_new_run_never_discards_edits_of_the_result_layer(widget, qtbot):
    """The user corrects the result layer; Segment again: the corrections are still there
    (the new result goes to a new layer, and the user is told), and a result nobody edited
    is replaced in place."""
    viewer, w = widget
    viewer.add_image(nuclei_image()[:128, :128], name="img")
    w.image_combo.setCurrentText("img")
    infos = []
    import napari.utils.notifications as n

    original_info = n.show_info
    n.show_info = infos.append
    try:
        w.run_button.click()
        _wait(qtbot, w)
        labels = viewer.layers["img labels"]
        labels.paint((20, 20), 999, refresh=True)  # the brush, as napari's paint tool does
        painted = np.array(labels.data, copy=True)
        assert (painted == 999).sum() > 0
        w.run_button.click()
        _wait(qtbot, w)
    finally:
        n.show_info = original_info
    assert np.array_equal(labels.data, painted) and labels in viewer.layers
    assert [layer.name for layer in viewer.layers] == ["img", "img labels", "img labels [1]"]
    assert any("edits of 'img labels' are kept" in m for m in infos)
    new = viewer.layers["img labels [1]"]
    assert not (np.asarray(new.data) == 999).any()
    w.run_button.click()  # the new layer was not edited: replaced in place
    _wait(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["img", "img labels", "img labels [1]"]


def test_two_images_with_their_own_placement_get_two_aligned_result_layers(widget, qtbot):
    viewer, w = widget
    img = nuclei_image()[:96, :128]
    viewer.add_image(img, name="a", scale=(2.0, 2.0), translate=(10.0, 20.0), units=("um", "um"),
                     axis_labels=("y", "x"))
    viewer.add_image(img, name="b", scale=(0.5, 0.25), translate=(-5.0, 300.0), rotate=30)
    for name in ("a", "b"):
        w.image_combo.setCurrentText(name)
        w.run_button.click()
        _wait(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["a", "b", "a labels", "b labels"]
    for name in ("a", "b"):
        image, labels = viewer.layers[name], viewer.layers[f"{name} labels"]
        assert np.allclose(labels.scale, image.scale) and np.allclose(labels.translate, image.translate)
        assert np.allclose(labels.rotate, image.rotate)
        assert np.allclose(labels.extent.world, image.extent.world)  # drawn on top of its image
    assert tuple(str(u) for u in viewer.layers["a labels"].units) == ("micrometer", "micrometer")
    assert tuple(viewer.layers["a labels"].axis_labels) == ("y", "x")


def test_a_run_keeps_its_image_when_a_same_named_layer_replaces_it(widget, qtbot):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:96, :128], name="img", scale=(2.0, 2.0))
    w.image_combo.setCurrentText("img")
    w.run_button.click()
    viewer.layers.remove("img")  # during the run
    viewer.add_image(nuclei_image()[:96, :128], name="img", scale=(5.0, 5.0))
    _wait(qtbot, w)
    assert np.allclose(viewer.layers["img labels"].scale, (2.0, 2.0))


def _gray_result(w, qtbot, viewer, img):
    viewer.add_image(img, name="gray")
    w.image_combo.setCurrentText("gray")
    w.run_button.click()
    _wait(qtbot, w)
    return np.array(viewer.layers["gray labels"].data)


def test_rgb_and_channel_first_images_run_with_the_users_channel_choice(widget, qtbot, monkeypatch):
    viewer, w = widget
    w.precision_combo.setCurrentText("fp32")
    img = nuclei_image()[:96, :128]
    expected = _gray_result(w, qtbot, viewer, img)

    # RGB with the nuclei in green only: luminance by default, or the green channel
    viewer.add_image(np.stack([np.zeros_like(img), img, np.zeros_like(img)], axis=-1), name="rgb", rgb=True)
    w.image_combo.setCurrentText("rgb")
    assert not w.channel_row.isHidden() and w.channel_combo.currentText() == "luminance"
    w.channel_combo.setCurrentText("1 (green)")
    w.run_button.click()
    _wait(qtbot, w)
    assert np.array_equal(viewer.layers["rgb labels"].data, expected)
    assert "channel 1" in w.status.text() or "objects found" in w.status.text()

    # (C, Y, X), two channels, nuclei in channel 1: the widget asks, then uses the choice
    errors = []
    monkeypatch.setattr("napari.utils.notifications.show_error", errors.append)
    viewer.add_image(np.stack([img[::-1], img]), name="cyx", scale=(1.0, 3.0, 3.0))
    w.image_combo.setCurrentText("cyx")
    w.run_button.click()
    assert errors and "channels or planes" in errors[0] and w.job.finished
    w.channel_axis_combo.setCurrentText("axis 0 (2 channels)")
    w.channel_combo.setCurrentText("1")
    w.run_button.click()
    _wait(qtbot, w)
    labels = viewer.layers["cyx labels"]
    assert np.array_equal(labels.data, expected) and np.allclose(labels.scale, (3.0, 3.0))


def test_the_advanced_panel_shows_the_models_own_defaults_from_the_start(make_napari_viewer):
    from napari_tiled_unet.model import load_model

    w = SegmentWidget(make_napari_viewer())
    post = load_model().postprocess
    assert w.fg_spin.value() == pytest.approx(post["foreground_threshold"])
    assert w.seed_spin.value() == pytest.approx(post["seed_threshold"])
    assert w.min_size_spin.value() == post["min_size"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["built-in", "64 base channels"])
def test_cancel_in_the_middle_of_one_large_window_returns_within_2_s(make_napari_viewer, qtbot, tmp_path,
                                                                      model):
    """2048x2048 on the CPU in fp32, tile size 2048 asked for: the built-in model runs it as one
    window (several seconds), a model four times as wide (each convolution 16 times the work)
    in tiles the widget lowers to 512 px, telling the user. Cancel in the middle of a window
    ends the run within 2 s."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    if model != "built-in":
        net = UNet(1, 3, base_channels=64, depth=4).eval()
        w.add_model_file(save_bundle(net, tmp_path / "wide.safetensors", make_metadata(net)))
    w.device_combo.setCurrentText("cpu")
    w.precision_combo.setCurrentText("fp32")
    w.window_spin.setValue(2048)
    viewer.add_image(np.tile(nuclei_image(), (4, 4))[:2048, :2048], name="img")
    w.image_combo.setCurrentText("img")
    started, infos = [], []
    net = w.load_selected_model().model
    net.inc.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))
    import napari.utils.notifications as n

    original_info, n.show_info = n.show_info, infos.append
    try:
        w.run_button.click()
        qtbot.waitUntil(lambda: bool(started), timeout=60_000)
        qtbot.waitUntil(lambda: 0 < w.progress.value() < w.progress.maximum() == 1000
                        and w.job.control.windows_done % 1 > 0.05, timeout=60_000)
        clicked = time.perf_counter()
        w.cancel_button.click()
        qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    finally:
        n.show_info = original_info
    took = time.perf_counter() - clicked
    assert took < 2.0, f"cancel took {took:.1f} s"
    tiles = w.job.control.windows_total
    if model == "built-in":
        assert tiles == 1 and not infos
    else:
        assert tiles > 4 and any("512 px tiles" in m and "Cancel" in m for m in infos), infos
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert w.status.text() == "Cancelled: nothing was added." and w.progress.value() == 0


def test_closing_the_viewer_mid_run_raises_nothing(make_napari_viewer, qtbot, tiny_model):
    """As from a script or Jupyter: the event loop goes on after the viewer is closed; the
    run stops, and nothing touches the deleted widget."""
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model)
    w.device_combo.setCurrentText("cpu")
    viewer.add_image(np.tile(nuclei_image(), (3, 3)), name="img")
    w.image_combo.setCurrentText("img")
    w.window_spin.setValue(256)
    w.run_button.click()
    job = w.job
    qtbot.waitUntil(lambda: job.control.windows_done > 0, timeout=30_000)
    viewer.close()
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    qtbot.wait(200)  # anything queued after the end runs now, and must not raise
    assert job.cancelled


def test_an_image_of_exactly_the_large_size_is_kept_on_disk(widget, qtbot, monkeypatch):
    """The on-disk path starts at LARGE_PIXELS, not above it (an 8192x8192 image used to stay
    in RAM)."""
    import napari_tiled_unet._qt.predict_widget as pw

    monkeypatch.setattr(pw, "LARGE_PIXELS", 128 * 160)
    viewer, w = widget
    viewer.add_image(nuclei_image()[:128, :160], name="img")
    w.image_combo.setCurrentText("img")
    w.run_button.click()
    _wait(qtbot, w)
    assert isinstance(viewer.layers["img labels"].data, da.Array)


def test_a_full_bar_never_stays_beside_a_new_error(widget, qtbot, _capture_error_notifications):
    viewer, w = widget
    viewer.add_image(nuclei_image()[:96, :128], name="img")
    viewer.add_image(np.full((64, 64), 3, np.uint8), name="flat")
    w.image_combo.setCurrentText("img")
    w.run_button.click()
    _wait(qtbot, w)
    assert w.progress.value() == w.progress.maximum() == 1
    errors = _capture_error_notifications()
    w.image_combo.setCurrentText("flat")
    w.run_button.click()
    _wait(qtbot, w)
    assert errors and "constant" in w.status.text()
    assert w.progress.value() == 0


def test_a_widget_taken_off_the_viewer_lets_go_of_the_viewer_and_its_layers(make_napari_viewer, qtbot,
                                                                            tiny_model):
    """Removed from its dock (or closed), a widget no longer listens to the layer list, the
    selection or the result layer it made: adding a layer afterwards reaches nothing of it."""
    from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
    from napari_tiled_unet._qt.session import ModelSession

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image()[:64, :64].copy(), name="img")
    emitters = [viewer.layers.events.inserted, viewer.layers.events.removed,
                viewer.layers.selection.events.active]
    before = [len(e.callbacks) for e in emitters]
    segment = SegmentWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(segment)
    segment.add_model_file(tiny_model)
    segment.device_combo.setCurrentText("cpu")
    segment.run_button.click()
    _wait(qtbot, segment)
    labels = viewer.layers["img labels"]
    labels_before = [len(labels.events.paint.callbacks), len(labels.events.data.callbacks)]
    finetune = FineTuneWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(finetune)
    assert [len(e.callbacks) for e in emitters] > before
    viewer.window.remove_dock_widget(segment)
    segment.deleteLater()
    finetune.close()
    qtbot.wait(50)
    assert [len(e.callbacks) for e in emitters] == before
    assert [len(labels.events.paint.callbacks), len(labels.events.data.callbacks)] < labels_before
    viewer.add_image(nuclei_image()[:64, :64].copy(), name="later")
    assert finetune.image_combo.findText("later") == -1


def test_a_warning_of_the_engine_reaches_the_user(widget, qtbot, tmp_path, monkeypatch):
    """Post-processing in blocks warns that objects are larger than the blocks' overlap (an
    untrained model calls the whole image one object): napari users see it as a warning. (An
    image of this size is post-processed again whole instead; the limit is lowered here so that
    a small image shows the warning of a large one.)"""
    import torch

    import napari_tiled_unet.segmentation as segmentation

    monkeypatch.setattr(segmentation, "IN_MEMORY_EXACT", 1024 * 1024)
    viewer, w = widget
    torch.manual_seed(0)
    net = UNet(1, 3, base_channels=4, depth=2).eval()
    w.add_model_file(save_bundle(net, tmp_path / "untrained.safetensors", make_metadata(net)))
    warnings = []
    monkeypatch.setattr("napari.utils.notifications.show_warning", warnings.append)
    viewer.add_image(np.tile(nuclei_image(), (4, 2))[:2048, :1100], name="img")
    w.image_combo.setCurrentText("img")
    w.run_button.click()
    _wait(qtbot, w)
    assert any("blocks hold objects larger than" in m for m in warnings), warnings


def test_a_log_warning_during_a_job_reaches_the_widget_as_an_event(qtbot):
    """What the engine only logs (napari users never see a log) arrives as a WarningEvent."""
    import logging

    from napari_tiled_unet._qt.workers import EngineJob
    from napari_tiled_unet.events import Progress, WarningEvent

    def work():
        logging.getLogger("napari_tiled_unet.inference").warning("reading %s is slow", "a.zarr")
        yield Progress(1, 1, 0.0)
        return 5

    events, results = [], []
    job = EngineJob(work, events.append, results.append, lambda exc: None, lambda: None)
    job.start()
    qtbot.waitUntil(lambda: job.finished, timeout=10_000)
    assert results == [5]
    assert [e.message for e in events if isinstance(e, WarningEvent)] == ["reading a.zarr is slow"]
