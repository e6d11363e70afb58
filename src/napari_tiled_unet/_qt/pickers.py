"""What both dock widgets share: pickers of layers, models, devices and channels, the
widget's lifetime (its connections to the viewer released when it goes), and how the
engine's messages and errors reach the user."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QWidget

from . import layerview

log = logging.getLogger(__name__)

LOAD_FILE = "Load file…"
MODEL_FILES = "Models (*.safetensors *.pth *.pt *.zip rdf.yaml *.bioimageio.yaml);;All files (*)"


def show_engine_message(event: Any) -> None:
    """An engine :class:`~napari_tiled_unet.events.WarningEvent` as a napari notification
    (``kind="info"`` as information, anything else as a warning)."""
    from napari.utils.notifications import show_info, show_warning

    (show_info if getattr(event, "kind", "warning") == "info" else show_warning)(event.message)


def describe_builtin_models(combo: QComboBox) -> None:
    """Give each built-in model in ``combo`` its description as the entry's tooltip, so the
    user can tell which one suits their images before choosing."""
    from qtpy.QtCore import Qt

    from ..model import zoo

    for i in range(combo.count()):
        entry = zoo.BUILTIN.get(combo.itemText(i))
        if entry is not None:
            combo.setItemData(i, entry[1], Qt.ItemDataRole.ToolTipRole)


class PickerComboBox(QComboBox):
    """A combo box that refreshes its entries just before it opens."""

    def __init__(self, refresh: Callable[[], None]) -> None:
        super().__init__()
        self._refresh = refresh

    def showPopup(self) -> None:
        self._refresh()
        super().showPopup()


class ChannelPicker(QWidget):
    """"channels: axis [..] nuclei [..]": which axis of the chosen image holds channels and
    which channel holds the nuclei (:mod:`~napari_tiled_unet._qt.layerview` decides what to
    offer). Hidden, with its form label, for images without channels."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = None
        self.needed = False
        self.axis_combo = QComboBox()
        self.axis_combo.setToolTip("Which axis of the image holds colour channels, if any.")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("The channel that holds the nuclei (or the luminance of RGB).")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("axis"))
        row.addWidget(self.axis_combo)
        row.addWidget(QLabel("nuclei"))
        row.addWidget(self.channel_combo)
        self.axis_combo.currentIndexChanged.connect(self._fill_channels)
        self.form_label: QWidget | None = None

    def set_layer(self, layer) -> None:
        """Offer the choices ``layer`` needs (none for a plain image: the row is hidden)."""
        self.layer = layer
        options = layerview.channel_axis_options(layer)
        combo = self.axis_combo
        combo.blockSignals(True)
        combo.clear()
        for text, value in options.items:
            combo.addItem(text, value)
        if options.items:
            combo.setCurrentIndex(options.current)
        combo.blockSignals(False)
        self.needed = options.needed
        self.setVisible(self.needed)
        if self.form_label is not None:
            self.form_label.setVisible(self.needed)
        self._fill_channels()

    def _fill_channels(self, *_: Any) -> None:
        items, current = layerview.channel_options(self.layer, self.axis_combo.currentData())
        combo = self.channel_combo
        combo.clear()
        combo.setEnabled(bool(items))
        for text, value in items:
            combo.addItem(text, value)
        if items:
            combo.setCurrentIndex(current)

    def choice(self, layer) -> layerview.ChannelChoice:
        """The user's description of ``layer`` (raises ValueError while a choice is missing)."""
        if layer is not self.layer:
            self.set_layer(layer)
        return layerview.channel_choice(layer, self.needed, self.axis_combo.currentData(),
                                        self.channel_combo.currentData())


class DockControls:
    """Shared by both dock widgets: the device picker, the model picker's files, layer
    pickers that hold the layer objects (not their names), errors shown as napari
    notifications, and the widget's lifetime. Expects ``viewer``, ``device_combo``,
    ``model_combo``, ``status``, a ``_loaded`` dict (display name -> file) and a
    ``_fill_models`` method.

    Every connection to the viewer or its layers goes through :meth:`_connect` and is
    released (:meth:`release`) when the widget is closed, removed from its dock, or deleted
    with the viewer; a run still going is cancelled then.
    """

    # -- lifetime ----------------------------------------------------------------------

    def _track_lifetime(self) -> None:
        """Remember when Qt deletes this widget (the viewer was closed): a run that ends
        afterwards must not touch it."""
        alive = self._alive = [True]
        self._connections: list[tuple[Any, Callable[..., Any]]] = []
        self._docked = False

        def gone(*_: Any) -> None:
            alive[0] = False
            self.release()

        self.destroyed.connect(gone)

    def _is_alive(self) -> bool:
        return self._alive[0]

    def _connect(self, emitter: Any, callback: Callable[..., Any]) -> None:
        """``emitter.connect(callback)``, released with the widget."""
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def release(self) -> None:
        """Disconnect from the viewer and its layers and stop a running job (idempotent)."""
        state = vars(self)  # plain Python attributes: Qt's may be gone with the widget
        for job in (state.get("job"), state.get("_side_job")):
            if job is not None and not job.finished:
                job.cancel()
        connections, self._connections = self._connections, []
        for emitter, callback in connections:
            # an emitter whose owner is gone may have dropped the callback already
            with contextlib.suppress(ValueError, RuntimeError, KeyError):
                emitter.disconnect(callback)

    def closeEvent(self, event: Any) -> None:
        self.release()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        """Once docked, leaving the dock (napari's remove_dock_widget) releases the widget."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.release()
        elif event.type() == QEvent.Type.Show and self._docked and not getattr(self, "_balanced", False):
            # once docked and shown: share the dock column's height (after napari placed the dock)
            from .layout import balance_docks

            self._balanced = True
            QTimer.singleShot(0, lambda: self._is_alive() and balance_docks(self))
        return super().event(event)

    def _reveal(self, *widgets: Any) -> None:
        """Scroll the controls (``scrolling_body``) so that ``widgets`` are in view, the last
        one above all: in a short dock the progress and the status line of a run started by a
        button far below them would otherwise stay out of sight."""
        from qtpy.QtWidgets import QScrollArea

        area = self.findChild(QScrollArea)
        if area is None:
            return

        def reveal() -> None:  # on the next turn, once a status line that just grew is laid out
            if self._is_alive():
                for widget in widgets:
                    area.ensureWidgetVisible(widget, 0, 4)

        QTimer.singleShot(0, reveal)

    # -- pickers -----------------------------------------------------------------------

    def _fill_devices(self) -> None:
        from ..runtime import available_devices

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
        path, _ = QFileDialog.getOpenFileName(self, "Load a U-Net model", "", MODEL_FILES)
        if path:
            self.add_model_file(path)
        else:
            self.model_combo.setCurrentIndex(0)

    # -- messages ----------------------------------------------------------------------

    def _notify_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(message)
        show_error(message)


__all__ = ["LOAD_FILE", "ChannelPicker", "DockControls", "PickerComboBox", "show_engine_message"]
