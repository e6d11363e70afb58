"""The "Segment (U-Net)" dock widget: builds the view and wires events; computes nothing.

The pickers are :mod:`~napari_tiled_unet._qt.pickers`, the reading of layers
:mod:`~napari_tiled_unet._qt.layerview`, the result layers
:mod:`~napari_tiled_unet._qt.result_layers` and the measurements
:mod:`~napari_tiled_unet._qt.table`; the engine runs in an
:class:`~napari_tiled_unet._qt.workers.EngineJob`.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from .. import objectsize
from ..postprocess import import_helpers
from . import layerview
from .layerview import layer_image_and_axes
from .layout import scrolling_body
from .pickers import LOAD_FILE, ChannelPicker, DockControls, describe_builtin_models, show_engine_message
from .progress import eta, fmt_seconds
from .result_layers import ResultLayers, Run, for_display, pyramid_on_disk, warm_up_labels
from .session import ModelSession, shared_session
from .table import MeasureControls
from .workers import EngineJob

if TYPE_CHECKING:
    import napari

    from ..events import RunControl

log = logging.getLogger(__name__)

#: 2D images of at least this many pixels keep their probabilities and labels in zarr stores
#: on disk and are shown as lazy multiscale layers (napari then reads only what is on screen).
LARGE_PIXELS = 8192 * 8192
#: milliseconds between two display steps (one layer each): a full turn of the event loop
STEP_PAUSE_MS = 5


class RunKind(enum.Enum):
    """What the Segment widget's job does."""

    SEGMENT = "segment"  # the network and post-processing
    RESEGMENT = "resegment"  # post-processing of the kept probabilities only


