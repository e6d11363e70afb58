"""The "Segment (U-Net)" dock widget: builds the view and wires events; computes nothing."""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .table import MeasureControls
from .workers import EngineJob

if TYPE_CHECKING:
    import napari

    from ..events import RunControl

log = logging.getLogger(__name__)

LOAD_FILE = "Load file…"

#: 2D images above this many pixels keep their probabilities and labels in zarr stores on
#: disk and are shown as lazy multiscale layers (napari then reads only what is on screen).
LARGE_PIXELS = 8192 * 8192
#: the coarsest level of such a lazy pyramid has no side longer than this
PYRAMID_TOP = 2048

_last_used: list[Any] = [None]  # the bundle the Segment widget ran last (in any viewer)


def last_used_bundle():
    """The model the Segment widget used last in this session, or None (for the fine-tune widget)."""
    return _last_used[0]


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "…"
    if s < 9.95:  # "0 s" for a re-run of 0.4 s says nothing
        return f"{s:.1f} s"
    s = round(s)
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


def layer_image_and_axes(layer) -> tuple[Any, str | None]:
    """The full-resolution array of an Image layer (lazily) and its axes when they are known.

    Multiscale layers give their first (full-resolution) level; RGB(A) layers are ``...YXC``.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if getattr(layer, "rgb", False):
        return data, "YXC" if data.ndim == 3 else "ZYXC"
    return data, None


class DockControls:
    """What both dock widgets share: the device picker, the model picker's files, layer pickers
    that hold the layer objects (not their names), errors shown as napari notifications, and
    knowing when the widget has been deleted. Expects ``device_combo``, ``model_combo``,
    ``status``, a ``_loaded`` dict (display name -> file) and a ``_fill_models`` method."""

    def _track_lifetime(self) -> None:
        """Remember when Qt deletes this widget (the viewer was closed): a run that ends
        afterwards must not touch it."""
        alive = self._alive = [True]

        def gone(*_: Any) -> None:
            alive[0] = False
            job = getattr(self, "job", None)
            if job is not None and not job.finished:
                job.cancel()

        self.destroyed.connect(gone)

    def _is_alive(self) -> bool:
        return self._alive[0]

    def _fill_devices(self) -> None:
        from ..inference import available_devices

        self.device_combo.addItem("auto")
        for name, ok in available_devices().items():
            self.device_combo.addItem(name)
            item = self.device_combo.model().item(self.device_combo.count() - 1)
            if not ok:
                item.setEnabled(False)
                item.setToolTip(f"{name} is not available on this computer")

    def _fill_layer_combo(self, combo: QComboBox, layers: list[Any], first: str | None = None,
                          default: Any = None) -> None:
        """Offer ``layers`` (the objects are the item data, so a renamed or same-named layer is
        never mistaken for another). The layer chosen before stays chosen while it exists; once
        it is removed nothing is chosen until the user chooses again (no other layer silently
        takes its place); an empty choice takes ``default`` (else the first entry)."""
        lost = getattr(combo, "_lost_choice", False)
        before_index, before = combo.currentIndex(), combo.currentData()
        combo.blockSignals(True)
        combo.clear()
        if first:
            combo.addItem(first, None)
        for layer in layers:
            combo.addItem(layer.name, layer)
        if before is not None:
            index = next((i for i in range(combo.count()) if combo.itemData(i) is before), -1)
            lost = index < 0
        elif before_index >= 0 and first:  # the ``first`` entry was chosen
            index = 0
        elif lost:
            index = -1
        else:
            index = next((i for i in range(combo.count()) if combo.itemData(i) is default), 0 if combo.count()
                         else -1) if default is not None else (0 if combo.count() else -1)
        if not hasattr(combo, "_lost_choice"):
            combo.currentIndexChanged.connect(lambda i: i < 0 or setattr(combo, "_lost_choice", False))
        combo._lost_choice = lost  # type: ignore[attr-defined]
        combo.setCurrentIndex(index)
        combo.blockSignals(False)
        if combo.currentData() is not before or combo.currentIndex() != before_index:
            combo.currentIndexChanged.emit(combo.currentIndex())

    def _combo_layer(self, combo: QComboBox):
        """The layer chosen in ``combo`` if it is still in the viewer, else None."""
        layer = combo.currentData()
        return layer if layer is not None and layer in self.viewer.layers else None

    def add_model_file(self, path: str | Path) -> None:
        """Add a model file to the model picker and select it (also used by tests and scripts)."""
        path = Path(path)
        self._loaded[path.name] = str(path)
        self._fill_models()
        self.model_combo.setCurrentText(path.name)

    def _on_model_chosen(self, index: int) -> None:
        if self.model_combo.itemText(index) != LOAD_FILE:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Load a U-Net model", "",
            "Models (*.safetensors *.pth *.pt *.zip rdf.yaml *.bioimageio.yaml);;All files (*)",
        )
        if path:
            self.add_model_file(path)
        else:
            self.model_combo.setCurrentIndex(0)

    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(message)
        show_error(message)


#: what the plugin writes into the metadata of the layers it makes
META_KEY = "napari_tiled_unet"


def layer_origin(layer) -> dict[str, Any]:
    """What the plugin recorded about a layer it made: ``{"role", "image", "edited"}``, or {}."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get(META_KEY, {}) if isinstance(meta, dict) else {}


