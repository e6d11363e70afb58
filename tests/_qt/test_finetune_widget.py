import time

import numpy as np
import pytest
import torch

from napari_tiled_unet._qt.finetune_widget import NEW_MODEL, FineTuneWidget
from napari_tiled_unet._qt.predict_widget import SegmentWidget
from napari_tiled_unet._qt.session import ModelSession
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.loop import finetune, new_bundle

CROP = (slice(0, 128), slice(0, 128))
INSTANCES, SCRIBBLES = "instances (one label per object)", "scribbles (label k = class k)"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("finetune") / "tiny.safetensors"
    return new_bundle(base_channels=4, depth=2, seed=0, name="tiny").save(path)


@pytest.fixture
def notes(monkeypatch):
    """The napari notifications shown during a test, by kind."""
    import napari.utils.notifications as n

    shown = {"error": [], "warning": [], "info": []}
    for kind in shown:
        monkeypatch.setattr(n, f"show_{kind}", shown[kind].append)
    return shown


@pytest.fixture
def widget(make_napari_viewer, model_file, notes):
    viewer = make_napari_viewer()
    w = FineTuneWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(w)
    w.add_model_file(model_file)
    w.device_combo.setCurrentText("cpu")
    w.patch_spin.setValue(64)
    w.batch_spin.setValue(2)
    w.budget_spin.setValue(1)
    w.steps_spin.setValue(3)
    return viewer, w


def _add_nuclei(viewer, labels=None):
    image = nuclei_image()[CROP].copy()
    labels = nuclei_labels()[CROP].copy() if labels is None else labels
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="my labels")
    return image.copy(), labels.copy()


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.running, timeout=timeout)


def _start(w):
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    w.train()


def test_the_widget_opens_from_napari_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune (U-Net)")
    assert isinstance(w, FineTuneWidget)