class SegmentWidget(DockControls, MeasureControls, QWidget):
    """Segment the chosen image layer with a U-Net into a Labels layer of its own.

    Every image gets its own result layer, named after it and placed where it is. A result
    layer the user has painted into since the plugin wrote it is never written again: the
    next run makes a new layer.

    The measurements (the Objects table, Export CSV…, Save labels…) are
    :class:`~napari_tiled_unet._qt.table.MeasureControls`.
    """

    def __init__(self, napari_viewer: napari.Viewer, session: ModelSession | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session if session is not None else shared_session()
        self.job: EngineJob | None = None
        self.bundle = None  # the model last used (the fine-tune widget can pick it up)
        self._bundle_source: Any = None
        self.result = None  # last Segmentation, for Re-segment
        self._result_run: Run | None = None
        self._pending: Run | None = None  # the run in progress
        self._loaded: dict[str, str] = {}  # display name -> file path
        self._tmp = None  # folder of zarr outputs of large images (see _disk_outputs)
        self._runs = 0
        self._defaults_shown_for: Any = None
        self._queue: list[Callable[[], None]] = []  # display steps, one per event-loop turn
        self._pumping = False
        self._pump_scheduled = False
        #: (name, wall seconds, main-thread CPU seconds) of every display step (for diagnostics)
        self.step_times: list[tuple[str, float, float]] = []
        self._track_lifetime()
        self.results = ResultLayers(self.viewer, self._connect)  # the plugin's own layers, per image

        self.image_combo = QComboBox()
        self.channel_row = ChannelPicker()
        self.channel_axis_combo = self.channel_row.axis_combo
        self.channel_combo = self.channel_row.channel_combo
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["auto", "fp32", "bf16", "fp16"])
        self.precision_combo.setToolTip("auto: bf16 where the CPU computes it in hardware and on CUDA "
                                        "(same objects, faster), fp32 otherwise.")
        self.window_spin = QSpinBox()
        self.window_spin.setRange(0, 16384)
        self.window_spin.setSingleStep(64)
        self.window_spin.setSpecialValueText("auto")
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["exact", "blend"])
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 64)
        self.batch_spin.setSpecialValueText("auto")
        self.fg_spin = self._prob_spin(0.5)
        self.seed_spin = self._prob_spin(0.7)
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 100000)
        self.min_size_spin.setValue(16)
        self.diameter_spin = QDoubleSpinBox()  # object diameter: 0 = the image's own scale
        self.diameter_spin.setRange(0, 2000)
        self.diameter_spin.setDecimals(1)
        self.diameter_spin.setSpecialValueText("as is")
        self.diameter_spin.setSuffix(" px")
        self.diameter_spin.setToolTip("The diameter of your objects in pixels: the image is rescaled so "
                                      "that they match the size the model was trained at; the labels keep "
                                      "the image's size. 'as is': no rescaling.")
        self.diameter_auto = QCheckBox("auto")
        self.diameter_auto.setToolTip("Estimate the diameter from a first pass (the median diameter of the "
                                      "objects it finds); when the objects are smaller or larger than the "
                                      "model was trained on, segment again at a scale that fits the model.")
        self.diameter_auto.toggled.connect(lambda on: self.diameter_spin.setEnabled(not on))
        self.show_probs = QCheckBox("also show probabilities")
        self.show_probs.setToolTip("One layer per class of the model (below the labels).")
        self.tta_check = QCheckBox("mirror test (4x slower, a little more accurate)")
        self.tta_check.setToolTip("Average the model's output over the image and its three mirror images.")

        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.resegment_button = QPushButton("Re-segment (new thresholds)")
        self.resegment_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._poll = QTimer(self)
        self._poll.setInterval(250)
        self._poll.timeout.connect(self._show_window_progress)
        self._started = 0.0
        self._last_progress: Any = None

        self.form = form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("channels", self.channel_row)
        self.channel_row.form_label = form.labelForField(self.channel_row)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("precision", self.precision_combo)
        diameter_row = QHBoxLayout()
        diameter_row.addWidget(self.diameter_spin, 1)
        diameter_row.addWidget(self.diameter_auto)
        form.addRow("object diameter", diameter_row)

        advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.addRow("tile size", self.window_spin)
        adv_form.addRow("tiling", self.mode_combo)
        adv_form.addRow("batch size", self.batch_spin)
        adv_form.addRow("foreground threshold", self.fg_spin)
        adv_form.addRow("seed threshold", self.seed_spin)
        adv_form.addRow("min object size (px)", self.min_size_spin)
        adv_form.addRow(self.tta_check)
        adv_form.addRow(self.show_probs)
        advanced.addWidget(adv)

        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        layout = scrolling_body(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.resegment_button)
        self._init_measurements(layout)  # Export CSV…, Save labels…, the Objects table
        layout.addStretch()

        self._fill_devices()
        self._fill_models()
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        self._refresh_images()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self._connect(ev, self._refresh_images)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.resegment_button.clicked.connect(self.resegment)
        self._on_model_changed()
        warm_up_labels()
        import_helpers()  # here rather than in the middle of the first run (in a worker thread)

    # -- view helpers -------------------------------------------------------------------

    @staticmethod
    def _prob_spin(value: float) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(0.0, 1.0)
        s.setSingleStep(0.05)
        s.setDecimals(2)
        s.setValue(value)
        return s

    def _fill_models(self) -> None:
        from ..model import zoo

        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in zoo.available():
            self.model_combo.addItem(name)
        for name in self._loaded:
            self.model_combo.addItem(name)
        self.model_combo.addItem(LOAD_FILE)
        describe_builtin_models(self.model_combo)
        self.model_combo.blockSignals(False)

    def _refresh_images(self, *_: Any) -> None:
        import napari

        if not self._is_alive():
            return
        own = self.results.probability_layers()
        images = [layer for layer in self.viewer.layers
                  if isinstance(layer, napari.layers.Image) and id(layer) not in own]
        active = self.viewer.layers.selection.active
        self._fill_layer_combo(self.image_combo, images,
                               default=active if active in images else (images[-1] if images else None))

    def _on_image_chosen(self, *_: Any) -> None:
        """Offer the channel choices the chosen image needs (hidden when it has none)."""
        self.channel_row.set_layer(self._combo_layer(self.image_combo))

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resegment_button.setEnabled(not running and self.result is not None)

    # -- actions ------------------------------------------------------------------------

    def selected_layer(self):
        return self._combo_layer(self.image_combo)

    def _selected_source(self) -> Any:
        name = self.model_combo.currentText()
        if not name or name == LOAD_FILE:
            return None
        return self._loaded.get(name, name)

    def load_selected_model(self):
        from ..model.bundle import load_model

        source = self._selected_source()
        if source is None:
            raise ValueError("Choose a model first: a built-in one, or load a model file.")
        if self.bundle is not None and self._bundle_source == source:
            return self.bundle
        bundle = load_model(source)
        self.bundle, self._bundle_source = bundle, source
        return bundle

    def _on_model_changed(self, *_: Any) -> None:
        """Show the chosen model's own post-processing defaults at once (not after a run)."""
        source = self._selected_source()
        if source is None or source == self._defaults_shown_for:
            return
        try:
            bundle = self.load_selected_model()
        except Exception as exc:  # told again, as an error, when the user presses Segment
            log.info("Could not read the model %s: %s", source, exc)
            return
        self._defaults_shown_for = source
        self._show_model_defaults(bundle)

    def _show_model_defaults(self, bundle) -> None:
        """Set the post-processing controls to the defaults stored in the model file, and tick
        "auto" object diameter for a model that records the range of sizes it was trained on
        (an image whose objects lie inside it is segmented at its own scale, as without auto), or
        that was fine-tuned at the scale auto chose (:func:`objectsize.prefers_auto`)."""
        post = bundle.postprocess if bundle.task == "instances" else {}
        for spin, key in ((self.fg_spin, "foreground_threshold"), (self.seed_spin, "seed_threshold"),
                          (self.min_size_spin, "min_size")):
            if post.get(key) is not None:
                spin.setValue(post[key])
        self.diameter_auto.setChecked(objectsize.prefers_auto(bundle))

    def postprocess_overrides(self) -> dict[str, Any]:
        if self.bundle is None or self.bundle.task != "instances":
            return {}
        return {
            "foreground_threshold": self.fg_spin.value(),
            "seed_threshold": self.seed_spin.value(),
            "min_size": self.min_size_spin.value(),
        }

    def run(self) -> None:
        """Start segmenting the selected image in a worker thread."""
        from ..events import RunControl, WarningEvent
        from ..runtime import resolve_device
        from ..segmentation import segment_iter
        from .cancel_window import cpu_limits

        layer = self.selected_layer()
        if layer is None:
            self._notify_error("Open an image first (File > Open, or File > Open Sample).")
            return
        try:
            bundle = self.load_selected_model()
            if self._bundle_source != self._defaults_shown_for:
                self._defaults_shown_for = self._bundle_source
                self._show_model_defaults(bundle)
            self.session.remember(bundle, self._bundle_source)
            choice = self.channel_row.choice(layer)
            image, _ = layer_image_and_axes(layer)
            view = layerview.image_view(layer, choice, bundle.n_channels)
        except Exception as exc:  # BundleError, ImageError and friends: one sentence to the user
            self._notify_error(str(exc))
            return
        kwargs = {
            "axes": choice.axes,
            "channel": choice.channel,
            "device": self.device_combo.currentText(),
            "precision": self.precision_combo.currentText(),
            "mode": self.mode_combo.currentText(),
            "window": self.window_spin.value() or None,
            "batch_size": self.batch_spin.value() or None,
            "tta": self.tta_check.isChecked(),
            "postprocess": self.postprocess_overrides(),
        }
        if self.diameter_auto.isChecked():
            kwargs["diameter"] = "auto"
        elif self.diameter_spin.value() > 0:
            kwargs["diameter"] = self.diameter_spin.value()
        store = self._disk_outputs(image, view)
        if store is not None and kwargs.pop("diameter", None) is not None:
            show_engine_message(WarningEvent(
                "This image is too large to be rescaled in memory, so it is segmented at its own scale "
                "(the object diameter is used for images below "
                f"{int(LARGE_PIXELS ** 0.5)}x{int(LARGE_PIXELS ** 0.5)} pixels)."))
        if store is not None:
            kwargs["probabilities_out"] = str(store / "probabilities.zarr")
            kwargs["labels_out"] = str(store / "labels.zarr")
        measure = self._measurer(layer)
        self._pending = Run(layer, view, choice.drop_axis, self._bundle_source)
        how = view.describe()
        self.status.setText(f"Segmenting {layer.name}{f' ({how})' if how else ''} …")

        control = RunControl()

        def work():
            # napari imports pandas on the first Labels layer; doing it here, in the worker,
            # spares the user a one-second freeze when the result is shown
            with contextlib.suppress(ImportError):
                importlib.import_module("pandas")
            if resolve_device(kwargs["device"]).type == "cpu":  # Cancel within 2 s, whatever the model
                limits = cpu_limits(bundle.model, kwargs["window"], kwargs["batch_size"])
                kwargs["window"], kwargs["batch_size"] = limits.window, limits.batch_size
                if limits.note:
                    yield WarningEvent(limits.note, kind="info")
            result = yield from segment_iter(bundle, image, control=control, in_blocks=True, **kwargs)
            result = yield from measure(result)
            result.labels = for_display(result.labels)
            levels = pyramid_on_disk(result.labels, store / "labels-levels") if store is not None else None
            return result, result.n_objects, levels  # counted here: on disk, counting reads every block

        self._start(RunKind.SEGMENT, work, control)

    def _start(self, kind: RunKind, work, control: RunControl | None = None) -> EngineJob:
        self.job = EngineJob(
            work,
            on_event=self._on_event,
            on_result=self._on_result,
            on_error=lambda exc: self._notify_error(str(exc)),
            on_done=self._on_done,
            control=control,
            kind=kind,
        )
        self.job.owner_alive = self._is_alive
        self.progress.setRange(0, 0)
        self.progress.setValue(0)
        self._started, self._last_progress = time.monotonic(), None
        self._set_running(True)
        self.job.start()
        self._poll.start()
        return self.job

    def _disk_outputs(self, image, view) -> Path | None:
        """A fresh folder for zarr outputs when the image is too large to keep its results in
        RAM (a 2D plane of at least :data:`LARGE_PIXELS`); None otherwise. The folder lives as
        long as the widget (napari reads the layers from it lazily)."""
        spatial = [int(image.shape[view.axes.index(a)]) for a in view.spatial_axes]
        if len(spatial) != 2 or spatial[0] * spatial[1] < LARGE_PIXELS:
            return None
        return self._new_run_folder()

    def _new_run_folder(self) -> Path:
        """A new, empty folder inside the widget's temporary directory (made on first use)."""
        import tempfile

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tiled-unet-widget-")
        self._runs += 1
        folder = Path(self._tmp.name) / f"run{self._runs}"
        folder.mkdir()
        return folder

    def cancel(self) -> None:
        if self.job is not None and not self.job.finished:
            self.status.setText("Cancelling …")
            self.job.cancel()

    # -- progress -----------------------------------------------------------------------

    def _show_window_progress(self) -> None:
        """Between the engine's events (a window can take seconds): the share of the network's
        layers run so far, from the job's RunControl."""
        job = self.job
        if job is None or job.finished or job.cancelled:
            return
        control = job.control
        last = self._last_progress
        if control.windows_total and (last is None or last.stage == "predict"):
            total = control.windows_total
            done = min(control.windows_done, total)
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
            elapsed = time.monotonic() - self._started
            self.status.setText(f"{done:.1f}/{total} tiles, {fmt_seconds(elapsed)} elapsed, "
                                f"{fmt_seconds(eta(elapsed, done / total))} left")

    def _on_event(self, event: Any) -> None:
        from ..events import Progress, WarningEvent

        if isinstance(event, WarningEvent):
            return show_engine_message(event)
        if isinstance(event, Progress):
            self._last_progress = event
            elapsed = time.monotonic() - self._started
            if event.stage == "predict":
                return self._show_window_progress()
            if event.stage == "measure":
                self.progress.setRange(0, max(event.total, 1))
                self.progress.setValue(event.done)
                self.status.setText(f"Measuring objects: {event.done}/{event.total}, "
                                    f"{fmt_seconds(elapsed)} elapsed")
            elif event.total > 1:  # blocks of a large image, or planes of a stack
                self.progress.setRange(0, event.total)
                self.progress.setValue(event.done)
                left = eta(event.elapsed, event.done / event.total)
                self.status.setText(f"Labels: {event.done}/{event.total}, {fmt_seconds(elapsed)} elapsed, "
                                    f"{fmt_seconds(left)} left")
            else:
                self.progress.setRange(0, 0)  # one step that cannot be counted: busy
                self.status.setText("Turning probabilities into labels …")
        return None

    def _on_result(self, value) -> None:
        result, n_objects, levels = value
        run = self._pending if self.job.kind is RunKind.SEGMENT else self._result_run
        seconds = time.monotonic() - self._started  # this run's own time, reading to labels
        result.seconds = seconds
        self.result, self._result_run = result, run
        self._queue.extend(self.results.display_steps(result, run, levels, self.show_probs.isChecked(),
                                                      then=self._announce))
        size = " " + objectsize.describe(result) if getattr(result, "diameter", None) else ""
        self._queue.append(lambda: self.status.setText(
            (f"{n_objects} objects found in {fmt_seconds(seconds)}." if result.task == "instances"
             else f"Done in {fmt_seconds(seconds)}.") + size))
        self._schedule()

    def _on_done(self) -> None:
        self._poll.stop()
        job = self.job
        self._queue.append(lambda: self._finish(job))
        self._schedule()

    def _finish(self, job: EngineJob | None) -> None:
        if job is not None and job.cancelled and self.result is None:
            self.status.setText("Cancelled: nothing was added.")
        elif job is not None and job.cancelled:
            self.status.setText("Cancelled: the previous result is kept.")
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if job is not None and job.succeeded else 0)  # no "100 %" beside an error
        self._pending = None
        self._set_running(False)
        self._reveal(self.status)  # the sentence about the result, in a dock too short for it

    def _schedule(self) -> None:
        """Run the queued display steps from the next event-loop turn on (never inside the
        handler of the worker's signal, which Qt may deliver right after another one)."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            # a timer, not a zero-delay call: Qt 6 posts those as events and may run two steps
            # back to back in one pass over its posted events (seen: two probability layers,
            # 0.24 s); a timer lets the loop take input, draw and fire due timers in between
            QTimer.singleShot(STEP_PAUSE_MS, self._pump)

    def _pump(self) -> None:
        """Run the next display step, then yield to the event loop before the one after: adding
        a layer costs napari a few hundred ms on a slow machine, so one layer per turn keeps
        the viewer responsive while a result with several layers appears."""
        self._pump_scheduled = False
        if self._pumping or not self._is_alive():
            return
        self._pumping = True
        try:
            if self._queue:
                t, cpu = time.perf_counter(), time.thread_time()
                step = self._queue.pop(0)
                step()
                name = getattr(getattr(step, "func", step), "__name__", "?")
                self.step_times.append((name, time.perf_counter() - t, time.thread_time() - cpu))
        finally:
            self._pumping = False
        if self._queue:
            self._schedule()

    @property
    def busy(self) -> bool:
        """A run is going, or its result is still being put on screen."""
        return bool(self._queue) or (self.job is not None and not self.job.finished)

    # -- result layers ----------------------------------------------------------------------

    def _announce(self, out) -> None:
        self._refresh_images()
        if out.labels is not None:
            self._show_objects(out.labels, self.result)  # features, the Objects table, the buttons

    def resegment(self) -> None:
        """Apply the current thresholds to the cached probabilities (no network run)."""
        from ..segmentation import Segmentation, labels_from_iter, postprocess_params

        if self.result is None or self.bundle is None or self._result_run is None:
            return
        params = postprocess_params(self.bundle, self.postprocess_overrides())
        probs = self.result.probabilities
        task = self.result.task
        old = self.result
        measure = self._measure
        out = folder = None
        if not isinstance(probs, np.ndarray):  # a large result: the new labels go to disk too
            folder = self._new_run_folder()
            out = str(folder / "labels.zarr")

        def work():
            start = time.perf_counter()
            labels = yield from labels_from_iter(probs, task, params, out=out, in_blocks=True)
            new = Segmentation(labels, probs, task, old.class_names, params, time.perf_counter() - start)
            new = yield from measure(new)
            new.labels = for_display(new.labels)
            levels = pyramid_on_disk(new.labels, folder / "labels-levels") if folder is not None else None
            return new, new.n_objects, levels

        self.status.setText("Re-segmenting with the new thresholds …")
        self._start(RunKind.RESEGMENT, work)


# npe2 widget factory: napari gives the viewer to a QWidget class whose __init__ takes
# ``napari_viewer``, but calls a plain factory function with no argument; so the class it is.
make_segment_widget = SegmentWidget


__all__ = ["RunKind", "SegmentWidget", "make_segment_widget"]