@dataclass
class _Run:
    """What a run is bound to: the image layer object (not its name) and how it was read."""

    image: Any
    view: Any  # imageview.ImageView
    drop_axis: int | None  # the layer dimension that holds channels (not RGB), else None


@dataclass
class _Output:
    """The plugin's result layers for one image layer."""

    image: Any
    labels: Any = None
    probabilities: list[Any] = field(default_factory=list)
    edited: bool = False


def placement(layer, drop_axis: int | None = None) -> dict[str, Any]:
    """Keyword arguments that put a result layer where ``layer`` is: scale, translate, rotation,
    shear, affine, units and axis labels (without the layer dimension ``drop_axis``)."""
    keep = [i for i in range(layer.ndim) if i != drop_axis]
    out: dict[str, Any] = {
        "scale": np.asarray(layer.scale)[keep],
        "translate": np.asarray(layer.translate)[keep],
        "rotate": np.asarray(layer.rotate)[np.ix_(keep, keep)],
        "affine": np.asarray(layer.affine.affine_matrix)[np.ix_([*keep, layer.ndim], [*keep, layer.ndim])],
    }
    if drop_axis is None:
        out["shear"] = np.asarray(layer.shear)
    for key in ("units", "axis_labels"):
        values = getattr(layer, key, None)
        if values is not None:
            out[key] = tuple(values[i] for i in keep)
    return out


