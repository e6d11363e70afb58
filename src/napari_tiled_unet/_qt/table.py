"""Per-object measurements in napari: the "Objects" table dock, and the Segment widget's
"Export CSV…" and "Save labels…" buttons (:class:`MeasureControls`).

The measurements themselves are :mod:`napari_tiled_unet.measure` (Qt-free). They live in the
result Labels layer's ``features`` (napari shows them beside the label under the cursor), with
the label in napari's ``index`` column; the table shows the active result layer's features.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .layerview import camera_of, labels_data, layer_image_and_axes, layer_scale_and_unit
from .workers import EngineJob

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

CSV_FILTER = "CSV table (*.csv)"
LABELS_FILTER = "TIFF (*.tif *.tiff);;Zarr folder (*.zarr)"


def features_of(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A measurement table as Labels ``features``: napari finds each label's row by ``index``."""
    return {"index": table["label"], **{k: v for k, v in table.items() if k != "label"}}


def table_of(layer) -> dict[str, np.ndarray]:
    """A layer's ``features`` as a measurement table (``index`` named ``label`` again)."""
    df = layer.features
    return {("label" if c == "index" else str(c)): df[c].to_numpy() for c in df.columns}


class _TableModel(QAbstractTableModel):
    """Columns of numbers as a Qt model (read-only; rows are made only when shown)."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.names = list(table)
        self.columns = [np.asarray(table[k]) for k in self.names]
        self.n = len(self.columns[0]) if self.columns else 0

    def rowCount(self, parent=None) -> int:
        return 0 if parent is not None and parent.isValid() else self.n

    def columnCount(self, parent=None) -> int:
        return 0 if parent is not None and parent.isValid() else len(self.names)

    def sort(self, column: int, order=Qt.SortOrder.AscendingOrder) -> None:
        """Reorder the rows by ``column`` with numpy: a proxy model's sort asks ``data`` for
        every comparison in Python (2.4 s of the main thread for 30,000 objects)."""
        if not self.columns:
            return
        self.layoutAboutToBeChanged.emit()
        order_ = np.argsort(self.columns[column], kind="stable")
        if order == Qt.SortOrder.DescendingOrder:
            order_ = order_[::-1]
        self.columns = [c[order_] for c in self.columns]
        self.layoutChanged.emit()

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        value = self.columns[index.column()][index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return f"{value:.4g}" if isinstance(value, np.floating) else str(value)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.names[section]
        return None


class ObjectsTable(QWidget):
    """The "Objects" dock: the measurements of one result layer, sortable; clicking a row
    selects that label and centres the view on the object."""

    def __init__(self, viewer: napari.Viewer, on_measure_again) -> None:
        super().__init__()
        self.viewer = viewer
        self.layer = None
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.view = QTableView()
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.verticalHeader().setVisible(False)
        self.view.setMinimumHeight(120)  # a few rows; the control docks shrink as far
        self.model = self.proxy = None  # the rows as shown (the model sorts itself)
        self.view.clicked.connect(self._go_to_row)
        self.again_button = QPushButton("Measure again")
        self.again_button.setToolTip("Measure the layer's current labels (after your corrections).")
        self.again_button.clicked.connect(lambda: self.layer is not None and on_measure_again(self.layer))
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.view)
        layout.addWidget(self.again_button)

    def show_layer(self, layer, stale: bool = False) -> None:
        self.layer = layer
        table = table_of(layer)
        self.model = self.proxy = _TableModel(table)
        self.view.setModel(self.model)
        self.view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        note = " (labels edited since: press Measure again)" if stale else ""
        self.title.setText(f"{layer.name}: {self.model.n} objects{note}")

    def _go_to_row(self, index) -> None:
        if self.layer is None or self.layer not in self.viewer.layers:
            return
        row = index.row()
        col = dict(zip(self.model.names, self.model.columns))
        self.layer.selected_label = int(col["label"][row])
        point = [col["centroid_y_px"][row], col["centroid_x_px"][row]]
        if "plane" in col:
            point.insert(0, col["plane"][row])
        world = np.asarray(self.layer.data_to_world(point))
        if "plane" in col:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, world[0])
        camera_of(self.viewer).center = tuple(world[-2:])


class MeasureControls:
    """The Segment widget's measurement part: measuring in the worker after each run, the
    layer features, the table dock, "Export CSV…" and "Save labels…".

    Expects ``viewer``, ``status``, ``_connect`` and ``_notify_error`` (see
    :class:`~napari_tiled_unet._qt.pickers.DockControls`).
    """

    def _init_measurements(self, layout) -> None:
        self._results: list[Any] = []  # result Labels layers, newest last
        self._measured: dict[int, dict[str, Any]] = {}  # id(layer) -> image, stale
        self._measure = None  # measure(result) generator of the last run, for Re-segment
        self._measure_image = None
        self._measure_scale: dict[str, Any] = {}
        self._table: ObjectsTable | None = None
        self._side_job: EngineJob | None = None
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setToolTip("Save the objects' measurements as a CSV table.")
        self.save_labels_button = QPushButton("Save labels…")
        self.save_labels_button.setToolTip("Save the result labels (with your corrections) as .tif or .zarr; "
                                           "choosing an OME-Zarr image adds them to its labels/.")
        for b in (self.export_button, self.save_labels_button):
            b.setEnabled(False)
        self.export_button.clicked.connect(self.export_csv)
        self.save_labels_button.clicked.connect(self.save_labels)
        row = QHBoxLayout()
        row.addWidget(self.export_button)
        row.addWidget(self.save_labels_button)
        layout.addLayout(row)
        self._connect(self.viewer.layers.selection.events.active, self._on_active_layer)

    # -- measuring ---------------------------------------------------------------------

    def _measurer(self, image_layer):
        """measure(result): a generator for the worker that measures an instance result
        against ``image_layer``'s intensities and pixel size (kept for Re-segment)."""
        from ..measure import measure_objects_iter

        image, _ = layer_image_and_axes(image_layer)
        scale = self._measure_scale = layer_scale_and_unit(image_layer)

        def measure(result):
            if result.task == "instances":
                kwargs = {**scale, "scale": scale["scale"][-len(result.labels.shape):]}
                result.objects = yield from measure_objects_iter(result.labels, image, **kwargs)
            return result

        self._measure, self._measure_image = measure, image
        return measure

    def _show_objects(self, layer, result) -> None:
        """Called with each new result layer: its features, the table, the buttons."""
        self._results = [lyr for lyr in self._results if lyr in self.viewer.layers]  # drop removed ones
        alive = {id(lyr) for lyr in self._results}
        self._measured = {i: m for i, m in self._measured.items() if i in alive}
        if layer not in self._results:
            self._results.append(layer)
            self._connect(layer.events.paint, partial(self._mark_stale, layer))
            self._connect(layer.events.data, partial(self._mark_stale, layer))
        self.save_labels_button.setEnabled(True)
        if getattr(result, "objects", None) is None:
            self._measured.pop(id(layer), None)
            return
        layer.features = features_of(result.objects)
        self._measured[id(layer)] = {"image": self._measure_image, "unit": self._measure_scale["unit"],
                                     "stale": False}
        self.export_button.setEnabled(True)
        self._show_table(layer)

    def _mark_stale(self, layer, *_: Any) -> None:
        info = self._measured.get(id(layer))
        if info is not None and not info["stale"]:
            info["stale"] = True
            if self._table is not None and self._table.layer is layer:
                self._table.show_layer(layer, stale=True)

    def _show_table(self, layer) -> None:
        if self._table is None:
            self._table = ObjectsTable(self.viewer, self.measure_again)
            self._table.destroyed.connect(lambda *_: setattr(self, "_table", None))
        if self._table.parent() is None:  # new, or its dock was closed (napari keeps the widget)
            self.viewer.window.add_dock_widget(self._table, name="Objects", area="bottom")
        self._table.show_layer(layer, stale=self._measured[id(layer)]["stale"])

    def _on_active_layer(self, event) -> None:
        layer = event.value
        docked = self._table is not None and self._table.parent() is not None
        if docked and layer is not None and id(layer) in self._measured and layer in self._results:
            self._show_table(layer)  # the table follows the selected result (a closed dock stays closed)

    def _target(self):
        """The result layer the buttons act on: the selected one, else the newest."""
        alive = [lyr for lyr in self._results if lyr in self.viewer.layers]
        active = self.viewer.layers.selection.active
        return active if active in alive else (alive[-1] if alive else None)

    def measure_again(self, layer, then=None) -> None:
        """Measure the layer's current labels in a worker; then update features and table."""
        from ..measure import measure_objects_iter

        info = self._measured.get(id(layer))
        if info is None:
            return
        if self._side_job is not None and not self._side_job.finished:
            self._notify_error("Still measuring or saving; wait until it is done.")
            return
        labels, kwargs = labels_data(layer), layer_scale_and_unit(layer)
        kwargs["unit"] = kwargs["unit"] or info["unit"]  # the layer may not carry the image's units
        image = info["image"]
        info["stale"] = False  # edits from now on make it stale again

        def work():
            return (yield from measure_objects_iter(labels, image, **kwargs))

        def done(table):
            layer.features = features_of(table)
            if layer in self.viewer.layers:
                self._show_table(layer)
            self.status.setText(f"{len(table['label'])} objects measured.")
            if then is not None:
                then()

        def failed(exc):
            info["stale"] = True
            self._notify_error(str(exc))

        self.status.setText(f"Measuring the objects of {layer.name} …")
        self._start_side_job(work, done, failed)

    def _start_side_job(self, work, on_result, on_error=None) -> None:
        self._side_job = EngineJob(work, lambda ev: None, on_result,
                                   on_error or (lambda exc: self._notify_error(str(exc))), lambda: None)
        self._side_job.start()

    # -- the buttons -------------------------------------------------------------------

    def ask_save_path(self, caption: str, suggested: str, filters: str) -> str:
        """The file the user chooses in a save dialog (which asks before replacing a file); ''
        when cancelled."""
        path, _ = QFileDialog.getSaveFileName(self, caption, suggested, filters)
        return path

    def _chosen_path(self, caption: str, suggested: str, filters: str,
                     suffixes: tuple[str, ...]) -> Path | None:
        chosen = self.ask_save_path(caption, suggested, filters)
        if not chosen:
            return None
        path = Path(chosen)
        if path.suffix.lower() not in suffixes:
            path = path.with_name(path.name + suffixes[0])
            if path.exists():  # the dialog confirmed another name: never replace this one
                self._notify_error(f"{path.name} already exists; choose it in the dialog to replace it.")
                return None
        return path

    def export_csv(self) -> None:
        """Ask for a file and write the result layer's measurements to it (measuring the
        layer again first when its labels were edited since)."""
        from ..measure import write_csv

        layer = self._target()
        if layer is None or id(layer) not in self._measured:
            self._notify_error("Segment an image with an instance model first: there are no objects "
                               "to export.")
            return
        path = self._chosen_path("Export the objects as CSV", f"{layer.name} objects.csv", CSV_FILTER,
                                 (".csv",))
        if path is None:
            return

        def write():
            try:
                write_csv(table_of(layer), path, overwrite=True)  # the dialog asked before replacing
            except OSError as exc:
                self._notify_error(f"Could not write {path.name}: {exc}")
                return
            self.status.setText(f"{len(layer.features)} objects written to {path.name}.")

        if self._measured[id(layer)]["stale"]:
            self.measure_again(layer, then=write)
        else:
            write()

    def save_labels(self) -> None:
        """Ask for a file and save the result layer's labels (edits included) to it."""
        from ..io import save_labels

        layer = self._target()
        if layer is None:
            self._notify_error("Segment an image first: there are no labels to save.")
            return
        if self._side_job is not None and not self._side_job.finished:
            self._notify_error("Still measuring or saving; wait until it is done.")
            return
        path = self._chosen_path("Save the labels", f"{layer.name}.tif", LABELS_FILTER,
                                 (".tif", ".tiff", ".zarr"))
        if path is None:
            return
        labels = labels_data(layer)

        def work():
            yield from ()
            return save_labels(labels, path, name=layer.name)

        self.status.setText(f"Saving {layer.name} …")
        self._start_side_job(work, lambda p: self.status.setText(f"Labels saved to {Path(p).name}."))


__all__ = ["MeasureControls", "ObjectsTable", "features_of", "table_of"]
