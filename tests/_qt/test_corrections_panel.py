"""The correction loop's panel: Learn from my corrections, and live training inside napari."""

from __future__ import annotations

import time

import numpy as np

from napari_tiled_unet._qt.corrections_panel import CorrectionPanel, remember_written
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.live import LiveTrainer
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.data import IGNORE


def _run_queue_wait() -> float:
    """Seconds this thread has waited, runnable, for a CPU (Linux scheduler statistics)."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def _panel(viewer, image, labels, model_file, learned, results, notes, **kwargs):
    bundle = load_model(model_file)
    panel = CorrectionPanel(
        viewer, image_layer=lambda: image, labels_layer=lambda: labels, base_model=lambda: bundle,
        annotation=lambda: "instances", learn=lambda *a: learned.append(a),
        on_result=lambda *a: results.append(a), notify=notes.append, **kwargs)
    return panel


def test_learn_from_my_corrections_offers_the_edited_result_with_the_region_of_the_edits(
        make_napari_viewer, tiny_model_file):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei_image()[:256, :320], name="img")
    result = viewer.add_labels(nuclei_labels()[:256, :320].astype(np.uint16), name="img labels")
    result.metadata["napari_tiled_unet"] = {"role": "labels", "image": "img"}
    other = viewer.add_labels(np.zeros((256, 320), np.uint16), name="my labels")
    learned, results, notes = [], [], []
    panel = _panel(viewer, image, other, tiny_model_file, learned, results, notes)
    panel.learn_button.click()
    assert not learned and "Segment the image first" in notes[-1]  # nothing the plugin wrote yet
    assert remember_written(result)
    panel.learn_button.click()
    assert "not been corrected" in notes[-1]
    result.brush_size = 10
    ys, xs = np.nonzero(result.data[:90, :90])
    result.paint((ys[len(ys) // 2], xs[len(xs) // 2]), 0)  # the eraser on an object at the top left
    result.paint((200, 280), 77)  # a missed nucleus painted in
    panel.learn_button.click()
    layer, boxes, description = learned[-1]
    assert layer is result
    inside = np.zeros((256, 320), bool)
    for y0, x0, y1, x1 in boxes:
        inside[y0:y1, x0:x1] = True
    edited = result.data != nuclei_labels()[:256, :320]
    assert edited.any() and inside[edited].all()
    assert not inside[100:160, 100:200].any()  # far from both edits
    assert "2 area(s)" in description


def test_live_training_strokes_join_the_preview_refreshes_and_napari_stays_responsive(
        make_napari_viewer, qtbot, tiny_model_file, one_torch_thread):
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei_image()[:192, :256], name="img")
    truth = nuclei_labels()[:192, :256]
    labels = viewer.add_labels(np.zeros((192, 256), np.uint16), name="my labels")
    learned, results, notes = [], [], []
    settings = {"patch_size": 64, "batch_size": 2, "preview_every": 0.5, "validate_every": 1.0, "threads": 1}
    panel = _panel(viewer, image, labels, tiny_model_file, learned, results, notes, settings=lambda: settings)
    # scikit-image, scipy and torch import parts of themselves on first use (0.3-0.7 s holding the
    # interpreter, once per session): warm them so that the panel's own work is measured
    warm = LiveTrainer(tiny_model_file, nuclei_image()[:64, :64], patch_size=32, threads=1)
    warm.set_window((0, 0, 64, 64))
    warm.set_annotation(nuclei_labels()[:64, :64])
    warm._take_annotation(np.random.default_rng(0))
    warm._preview(warm.model)
    warm._validate(warm.model)
    cpu = time.thread_time()
    viewer.layers.remove(viewer.add_labels(np.zeros((64, 64), np.uint16)))
    napari_price = time.thread_time() - cpu  # of adding a labels layer, which no plugin can slice
    # the user paints a few nuclei of the top half, then starts live training
    for k in np.unique(truth[:80])[1:6]:
        labels.data[truth == k] = k
    labels.refresh()
    qtbot.wait(100)
    cpu = time.thread_time()
    panel.live_button.click()
    click = time.thread_time() - cpu
    assert panel.running and not notes, notes
    assert click < napari_price + 0.1, (click, napari_price)  # the preview layer is added at the click
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), time.thread_time(), _run_queue_wait())))
    timer.start()
    live = panel.live
    qtbot.waitUntil(lambda: live.step >= 3 and panel.previews_shown >= 1, timeout=60_000)
    assert panel.preview_layer is not None and panel.preview_layer.data.shape == (192, 256)
    before = live.training_classes()
    # a stroke painted during training: a nucleus of the bottom half, with napari's brush
    k = int(np.bincount(truth[120:].ravel())[1:].argmax()) + 1
    ys, xs = np.nonzero(truth == k)
    labels.brush_size = 6
    for y, x in zip(ys[::25], xs[::25]):  # one dab per event-loop turn, as mouse events come
        labels.paint((y, x), 99)
        qtbot.wait(20)
    stroke = labels.data == 99
    assert (before[stroke] == IGNORE).all()
    shown = panel.previews_shown
    qtbot.waitUntil(lambda: (live.training_classes()[stroke] != IGNORE).all(), timeout=30_000)
    qtbot.waitUntil(lambda: panel.previews_shown > shown, timeout=30_000)
    panel.live_button.click()  # Stop
    qtbot.waitUntil(lambda: bool(results), timeout=60_000)
    timer.stop()
    bundle, message = results[-1]
    assert "kept" in message and bundle.metadata["training"]["mode"] == "live"
    assert not panel.running and panel.live_button.text() == "Start live training"
    wall, cpu, waited = np.diff(np.array(ticks), axis=0).T
    assert len(wall) > 20
    # the time the event loop was held by this process (its main thread's work, or another of its
    # threads holding the GIL): the wall time less the time the main thread was ready to run but
    # waited for a CPU that other processes of this busy machine had
    blocked = wall - waited
    assert max(blocked.max(), cpu.max()) < 0.2, (
        f"blocked {blocked.max():.3f} s ({wall[blocked.argmax()]:.3f} s wall), CPU {cpu.max():.3f} s")


def test_the_fine_tune_widget_learns_from_the_corrected_result_layer(make_napari_viewer, qtbot,
                                                                     tiny_model_file):
    """One corrected nucleus is learned: it counts whole (no strip of the model's own untouched
    output is held out, on which the starting weights would always win and the correction be
    lost) and the result is the trained weights; with several corrected areas a part is held out."""
    import torch

    from napari_tiled_unet._qt.finetune_widget import FineTuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image()[:192, :256], name="img")
    result = viewer.add_labels(nuclei_labels()[:192, :256].astype(np.uint16), name="img labels")
    result.metadata["napari_tiled_unet"] = {"role": "labels", "image": "img"}
    remember_written(result)  # as the Segment widget does when it writes a result
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(tiny_model_file)
    w.budget_spin.setValue(2)
    w.steps_spin.setValue(2)  # 2 epochs of 2 steps
    result.brush_size = 12
    result.paint((150, 200), 55)  # a correction in the bottom right
    assert not w.region_hint.isHidden()  # "the whole image counts" (region: whole image) ...
    w.corrections.learn_button.click()
    assert w.running, w.status.text()
    assert w.region_hint.isHidden()  # ... is wrong while the edits are the region
    counted = w.trainer.train_items[0].classes != IGNORE
    edited = result.data == 55
    ys, xs = np.nonzero(counted)
    assert counted[edited].all() and not w.trainer.val_items  # the whole correction is learned
    assert ys.min() > 100 and xs.min() > 130  # the untouched top left does not count
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.bundle is not None and "too few to hold some out" in w.status.text(), w.status.text()
    assert not w.region_hint.isHidden()  # back for the next plain Train
    base = load_model(tiny_model_file).model.state_dict()
    trained = w.bundle.model.state_dict()
    assert any(not torch.equal(base[k], trained[k]) for k in base)  # not the starting weights
    # corrections in three places: a strip of them is held out to choose the weights
    result.paint((30, 30), 56)
    result.paint((30, 220), 57)
    w.corrections.learn_button.click()
    assert w.running, w.status.text()
    assert w.trainer.val_items
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.bundle is not None and "too few" not in w.status.text()


def test_learn_from_my_corrections_starts_from_the_model_that_made_the_result(make_napari_viewer, qtbot,
                                                                               tiny_model_file):
    """A result written by a model (here a model file) is learned from by fine-tuning that model,
    not whatever the base model picker showed (the built-in default)."""
    from napari_tiled_unet._qt.finetune_widget import FineTuneWidget

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image()[:128, :128], name="img")
    result = viewer.add_labels(nuclei_labels()[:128, :128].astype(np.uint16), name="img labels")
    result.metadata["napari_tiled_unet"] = {"role": "labels", "image": "img", "model": str(tiny_model_file)}
    remember_written(result)
    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_combo.setCurrentText("nuclei-dsb2018")
    w.budget_spin.setValue(1)
    w.steps_spin.setValue(1)
    result.paint((60, 60), 77)
    w.corrections.learn_button.click()
    assert w.running, w.status.text()
    assert w.model_combo.currentText() == tiny_model_file.name
    assert f"starting from {tiny_model_file.name}" in w.status.text()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.bundle is not None
    # live training on the same result layer starts from that model too
    w.model_combo.setCurrentText("nuclei-dsb2018")
    w.labels_combo.setCurrentText("img labels")
    w.corrections.start_live()
    assert w.corrections.running and w.model_combo.currentText() == tiny_model_file.name
    w.corrections.stop_live()
    qtbot.waitUntil(lambda: not w.corrections.running, timeout=120_000)


def _fine_tune(viewer, model_file, image: str, labels: str | None = None):
    """The Fine-tune widget docked in ``viewer`` with ``model_file`` loaded and the layers chosen."""
    from napari_tiled_unet._qt.finetune_widget import FineTuneWidget

    w = FineTuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.add_model_file(model_file)
    w.image_combo.setCurrentText(image)
    if labels is not None:
        w.labels_combo.setCurrentText(labels)
    return w


def _paint_preview_stop(w, qtbot, labels, point) -> None:
    """Paint one object at ``point``, wait for two previews of the plane's size, stop."""
    labels.paint(point, 5)
    qtbot.waitUntil(lambda: w.corrections.previews_shown >= 2, timeout=60_000)
    assert w.corrections.preview_layer.data.shape == (128, 160)
    w.corrections.stop_live()
    qtbot.waitUntil(lambda: not w.corrections.running, timeout=60_000)
    assert w.bundle is not None and w.bundle.metadata["training"]["mode"] == "live"


