"""The "Segment (U-Net)" dock widget: builds the view and wires events; computes nothing."""

from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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
    """What both dock widgets share: the device picker, the model picker's files, and errors
    shown as napari notifications. Expects ``device_combo``, ``model_combo``, ``status``, a
    ``_loaded`` dict (display name -> file) and a ``_fill_models`` method."""

    def _fill_devices(self) -> None:
        from ..inference import available_devices

        self.device_combo.addItem("auto")
        for name, ok in available_devices().items():
            self.device_combo.addItem(name)
            item = self.device_combo.model().item(self.device_combo.count() - 1)
            if not ok:
                item.setEnabled(False)
                item.setToolTip(f"{name} is not available on this computer")

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


class SegmentWidget(DockControls, MeasureControls, QWidget):
    """Segment the chosen image layer with a U-Net into a Labels layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: EngineJob | None = None
        self.bundle = None  # the model last used (the fine-tune widget can pick it up)
        self._bundle_source: Any = None
        self.result = None  # last Segmentation, for Re-segment
        self._result_image = None
        self._loaded: dict[str, str] = {}  # display name -> file path
        self._outputs: dict[str, Any] = {}  # the plugin's own layers, by role
        self._tmp = None  # folder of zarr outputs of large images (see _disk_outputs)
        self._runs = 0

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["fp32", "bf16", "fp16"])
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
        self.show_probs = QCheckBox("also show probabilities")
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

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("precision", self.precision_combo)

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
        self._refresh_images()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_images)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.resegment_button.clicked.connect(self.resegment)

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

        self.model_combo.clear()
        for name in zoo.available():
            self.model_combo.addItem(name)
        for name in self._loaded:
            self.model_combo.addItem(name)
        self.model_combo.addItem(LOAD_FILE)

    def _refresh_images(self, *_: Any) -> None:
        import napari

        current = self.image_combo.currentText()
        self.image_combo.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, napari.layers.Image) and layer not in self._outputs.values():
                self.image_combo.addItem(layer.name)
        if current:
            self.image_combo.setCurrentText(current)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.resegment_button.setEnabled(not running and self.result is not None)

    # -- actions ------------------------------------------------------------------------

    def selected_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def load_selected_model(self):
        from ..model.bundle import load_model

        name = self.model_combo.currentText()
        if not name or name == LOAD_FILE:
            raise ValueError("Choose a model first: a built-in one, or load a model file.")
        source = self._loaded.get(name, name)
        if self.bundle is not None and self._bundle_source == source:
            return self.bundle
        bundle = load_model(source)
        self._bundle_source = source
        self._show_model_defaults(bundle)
        return bundle

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
        from ..segmentation import segment_iter

        layer = self.selected_layer()
        if layer is None:
            self._notify_error("Open an image first (File > Open, or File > Open Sample).")
            return
        try:
            self.bundle = self.load_selected_model()
            _last_used[0] = self.bundle
        except Exception as exc:  # BundleError and friends: one sentence to the user
            self._notify_error(str(exc))
            return
        image, axes = layer_image_and_axes(layer)
        kwargs = {
            "axes": axes,
            "device": self.device_combo.currentText(),
            "precision": self.precision_combo.currentText(),
            "mode": self.mode_combo.currentText(),
            "window": self.window_spin.value() or None,
            "batch_size": self.batch_spin.value() or None,
            "tta": self.tta_check.isChecked(),
            "postprocess": self.postprocess_overrides(),
        }
        bundle = self.bundle
        measure = self._measurer(layer)
        store = self._disk_outputs(image, axes)
        if store is not None:
            kwargs["probabilities_out"] = str(store / "probabilities.zarr")
            kwargs["labels_out"] = str(store / "labels.zarr")
        self._result_image = layer.name
        self.status.setText(f"Segmenting {layer.name} …")
        self.progress.setRange(0, 0)
        def work():
            # napari imports pandas on the first Labels layer; doing it here, in the worker,
            # spares the user a one-second freeze when the result is shown
            with contextlib.suppress(ImportError):
                importlib.import_module("pandas")
            result = yield from segment_iter(bundle, image, **kwargs)
            return (yield from measure(result))

        self.job = EngineJob(
            work,
            on_event=self._on_event,
            on_result=self._on_result,
            on_error=lambda exc: self._notify_error(str(exc)),
            on_done=self._on_done,
        )
        self._set_running(True)
        self.job.start()

    def _disk_outputs(self, image, axes) -> Path | None:
        """A fresh folder for zarr outputs when the image is too large to keep its results in
        RAM (a 2D plane above :data:`LARGE_PIXELS`); None otherwise. The folder lives as long
        as the widget (napari reads the layers from it lazily)."""
        shape = tuple(image.shape)
        spatial = shape[:-1] if axes and axes.endswith("C") else shape
        if len(spatial) != 2 or spatial[0] * spatial[1] <= LARGE_PIXELS:
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
        if self.job is not None:
            self.status.setText("Cancelling …")
            self.job.cancel()

    def _on_event(self, event: Any) -> None:
        from ..events import Progress, WarningEvent

        if isinstance(event, Progress):
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.done)
            times = f"{_fmt_seconds(event.elapsed)} elapsed, {_fmt_seconds(event.eta)} left"
            if event.stage == "predict":
                self.status.setText(f"{event.done}/{event.total} tiles, {times}")
            elif event.stage == "measure":
                self.status.setText(f"Measuring objects: {event.done}/{event.total}, {times}")
            elif event.total > 1:  # blocks of a large image, or planes of a stack
                self.status.setText(f"Labels: {event.done}/{event.total}, {times}")
            else:
                self.status.setText("Turning probabilities into labels …")
        elif isinstance(event, WarningEvent):
            from napari.utils.notifications import show_warning

            show_warning(event.message)

    def _on_result(self, result) -> None:
        self.result = result
        self._show_result(result)
        self.status.setText(
            f"{result.n_objects} objects found in {_fmt_seconds(result.seconds)}."
            if result.task == "instances"
            else f"Done in {_fmt_seconds(result.seconds)}."
        )

    def _on_done(self) -> None:
        if self.job is not None and self.job.cancelled and self.result is None:
            self.status.setText("Cancelled: nothing was added.")
        elif self.job is not None and self.job.cancelled:
            self.status.setText("Cancelled: the previous result is kept.")
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if self.job and self.job.cancelled else 1)
        self._set_running(False)

    def _show_result(self, result) -> None:
        """Add the labels (and probabilities) as layers, replacing this widget's own earlier
        output; the user's layers are never touched."""
        layers = self.viewer.layers
        source = layers[self._result_image] if self._result_image in layers else None  # noqa: SIM401
        meta = {"scale": source.scale, "translate": source.translate} if source is not None else {}
        name = f"{self._result_image} labels"
        labels_kwargs: dict[str, Any] = {"name": name, **meta}
        if result.task == "semantic":
            labels_kwargs["features"] = {"class": result.class_names}
        self._outputs["labels"] = self._replace_or_add("labels", _lazy_pyramid(result.labels), labels_kwargs)
        if self.show_probs.isChecked():
            self._outputs["probabilities"] = self._replace_or_add(
                "probabilities", _lazy_pyramid(result.probabilities),
                {"name": f"{self._result_image} probabilities", "colormap": "magma", **meta},
            )
        self._show_objects(self._outputs["labels"], result)
        self._refresh_images()

    def _replace_or_add(self, role: str, data: Any, kwargs: dict[str, Any]):
        old = self._outputs.get(role)
        if old is not None and old in self.viewer.layers:
            if bool(old.multiscale) == isinstance(data, list):
                old.data = data
                old.name = kwargs["name"]
                return old
            # single-scale <-> multiscale cannot be swapped in place: a new layer, same spot
            index = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
            layer = self._add(role, data, kwargs)
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
            return layer
        return self._add(role, data, kwargs)

    def _add(self, role: str, data: Any, kwargs: dict[str, Any]):
        if role == "labels":
            return self.viewer.add_labels(data, **kwargs)
        return self.viewer.add_image(data, **kwargs)

    def resegment(self) -> None:
        """Apply the current thresholds to the cached probabilities (no network run)."""
        from ..segmentation import Segmentation, labels_from_iter, postprocess_params

        if self.result is None or self.bundle is None:
            return
        params = postprocess_params(self.bundle, self.postprocess_overrides())
        probs = self.result.probabilities
        task = self.result.task
        old = self.result
        measure = self._measure
        out = None
        if not isinstance(probs, np.ndarray):  # a large result: the new labels go to disk too
            out = str(self._new_run_folder() / "labels.zarr")

        def work():
            labels = yield from labels_from_iter(probs, task, params, out=out)
            result = Segmentation(labels, probs, task, old.class_names, params, old.seconds)
            return (yield from measure(result))

        self.status.setText("Re-segmenting with the new thresholds …")
        self.job = EngineJob(work, self._on_event, self._on_result,
                             lambda exc: self._notify_error(str(exc)), self._on_done)
        self._set_running(True)
        self.job.start()


def _lazy_pyramid(data: Any) -> Any:
    """numpy stays as it is; a zarr result becomes a list of lazy dask levels (every level
    half the size of the one before, nearest-neighbour) that napari shows as multiscale."""
    if isinstance(data, np.ndarray):
        return data
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
