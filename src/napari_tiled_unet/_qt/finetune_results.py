"""The Fine-tune widget's results panel: Save model…, Export for bioimage.io… and Preview on
view (the fine-tuned model on the part of the image on screen, into the plugin's own layer).

A mixin of :class:`~napari_tiled_unet._qt.finetune_widget.FineTuneWidget`; it expects
``viewer``, ``bundle``, ``status``, ``progress``, ``running``, the pickers and ``_start``.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog

from .layerview import TrainingPlane, camera_of, plane_placement, plane_words

log = logging.getLogger(__name__)


class Task(enum.Enum):
    """What a Fine-tune job does."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    PREVIEW = "preview"
    EXPORT = "export"


class ResultActions:
    """Save, export and preview the fine-tuned model."""

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

    def _ask_path(self, caption: str, suffix: str, filters: str, then) -> None:
        """Ask where to write the fine-tuned model, then ``then(path)`` (nothing when cancelled)."""
        if self.bundle is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, caption, f"{self.bundle.name}{suffix}", filters)
        if path:
            then(path)

    def _ask_save(self) -> None:
        self._ask_path("Save the fine-tuned model", ".safetensors", "Models (*.safetensors)", self.save_model)

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
        self._start(Task.EXPORT, export, self._on_exported)
        return path

    def _on_exported(self, written: Path) -> None:
        from napari.utils.notifications import show_info

        self.status.setText(f"Exported for bioimage.io to {written}.")
        show_info(f"bioimage.io package written to {written}.")

    def _ask_export(self) -> None:
        self._ask_path("Export for bioimage.io", ".zip", "bioimage.io packages (*.zip)",
                       self.export_bioimageio)

    def visible_box(self, image_layer, plane: TrainingPlane) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of the image plane's pixels on display (the whole plane when the
        view is 3D, in grid mode, transposed, or does not overlap the image)."""
        h, w = plane.shape
        whole = (0, 0, int(h), int(w))
        viewer = self.viewer
        camera = camera_of(viewer)
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
        from .. import objectsize
        from ..normalization import compute_stats
        from ..segmentation import segment_iter

        if self.bundle is None or self.running:
            return
        layer = self._layer(self.image_combo)
        if layer is None:
            self._notify_error("Choose the image to preview on.")
            return
        try:
            plane = self.training_plane(layer, self.bundle.n_channels)
            y0, x0, y1, x1 = self.visible_box(layer, plane)
        except ValueError as exc:  # ImageError and the channel pickers: one sentence
            self._notify_error(str(exc))
            return
        image, axes, bundle = plane.image, plane.axes, self.bundle
        crop = image[tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None)
                           for a in axes)]
        device, precision = self.device_combo.currentText(), self.precision_combo.currentText()

        def work():
            # normalize with the whole plane's statistics, as in training (never the crop's own)
            stats = compute_stats(image, bundle.normalization, channel_axis=axes.index("C") if "C" in axes
                                  else None)
            yield None
            # at the scale the model was fine-tuned at (auto), as the Segment widget will use it
            diameter = "auto" if objectsize.prefers_auto(bundle) else None
            return (yield from segment_iter(bundle, crop, axes=axes, stats=stats, device=device,
                                            precision=precision, diameter=diameter))

        # on a stack, the preview lies on the plane it shows (not on every plane)
        on = f", {plane_words(plane.index)}" if plane.index else ""
        self._preview_place = (f"{layer.name} preview (fine-tuned{on})",
                               *plane_placement(layer, plane.index, y0, x0))
        self.status.setText(f"Previewing the fine-tuned model on {layer.name} ({y1 - y0}x{x1 - x0} px) …")
        self.progress.setRange(0, 0)
        self._start(Task.PREVIEW, work, self._on_preview)

    def _on_preview(self, result) -> None:
        title, k, scale, translate = self._preview_place
        kwargs = {"scale": scale, "translate": translate}
        labels = result.labels.reshape((1,) * k + result.labels.shape)
        shown = self._preview is not None and self._preview in self.viewer.layers
        if shown and self._preview.ndim == labels.ndim:
            self._preview.data = labels
            self._preview.name = title
            self._preview.scale, self._preview.translate = kwargs["scale"], kwargs["translate"]
        else:
            if shown:
                self.viewer.layers.remove(self._preview)  # a preview of a plane after one of a 2D image
            self._preview = self.viewer.add_labels(labels, name=title, **kwargs)
            self._refresh_layers()
        # the class names on hover (napari shows a Labels layer's features in the status bar)
        self._preview.features = {"class": result.class_names} if result.task == "semantic" else {}
        self.status.setText(f"Preview: {result.n_objects} objects." if result.task == "instances"
                            else "Preview done.")