class SegmentWidget(DockControls, MeasureControls, QWidget):
    """Segment the chosen image layer with a U-Net into a Labels layer of its own.

    Every image gets its own result layer, named after it and placed where it is. A result
    layer the user has painted into since the plugin wrote it is never written again: the
    next run makes a new layer.

    The measurements (the Objects table, Export CSV…, Save labels…) are
    :class:`~napari_tiled_unet._qt.table.MeasureControls`.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: EngineJob | None = None
        self.bundle = None  # the model last used (the fine-tune widget can pick it up)
        self._bundle_source: Any = None
        self.result = None  # last Segmentation, for Re-segment
        self._result_run: _Run | None = None
        self._pending: _Run | None = None  # the run in progress
        self._kind = ""  # "segment" or "resegment"
        self._loaded: dict[str, str] = {}  # display name -> file path
        self._outputs: list[_Output] = []  # the plugin's own layers, per image layer
        self._writing = False  # the plugin itself is changing a result layer
        self._tmp = None  # folder of zarr outputs of large images (see _disk_outputs)
        self._runs = 0
        self._defaults_shown_for: Any = None
        self._channels_needed = False
        self._queue: list[Callable[[], None]] = []  # display steps, one per event-loop turn
        self._pumping = False
        #: (name, wall seconds, main-thread CPU seconds) of every display step (for diagnostics)
        self.step_times: list[tuple[str, float, float]] = []
        self._track_lifetime()

        self.image_combo = QComboBox()
        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip("Which axis of the image holds colour channels, if any.")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("The channel that holds the nuclei (or the luminance of RGB).")
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
                                      "objects it finds), then segment at that scale.")
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

        channels = QWidget()
        channel_row = QHBoxLayout(channels)
        channel_row.setContentsMargins(0, 0, 0, 0)
        channel_row.addWidget(QLabel("axis"))
        channel_row.addWidget(self.channel_axis_combo)
        channel_row.addWidget(QLabel("nuclei"))
        channel_row.addWidget(self.channel_combo)
        self.channel_row = channels

        self.form = form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("channels", channels)
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

        layout = QVBoxLayout(self)
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
        self.channel_axis_combo.currentIndexChanged.connect(self._fill_channels)
        self._refresh_images()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_images)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.resegment_button.clicked.connect(self.resegment)
        self._on_model_changed()
        _warm_up_labels()

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
        self.model_combo.blockSignals(False)

    def _refresh_images(self, *_: Any) -> None:
        import napari

        if not self._is_alive():
            return
        own = {id(layer) for out in self._outputs for layer in out.probabilities}
        images = [layer for layer in self.viewer.layers
                  if isinstance(layer, napari.layers.Image) and id(layer) not in own]
        active = self.viewer.layers.selection.active
        self._fill_layer_combo(self.image_combo, images,
                               default=active if active in images else (images[-1] if images else None))

    def _on_image_chosen(self, *_: Any) -> None:
        """Offer the channel choices the chosen image needs (hidden when it has none)."""
        from ..imageview import MAX_CHANNELS, guess_axes

        layer = self._combo_layer(self.image_combo)
        combo = self.channel_axis_combo
        combo.blockSignals(True)
        combo.clear()
        needed = False
        if layer is not None:
            data, axes = layer_image_and_axes(layer)
            shape = tuple(data.shape)
            if axes is not None:  # RGB(A): the last axis, always
                combo.addItem(f"RGB{'A' if shape[-1] == 4 else ''} (last)", data.ndim - 1)
                needed = True
            elif 3 <= data.ndim <= 4:
                candidates = [i for i, n in enumerate(shape[:-2]) if n <= MAX_CHANNELS]
                if data.ndim == 3 and shape[-1] <= MAX_CHANNELS:
                    candidates.append(2)
                try:
                    guess, ambiguous = guess_axes(shape)
                except ValueError:
                    guess, ambiguous = "", False
                if candidates:
                    needed = True
                    if ambiguous:
                        combo.addItem("choose…", "choose")
                    if data.ndim == 3:
                        combo.addItem(f"none ({shape[0]} planes)" if 2 not in candidates else "none", None)
                    for i in candidates:
                        combo.addItem(f"axis {i} ({shape[i]} channels)", i)
                    if not ambiguous and "C" in guess:
                        combo.setCurrentIndex(combo.findData(guess.index("C")))
        combo.blockSignals(False)
        self._channels_needed = needed
        self.channel_row.setVisible(needed)
        label = self.form.labelForField(self.channel_row)
        if label is not None:
            label.setVisible(needed)
        self._fill_channels()

    def _fill_channels(self, *_: Any) -> None:
        layer = self._combo_layer(self.image_combo)
        axis = self.channel_axis_combo.currentData()
        combo = self.channel_combo
        combo.clear()
        combo.setEnabled(isinstance(axis, int))
        if layer is None or not isinstance(axis, int):
            return
        data, rgb_axes = layer_image_and_axes(layer)
        n = int(data.shape[axis])
        combo.addItem("auto", None)
        if rgb_axes is not None or (axis == data.ndim - 1 and n in (3, 4)):
            combo.addItem("luminance", "luminance")
            names = ["red", "green", "blue", "alpha"]
            for c in range(min(n, 3)):
                combo.addItem(f"{c} ({names[c]})", c)
            combo.setCurrentIndex(1)
        else:
            for c in range(n):
                combo.addItem(str(c), c)

    def channel_choice(self, layer) -> tuple[str | None, int | str | None, int | None]:
        """(axes, channel, layer dimension of the channels) for the image as the user described it.

        Raises:
            ValueError: the user still has to say whether an axis holds channels.
        """
        data, rgb_axes = layer_image_and_axes(layer)
        if not self._channels_needed:
            return rgb_axes, None, None
        axis = self.channel_axis_combo.currentData()
        if axis == "choose":
            raise ValueError(f"Say whether the first axis of {layer.name} ({data.shape[0]} entries) holds "
                             "channels or planes, with 'channels: axis'.")
        channel = self.channel_combo.currentData() if isinstance(axis, int) else None
        if rgb_axes is not None:
            return rgb_axes, channel, None
        if axis is None:
            return ("YX" if data.ndim == 2 else "ZYX"), None, None
        spatial = "YX" if data.ndim == 3 else "ZYX"
        axes = spatial[:axis] + "C" + spatial[axis:]
        return axes, channel, axis

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
        """Set the post-processing controls to the defaults stored in the model file."""
        post = bundle.postprocess if bundle.task == "instances" else {}
        for spin, key in ((self.fg_spin, "foreground_threshold"), (self.seed_spin, "seed_threshold"),
                          (self.min_size_spin, "min_size")):
            if post.get(key) is not None:
                spin.setValue(post[key])

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
        from ..imageview import interpret
        from ..inference import resolve_device
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
            _last_used[0] = bundle
            axes, channel, drop_axis = self.channel_choice(layer)
            image, _ = layer_image_and_axes(layer)
            view = interpret(tuple(image.shape), bundle.n_channels, axes=axes, channel=channel,
                             option="the 'nuclei' channel picker")
        except Exception as exc:  # BundleError, ImageError and friends: one sentence to the user
            self._notify_error(str(exc))
            return
        kwargs = {
            "axes": axes,
            "channel": channel,
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
        if store is not None:
            kwargs["probabilities_out"] = str(store / "probabilities.zarr")
            kwargs["labels_out"] = str(store / "labels.zarr")
        measure = self._measurer(layer)
        self._pending = _Run(layer, view, drop_axis)
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
            result.labels = _for_display(result.labels)
            levels = _pyramid_on_disk(result.labels, store / "labels-levels") if store is not None else None
            return result, result.n_objects, levels  # counted here: on disk, counting reads every block

        self._start("segment", work, control)

    def _start(self, kind: str, work, control: RunControl | None = None) -> EngineJob:
        self._kind = kind
        self.job = EngineJob(
            work,
            on_event=self._on_event,
            on_result=self._on_result,
            on_error=lambda exc: self._notify_error(str(exc)),
            on_done=self._on_done,
            control=control,
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
            self.status.setText(f"{done:.1f}/{total} tiles, {_fmt_seconds(elapsed)} elapsed, "
                                f"{_fmt_seconds(_eta(elapsed, done / total))} left")

    def _on_event(self, event: Any) -> None:
        from ..events import Progress, WarningEvent

        if isinstance(event, Progress):
            self._last_progress = event
            elapsed = time.monotonic() - self._started
            if event.stage == "predict":
                return self._show_window_progress()
            if event.stage == "measure":
                self.progress.setRange(0, max(event.total, 1))
                self.progress.setValue(event.done)
                self.status.setText(f"Measuring objects: {event.done}/{event.total}, "
                                    f"{_fmt_seconds(elapsed)} elapsed")
            elif event.total > 1:  # blocks of a large image, or planes of a stack
                self.progress.setRange(0, event.total)
                self.progress.setValue(event.done)
                left = _eta(event.elapsed, event.done / event.total)
                self.status.setText(f"Labels: {event.done}/{event.total}, {_fmt_seconds(elapsed)} elapsed, "
                                    f"{_fmt_seconds(left)} left")
            else:
                self.progress.setRange(0, 0)  # one step that cannot be counted: busy
                self.status.setText("Turning probabilities into labels …")
        elif isinstance(event, WarningEvent):
            from napari.utils.notifications import show_info, show_warning

            (show_info if event.kind == "info" else show_warning)(event.message)
        return None

    def _on_result(self, value) -> None:
        result, n_objects, levels = value
        run = self._pending if self._kind == "segment" else self._result_run
        seconds = time.monotonic() - self._started  # this run's own time, reading to labels
        result.seconds = seconds
        self.result, self._result_run = result, run
        self._queue.extend(self._display_steps(result, run, levels))
        size = ""
        if getattr(result, "estimated_diameter", None):
            size = f" Estimated object diameter: {result.estimated_diameter:.1f} px."
        elif getattr(result, "diameter", None):
            size = f" Rescaled for objects of {result.diameter:.1f} px."
        self._queue.append(lambda: self.status.setText(
            (f"{n_objects} objects found in {_fmt_seconds(seconds)}." if result.task == "instances"
             else f"Done in {_fmt_seconds(seconds)}.") + size))
        self._pump()

    def _on_done(self) -> None:
        self._poll.stop()
        job = self.job
        self._queue.append(lambda: self._finish(job))
        self._pump()

    def _finish(self, job: EngineJob | None) -> None:
        if job is not None and job.cancelled and self.result is None:
            self.status.setText("Cancelled: nothing was added.")
        elif job is not None and job.cancelled:
            self.status.setText("Cancelled: the previous result is kept.")
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if job is not None and job.succeeded else 0)  # no "100 %" beside an error
        self._pending = None
        self._set_running(False)

    def _pump(self) -> None:
        """Run the next display step, then yield to the event loop before the one after: adding
        a layer costs napari a few hundred ms on a slow machine, so one layer per turn keeps
        the viewer responsive while a result with several layers appears."""
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
            QTimer.singleShot(0, self._pump)

    @property
    def busy(self) -> bool:
        """A run is going, or its result is still being put on screen."""
        return bool(self._queue) or (self.job is not None and not self.job.finished)

    # -- result layers --------------------------------------------------------------------

    def _output_for(self, image) -> _Output:
        for out in self._outputs:
            if out.image is image:
                return out
        out = _Output(image)
        self._outputs.append(out)
        return out

    def _display_steps(self, result, run: _Run, levels: list[Any] | None = None) -> list[Callable[[], None]]:
        """The steps that put ``result`` on screen, one layer each: the labels into the image's
        result layer (in place unless the user painted into it since, else a new layer, the
        edited one kept), then one probability layer per foreground class, just below them."""
        out = self._output_for(run.image)
        place = placement(run.image, run.drop_axis)
        steps: list[Callable[[], None]] = [partial(self._show_labels, result, run, out, place, levels)]
        steps += [partial(self._remove_layer, layer) for layer in out.probabilities]
        steps.append(out.probabilities.clear)
        if self.show_probs.isChecked():
            steps += [partial(self._add_probability, result, out, place, c)
                      for c in range(1, len(result.class_names))]
        steps.append(partial(self._announce, out, run, result))
        return steps

    def _remove_layer(self, layer) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _show_labels(self, result, run: _Run, out: _Output, place: dict[str, Any],
                     levels: list[Any] | None = None) -> None:
        from napari.utils.notifications import show_info

        data = levels or _lazy_pyramid(result.labels)
        old = out.labels if out.labels is not None and out.labels in self.viewer.layers else None
        self._writing = True
        try:
            if old is not None and not out.edited and bool(old.multiscale) == isinstance(data, list):
                old.data = data
                for key, value in place.items():
                    setattr(old, key, value)
                labels = old
            else:
                kwargs: dict[str, Any] = {"name": f"{run.image.name} labels", **place}
                if result.task == "semantic":
                    kwargs["features"] = {"class": result.class_names}
                labels = self.viewer.add_labels(data, **kwargs)
                if old is not None and not out.edited:  # single-scale <-> multiscale: same spot
                    index = self.viewer.layers.index(old)
                    self.viewer.layers.remove(old)
                    self.viewer.layers.move(self.viewer.layers.index(labels), index)
                    labels.name = kwargs["name"]
                elif old is not None:
                    show_info(f"Your edits of '{old.name}' are kept; the new result is '{labels.name}'.")
                labels.metadata[META_KEY] = {"role": "labels", "image": run.image.name}
                self._watch_edits(labels, out)
        finally:
            self._writing = False
        out.labels, out.edited = labels, False
        labels.metadata[META_KEY]["edited"] = False

    def _watch_edits(self, labels, out: _Output) -> None:
        """Mark ``out`` edited when the user paints into ``labels`` or replaces its data."""

        def edited(*_: Any) -> None:
            if not self._writing and out.labels is labels:
                out.edited = True
                labels.metadata.setdefault(META_KEY, {})["edited"] = True

        labels.events.paint.connect(edited)
        labels.events.data.connect(edited)

    def _add_probability(self, result, out: _Output, place: dict[str, Any], c: int) -> None:
        probs = result.probabilities
        plane = probs[..., c, :, :] if not hasattr(probs, "attrs") else _zarr_class(probs, c)
        colormaps = ["green", "magenta", "cyan", "yellow", "blue", "red"]
        layer = self.viewer.add_image(
            _lazy_pyramid(plane, in_memory_too=True),
            name=f"{out.image.name} {result.class_names[c]} probability",
            colormap=colormaps[(c - 1) % len(colormaps)], blending="additive",
            contrast_limits=(0.0, 1.0), **place,
        )
        layer.metadata[META_KEY] = {"role": "probability", "image": out.image.name}
        if out.labels in self.viewer.layers:  # below the labels, which it must not cover
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(out.labels))
        out.probabilities.append(layer)

    def _announce(self, out: _Output, run: _Run, result) -> None:
        self._refresh_images()
        if out.labels is not None:
            self._show_objects(out.labels, result)  # features, the Objects table, the buttons

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
            new.labels = _for_display(new.labels)
            levels = _pyramid_on_disk(new.labels, folder / "labels-levels") if folder is not None else None
            return new, new.n_objects, levels

        self.status.setText("Re-segmenting with the new thresholds …")
        self._start("resegment", work)


def _warm_up_labels() -> None:
    """Build (and drop) a 1x1 Labels layer: napari's one-time set-up of the Labels class
    (about 0.1-0.2 s of the main thread here) then happens when the widget opens, not in the
    middle of showing the first result."""
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8))


def _for_display(labels: Any) -> Any:
    """In-memory labels as uint16 when the ids fit (the worker does the conversion): napari
    draws uint8/uint16 labels as they are, but hashes every pixel of wider types on the main
    thread whenever the layer is drawn (0.4 s for 4096x4096 on a slow CPU)."""
    if isinstance(labels, np.ndarray) and labels.size and labels.min() >= 0 and labels.max() < 2**16:
        return labels.astype(np.uint16)
    return labels


def _eta(elapsed: float, fraction: float) -> float | None:
    """Seconds left from the share done, or None while that share is too small to tell."""
    if fraction <= 0.03 or elapsed < 2.0:
        return None
    return elapsed / fraction * (1 - fraction)


def _zarr_class(probs: Any, c: int) -> Any:
    """Class ``c`` of zarr (C, Y, X) probabilities, lazily."""
    import dask.array as da

    return da.from_zarr(probs)[c]


def _pyramid_on_disk(labels: Any, folder: Path) -> list[Any] | None:
    """For labels kept on disk: their coarser levels written as zarr (in the worker), each
    from the one before, so that napari's drawing of a zoomed-out view reads a small array
    instead of every chunk of the full-resolution one (1.6 s on the main thread for 8192^2).
    The list of lazy levels, full resolution first; None when one level is enough."""
    import dask.array as da

    if isinstance(labels, np.ndarray) or len(labels.shape) != 2:
        return None
    levels = [da.from_zarr(labels)]
    while max(levels[-1].shape) > PYRAMID_TOP:
        path = str(folder / f"{len(levels)}.zarr")
        coarser = levels[-1][::2, ::2]
        coarser.rechunk(tuple(min(s, 1024) for s in coarser.shape)).to_zarr(path, overwrite=True)
        levels.append(da.from_zarr(path))
    return levels if len(levels) > 1 else None


def _lazy_pyramid(data: Any, in_memory_too: bool = False) -> Any:
    """A zarr result becomes a list of lazy dask levels (every level half the size of the one
    before, nearest-neighbour) that napari shows as multiscale; numpy stays as it is, or with
    ``in_memory_too`` becomes such a list of strided views (no copy): napari then turns into a
    texture only the level it draws, instead of the whole array on the main thread."""
    if isinstance(data, np.ndarray) and not in_memory_too:
        return data
    if isinstance(data, np.ndarray):
        arr = data
    else:
        import dask.array as da

        arr = da.from_zarr(data) if not isinstance(data, da.Array) else data
    levels = [arr]
    while max(levels[-1].shape[-2:]) > PYRAMID_TOP:
        levels.append(levels[-1][..., ::2, ::2])
    return levels if len(levels) > 1 else arr


# npe2 widget factory: napari gives the viewer to a QWidget class whose __init__ takes
# ``napari_viewer``, but calls a plain factory function with no argument; so the class it is.
make_segment_widget = SegmentWidget


__all__ = ["SegmentWidget", "last_used_bundle", "make_segment_widget"]
