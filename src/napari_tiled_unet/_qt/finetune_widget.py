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
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)
from superqt import QCollapsible

from . import layerview
from .finetune_results import ResultActions, Task
from .layerview import TrainingPlane, full_resolution, layer_image_and_axes, layer_origin
from .layout import WrappedLabel, scrolling_body
from .loss_plot import LossPlot
from .pickers import (
    LOAD_FILE,
    ChannelPicker,
    DockControls,
    PickerComboBox,
    describe_builtin_models,
    show_engine_message,
)
from .progress import fmt_seconds
from .session import ModelSession, shared_session
from .workers import EngineJob

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

LAST_USED = "Model last used for segmenting"
NEW_MODEL = "New model (from scratch)"
WHOLE_IMAGE = "(whole image)"
ANNOTATIONS = {"instances (one label per object)": "instances", "scribbles (label k = class k)": "scribbles"}
#: fewest corrected areas (Learn from my corrections) of which some are held out for validation
CORRECTION_AREAS_TO_HOLD_OUT = 3
#: how the table names the trainer's validation figures
FIGURE_NAMES = {"f1@0.5": "F1@0.5 (objects)"}
#: seconds between two redraws of the loss plot (events can arrive every few milliseconds)
PLOT_INTERVAL = 0.5
#: why training stopped, not worth repeating in the status line
QUIET_STOP_REASONS = {"completed", "stopped by user", "interrupted", "user", "stopped"}