def test_live_training_on_an_rgb_image_reads_it_as_train_and_segment_do(make_napari_viewer, qtbot,
                                                                         tiny_model_file):
    """An RGB image (a stained slide photographed in colour) and a grayscale model: live
    training starts (it was refused before), trains on the image read as Segment reads it,
    and previews at the image's size."""

    viewer = make_napari_viewer()
    gray = nuclei_image()[:128, :160]
    rgb = np.stack([gray, gray // 2, gray // 4], axis=-1)  # a colour picture of the same nuclei
    image = viewer.add_image(rgb, name="colour", rgb=True)
    assert image.rgb
    labels = viewer.add_labels(np.zeros((128, 160), np.uint16), name="my labels")
    w = _fine_tune(viewer, tiny_model_file, "colour", "my labels")
    w.corrections.start_live()
    live = w.corrections.live
    assert w.corrections.running, w.corrections.status.text()
    assert live.image.shape == (1, 128, 160)  # one channel for a one-channel model
    expected = np.asarray(w.training_plane(image, 1).image, np.float32)
    assert np.allclose(live.image[0], expected)
    _paint_preview_stop(w, qtbot, labels, (60, 60))


def test_live_training_on_a_stack_trains_on_the_plane_on_display_and_keeps_it(make_napari_viewer, qtbot,
                                                                               tiny_model_file):
    """A z-stack with a stack of labels: live training runs on the plane on display when it
    started (it was refused before), keeps to it when the user looks at another plane, and
    labels of another stack's shape are refused in one sentence."""

    viewer = make_napari_viewer()
    gray = nuclei_image()
    stack = np.stack([gray[:128, :160], gray[128:256, :160], gray[256:384, :160]])  # three different planes
    viewer.add_image(stack, name="stack")
    labels = viewer.add_labels(np.zeros((3, 128, 160), np.uint16), name="my labels")
    viewer.add_labels(np.zeros((4, 128, 160), np.uint16), name="other stack")  # plane 1 exists, but not ours
    w = _fine_tune(viewer, tiny_model_file, "stack", "my labels")  # labels of the stack's shape: planes
    viewer.dims.set_point(0, 1)
    w.corrections.start_live()
    live = w.corrections.live
    assert w.corrections.running, w.corrections.status.text()
    assert np.allclose(live.image[0], stack[1].astype(np.float32))  # plane 1, on display at the start
    assert "on plane 1" in w.corrections.status.text()
    sent = []
    send = live.set_annotation
    live.set_annotation = lambda data, region=None: (sent.append(np.array(data)), send(data, region))[1]
    labels.paint((1, 60, 60), 5)  # on the plane live training runs on
    viewer.dims.set_point(0, 2)  # the user looks at another plane
    qtbot.waitUntil(lambda: w.corrections.previews_shown >= 2 and bool(sent), timeout=60_000)
    assert sent[-1].shape == (128, 160) and sent[-1].max() > 0  # plane 1's strokes, not plane 2's (empty)
    assert np.array_equal(sent[-1], labels.data[1])
    preview = w.corrections.preview_layer
    assert preview.data.shape == (1, 128, 160) and preview.name == "stack live preview (plane 1)"
    assert tuple(preview.translate) == (1, 0, 0)  # on plane 1 of the stack, shown there only
    w.corrections.stop_live()
    qtbot.waitUntil(lambda: not w.corrections.running, timeout=60_000)
    assert w.bundle is not None and w.bundle.metadata["training"]["mode"] == "live"
    assert np.array_equal(viewer.layers["stack"].data, stack)  # the user's image is untouched
    notes = []
    w.corrections._notify = notes.append
    w.labels_combo.setCurrentText("other stack")
    w.corrections.start_live()
    assert not w.corrections.running and len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("The labels have shape (4, 128, 160) but the image is (3, 128, 160)")


def test_live_training_on_a_multichannel_image_trains_on_the_chosen_channel(make_napari_viewer, qtbot,
                                                                           tiny_model_file):
    """A (C, Y, X) image in one layer with 2D labels (refused before): the labels answer that the
    first axis holds channels, and live training reads the channel the pickers chose."""

    viewer = make_napari_viewer()
    nuclei = nuclei_image()[:128, :160]
    other = np.random.default_rng(0).integers(0, 255, (128, 160)).astype(nuclei.dtype)
    viewer.add_image(np.stack([other, nuclei]), name="two channels", channel_axis=None)
    labels = viewer.add_labels(np.zeros((128, 160), np.uint16), name="my labels")
    w = _fine_tune(viewer, tiny_model_file, "two channels", "my labels")
    picker = w.channel_row
    picker.set_layer(viewer.layers["two channels"])
    picker.axis_combo.setCurrentIndex(picker.axis_combo.findData(0))  # the first axis holds channels
    picker.channel_combo.setCurrentIndex(picker.channel_combo.findData(1))  # the nuclei
    w.corrections.start_live()
    assert w.corrections.running, w.corrections.status.text()
    assert np.allclose(w.corrections.live.image[0], nuclei.astype(np.float32))
    _paint_preview_stop(w, qtbot, labels, (60, 60))


def test_learn_from_my_corrections_on_a_stack_learns_the_corrected_plane_on_display(make_napari_viewer, qtbot,
                                                                                    tiny_model_file):
    """A z-stack's result corrected on one plane (refused before: only 2D results were
    remembered): shown another plane, the user is told where the corrections are; shown that
    plane, its edits are learned on its image."""

    viewer = make_napari_viewer()
    gray, lab = nuclei_image(), nuclei_labels().astype(np.uint16)
    crops = [(slice(y, y + 128), slice(0, 160)) for y in (0, 128, 256)]
    stack = np.stack([gray[c] for c in crops])
    viewer.add_image(stack, name="zstack")
    result = viewer.add_labels(np.stack([lab[c] for c in crops]), name="zstack labels")
    result.metadata["napari_tiled_unet"] = {"role": "labels", "image": "zstack"}
    assert remember_written(result)  # as the Segment widget does when it writes a result
    w = _fine_tune(viewer, tiny_model_file, "zstack")
    w.budget_spin.setValue(2)
    w.steps_spin.setValue(2)
    notes = []
    w.corrections._notify = notes.append
    result.brush_size = 12
    result.paint((2, 90, 120), 77)  # a correction on plane 2
    viewer.dims.set_point(0, 0)
    w.corrections.learn_button.click()
    assert not w.running and len(notes) == 1 and "\n" not in notes[0]
    assert "on plane 2, not on the plane on display" in notes[0]
    viewer.dims.set_point(0, 2)
    w.corrections.learn_button.click()
    assert w.running, w.status.text()
    item = w.trainer.train_items[0]
    assert np.array_equal(np.asarray(item.image)[0], stack[2])  # plane 2's image (normalized per patch)
    counted = item.classes != IGNORE
    assert counted[result.data[2] == 77].all() and not counted[:40, :40].any()  # the edit, not its far corner
    assert "plane 2" in w.corrections.status.text()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert w.bundle is not None
    assert np.array_equal(result.data[0], lab[crops[0]])  # the user's layer is as they left it


def test_learn_from_a_stack_result_too_large_to_compare_says_so_in_one_sentence(make_napari_viewer,
                                                                                 tiny_model_file):
    """A stack result above the 64 megapixels kept for comparison is refused with a sentence that
    names the stack and what to do, and the user's layer is left as it was."""
    viewer = make_napari_viewer()
    shape = (17, 2048, 2048)  # 71 megapixels in all
    image = viewer.add_image(np.zeros(shape, np.uint8), name="stack")
    result = viewer.add_labels(np.zeros(shape, np.uint8), name="stack labels")
    result.metadata["napari_tiled_unet"] = {"role": "labels", "image": "stack"}
    assert not remember_written(result)
    result.data[3, 10:20, 10:20] = 5  # an edit
    learned, results, notes = [], [], []
    panel = _panel(viewer, image, result, tiny_model_file, learned, results, notes)
    panel.learn_button.click()
    assert not learned
    assert "stack of 17 planes" in notes[-1] and "fewer planes" in notes[-1] and "\n" not in notes[-1]
    assert int(result.data.sum()) == 5 * 100
