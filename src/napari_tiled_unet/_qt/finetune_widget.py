"""The "Fine-tune (U-Net)" dock widget: builds the view and wires events.

The training is the engine's :class:`~napari_tiled_unet.training.loop.Trainer`, built on the
main thread (so that bad input is refused at once, before anything starts) and driven in a
worker thread by :class:`~napari_tiled_unet._qt.workers.EngineJob`. The widget turns its
events into a loss plot, a progress bar and a before -> after table. The user's layers are
only read: labels are copied, results go to the plugin's own layer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .predict_widget import (
    LOAD_FILE,
    DockControls,
    _fmt_seconds,
    last_used_bundle,
    layer_image_and_axes,
    layer_origin,
)
from .workers import EngineJob

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

LAST_USED = "Model last used for segmenting"
NEW_MODEL = "New model (from scratch)"
WHOLE_IMAGE = "(whole image)"
ANNOTATIONS = {"instances (one label per object)": "instances", "scribbles (label k = class k)": "scribbles"}
#: how the table names the trainer's validation figures
FIGURE_NAMES = {"f1@0.5": "F1@0.5 (objects)"}
#: seconds between two redraws of the loss plot (events can arrive every few milliseconds)
PLOT_INTERVAL = 0.5


# -- the loss plot ------------------------------------------------------------------------------


class LossPlot(QWidget):
    """Training and validation loss against the step, drawn with QPainter.

    ``set_data`` stores the lines and schedules one repaint; the painting reads only the
    stored arrays, so it costs the same however often events arrive. Plain Qt keeps the
    plugin free of a plotting dependency.

    Attributes:
        train_line: float (N, 2) array of (step, loss) as last drawn.
        val_line: float (M, 2) array of (step, validation loss) as last drawn.
    """

    TRAIN_COLOR = QColor(80, 160, 255)
    VAL_COLOR = QColor(255, 150, 40)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.train_line = np.empty((0, 2))
        self.val_line = np.empty((0, 2))
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setToolTip("Training loss (blue) and validation loss (orange) against the training step.")

    def set_data(self, train: list[tuple[int, float]], val: list[tuple[int, float]]) -> None:
        self.train_line = np.asarray(train, dtype=np.float64).reshape(-1, 2)
        self.val_line = np.asarray(val, dtype=np.float64).reshape(-1, 2)
        self.update()

    def _ranges(self) -> tuple[float, float, float, float] | None:
        pts = np.concatenate([self.train_line, self.val_line])
        pts = pts[np.isfinite(pts).all(axis=1)]
        if not len(pts):
            return None
        x1 = max(float(pts[:, 0].max()), 1.0)
        y0, y1 = float(pts[:, 1].min()), float(pts[:, 1].max())
        pad = 0.05 * (y1 - y0) if y1 > y0 else max(abs(y1) * 0.05, 1e-3)
        return 0.0, x1, y0 - pad, y1 + pad

    def paintEvent(self, event: Any) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().windowText().color()
        fm = p.fontMetrics()
        left, bottom, top, right = fm.horizontalAdvance("0.000") + 8, fm.height() + 6, fm.height() + 4, 8
        box = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
        p.setPen(QPen(text, 1))
        p.drawRect(box)
        p.setPen(self.TRAIN_COLOR)
        p.drawText(int(box.left()), fm.ascent() + 1, "training loss")
        p.setPen(self.VAL_COLOR)
        p.drawText(int(box.left()) + fm.horizontalAdvance("training loss") + 12, fm.ascent() + 1,
                   "validation loss")
        ranges = self._ranges()
        if ranges is None:
            p.end()
            return
        x0, x1, y0, y1 = ranges

        def to_screen(pts: np.ndarray) -> np.ndarray:
            sx = box.left() + (pts[:, 0] - x0) / (x1 - x0) * box.width()
            sy = box.bottom() - (pts[:, 1] - y0) / (y1 - y0) * box.height()
            return np.stack([sx, sy], axis=1)

        p.setPen(text)
        p.drawText(2, int(box.top()) + fm.ascent(), f"{y1:.3g}")
        p.drawText(2, int(box.bottom()), f"{y0:.3g}")
        p.drawText(int(box.left()), int(box.bottom()) + fm.ascent() + 3, "0")
        last = f"step {x1:.0f}"
        p.drawText(int(box.right()) - fm.horizontalAdvance(last), int(box.bottom()) + fm.ascent() + 3, last)
        p.setClipRect(box)
        lines = ((self.train_line, self.TRAIN_COLOR, False), (self.val_line, self.VAL_COLOR, True))
        for line, color, dots in lines:
            line = line[np.isfinite(line).all(axis=1)]
            if not len(line):
                continue
            stride = max(1, math.ceil(len(line) / max(box.width(), 1)))  # at most one point per pixel
            pts = to_screen(line[::stride] if stride == 1 else _bin_means(line, stride))
            p.setPen(QPen(color, 1.5))
            path = QPainterPath(QPointF(*pts[0]))
            for x, y in pts[1:]:
                path.lineTo(x, y)
            p.drawPath(path)
            if dots:
                p.setBrush(color)
                for x, y in pts:
                    p.drawEllipse(QPointF(x, y), 2.5, 2.5)
        p.end()


def _bin_means(line: np.ndarray, size: int) -> np.ndarray:
    n = len(line) // size * size
    binned = line[:n].reshape(-1, size, 2).mean(axis=1)
    return np.concatenate([binned, line[n:].mean(axis=0, keepdims=True)]) if n < len(line) else binned


# -- Qt-free helpers ----------------------------------------------------------------------------


@dataclass
class TrainingPlane:
    """The 2D plane of an image layer (and of its labels) that training sees.

    Attributes:
        image: the plane, lazily: (Y, X), (Y, X, C) or (C, Y, X).
        axes: ``"YX"``, ``"YXC"`` or ``"CYX"``.
        channel_axis: what :class:`~napari_tiled_unet.training.loop.Trainer` needs (None
            for grayscale and RGB(A)).
        index: the indices of the leading (stack) axes of the layer, ``()`` for a 2D layer.
    """

    image: Any
    axes: str
    channel_axis: int | None
    index: tuple[int, ...]


# -- the widget ---------------------------------------------------------------------------------


class _PickerComboBox(QComboBox):
    """A combo box that refreshes its entries just before it opens."""

    def __init__(self, refresh) -> None:
        super().__init__()
        self._refresh = refresh

    def showPopup(self) -> None:
        self._refresh()
        super().showPopup()


class FineTuneWidget(DockControls, QWidget):
    """Fine-tune a U-Net on labels painted in napari, with a live loss plot and a Stop button.

    Attributes:
        trainer: the current (or last) :class:`~napari_tiled_unet.training.loop.Trainer`.
        bundle: the fine-tuned model once training ended or was stopped, else None.
        train_points: (step, training loss) of every optimisation step of the current run.
        val_points: (step, validation loss) of every validation of the current run (step 0
            is the starting model).
        before, after: the validation figures of the starting and of the fine-tuned model.
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._track_lifetime()
        self.job: EngineJob | None = None
        self.trainer = None
        self.bundle = None
        self.train_points: list[tuple[int, float]] = []
        self.val_points: list[tuple[int, float]] = []
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self._loaded: dict[str, str] = {}  # display name -> file path
        self._preview = None  # the plugin's own preview layer
        self._preview_place: tuple[Any, ...] = ()  # image name, crop offset, scale, translate
        self._failed = False  # the last job ended with an error
        self._last_draw = 0.0
        self._kind = ""  # what the running job does: "train", "evaluate", "preview", "export"
        self._first_step_at: tuple[int, float] | None = None  # (step, elapsed) of the first step seen

        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.annotation_combo = QComboBox()
        self.annotation_combo.addItems(list(ANNOTATIONS))
        self.annotation_combo.setToolTip(
            "instances: every object painted with its own label; only the region counts.\n"
            "scribbles: label 1, 2, ... paints class 1, 2, ...; unpainted pixels are ignored."
        )
        self.classes_edit = QLineEdit()
        self.classes_edit.setPlaceholderText("optional: background, membrane, cell")
        self.classes_edit.setToolTip(
            "Scribbles only: names of the classes painted with label 1, 2, ..., comma separated.\n"
            "A new model gets one class per name (empty: one per label value painted, named class 1, "
            "class 2, ...);\na base model must have exactly these classes."
        )
        self.region_combo = QComboBox()
        self.region_combo.setToolTip("Rectangles of a Shapes layer: only pixels inside them count "
                                     "(other shapes count by their bounding box).")
        self.region_hint = QLabel("The whole image counts: every pixel you did not paint is taught as "
                                  "background. Unless you painted every object, draw rectangles around "
                                  "what you painted (a Shapes layer) and choose it as the region.")
        self.region_hint.setWordWrap(True)
        self.region_hint.setStyleSheet("color: #e0a030;")
        self.model_combo = _PickerComboBox(self._fill_models)
        self.budget_spin = QDoubleSpinBox()
        self.budget_spin.setRange(0.1, 100000)
        self.budget_spin.setDecimals(1)
        self.budget_spin.setValue(10)
        self.budget_unit = QComboBox()
        self.budget_unit.addItems(["epochs", "minutes"])
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 0.1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-3)
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(16, 2048)
        self.patch_spin.setSingleStep(32)
        self.patch_spin.setValue(256)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(4)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setSpecialValueText("auto")
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.15)
        self.val_spin.setToolTip("Fraction of the annotated area held out to choose the best weights "
                                 "(0: no validation, the last weights are kept).")
        self.device_combo = QComboBox()
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["fp32", "bf16", "fp16"])
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)

        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop now and keep the best weights so far.")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = LossPlot()
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["before", "after"])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setToolTip("On the held-out validation area: the starting model (before) and the "
                              "fine-tuned one (after).")
        self.table.hide()
        self.save_button = QPushButton("Save model…")
        self.preview_button = QPushButton("Preview on view")
        self.export_button = QPushButton("Export for bioimage.io…")
        self.export_button.setToolTip("Write the fine-tuned model as a bioimage.io model package (zip) for "
                                      "deepImageJ, ilastik, bioimageio.core and other tools.")
        self.preview_button.setToolTip("Segment the visible part of the image with the fine-tuned model "
                                       "into a new layer.")

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("labels", self.labels_combo)
        form.addRow("annotation", self.annotation_combo)
        form.addRow("class names", self.classes_edit)
        form.addRow("region", self.region_combo)
        form.addRow(self.region_hint)
        form.addRow("base model", self.model_combo)
        budget = QHBoxLayout()
        budget.addWidget(self.budget_spin)
        budget.addWidget(self.budget_unit)
        form.addRow("train for", budget)
        form.addRow("learning rate", self.lr_spin)

        advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        adv_form.addRow("patch size (px)", self.patch_spin)
        adv_form.addRow("batch size", self.batch_spin)
        adv_form.addRow("steps per epoch", self.steps_spin)
        adv_form.addRow("validation fraction", self.val_spin)
        adv_form.addRow("device", self.device_combo)
        adv_form.addRow("precision", self.precision_combo)
        adv_form.addRow("seed", self.seed_spin)
        advanced.addWidget(adv)

        run_buttons = QHBoxLayout()
        run_buttons.addWidget(self.train_button)
        run_buttons.addWidget(self.stop_button)
        result_buttons = QHBoxLayout()
        result_buttons.addWidget(self.save_button)
        result_buttons.addWidget(self.preview_button)
        result_buttons.addWidget(self.export_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addLayout(run_buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.table)
        layout.addLayout(result_buttons)
        layout.addStretch()

        self._fill_devices()
        self._fill_models()
        self._refresh_layers()
        self.region_combo.currentIndexChanged.connect(self._show_region_hint)
        self.annotation_combo.currentIndexChanged.connect(self._show_region_hint)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self._ask_save)
        self.preview_button.clicked.connect(self.preview)
        self.export_button.clicked.connect(self._ask_export)
        self._set_running(False)

    # -- view helpers ---------------------------------------------------------------------------

    def _fill_models(self) -> None:
        from ..model import zoo

        current = self.model_combo.currentText()
        names = list(zoo.available())
        if last_used_bundle() is not None:
            names.append(LAST_USED)
        names += [*self._loaded, NEW_MODEL]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems([*names, LOAD_FILE])
        if current in names:
            self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)

    def _refresh_layers(self, *_: Any) -> None:
        """Offer the viewer's layers; a first choice prefers what the user is working on:
        the selected image, and the labels the Segment widget made for it (the edited ones
        first), never a hidden layer."""
        import napari

        if not self._is_alive():
            return
        layers = [layer for layer in self.viewer.layers if layer is not self._preview]
        images = [layer for layer in layers if isinstance(layer, napari.layers.Image)]
        labels = [layer for layer in layers if isinstance(layer, napari.layers.Labels)]
        shapes = [layer for layer in layers if isinstance(layer, napari.layers.Shapes)]
        active = self.viewer.layers.selection.active
        self._fill_layer_combo(self.image_combo, images, default=self._default_image(images, labels, active))
        image = self._combo_layer(self.image_combo)
        self._fill_layer_combo(self.labels_combo, labels, default=self._default_labels(labels, image, active))
        self._fill_layer_combo(self.region_combo, shapes, first=WHOLE_IMAGE)
        self._show_region_hint()

    @staticmethod
    def _default_image(images: list[Any], labels: list[Any], active: Any) -> Any:
        if active in images:
            return active
        for layer in reversed(labels):  # the image of the labels the plugin made (edited first)
            origin = layer_origin(layer)
            if origin.get("role") == "labels" and origin.get("edited"):
                match = [im for im in images if im.name == origin.get("image")]
                if match:
                    return match[-1]
        visible = [im for im in images if im.visible]
        return (visible or images or [None])[-1]

    @staticmethod
    def _default_labels(labels: list[Any], image: Any, active: Any) -> Any:
        def score(layer) -> tuple[int, ...]:
            origin = layer_origin(layer)
            mine = origin.get("role") == "labels" and image is not None and origin.get("image") == image.name
            return (layer.visible, layer is active, mine and bool(origin.get("edited")), mine)

        candidates = [layer for layer in labels if layer.visible]
        return max(reversed(candidates), key=score) if candidates else None

    def _show_region_hint(self, *_: Any) -> None:
        whole = self.region_combo.currentText() == WHOLE_IMAGE
        instances = ANNOTATIONS.get(self.annotation_combo.currentText()) == "instances"
        self.region_hint.setVisible(whole and instances)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running and self._kind == "train")
        self.save_button.setEnabled(not running and self.bundle is not None)
        self.preview_button.setEnabled(not running and self.bundle is not None)
        self.export_button.setEnabled(not running and self.bundle is not None)

    @property
    def running(self) -> bool:
        return self.job is not None and not self.job.finished

    def _refresh_plot(self) -> None:
        self._last_draw = time.monotonic()
        self.plot.set_data(self.train_points, self.val_points)

    def _show_table(self) -> None:
        rows = [k for k in self.before if k in self.after] or list(self.after)
        self.table.setRowCount(len(rows))
        self.table.setVerticalHeaderLabels([FIGURE_NAMES.get(k, k) for k in rows])
        for r, key in enumerate(rows):
            for c, figures in enumerate((self.before, self.after)):
                value = figures.get(key)
                self.table.setItem(r, c, QTableWidgetItem("–" if value is None else f"{value:.3f}"))
        self.table.resizeColumnsToContents()
        t = self.table
        rows_height = sum(t.rowHeight(r) for r in range(len(rows)))
        t.setFixedHeight(t.horizontalHeader().sizeHint().height() + rows_height + 2 * t.frameWidth() + 2)
        t.setVisible(bool(rows))  # every row on show, no scroll bar

    # -- reading the layers (main thread) -------------------------------------------------------

    def _layer(self, combo: QComboBox):
        return self._combo_layer(combo)

    def training_plane(self, image_layer, labels_shape: tuple[int, ...] | None = None) -> TrainingPlane:
        """The 2D plane of ``image_layer`` to train on or preview: the one on display for stacks.

        ``labels_shape`` (the painted labels) decides what a 3D non-RGB layer is: channels
        when the labels are 2D, a stack of planes when they have the image's shape.
        """
        data, axes = layer_image_and_axes(image_layer)
        shape = tuple(data.shape)
        if axes in ("YXC", "ZYXC"):  # RGB(A)
            n_stack, plane_axes = data.ndim - 3, "YXC"
        elif data.ndim == 2:
            n_stack, plane_axes = 0, "YX"
        elif data.ndim == 3 and labels_shape is not None and len(labels_shape) == 2:
            if shape[1:] == tuple(labels_shape):
                n_stack, plane_axes = 0, "CYX"
            elif shape[:2] == tuple(labels_shape):
                n_stack, plane_axes = 0, "YXC"
            else:
                raise ValueError(self._shape_message(labels_shape, shape))
        else:
            n_stack, plane_axes = data.ndim - 2, "YX"
        index: tuple[int, ...] = ()
        if n_stack:
            pos = image_layer.world_to_data(self.viewer.dims.point)
            index = tuple(int(np.clip(round(float(pos[i])), 0, shape[i] - 1)) for i in range(n_stack))
        plane = data[index] if index else data
        rgb = axes in ("YXC", "ZYXC")
        channel_axis = None if rgb or plane_axes == "YX" else plane_axes.index("C")
        return TrainingPlane(plane, plane_axes, channel_axis, index)

    @staticmethod
    def _shape_message(labels_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> str:
        return (f"The labels have shape {tuple(labels_shape)} but the image is {tuple(image_shape)}; "
                "paint the labels on a layer of the image's size.")

    def _labels_array(self, labels_layer, image_layer) -> tuple[np.ndarray, TrainingPlane]:
        data = labels_layer.data[0] if getattr(labels_layer, "multiscale", False) else labels_layer.data
        plane = self.training_plane(image_layer, tuple(data.shape))
        if plane.index:
            image_shape = tuple(layer_image_and_axes(image_layer)[0].shape)
            n = len(plane.index)
            spatial = image_shape[: n + 2]
            if tuple(data.shape) != spatial:
                raise ValueError(self._shape_message(tuple(data.shape), spatial))
            data = data[plane.index]
        return np.array(data, copy=True), plane  # a copy: training never touches the user's layer

    def _region(self, image_layer, plane: TrainingPlane) -> list[np.ndarray] | None:
        """The rectangles of the chosen Shapes layer in the image's pixel coordinates (2D)."""
        if self.region_combo.currentIndex() < 0:
            raise ValueError("The region layer was removed; choose a region again (or the whole image).")
        shapes = self._layer(self.region_combo)
        if shapes is None:
            return None
        rects = []
        for verts in shapes.data:
            verts = np.asarray(verts, dtype=np.float64)
            if plane.index and verts.shape[1] > 2:
                lead = np.round(verts[:, :-2])[:, -len(plane.index):]
                if not (lead == np.asarray(plane.index)).all():
                    continue  # drawn on another plane of the stack
            pts = [image_layer.world_to_data(shapes.data_to_world(v))[-2:] for v in verts]
            rects.append(np.asarray(pts))
        return rects

    def class_names(self) -> list[str] | None:
        """The names typed in "class names" (None when empty)."""
        names = [n.strip() for n in self.classes_edit.text().split(",")]
        if not any(names):
            return None
        if not all(names) or len(set(names)) != len(names):
            raise ValueError("Type the class names once each, separated by commas (e.g. background, "
                             "membrane, cell).")
        return names

    def _new_model(self, annotation: str, labels: np.ndarray, plane: TrainingPlane):
        """A new model for the annotation: semantic with the typed class names for scribbles."""
        from ..training.loop import new_bundle_for_annotation

        n_channels = 1 if plane.axes == "YX" else 3 if plane.axes == "YXC" else int(plane.image.shape[0])
        task = "semantic" if annotation == "scribbles" else "instances"
        return new_bundle_for_annotation(annotation, [labels], self.class_names(), n_channels=n_channels,
                                         base_channels=16, depth=4, seed=self.seed_spin.value(),
                                         name=f"new-{task}-model")

    def _base_model(self):
        from ..model.bundle import load_model
        from ..training.loop import check_class_names

        name = self.model_combo.currentText()
        if name == LAST_USED:
            bundle = last_used_bundle()
            if bundle is None:
                raise ValueError("No model has been used for segmenting yet; choose another base model.")
        elif not name or name == LOAD_FILE:
            raise ValueError("Choose a base model first: a built-in one, a model file, or a new model.")
        else:
            bundle = load_model(self._loaded.get(name, name))
        check_class_names(bundle, self.class_names())
        return bundle

    def make_trainer(self):
        """A :class:`~napari_tiled_unet.training.loop.Trainer` for the current choices.

        Raises:
            ValueError: bad input, with one sentence that says what to do.
        """
        from ..training.loop import Trainer

        image_layer, labels_layer = self._layer(self.image_combo), self._layer(self.labels_combo)
        if image_layer is None or labels_layer is None:
            raise ValueError("Choose an image layer and a labels layer painted on it (Layers > New Labels).")
        labels, plane = self._labels_array(labels_layer, image_layer)
        region = self._region(image_layer, plane)
        budget = self.budget_spin.value()
        minutes = self.budget_unit.currentText() == "minutes"
        annotation = ANNOTATIONS[self.annotation_combo.currentText()]
        return Trainer(
            self._new_model(annotation, labels, plane) if self.model_combo.currentText() == NEW_MODEL
            else self._base_model(), [plane.image], [labels],
            annotation=annotation,
            regions=[region], channel_axis=plane.channel_axis, names=[image_layer.name],
            epochs=None if minutes else budget, minutes=budget if minutes else None,
            steps_per_epoch=self.steps_spin.value() or None, lr=self.lr_spin.value(),
            patch_size=self.patch_spin.value(), batch_size=self.batch_spin.value(),
            val_fraction=self.val_spin.value(), seed=self.seed_spin.value(),
            device=self.device_combo.currentText(), precision=self.precision_combo.currentText(),
        )

    # -- actions --------------------------------------------------------------------------------

    def train(self) -> None:
        """Check the input and start training in a worker thread; bad input is refused at once."""
        if self.running:
            return
        try:
            trainer = self.make_trainer()
        except ValueError as exc:  # BundleError, ImageError and the Trainer's checks: one sentence
            self._notify_error(str(exc))
            return
        except Exception as exc:
            log.exception("Could not start training")
            self._notify_error(f"Could not start training: {exc}")
            return
        self.trainer, self.bundle = trainer, None
        self.train_points, self.val_points = [], []
        self.before, self.after = {}, {}
        self.table.hide()
        self._refresh_plot()
        if trainer.minutes and not trainer.epochs:  # a time budget: the bar counts time, not steps
            self.progress.setRange(0, 1000)
        else:
            self.progress.setRange(0, trainer.planned_steps())
        self.progress.setValue(0)
        self._first_step_at = None
        self.status.setText(f"Training ({trainer.val_description}) …")
        if self._layer(self.region_combo) is None and trainer.annotation == "instances":
            from napari.utils.notifications import show_warning

            show_warning("No region chosen: every pixel you did not paint counts as background. If you "
                         "painted only some objects, draw rectangles around them and use them as the region.")
        self._start("train", trainer.iter, self._on_trained)

    def _start(self, kind: str, make_generator, on_result) -> None:
        self._kind, self._failed = kind, False
        self.job = EngineJob(make_generator, on_event=self._on_event, on_result=on_result,
                             on_error=self._on_error, on_done=self._on_done)
        self.job.owner_alive = self._is_alive
        self._set_running(True)
        self.job.start()

    def stop(self) -> None:
        """Stop training now; the best weights so far become the result."""
        if self.running and self._kind == "train":
            self.status.setText("Stopping …")
            self.job.cancel()

    def _on_event(self, event: Any) -> None:
        from ..events import Progress, TrainStep, WarningEvent

        if isinstance(event, TrainStep):
            self._on_step(event)
        elif isinstance(event, Progress) and self._kind == "preview":
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.done)
        elif isinstance(event, WarningEvent):
            from napari.utils.notifications import show_info, show_warning

            (show_info if event.kind == "info" else show_warning)(event.message)

    def _on_step(self, ev: Any) -> None:
        if ev.val_loss is None:
            self.train_points.append((ev.step, ev.loss))
        else:
            self.val_points.append((ev.step, ev.val_loss))
            if not self.before:  # the first validation is the starting model's
                self.before = {k: float(v) for k, v in ev.metrics.items() if k != "best_val_loss"}
                self.before["validation loss"] = float(ev.val_loss)
        trainer = self.trainer
        timed = trainer is not None and trainer.minutes and not trainer.epochs
        if timed:  # the planned step count is an estimate that moves: show the time instead
            budget = trainer.minutes * 60
            self.progress.setValue(int(1000 * min(ev.elapsed / budget, 1.0)))
            left: float | None = max(0.0, budget - ev.elapsed)
        else:
            self.progress.setRange(0, max(ev.total, 1))
            self.progress.setValue(min(ev.step, ev.total))
            left = self._steps_left_time(ev)
        loss = f"loss {ev.loss:.3f}" if math.isfinite(ev.loss) else "validating the starting model"
        steps = f"step {ev.step}" if timed else f"step {ev.step}/{ev.total}"
        self.status.setText(f"{steps} (epoch {ev.epoch:.1f}), {loss}, "
                            f"{_fmt_seconds(ev.elapsed)} elapsed, {_fmt_seconds(left)} left")
        if time.monotonic() - self._last_draw >= PLOT_INTERVAL:
            self._refresh_plot()

    def _steps_left_time(self, ev: Any) -> float | None:
        """Seconds left from the pace since the first step (the start-up and the starting
        model's validation do not count); None ("…") until 3 % of the steps are done."""
        if ev.step >= 1 and self._first_step_at is None:
            self._first_step_at = (ev.step, ev.elapsed)
        if self._first_step_at is None or ev.total <= 0:
            return None
        step0, t0 = self._first_step_at
        if ev.step - step0 < max(2, 0.03 * ev.total):
            return None
        return (ev.elapsed - t0) / (ev.step - step0) * max(ev.total - ev.step, 0)

    def _on_trained(self, bundle) -> None:
        self.bundle = bundle

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        if not isinstance(exc, ValueError):
            log.error("The %s job failed", self._kind, exc_info=exc)
        self._notify_error(str(exc))

    def _on_done(self) -> None:
        kind, job = self._kind, self.job
        self._kind = ""
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if job.cancelled or self._failed else 1)  # no "100 %" beside an error
        if kind == "train":
            self._finish_training(job)
        elif kind == "evaluate":
            self._show_table()
        elif kind == "preview" and job.cancelled:
            self.status.setText("Preview cancelled.")
        self._set_running(self._kind != "")

    def _finish_training(self, job: EngineJob) -> None:
        trainer = self.trainer
        self._refresh_plot()
        if self.bundle is None and (job.cancelled or (self._failed and trainer.step > 0)):
            self.bundle = trainer.best_bundle()  # stopped (or failed late): the best weights so far
        if self.bundle is None:
            return
        self.bundle.metadata.pop("_source", None)  # the Segment widget's cache key, not model metadata
        best = "the starting weights were kept" if trainer.best_step == 0 else (
            f"best at step {trainer.best_step}" if trainer.best_step is not None else "last weights kept")
        how = "Failed" if self._failed else "Stopped" if job.cancelled else "Done"
        self.status.setText(f"{how} after {trainer.step} steps in {_fmt_seconds(trainer.elapsed)} ({best}). "
                            "Save the model or preview it on the view.")
        if trainer.best_step is None:
            return
        self.after = {k: float(v) for k, v in trainer.best_metrics.items()}
        self.after["validation loss"] = float(trainer.best_val)
        if trainer.annotation == "scribbles" and trainer.val_windows:
            bundles = [trainer.base, self.bundle]
            self._start("evaluate", lambda: trainer.class_iou_iter(bundles), self._on_evaluated)
        else:
            self._show_table()

    def _on_evaluated(self, figures: list[dict[str, float]]) -> None:
        before, after = figures
        self.before.update(before)
        self.after.update(after)

    def save_model(self, path: str | Path) -> Path | None:
        """Write the fine-tuned model to ``path`` (``.safetensors`` is added when missing); atomic.

        Returns:
            The file written, or None when there was nothing to save or the write failed
            (the user is told why).
        """
        path = self._result_path(path, ".safetensors", "save")
        if path is None:
            return None
        try:
            written = self.bundle.save(path)
        except OSError as exc:
            self._notify_error(f"Could not write {path} ({exc.strerror or exc}); choose another folder.")
            return None
        from napari.utils.notifications import show_info

        self.status.setText(f"Saved to {written}.")
        show_info(f"Model saved to {written}.")
        return written

    def _result_path(self, path: str | Path, suffix: str, verb: str) -> Path | None:
        """``path`` with ``suffix`` added when missing; None (the user told) before any training."""
        if self.bundle is None:
            self._notify_error(f"Train a model first; there is nothing to {verb} yet.")
            return None
        path = Path(path)
        return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)

    def _ask_save(self) -> None:
        if self.bundle is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the fine-tuned model", f"{self.bundle.name}.safetensors", "Models (*.safetensors)"
        )
        if path:
            self.save_model(path)

    def export_bioimageio(self, path: str | Path) -> Path | None:
        """Start writing the fine-tuned model as a bioimage.io package at ``path`` (``.zip`` is
        added when missing; atomic) on a worker thread: it runs the network on the test image and
        traces it, seconds that napari stays responsive for. Returns the path being written, or
        None when there is nothing to export; the status line says when it is done."""
        path = self._result_path(path, ".zip", "export")
        if path is None or self.running:
            return None
        bundle = self.bundle

        def export():
            from ..bioimageio import export_bioimageio
            from ..events import Progress

            yield Progress(0, 1, 0.0, "export")
            try:
                return export_bioimageio(bundle, path)
            except OSError as exc:
                raise ValueError(f"Could not write {path} ({exc.strerror or exc}); choose another folder.") \
                    from exc

        self.status.setText(f"Exporting for bioimage.io to {path} …")
        self._start("export", export, self._on_exported)
        return path

    def _on_exported(self, written: Path) -> None:
        from napari.utils.notifications import show_info

        self.status.setText(f"Exported for bioimage.io to {written}.")
        show_info(f"bioimage.io package written to {written}.")

    def _ask_export(self) -> None:
        if self.bundle is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export for bioimage.io", f"{self.bundle.name}.zip", "bioimage.io packages (*.zip)"
        )
        if path:
            self.export_bioimageio(path)

    def visible_box(self, image_layer, plane: TrainingPlane) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of the image plane's pixels on display (the whole plane when the
        view is 3D, in grid mode, transposed, or does not overlap the image)."""
        h, w = (plane.image.shape[1:] if plane.axes == "CYX" else plane.image.shape[:2])
        whole = (0, 0, int(h), int(w))
        viewer = self.viewer
        scene = getattr(viewer, "scene", None)
        camera = scene.camera if scene is not None else viewer.camera
        canvas = getattr(viewer, "canvas", None)
        size = getattr(canvas, "size", None) if canvas is not None else getattr(viewer, "_canvas_size", None)
        grid = getattr(canvas, "grid", None) or getattr(viewer, "grid", None)
        n = viewer.dims.ndim
        if (size is None or viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed) != (n - 2, n - 1)
                or (grid is not None and grid.enabled)):
            return whole
        centre = np.asarray(camera.center[-2:], dtype=float)
        half = np.asarray(size[-2:], dtype=float) / (2 * camera.zoom)
        corners = []
        for dy, dx in ((-1, -1), (1, 1), (-1, 1), (1, -1)):
            point = np.asarray(viewer.dims.point, dtype=float)
            point[-2:] = centre + half * (dy, dx)
            corners.append(image_layer.world_to_data(point)[-2:])
        corners = np.asarray(corners)
        y0, x0 = np.floor(corners.min(axis=0)).astype(int)
        y1, x1 = np.ceil(corners.max(axis=0)).astype(int)
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(int(h), y1), min(int(w), x1)
        if y1 - y0 < 8 or x1 - x0 < 8:
            return whole
        return int(y0), int(x0), int(y1), int(x1)

    def preview(self) -> None:
        """Segment the visible part of the image with the fine-tuned model into the plugin's own
        preview layer (added once, then replaced); the user's layers are not touched."""
        from ..normalization import compute_stats
        from ..segmentation import segment_iter

        if self.bundle is None or self.running:
            return
        layer = self._layer(self.image_combo)
        if layer is None:
            self._notify_error("Choose the image to preview on.")
            return
        try:
            labels_layer = self._layer(self.labels_combo)
            labels_shape = None
            if labels_layer is not None and not getattr(labels_layer, "multiscale", False):
                labels_shape = tuple(labels_layer.data.shape)
            try:
                plane = self.training_plane(layer, labels_shape)
            except ValueError:  # labels of another image chosen: read the image on its own
                plane = self.training_plane(layer)
            y0, x0, y1, x1 = self.visible_box(layer, plane)
        except Exception as exc:
            log.exception("Could not find what to preview")
            self._notify_error(f"Could not find what to preview: {exc}")
            return
        image, axes, bundle = plane.image, plane.axes, self.bundle
        crop = image[:, y0:y1, x0:x1] if axes == "CYX" else image[y0:y1, x0:x1]
        device, precision = self.device_combo.currentText(), self.precision_combo.currentText()

        def work():
            # normalize with the whole plane's statistics, as in training (never the crop's own)
            stats = compute_stats(image, bundle.normalization, channel_axis=axes.index("C") if "C" in axes
                                  else None)
            yield None
            return (yield from segment_iter(bundle, crop, axes=axes, stats=stats, device=device,
                                            precision=precision))

        self._preview_place = (layer.name, y0, x0, np.asarray(layer.scale[-2:]),
                               np.asarray(layer.translate[-2:]))
        self.status.setText(f"Previewing the fine-tuned model on {layer.name} ({y1 - y0}x{x1 - x0} px) …")
        self.progress.setRange(0, 0)
        self._start("preview", work, self._on_preview)

    def _on_preview(self, result) -> None:
        name, y0, x0, scale, translate = self._preview_place
        kwargs = {"scale": scale, "translate": translate + scale * (y0, x0)}
        title = f"{name} preview (fine-tuned)"
        if self._preview is not None and self._preview in self.viewer.layers:
            self._preview.data = result.labels
            self._preview.name = title
            self._preview.scale, self._preview.translate = kwargs["scale"], kwargs["translate"]
        else:
            self._preview = self.viewer.add_labels(result.labels, name=title, **kwargs)
            self._refresh_layers()
        # the class names on hover (napari shows a Labels layer's features in the status bar)
        self._preview.features = {"class": result.class_names} if result.task == "semantic" else {}
        self.status.setText(f"Preview: {result.n_objects} objects." if result.task == "instances"
                            else "Preview done.")


#: npe2 widget factory: ``make_finetune_widget(napari_viewer)``. It is the class itself because
#: napari (0.9) passes the viewer only to callables whose ``__init__`` takes ``napari_viewer``;
#: a plain factory function would be called with no argument from the Plugins menu.
make_finetune_widget = FineTuneWidget


__all__ = ["FineTuneWidget", "LossPlot", "make_finetune_widget"]