class FineTuneWidget(DockControls, ResultActions, QWidget):
    """Fine-tune a U-Net on labels painted in napari, with a live loss plot and a Stop button.

    Attributes:
        trainer: the current (or last) :class:`~napari_tiled_unet.training.loop.Trainer`.
        bundle: the fine-tuned model once training ended or was stopped, else None.
        train_points: (step, training loss) of every optimisation step of the current run.
        val_points: (step, validation loss) of every validation of the current run (step 0
            is the starting model).
        before, after: the validation figures of the starting and of the fine-tuned model.
    """

    def __init__(self, napari_viewer: napari.Viewer, session: ModelSession | None = None) -> None:
        from ..training.adaptation import FINETUNE

        super().__init__()
        self.viewer = napari_viewer
        self.session = session if session is not None else shared_session()
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
        self._preview_place: tuple[Any, ...] = ()  # layer name, leading axes, scale, translate
        self._failed = False  # the last job ended with an error
        self._last_draw = 0.0
        self._stop_asked = False  # Stop was pressed during this training
        self._selection_note: str | None = None  # replaces the trainer's sentence on the weights returned
        self._first_step_at: tuple[int, float] | None = None  # (step, elapsed) of the first step seen

        self.image_combo = QComboBox()
        self.channel_row = ChannelPicker()  # the same channel choice as in Segment
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
        self.region_hint = WrappedLabel("The whole image counts: every pixel you did not paint is taught as "
                                  "background. Unless you painted every object, draw rectangles around "
                                  "what you painted (a Shapes layer) and choose it as the region.")
        self.region_hint.setStyleSheet("color: #e0a030;")
        self.model_combo = PickerComboBox(self._fill_models)
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
        self.batch_spin.setValue(FINETUNE["batch_size"])  # the CLI's default for --base (adaptation.py)
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
        self.precision_combo.addItems(["auto", "fp32", "bf16", "fp16"])
        self.precision_combo.setCurrentText(FINETUNE["precision"])  # bf16 where fast (runtime.py)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)

        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop after the current step, validate once more and keep the best "
                                    "weights so far.")
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
        form.addRow("channels", self.channel_row)
        self.channel_row.form_label = form.labelForField(self.channel_row)
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

        layout = scrolling_body(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addLayout(run_buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.table)
        layout.addLayout(result_buttons)
        self.corrections = self._correction_panel()
        layout.addWidget(self.corrections)
        layout.addStretch()

        self._fill_devices()
        self._fill_models()
        self._refresh_layers()
        self.region_combo.currentIndexChanged.connect(self._show_region_hint)
        self.annotation_combo.currentIndexChanged.connect(self._show_region_hint)
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        self._on_image_chosen()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            self._connect(ev, self._refresh_layers)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.train_button.clicked.connect(lambda *_: self.train())  # not clicked(bool) as a region
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
        if self.session.last_used is not None:
            names.append(LAST_USED)
        names += [*self._loaded, NEW_MODEL]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems([*names, LOAD_FILE])
        describe_builtin_models(self.model_combo)
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

    def _on_image_chosen(self, *_: Any) -> None:
        self.channel_row.set_layer(self._layer(self.image_combo))

    def _show_region_hint(self, *_: Any) -> None:
        whole = self.region_combo.currentText() == WHOLE_IMAGE
        instances = ANNOTATIONS.get(self.annotation_combo.currentText()) == "instances"
        self.region_hint.setVisible(whole and instances)

    def _set_running(self, running: bool) -> None:
        if not running:
            self._show_region_hint()
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running and self.job.kind is Task.TRAIN and not self._stop_asked)
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

    def _channel_choice(self, image_layer) -> layerview.ChannelChoice:
        """The channel pickers' choice; while they still ask whether the first axis of an
        (N, Y, X) image holds channels or planes, the chosen labels answer (labels of the
        image's shape: planes; of one plane's: channels), and the pickers show it."""
        picker = self.channel_row
        if picker.layer is not image_layer:
            picker.set_layer(image_layer)
        labels_layer = self._layer(self.labels_combo)
        if picker.axis_combo.currentData() == layerview.CHOOSE and labels_layer is not None:
            shape = tuple(layer_image_and_axes(image_layer)[0].shape)
            labels_shape = tuple(full_resolution(labels_layer).shape)
            answer = {shape: None, shape[1:]: 0}.get(labels_shape, layerview.CHOOSE)
            picker.axis_combo.setCurrentIndex(picker.axis_combo.findData(answer))
        return picker.choice(image_layer)

    def training_plane(self, image_layer, n_model_channels: int) -> TrainingPlane:
        """The 2D plane of ``image_layer`` to train on or preview (the one on display for
        stacks), read with the same channel rule as Segment (:mod:`~napari_tiled_unet.imageview`).

        Raises:
            ValueError: a channel choice is missing or does not fit the model (one sentence).
        """
        return layerview.training_plane(image_layer, self._channel_choice(image_layer), n_model_channels,
                                        self.viewer.dims.point)

    @staticmethod
    def _labels_array(labels_layer, plane: TrainingPlane) -> np.ndarray:
        """The painted labels of ``plane`` (a copy: training never touches the user's layer)."""
        return np.array(layerview.labels_plane(labels_layer, plane), copy=True)

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

    def _new_model(self, annotation: str, labels: np.ndarray, n_channels: int):
        """A new model for the annotation: semantic with the typed class names for scribbles."""
        from ..training.loop import new_bundle_for_annotation

        task = "semantic" if annotation == "scribbles" else "instances"
        return new_bundle_for_annotation(annotation, [labels], self.class_names(), n_channels=n_channels,
                                         base_channels=16, depth=4, seed=self.seed_spin.value(),
                                         name=f"new-{task}-model")

    def _new_model_channels(self, image_layer) -> int:
        """Input channels of a new model: one when one channel (or RGB's luminance) is chosen,
        else every channel of the image."""
        choice = self._channel_choice(image_layer)
        if choice.channel is not None or choice.axes is None or "C" not in choice.axes:
            return 1
        data, _ = layer_image_and_axes(image_layer)
        rgb = getattr(image_layer, "rgb", False)
        return 1 if rgb else int(data.shape[choice.axes.index("C")])

    def _base_model(self):
        from ..model.bundle import load_model
        from ..training.loop import check_class_names

        name = self.model_combo.currentText()
        if name == LAST_USED:
            bundle = self.session.last_used
            if bundle is None:
                raise ValueError("No model has been used for segmenting yet; choose another base model.")
        elif not name or name == LOAD_FILE:
            raise ValueError("Choose a base model first: a built-in one, a model file, or a new model.")
        else:
            bundle = load_model(self._loaded.get(name, name))
        check_class_names(bundle, self.class_names())
        return bundle

    def make_trainer(self, region_override: list | None = None, val_fraction: float | None = None):
        """A :class:`~napari_tiled_unet.training.loop.Trainer` for the current choices
        (``region_override``: rectangles that count instead of the region layer's;
        ``val_fraction``: instead of the chosen one).

        Raises:
            ValueError: bad input, with one sentence that says what to do.
        """
        from ..training.adaptation import short_run_options
        from ..training.loop import Trainer

        image_layer, labels_layer = self._layer(self.image_combo), self._layer(self.labels_combo)
        if image_layer is None or labels_layer is None:
            raise ValueError("Choose an image layer and a labels layer painted on it (Layers > New Labels).")
        annotation = ANNOTATIONS[self.annotation_combo.currentText()]
        new = self.model_combo.currentText() == NEW_MODEL
        base = None if new else self._base_model()
        n_channels = self._new_model_channels(image_layer) if new else base.n_channels
        plane = self.training_plane(image_layer, n_channels)
        labels = self._labels_array(labels_layer, plane)
        region = region_override if region_override is not None else self._region(image_layer, plane)
        budget = self.budget_spin.value()
        minutes = self.budget_unit.currentText() == "minutes"
        model = self._new_model(annotation, labels, n_channels) if new else base
        scale = None if new else self._training_scale(labels_layer, base)
        # validation and early stopping as the CLI does it (training/adaptation.py); the rest is on show
        short_run = {k: v for k, v in short_run_options(base).items()
                     if k in ("val_every", "early_stopping_patience")}
        return Trainer(
            model, [np.asarray(plane.image)], [labels],
            annotation=annotation,
            regions=[region], channel_axis=plane.channel_axis, names=[image_layer.name],
            epochs=None if minutes else budget, minutes=budget if minutes else None,
            steps_per_epoch=self.steps_spin.value() or None, lr=self.lr_spin.value(),
            patch_size=self.patch_spin.value(), batch_size=self.batch_spin.value(),
            val_fraction=self.val_spin.value() if val_fraction is None else val_fraction,
            seed=self.seed_spin.value(),
            device=self.device_combo.currentText(), precision=self.precision_combo.currentText(),
            scale=scale, **short_run,
        )

    def _training_scale(self, labels_layer: Any, base: Any) -> float | None:
        """The factor the chosen base model segmented ``labels_layer``'s image at (its object
        diameter), when the layer is that model's result and the model records the range of
        sizes it was trained on (nuclei-v2): training then sees the objects at the sizes the
        model segments them at, and the fine-tuned model keeps using them. None (the image's
        own size) for any other layer or base model. A model of one trained diameter
        (nuclei-dsb2018) learns the user's sizes instead: at its own size, two minutes of
        fine-tuning on 63x images did better than at 0.3x (docs/models.md, "Fine-tuning at
        the scale segmentation used")."""
        from pathlib import Path

        from .. import objectsize

        origin = layer_origin(labels_layer)
        scale, made_by = origin.get("scale"), origin.get("model")
        if scale is None or not made_by or objectsize.model_range(base) is None:
            return None
        name = self.model_combo.currentText()
        source = str(self._loaded.get(name, name))
        same = source == made_by or (Path(source).is_file() and Path(made_by).is_file()
                                     and Path(source).resolve() == Path(made_by).resolve())
        return float(scale) if same else None

    # -- the correction loop (corrections_panel.py) ----------------------------------------------

    def _correction_panel(self):
        from .corrections_panel import CorrectionPanel

        return CorrectionPanel(
            self.viewer, image_layer=lambda: self._layer(self.image_combo),
            labels_layer=lambda: self._layer(self.labels_combo), base_model=self._live_base_model,
            annotation=lambda: ANNOTATIONS[self.annotation_combo.currentText()],
            learn=self.learn_from_corrections, on_result=self._on_live_result, notify=self._notify_error,
            settings=lambda: {"lr": self.lr_spin.value(), "patch_size": self.patch_spin.value(),
                              "batch_size": self.batch_spin.value(),
                              "precision": self.precision_combo.currentText(),
                              "scale": self._live_scale()},
            visible_box=self._visible_box_now, plane=self.training_plane)

    def _visible_box_now(self) -> tuple[int, int, int, int]:
        """The chosen 2D image's pixels on display (live training's preview window)."""
        from types import SimpleNamespace

        layer = self._layer(self.image_combo)
        shape = layer.data.shape[-3:-1] if getattr(layer, "rgb", False) else layer.data.shape[-2:]
        return self.visible_box(layer, SimpleNamespace(shape=tuple(shape)))

    def learn_from_corrections(self, layer: Any, boxes: list, description: str) -> None:
        """Train on ``layer`` (a corrected result layer), counting only ``boxes`` (the edits)."""
        combo = self.labels_combo
        index = next((i for i in range(combo.count()) if combo.itemData(i) is layer), -1)
        if index < 0:
            self._notify_error(f"{layer.name} is not in the layer list any more; segment again.")
            return
        self.labels_combo.setCurrentIndex(index)
        self.annotation_combo.setCurrentText(next(k for k, v in ANNOTATIONS.items() if v == "instances"))
        self._choose_model_that_made(layer)
        # A strip held out of one or two corrected areas holds the model's own untouched output, on
        # which the starting weights score perfectly: they would always be kept and the corrections
        # lost. With few areas nothing is held out and the last weights are the result.
        few = len(boxes) < CORRECTION_AREAS_TO_HOLD_OUT
        note = (f"{len(boxes)} corrected area(s) are too few to hold some out for validation, so the "
                "last weights are the result") if few else None
        self.train(region_override=[tuple(b) for b in boxes], val_fraction=0.0 if few else None,
                   selection_note=note)
        if self.running:
            data = self.trainer.data
            at = f"{_at_scale(self.trainer)} (the scale it segmented the image at)" if data.resizes else ""
            self.status.setText(f"Learning from your corrections ({description}), starting from "
                                f"{self.model_combo.currentText()}{at} …")
            self.region_hint.setVisible(False)  # the edits are the region, not the whole image

    def _live_base_model(self):
        """The base model of live training: the one that wrote the labels layer painted on, when
        it is a result of the plugin (see :meth:`_choose_model_that_made`), else the picker's."""
        layer = self._layer(self.labels_combo)
        if layer is not None:
            self._choose_model_that_made(layer)
        return self._base_model()

    def _live_scale(self) -> float | None:
        """The scale live training trains at: the one the base model segmented the labels
        layer's image at, as for Learn from my corrections (:meth:`_training_scale`)."""
        layer = self._layer(self.labels_combo)
        return None if layer is None else self._training_scale(layer, self._base_model())

    def _choose_model_that_made(self, layer: Any) -> None:
        """Make the model that wrote ``layer`` the base model, when the layer says which one
        (a built-in name, or a model file that still exists): the corrections are of its output."""
        from pathlib import Path

        from ..model import zoo

        source = layer_origin(layer).get("model")
        if not source:
            return
        if source in zoo.available():
            self._fill_models()
            self.model_combo.setCurrentText(source)
        elif Path(source).is_file():
            self.add_model_file(source)

    def _on_live_result(self, bundle: Any, message: str) -> None:
        self.bundle = bundle
        self.status.setText(message)
        self._set_running(False)

    # -- actions --------------------------------------------------------------------------------

    def train(self, region_override: list | None = None, val_fraction: float | None = None,
              selection_note: str | None = None) -> None:
        """Check the input and start training in a worker thread; bad input is refused at once.

        Args:
            region_override: rectangles that count instead of the region layer's (Learn from my
                corrections: the region of the edits).
            val_fraction: instead of the one chosen under Advanced.
            selection_note: shown at the end instead of the trainer's sentence on which weights
                are returned.
        """
        if self.running or (self.corrections.running if hasattr(self, "corrections") else False):
            return
        try:
            trainer = self.make_trainer(region_override, val_fraction)
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
        if (self._layer(self.region_combo) is None and trainer.annotation == "instances"
                and not region_override):
            from napari.utils.notifications import show_warning

            show_warning("No region chosen: every pixel you did not paint counts as background. If you "
                         "painted only some objects, draw rectangles around them and use them as the region.")
        self._stop_asked = False
        self._selection_note = selection_note
        self._start(Task.TRAIN, trainer.iter, self._on_trained)

    def _start(self, kind: Task, make_generator, on_result) -> None:
        self._failed = False
        self.job = EngineJob(make_generator, on_event=self._on_event, on_result=on_result,
                             on_error=self._on_error, on_done=self._on_done, kind=kind)
        self.job.owner_alive = self._is_alive
        self._set_running(True)
        self._reveal(self.stop_button, self.status)  # started from a button further down, maybe
        self.job.start()

    def stop(self) -> None:
        """Ask the trainer to stop after the current step (:meth:`Trainer.stop`): it validates
        once more and returns the best weights so far, which become the result."""
        if self.running and self.job.kind is Task.TRAIN and not self._stop_asked:
            self._stop_asked = True
            self.trainer.stop()
            self.status.setText("Stopping after this step (one last validation) …")
            self._set_running(True)  # Stop is pressed once

    def _on_event(self, event: Any) -> None:
        from ..events import Progress, TrainStep, WarningEvent

        if isinstance(event, TrainStep):
            self._on_step(event)
        elif isinstance(event, Progress) and self.job.kind is Task.PREVIEW:
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(event.done)
        elif isinstance(event, WarningEvent):
            show_engine_message(event)

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
        if self._stop_asked:
            loss = f"stopping, last validation loss {ev.val_loss:.3f}" if ev.val_loss is not None \
                else f"{loss}; stopping after this step"
        remaining = "" if self._stop_asked else f", {fmt_seconds(left)} left"
        self.status.setText(f"{steps} (epoch {ev.epoch:.1f}){_at_scale(trainer)}, {loss}, "
                            f"{fmt_seconds(ev.elapsed)} elapsed{remaining}")
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
            log.error("The %s job failed", self.job.kind, exc_info=exc)
        self._notify_error(str(exc))

    def _on_done(self) -> None:
        job = self.job
        self.progress.setRange(0, 1)
        self.progress.setValue(0 if job.cancelled or self._failed else 1)  # no "100 %" beside an error
        if job.kind is Task.TRAIN:
            self._finish_training(job)
        elif job.kind is Task.EVALUATE:
            self._show_table()
        elif job.kind is Task.PREVIEW and job.cancelled:
            self.status.setText("Preview cancelled.")
        self._set_running(self.running)  # _finish_training may have started the evaluation
        self._reveal(self.status)

    def _finish_training(self, job: EngineJob) -> None:
        trainer = self.trainer
        self._refresh_plot()
        if self.bundle is None and (job.cancelled or (self._failed and trainer.step > 0)):
            self.bundle = trainer.best_bundle()  # stopped (or failed late): the best weights so far
        if self.bundle is None:
            return
        self.bundle.metadata.pop("_source", None)  # the Segment widget's cache key, not model metadata
        best = self._selection_note or _words(getattr(trainer, "selection", None)) or (
            "the starting weights were kept" if trainer.best_step == 0 else
            f"best at step {trainer.best_step}" if trainer.best_step is not None else "last weights kept")
        how = "Failed" if self._failed else "Stopped" if job.cancelled or self._stop_asked else "Done"
        reason = _words(trainer.stop_reason)
        if not self._failed and reason and reason not in QUIET_STOP_REASONS:
            how = f"{how} ({reason})"
        self.status.setText(f"{how} after {trainer.step} steps in {fmt_seconds(trainer.elapsed)}"
                            f"{_at_scale(trainer)}: {best}. Save the model or preview it on the view.")
        if trainer.best_step is None:
            return
        self.after = {k: float(v) for k, v in trainer.best_metrics.items()}
        self.after["validation loss"] = float(trainer.best_val)
        if trainer.annotation == "scribbles" and trainer.val_windows:
            bundles = [trainer.base, self.bundle]
            self._start(Task.EVALUATE, lambda: trainer.class_iou_iter(bundles), self._on_evaluated)
        else:
            self._show_table()

    def _on_evaluated(self, figures: list[dict[str, float]]) -> None:
        before, after = figures
        self.before.update(before)
        self.after.update(after)


def _at_scale(trainer: Any) -> str:
    """" at 0.65x the image's size" while a trainer trains on resized images, else ""."""
    from ..objectsize import scale_phrase

    return scale_phrase(getattr(getattr(trainer, "data", None), "scale", None))


def _words(value: Any) -> str:
    """A trainer's reason (a string or an enum member) as words for the status line."""
    if value is None:
        return ""
    value = getattr(value, "value", value)
    return str(value).replace("_", " ")


#: npe2 widget factory: ``make_finetune_widget(napari_viewer)``. It is the class itself because
#: napari (0.9) passes the viewer only to callables whose ``__init__`` takes ``napari_viewer``;
#: a plain factory function would be called with no argument from the Plugins menu.
make_finetune_widget = FineTuneWidget


__all__ = ["FineTuneWidget", "LossPlot", "make_finetune_widget"]
