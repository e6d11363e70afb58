"""The Fine-tune widget's correction loop: "Learn from my corrections" and live training.

- :func:`remember_written` keeps a copy of what the plugin wrote into a result layer (the
  Segment widget calls it), so the edits can be found later (:mod:`~napari_tiled_unet.corrections`).
- :class:`CorrectionPanel` is a box of controls that the Fine-tune widget adds to itself:
  **Learn from my corrections** hands the widget the corrected result layer and the region
  built from the edits (the widget trains with its usual settings); **Live training** trains
  in the background (:class:`~napari_tiled_unet.live.LiveTrainer`) while the user paints,
  refreshes a preview layer of the visible part of the image, and **Stop** keeps the best
  weights.

The panel knows the widget only through the callables it is given, so the widget's layout can
change without touching it.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..corrections import correction_region
from ..objectsize import scale_phrase
from .layerview import camera_of, labels_plane, plane_placement, plane_words

log = logging.getLogger(__name__)

#: largest result layer (pixels) whose written copy is kept for finding the edits
MAX_REMEMBERED = 64 * 1024 * 1024
#: seconds without a stroke after which the live preview refreshes at once
STROKE_PAUSE = 0.4

_WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def remember_written(layer: Any) -> bool:
    """Keep a copy of ``layer``'s data as the plugin wrote it (in-memory layers, 2D or stacks,
    up to :data:`MAX_REMEMBERED` pixels); True when kept."""
    data = layer.data
    if not isinstance(data, np.ndarray) or data.ndim < 2 or data.size > MAX_REMEMBERED:
        _WRITTEN.pop(layer, None)
        return False
    _WRITTEN[layer] = data.copy()
    return True


def written_of(layer: Any) -> np.ndarray | None:
    """What the plugin wrote into ``layer``, or None when it is not a result layer it remembers."""
    return _WRITTEN.get(layer)


def _not_remembered(layer: Any) -> str:
    """Why ``layer`` has no written copy to compare corrections against, in one sentence."""
    limit, data = MAX_REMEMBERED // (1024 * 1024), layer.data
    if isinstance(data, np.ndarray) and data.ndim > 2 and data.size > MAX_REMEMBERED:
        planes = int(np.prod(data.shape[:-2]))
        return (f"{layer.name} is a stack of {planes} planes, {data.size / 2**20:.0f} megapixels in all, "
                f"more than the {limit} megapixels of segmentation kept to compare your corrections "
                "against: segment fewer planes (a substack of the image) and correct that result.")
    return (f"{layer.name} is not an in-memory result of the Segment widget: segment the image (up to "
            f"{limit} megapixels) and correct that layer.")


class _Bridge(QObject):
    """Carries previews from the training thread to the main thread (a queued signal)."""

    preview = Signal(object)


class CorrectionPanel(QGroupBox):
    """Controls of the correction loop (see the module docstring).

    Args:
        viewer: the napari viewer.
        image_layer, labels_layer: callables returning the widget's chosen layers (or None).
        base_model: callable returning the chosen base :class:`~napari_tiled_unet.model.bundle.ModelBundle`
            (raises ValueError with a sentence when none can be had).
        annotation: callable returning ``"instances"`` or ``"scribbles"``.
        learn: ``learn(labels_layer, boxes, description)``: train on a corrected layer with
            the region ``boxes`` (the widget's own training).
        on_result: ``on_result(bundle, message)`` when live training ends (main thread).
        notify: ``notify(message)``: show one sentence to the user.
        settings: callable returning keyword arguments for the live trainer (lr, precision ...).
        visible_box: callable returning ``(y0, x0, y1, x1)``, the image pixels on display
            (None: the whole image).
    """

    def __init__(self, viewer: Any, *, image_layer: Callable[[], Any], labels_layer: Callable[[], Any],
                 base_model: Callable[[], Any], annotation: Callable[[], str],
                 learn: Callable[[Any, list, str], None], on_result: Callable[[Any, str], None],
                 notify: Callable[[str], None], settings: Callable[[], dict] | None = None,
                 visible_box: Callable[[], tuple[int, int, int, int]] | None = None,
                 plane: Callable[[Any, int], Any] | None = None) -> None:
        super().__init__("Correction loop")
        self.viewer = viewer
        self._image_layer, self._labels_layer = image_layer, labels_layer
        self._base_model, self._annotation = base_model, annotation
        self._learn, self._on_result, self._notify = learn, on_result, notify
        self._settings = settings or (lambda: {})
        self._visible_box = visible_box
        self._plane = plane  # (image layer, model channels) -> the plane to train on, as Train reads it
        self.live = None
        self._index: tuple[int, ...] = ()  # the stack plane live training runs on (() for a 2D image)
        self.preview_layer = None
        self.previews_shown = 0
        self._watched = None
        self._last_stroke = 0.0
        self._bridge = _Bridge()
        self._bridge.preview.connect(self._show_preview)
        self.learn_button = QPushButton("Learn from my corrections")
        self.learn_button.setToolTip(
            "Train on the result layer you corrected with the brush, eraser or fill: what you changed, "
            "with a margin around it, counts; untouched areas far from your edits do not.")
        self.learn_button.clicked.connect(self.learn_from_corrections)
        self.live_button = QPushButton("Start live training")
        self.live_button.setToolTip(
            "Train in the background while you paint: the preview layer shows the model's segmentation "
            "of the visible part every few seconds; new strokes join the training data at once.")
        self.live_button.clicked.connect(self.toggle_live)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.learn_button)
        row.addWidget(self.live_button)
        box = QVBoxLayout(self)
        box.addLayout(row)
        box.addWidget(self.status)
        # debounced work on the main thread: the annotation after strokes, the visible window
        self._stroke_timer = QTimer(self)
        self._stroke_timer.setSingleShot(True)
        self._stroke_timer.setInterval(int(STROKE_PAUSE * 1000))
        self._stroke_timer.timeout.connect(self._send_annotation)
        self._poll = QTimer(self)
        self._poll.setInterval(250)
        self._poll.timeout.connect(self._tick)

    # -- learn from corrections ---------------------------------------------------------------

    def corrected_layer(self) -> Any:
        """The chosen labels layer when the plugin wrote it, else the last edited result layer of
        the chosen image (None when there is none)."""
        chosen = self._labels_layer()
        if chosen is not None and written_of(chosen) is not None:
            return chosen
        image = self._image_layer()
        found = None
        for layer in self.viewer.layers:
            meta = (getattr(layer, "metadata", None) or {}).get("napari_tiled_unet", {})
            if written_of(layer) is not None and meta.get("role") == "labels" and (
                    image is None or meta.get("image") == image.name):
                found = layer if found is None or meta.get("edited") else found
        return found

    def _too_large_result(self) -> Any:
        """The chosen labels layer, when it is a result of the plugin too large to keep a copy of
        (:data:`MAX_REMEMBERED`), else None."""
        chosen = self._labels_layer()
        meta = (getattr(chosen, "metadata", None) or {}).get("napari_tiled_unet", {})
        data = getattr(chosen, "data", None)
        if meta.get("role") == "labels" and isinstance(data, np.ndarray) and data.size > MAX_REMEMBERED:
            return chosen
        return None

    def learn_from_corrections(self) -> None:
        """Hand the widget the corrected result layer and the region of the edits."""
        layer = self.corrected_layer()
        if layer is None:
            too_large = self._too_large_result()
            self._notify(_not_remembered(too_large) if too_large is not None else (
                "Segment the image first (Segment widget), correct its result layer with the brush, "
                "eraser or fill, then click Learn from my corrections."))
            return
        try:
            region = self._region(layer)
        except ValueError as exc:
            self._notify(str(exc))
            return
        index = self._displayed_plane(layer)
        on = f"{plane_words(index)}: " if index else ""
        self.status.setText(f"Learning from {layer.name}, {on}{region.describe()}.")
        self._learn(layer, region.boxes, on + region.describe())

    def _displayed_plane(self, layer: Any) -> tuple[int, ...]:
        """The indices of ``layer``'s stack axes on display (() for a 2D layer): the plane that
        Train reads (:func:`~.layerview.training_plane`)."""
        if layer.ndim <= 2:
            return ()
        pos = np.asarray(layer.world_to_data(self.viewer.dims.point))[:-2]
        return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(pos, layer.data.shape[:-2]))

    def _region(self, layer: Any):
        """The region of the edits on the plane on display (the whole layer when it is 2D)."""
        written, current = written_of(layer), layer.data
        if written is None or not isinstance(current, np.ndarray):
            # only in-memory result layers have a written copy (remember_written); a lazy layer's
            # data is never pulled into memory here
            raise ValueError(_not_remembered(layer))
        index = self._displayed_plane(layer)
        if index and np.array_equal(written[index], current[index]):
            changed = (written != current).reshape(*written.shape[:-2], -1).any(axis=-1)
            planes = ["/".join(map(str, p)) for p in zip(*np.nonzero(changed))]
            if planes:
                shown = ", ".join(planes[:5]) + (" …" if len(planes) > 5 else "")
                raise ValueError(f"Your corrections of {layer.name} are on plane {shown}, not on the plane "
                                 "on display; show one of them with the slider and click Learn from my "
                                 "corrections again.")
        return correction_region(written[index], current[index])

    # -- live training ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.live is not None and self._poll.isActive()

    def toggle_live(self) -> None:
        if self.running:
            self.stop_live()
        else:
            self.start_live()

    def start_live(self) -> None:
        """Start training in the background on the chosen image and labels layer."""
        from ..live import LiveTrainer, Preview

        image, labels = self._image_layer(), self._labels_layer()
        if image is None or labels is None:
            self._notify("Choose an image layer and a labels layer to paint on (Layers > New Labels).")
            return
        if getattr(image, "multiscale", False) or getattr(labels, "multiscale", False):
            self._notify("Live training works on in-memory images and labels; use Train for multiscale "
                         "images.")
            return
        if self._plane is None and (image.ndim != 2 or labels.ndim != 2):
            self._notify("Live training works on a single 2D image and a 2D labels layer here; use Train.")
            return
        try:
            base = self._base_model()
            if self._plane is None:
                data, channel_axis, index = np.asarray(image.data), None, ()
            else:  # the plane on display, its channels read as Segment and Train read them
                plane = self._plane(image, base.n_channels)
                labels_plane(labels, plane)  # the labels fit that plane (else one sentence)
                data, channel_axis, index = np.asarray(plane.image), plane.channel_axis, plane.index
            self.live = LiveTrainer(base, data, channel_axis=channel_axis, annotation=self._annotation(),
                                    on_preview=self._bridge.preview.emit, **self._settings())
        except ValueError as exc:
            self._notify(str(exc))
            return
        self._index = index
        self._watched = labels
        labels.events.paint.connect(self._on_stroke)
        labels.events.data.connect(self._on_stroke)
        camera = camera_of(self.viewer)
        camera.events.center.connect(self._on_view)
        camera.events.zoom.connect(self._on_view)
        self._on_view()
        self._send_annotation()
        # the preview layer is added now, before the thread runs: adding a layer is napari's most
        # expensive main-thread step (0.05-0.4 s here), and it would compete with training later
        y0, x0, y1, x1 = self.live.window
        self._show_preview(Preview((y0, x0, y1, x1), np.zeros((y1 - y0, x1 - x0), np.uint16), 0, 0, 0.0))
        self.previews_shown = 0
        self.live.start()
        self._poll.start()
        self.live_button.setText("Stop (keep the best)")
        self.learn_button.setEnabled(False)
        self.status.setText(f"Live training{self._where()}: paint on the labels layer; the "
                            "preview refreshes every few seconds.")

    def _where(self) -> str:
        """Where live training runs, for the status line: " on plane 5 at 0.65x the image's size",
        each part left out where it does not apply."""
        plane = f" on {plane_words(self._index)}" if self._index else ""
        return plane + scale_phrase(self.live.scale if self.live is not None else None)

    def stop_live(self) -> None:
        """Ask the training thread to stop; the result is handed over once it has (without waiting here)."""
        if self.live is not None:
            self.live.request_stop()
            self.live_button.setEnabled(False)
            self.status.setText("Stopping live training …")

    def _on_stroke(self, *_: Any) -> None:
        self._last_stroke = time.monotonic()
        self._stroke_timer.start()  # restarts: the annotation is sent once the user pauses

    def _on_view(self, *_: Any) -> None:
        if self.live is None:
            return
        h, w = self.live.native
        self.live.set_window(self._visible_box() if self._visible_box is not None else (0, 0, h, w))

    def _send_annotation(self) -> None:
        live, labels = self.live, self._watched
        if live is None or labels is None:
            return
        data = labels.data
        if self._index and data.ndim == len(self._index) + 2:
            data = data[self._index]  # the plane live training started on, wherever the user looks now
        data = np.asarray(data)  # one plane
        region = None
        if live.annotation == "instances":
            written = written_of(labels)
            if written is not None and self._index and written.ndim == len(self._index) + 2:
                written = written[self._index]
            base = written if written is not None else np.zeros_like(data)
            if not np.array_equal(base, data):
                region = correction_region(base, data).boxes
            else:
                return  # nothing painted yet
        live.set_annotation(data, region)
        live.request_preview()

    def _show_preview(self, preview: Any) -> None:
        image = self._image_layer()
        if self.live is None or image is None:
            return
        y0, x0, _, _ = preview.box
        labels = preview.labels
        if labels.size and labels.max() < 2**16:
            labels = labels.astype(np.uint16)  # napari draws uint16 without hashing it on every draw
        # on a stack, the preview lies on the plane it was trained on (not on every plane)
        k, scale, translate = plane_placement(image, self._index, y0, x0)
        labels = labels.reshape((1,) * k + labels.shape)
        layer = self.preview_layer
        if layer is not None and layer in self.viewer.layers:
            layer.data = labels
            layer.translate = translate
        else:
            on = f" ({plane_words(self._index)})" if self._index else ""
            self.preview_layer = self.viewer.add_labels(labels, name=f"{image.name} live preview{on}",
                                                        scale=scale, translate=translate, opacity=0.5)
            if self._watched in self.viewer.layers:  # keep painting on the user's layer
                self.viewer.layers.selection.active = self._watched
        self.previews_shown += 1

    def _tick(self) -> None:
        live = self.live
        if live is None:
            return
        if live.running:
            if live.step:
                held = f"; held-out IoU {live.best_score:.3f}" if live.best_score else ""
                self.status.setText(f"Live training{self._where()}: step {live.step}, "
                                    f"loss {live.loss:.3f}{held}. Stop keeps the best weights.")
            return
        self._poll.stop()
        self._disconnect()
        bundle = live.best_bundle()
        message = ("Live training failed: " + str(live.error)) if live.error else (
            f"Live training stopped after {live.step} steps; kept {live.kept}.")
        self.status.setText(message)
        self.live_button.setText("Start live training")
        self.live_button.setEnabled(True)
        self.learn_button.setEnabled(True)
        self._on_result(bundle, message)

    def _disconnect(self) -> None:
        labels = self._watched
        if labels is not None:
            for ev in (labels.events.paint, labels.events.data):
                ev.disconnect(self._on_stroke)
        camera = camera_of(self.viewer)
        for ev in (camera.events.center, camera.events.zoom):
            ev.disconnect(self._on_view)
        self._watched = None

    def close_live(self) -> None:
        """Stop the thread now (the viewer is closing); nothing is handed over."""
        if self.live is not None:
            self.live.request_stop()
            self._poll.stop()