def test_training_keeps_napari_responsive_plots_the_loss_and_stop_keeps_a_finite_model(widget, qtbot,
                                                                                      tmp_path, model_file):
    """Stop asks the trainer to stop (Trainer.stop): the step under way ends, the model is
    validated once more at that step, and the best weights so far are the result."""
    from qtpy.QtCore import QTimer

    viewer, w = widget
    # torch and scikit-image import parts of themselves on first use (about 0.3 s holding the
    # interpreter, once per session): warm them so that the widget's own work is measured
    finetune(model_file, [nuclei_image()[:64, :64]], [nuclei_labels()[:64, :64]], epochs=1,
             steps_per_epoch=1, patch_size=32, batch_size=1, val_fraction=0.3)
    image, labels = _add_nuclei(viewer)
    w.steps_spin.setValue(100_000)  # runs until Stop
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    _start(w)
    assert w.running and w.stop_button.isEnabled() and not w.train_button.isEnabled()
    timer.start()
    qtbot.waitUntil(lambda: len(w.train_points) >= 8, timeout=60_000)
    qtbot.wait(600)  # at least one throttled redraw while training
    drawn_while_training = len(w.plot.train_line)
    w.stop_button.click()
    _wait(qtbot, w)
    timer.stop()

    gaps = np.diff(ticks)
    assert len(ticks) > 10
    # about 25 ms here; the bound leaves room for a shared 2-core machine
    assert gaps.max() < 0.2, f"event loop blocked for {gaps.max() * 1000:.0f} ms"
    assert drawn_while_training > 0
    assert w.val_points[0][0] == 0  # the starting model was validated first
    assert len(w.plot.train_line) == len(w.train_points) and len(w.plot.val_line) == len(w.val_points)
    assert w.job.generator_closed and not w.job.cancelled  # it ended on its own, after Stop
    stopped_at = w.trainer.step
    assert stopped_at >= 8 and w.val_points[-1][0] == stopped_at  # the final validation ran
    assert "Stopped" in w.status.text() and f"after {stopped_at} steps" in w.status.text()
    assert w.trainer.selection in w.status.text()  # which weights were kept, and why
    assert w.train_button.isEnabled() and not w.stop_button.isEnabled() and w.save_button.isEnabled()

    saved = load_model(w.save_model(tmp_path / "stopped.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.model.state_dict().values() if v.is_floating_point())
    reason = getattr(w.trainer.stop_reason, "value", w.trainer.stop_reason)
    assert saved.metadata["training"]["stopped"] == reason and reason not in ("interrupted", None)
    assert [layer.name for layer in viewer.layers] == ["img", "my labels"]
    assert np.array_equal(viewer.layers["img"].data, image)
    assert np.array_equal(viewer.layers["my labels"].data, labels)


def test_a_finished_run_saves_a_loadable_bundle_and_shows_f1_before_and_after(widget, qtbot, tmp_path):
    viewer, w = widget
    _add_nuclei(viewer)
    _start(w)
    _wait(qtbot, w)
    assert w.bundle is not None and "Done after 3 steps" in w.status.text()
    assert not w.table.isHidden()
    rows = [w.table.verticalHeaderItem(r).text() for r in range(w.table.rowCount())]
    assert rows == ["F1@0.5 (objects)", "validation loss"]
    for r in range(w.table.rowCount()):
        for c in range(2):
            assert np.isfinite(float(w.table.item(r, c).text()))

    written = w.save_model(tmp_path / "fine-tuned")  # the extension is added
    assert written == tmp_path / "fine-tuned.safetensors"
    bundle = load_model(written)
    record = bundle.metadata["training"]
    assert record["steps"] == 3 and record["annotation"] == "instances" and record["data"]["n_images"] == 1
    assert bundle.name == "tiny-finetuned"
    assert [p.name for p in tmp_path.iterdir()] == ["fine-tuned.safetensors"]  # no temporary file left


def test_preview_adds_one_layer_of_its_own_and_leaves_the_users_layers_unchanged(widget, qtbot):
    viewer, w = widget
    image, labels = _add_nuclei(viewer)
    _start(w)
    _wait(qtbot, w)
    for _ in range(2):  # a second preview replaces the first
        w.preview_button.click()
        _wait(qtbot, w)
    names = [layer.name for layer in viewer.layers]
    assert names == ["img", "my labels", "img preview (fine-tuned)"]
    preview = viewer.layers["img preview (fine-tuned)"]
    assert preview.data.ndim == 2 and min(preview.data.shape) >= 8 and preview.data.shape <= image.shape
    assert np.array_equal(viewer.layers["img"].data, image)
    assert np.array_equal(viewer.layers["my labels"].data, labels)
    assert w.labels_combo.findText("img preview (fine-tuned)") == -1  # never offered as training labels


def test_preview_covers_only_the_visible_part_of_the_image(widget, qtbot):
    viewer, w = widget
    _add_nuclei(viewer)
    _start(w)
    _wait(qtbot, w)
    camera = viewer.camera if not hasattr(viewer, "scene") else viewer.scene.camera
    camera.center = (32, 32)
    camera.zoom = max(viewer.canvas.size if hasattr(viewer, "canvas") else viewer._canvas_size) / 40
    w.preview()
    _wait(qtbot, w)
    preview = viewer.layers["img preview (fine-tuned)"]
    assert max(preview.data.shape) < 64
    y0, x0 = preview.translate
    assert 0 < y0 < 32 and 0 < x0 < 32  # placed over the part it was computed for


def test_scribbles_train_a_semantic_model_and_show_iou_per_class(widget, qtbot, tmp_path):
    viewer, w = widget
    base = new_bundle("semantic", class_names=["background", "nucleus"], base_channels=4, depth=2, seed=0)
    w.add_model_file(base.save(tmp_path / "semantic.safetensors"))
    truth = nuclei_labels()[CROP]
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[::4] = np.where(truth[::4] > 0, 2, 1)  # every 4th row painted: 1 background, 2 nucleus
    _add_nuclei(viewer, scribbles)
    w.annotation_combo.setCurrentText(SCRIBBLES)
    _start(w)
    _wait(qtbot, w)
    assert w.bundle is not None and not w.table.isHidden()
    rows = [w.table.verticalHeaderItem(r).text() for r in range(w.table.rowCount())]
    # the score that chooses the weights first, the loss last (as F1 for instance labels)
    assert rows == ["IoU background", "IoU nucleus", "mean IoU", "validation loss"]
    after = w.after
    assert 0 <= after["IoU background"] <= 1 and 0 <= after["mean IoU"] <= 1
    assert np.array_equal(viewer.layers["my labels"].data, scribbles)


def test_a_new_model_trained_on_scribbles_is_semantic_with_the_typed_class_names(widget, qtbot):
    viewer, w = widget
    truth = nuclei_labels()[CROP]
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[::4] = np.where(truth[::4] > 0, 2, 1)
    _add_nuclei(viewer, scribbles)
    w.annotation_combo.setCurrentText(SCRIBBLES)
    w.model_combo.setCurrentText(NEW_MODEL)
    w.classes_edit.setText("background, nucleus")
    _start(w)
    _wait(qtbot, w)
    bundle = w.bundle
    assert bundle.task == "semantic" and bundle.class_names == ["background", "nucleus"]
    record = bundle.metadata["training"]
    assert record["from_scratch"] and record["classes_from"] == "class names given"
    w.preview()
    _wait(qtbot, w)
    preview = viewer.layers["img preview (fine-tuned)"]
    assert set(np.unique(preview.data)) <= {0, 1}
    assert list(preview.features["class"]) == ["background", "nucleus"]  # shown on hover by napari


def test_rgb_and_channel_first_images_follow_the_segment_widgets_channel_rule(widget, qtbot, notes):
    """As in Segment: RGB trains on its luminance or the chosen colour; a (C, Y, X) image asks
    which channel holds the nuclei (its 2D labels say that the first axis is channels)."""
    viewer, w = widget
    img = nuclei_image()[CROP].copy()
    zeros = np.zeros_like(img)
    viewer.add_image(np.stack([zeros, img, zeros], axis=-1), name="rgb", rgb=True)
    viewer.add_labels(nuclei_labels()[CROP].copy(), name="my labels")
    w.image_combo.setCurrentText("rgb")
    w.labels_combo.setCurrentText("my labels")
    assert not w.channel_row.isHidden() and w.channel_row.channel_combo.currentText() == "luminance"
    luminance = np.asarray(w.training_plane(viewer.layers["rgb"], 1).image)
    assert np.allclose(luminance, 0.7154 * img, rtol=1e-4)  # BT.709, as skimage.color.rgb2gray
    w.channel_row.channel_combo.setCurrentText("1 (green)")
    assert np.array_equal(np.asarray(w.training_plane(viewer.layers["rgb"], 1).image), img)
    w.train_button.click()
    _wait(qtbot, w)
    assert w.bundle is not None and "Done after 3 steps" in w.status.text(), w.status.text()

    viewer.add_image(np.stack([img[::-1], img]), name="cyx")
    w.image_combo.setCurrentText("cyx")
    w.labels_combo.setCurrentText("my labels")
    w.train_button.click()
    assert notes["error"] and "choose the one that holds the nuclei" in notes["error"][-1], notes["error"]
    assert w.channel_row.axis_combo.currentData() == 0  # the labels answered "channels"
    w.channel_row.channel_combo.setCurrentText("1")
    assert np.array_equal(np.asarray(w.training_plane(viewer.layers["cyx"], 1).image), img)
    w.train_button.click()
    _wait(qtbot, w)
    assert "Done after 3 steps" in w.status.text(), w.status.text()


@pytest.mark.parametrize(
    "setup,annotation,message",
    [
        (lambda v: _add_nuclei(v, nuclei_labels()[:100, :128].copy()), INSTANCES, "shape"),
        (lambda v: _add_nuclei(v, np.zeros((128, 128), np.uint8)), SCRIBBLES, "No pixel is annotated"),
        (lambda v: _add_nuclei(v, np.ones((128, 128), np.uint8)), SCRIBBLES, "Only class 1"),
        (lambda v: _add_nuclei(v, np.zeros((128, 128), np.uint8)), INSTANCES, "No object is painted"),
        (lambda v: _add_nuclei(v, np.arange(128 * 128).reshape(128, 128) % 6), SCRIBBLES,
         "label values up to 5, but tiny is an instances model"),
    ],
    ids=["labels-shape", "nothing-painted", "one-class", "no-object", "five-classes"],
)
def test_bad_input_shows_one_error_and_changes_nothing(widget, notes, setup, annotation, message):
    viewer, w = widget
    setup(viewer)
    before = {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}
    w.annotation_combo.setCurrentText(annotation)
    _start(w)
    assert len(notes["error"]) == 1 and message in notes["error"][0], notes["error"]
    assert notes["error"][0].count(". ") == 0 and notes["error"][0].endswith(".")  # one sentence
    assert w.job is None and w.train_button.isEnabled()
    assert list(before) == [layer.name for layer in viewer.layers]
    assert all(np.array_equal(before[layer.name], layer.data) for layer in viewer.layers)


@pytest.mark.parametrize("image_scale", [1, 2])
def test_the_region_limits_training_to_the_pixels_inside_its_rectangles(widget, image_scale):
    viewer, w = widget
    _add_nuclei(viewer)
    viewer.layers["img"].scale = viewer.layers["my labels"].scale = (image_scale, image_scale)
    corners = np.array([[10, 20], [10, 90], [70, 90], [70, 20]]) * image_scale  # drawn in world units
    viewer.add_shapes([corners], shape_type="rectangle", name="region")
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    w.region_combo.setCurrentText("region")
    trainer = w.make_trainer()
    items = [*trainer.train_items, *(it for it, _ in trainer.val_items)]
    boxes = [it.counted_bbox() for it in items]
    assert min(b[0] for b in boxes) >= 10 and min(b[1] for b in boxes) >= 20
    assert max(b[2] for b in boxes) <= 70 and max(b[3] for b in boxes) <= 90
    assert sum(it.n_counted for it in items) == 60 * 70


class _Background(torch.nn.Module):
    """A two-class 'model' that calls every pixel class 0."""

    n_classes = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 2, *x.shape[2:])
        out[:, 0] = 1
        return out


def test_the_iou_table_counts_only_the_held_out_scribbles(widget, tmp_path):
    from types import SimpleNamespace

    from napari_tiled_unet.events import run_to_end
    from napari_tiled_unet.training.data import IGNORE

    viewer, w = widget
    scribbles = np.zeros((128, 128), np.uint8)
    scribbles[::4] = np.where(nuclei_labels()[CROP][::4] > 0, 2, 1)
    _add_nuclei(viewer, scribbles)
    base = new_bundle("semantic", class_names=["bg", "fg"], base_channels=4, depth=2)
    w.add_model_file(base.save(tmp_path / "semantic.safetensors"))
    w.annotation_combo.setCurrentText(SCRIBBLES)
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    trainer = w.make_trainer()
    stub = SimpleNamespace(model=_Background(), class_names=["bg", "fg"])
    (figures,) = run_to_end(trainer.class_iou_iter([stub]))
    counted = np.concatenate([it.window(*win)[1].ravel() for k, win in trainer.val_windows
                              for it, _ in [trainer.val_items[k]]])
    counted = counted[counted != IGNORE]
    n_bg, n_fg = (counted == 0).sum(), (counted == 1).sum()
    assert n_bg and n_fg
    assert figures["IoU bg"] == pytest.approx(n_bg / (n_bg + n_fg)) and figures["IoU fg"] == 0


def test_a_stack_trains_on_the_plane_on_display_and_previews_on_it(widget, qtbot):
    viewer, w = widget
    stack = np.stack([nuclei_image()[CROP]] * 3)
    painted = np.zeros(stack.shape, np.int32)
    painted[1] = nuclei_labels()[CROP]
    viewer.add_image(stack, name="img")
    viewer.add_labels(painted, name="my labels")
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    viewer.dims.set_current_step(0, 1)
    assert w.make_trainer().data.data_record[0]["name"] == "img"
    viewer.dims.set_current_step(0, 0)
    with pytest.raises(ValueError, match="No object is painted"):
        w.make_trainer()
    viewer.dims.set_current_step(0, 1)
    w.train()
    _wait(qtbot, w)
    w.preview()  # of plane 1, the plane on display: it lies on that plane, not on every plane
    _wait(qtbot, w)
    preview = viewer.layers["img preview (fine-tuned, plane 1)"]
    assert preview.data.shape[0] == 1 and preview.data.shape[1:] == stack.shape[1:]
    assert tuple(preview.translate) == (1, 0, 0)


def test_a_time_budget_trains_until_the_time_is_up_and_counts_the_time_down(widget, qtbot):
    viewer, w = widget
    _add_nuclei(viewer)
    w.budget_unit.setCurrentText("minutes")
    w.budget_spin.setValue(0.1)  # 6 s
    w.steps_spin.setValue(100_000)
    _start(w)
    assert w.trainer.minutes == pytest.approx(0.1) and w.trainer.epochs is None
    qtbot.waitUntil(lambda: len(w.train_points) >= 3, timeout=30_000)
    assert " s left" in w.status.text()
    _wait(qtbot, w)
    assert w.trainer.stop_reason == "time budget" and w.bundle is not None
    assert w.status.text().startswith("Done (time budget) after ")


def test_the_model_last_used_for_segmenting_can_be_the_base(widget, qtbot, tiny_model_file):
    """The Segment widget's last model (this session, another dock) is offered as the base."""
    viewer, w = widget
    assert w.model_combo.findText("Model last used for segmenting") == -1
    segment = SegmentWidget(viewer, session=w.session)
    segment.add_model_file(tiny_model_file)
    segment.device_combo.setCurrentText("cpu")
    viewer.add_image(nuclei_image()[:64, :64].copy(), name="small")
    segment.image_combo.setCurrentText("small")
    segment.run_button.click()
    qtbot.waitUntil(lambda: not segment.busy, timeout=60_000)
    w.model_combo.showPopup()  # the list is refreshed when it opens
    w.model_combo.hidePopup()
    w.model_combo.setCurrentText("Model last used for segmenting")
    assert w._base_model() is segment.bundle


_TRAIN_IN_NAPARI = """
import json, sys, time
import napari
from qtpy.QtWidgets import QApplication
from napari_tiled_unet._qt.finetune_widget import FineTuneWidget
from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels

viewer = napari.Viewer(show=False)
w = FineTuneWidget(viewer)
w.add_model_file(sys.argv[1])
w.device_combo.setCurrentText("cpu")
w.patch_spin.setValue(64)
w.batch_spin.setValue(2)
w.budget_spin.setValue(1)
w.steps_spin.setValue(3)
viewer.add_image(nuclei_image()[:128, :128], name="img")
viewer.add_labels(nuclei_labels()[:128, :128], name="my labels")
w.labels_combo.setCurrentText("my labels")
w.train_button.click()
app, start = QApplication.instance(), time.monotonic()
while w.running and time.monotonic() - start < 120:
    app.processEvents()
    time.sleep(0.01)
print(json.dumps({"trained": w.bundle is not None, "status": w.status.text(),
                  "triton": "triton" in sys.modules, "dynamo": "torch._dynamo" in sys.modules}))
viewer.close()
"""


def test_training_in_napari_never_imports_triton_or_dynamo(model_file, tmp_path):
    """A triton whose import raises (as importing the real one crashes napari drawn by Mesa's
    software OpenGL): fine-tuning in napari completes without importing it or torch._dynamo,
    which torch.optim's optimizers import. In a fresh process, so nothing earlier imported them."""
    import json
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "triton"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('triton was imported')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run([sys.executable, "-c", "import torch._dynamo"], env=env, capture_output=True)
    assert probe.returncode != 0 and b"triton was imported" in probe.stderr  # the trap works
    done = subprocess.run([sys.executable, "-c", _TRAIN_IN_NAPARI, str(model_file)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trained"] and "Done after 3 steps" in result["status"], result
    assert not result["triton"] and not result["dynamo"]


def test_removing_the_image_never_trains_the_labels_against_another_image(widget, notes):
    """Two images of the same shape; the one the labels were painted on is removed: the
    widget does not slip to the other one, it asks for an image."""
    viewer, w = widget
    _add_nuclei(viewer)
    viewer.add_image(nuclei_image()[CROP][::-1].copy(), name="other")
    w.image_combo.setCurrentText("img")
    w.labels_combo.setCurrentText("my labels")
    viewer.layers.remove("img")
    assert w.image_combo.currentText() == ""
    w.train()
    assert w.job is None and notes["error"] and "Choose an image layer" in notes["error"][0]


def test_the_default_layers_are_the_ones_being_worked_on_and_never_hidden(make_napari_viewer, notes):
    """The labels the Segment widget made for the image (and the user edited) are chosen, not
    a hidden ground truth that happens to come first; a whole-image region warns."""
    from napari_tiled_unet._qt.layerview import META_KEY

    viewer = make_napari_viewer()
    viewer.add_labels(nuclei_labels()[CROP].copy(), name="ground truth", visible=False)
    viewer.add_image(nuclei_image()[CROP].copy(), name="img")
    result = viewer.add_labels(nuclei_labels()[CROP].copy(), name="img labels")
    result.metadata[META_KEY] = {"role": "labels", "image": "img", "edited": True}
    viewer.add_labels(np.zeros((128, 128), np.int32), name="scratch")
    viewer.layers.selection.active = viewer.layers["img"]
    w = FineTuneWidget(viewer)
    assert w.image_combo.currentText() == "img"
    assert w.labels_combo.currentText() == "img labels"
    assert w.region_combo.currentText() == "(whole image)" and not w.region_hint.isHidden()
    assert "every pixel you did not paint is taught as background" in w.region_hint.text()
    viewer.add_shapes([np.array([[0, 0], [0, 60], [60, 60], [60, 0]])], shape_type="rectangle", name="r")
    w.region_combo.setCurrentText("r")
    assert w.region_hint.isHidden()


def test_closing_the_viewer_mid_training_raises_nothing(widget, qtbot):
    viewer, w = widget
    _add_nuclei(viewer)
    w.steps_spin.setValue(100_000)
    _start(w)
    job = w.job
    qtbot.waitUntil(lambda: len(w.train_points) >= 1, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    qtbot.wait(200)
    assert job.cancelled


def test_the_whole_image_hint_shows_all_its_lines_in_the_dock(make_napari_viewer, qtbot):
    """The warning under "region" wraps over several lines in the narrow dock and none is cut
    off (a form layout gave a wrapped label the height of one line)."""
    viewer = make_napari_viewer(show=True)
    _add_nuclei(viewer)
    w = FineTuneWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(w)
    hint = w.region_hint
    qtbot.waitUntil(lambda: hint.isVisible() and hint.width() > 0, timeout=10_000)
    qtbot.wait(200)
    line = hint.fontMetrics().lineSpacing()
    need = hint.heightForWidth(hint.width())
    assert need >= 2 * line  # it does wrap at the dock's width
    assert hint.height() >= need - 1, (hint.height(), need)


def test_both_widgets_docked_fit_a_laptop_screen(make_napari_viewer):
    """Segment and Fine-tune docked together (and the Objects table): napari's window can
    still be 768 px tall, the docks scroll; the controls were about 1400 px together, so the
    window grew past the screen and the lowest buttons were out of reach."""
    from napari_tiled_unet._qt.predict_widget import SegmentWidget

    viewer = make_napari_viewer()
    _add_nuclei(viewer)
    seg = SegmentWidget(viewer)
    ft = FineTuneWidget(viewer, session=ModelSession())
    viewer.window.add_dock_widget(seg)
    viewer.window.add_dock_widget(ft)
    assert ft.sizeHint().height() > 700  # it asks for all of its controls when there is room
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= 700, window.minimumSizeHint()
