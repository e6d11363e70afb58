"""The Segment widget's result layers: one labels layer per image layer (named after it and
placed where it is), its probability layers, and the user's edits, which are never written
over. No Qt here: these are napari layers and the steps that put a result on screen, which
the widget runs one per event-loop turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .layerview import META_KEY, placement

#: the coarsest level of a lazy pyramid has no side longer than this
PYRAMID_TOP = 2048
PROBABILITY_COLORMAPS = ["green", "magenta", "cyan", "yellow", "blue", "red"]


@dataclass
class Run:
    """What a run is bound to: the image layer object (not its name) and how it was read."""

    image: Any
    view: Any  # imageview.ImageView
    drop_axis: int | None  # the layer dimension that holds channels (not RGB), else None
    model: Any = None  # the model's source (a built-in name or a file path), recorded on the result


@dataclass
class Output:
    """The plugin's result layers for one image layer."""

    image: Any
    labels: Any = None
    probabilities: list[Any] = field(default_factory=list)
    edited: bool = False
    hidden_new: bool = False  # labels was just added hidden, to be shown by reveal()


class ResultLayers:
    """The result layers of every image layer segmented in one viewer.

    A labels layer the user painted into (or whose data they replaced) since the plugin
    wrote it is never written again: the next result goes to a new layer. ``connect`` is the
    widget's connection function (released with the widget).
    """

    def __init__(self, viewer: Any, connect: Callable[[Any, Callable[..., Any]], None]) -> None:
        self.viewer = viewer
        self._connect = connect
        self.outputs: list[Output] = []
        self._writing = False  # the plugin itself is changing a result layer

    def probability_layers(self) -> set[int]:
        """ids of the plugin's probability layers (never offered as images to segment)."""
        return {id(layer) for out in self.outputs for layer in out.probabilities}

    def output_for(self, image) -> Output:
        for out in self.outputs:
            if out.image is image:
                return out
        out = Output(image)
        self.outputs.append(out)
        return out

    def display_steps(self, result, run: Run, levels: list[Any] | None, with_probabilities: bool,
                      then: Callable[[Output], None]) -> list[Callable[[], None]]:
        """The steps that put ``result`` on screen, one layer each: the labels into the
        image's result layer (in place unless the user painted into it since, else a new
        layer, the edited one kept), then one probability layer per foreground class, just
        below them; ``then(output)`` last."""
        out = self.output_for(run.image)
        place = placement(run.image, run.drop_axis)
        steps: list[Callable[[], None]] = [partial(self.show_labels, result, run, out, place, levels),
                                           partial(self.reveal, out)]
        steps += [partial(self.remove, layer) for layer in out.probabilities]
        steps.append(out.probabilities.clear)
        if with_probabilities:
            steps += [partial(self.add_probability, result, out, place, c)
                      for c in range(1, len(result.class_names))]
        steps.append(partial(then, out))
        return steps

    def remove(self, layer) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def show_labels(self, result, run: Run, out: Output, place: dict[str, Any],
                    levels: list[Any] | None = None) -> None:
        from napari.utils.notifications import show_info

        data = levels or lazy_pyramid(result.labels)
        old = out.labels if out.labels is not None and out.labels in self.viewer.layers else None
        self._writing = True
        try:
            if old is not None and not out.edited and bool(old.multiscale) == isinstance(data, list):
                old.data = data
                for key, value in place.items():
                    setattr(old, key, value)
                labels = old
            else:
                # added hidden, shown on the next turn of the event loop (reveal): napari builds the
                # layer's visuals, then slices and draws it, each part shorter than both together
                kwargs: dict[str, Any] = {"name": f"{run.image.name} labels", "visible": False, **place}
                if result.task == "semantic":
                    kwargs["features"] = {"class": result.class_names}
                labels = self.viewer.add_labels(data, **kwargs)
                out.hidden_new = True
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
        labels.metadata[META_KEY]["model"] = None if run.model is None else str(run.model)
        # the factor the image was resized by for the network (object diameter), None: its own size
        scale = getattr(result, "scale", None)
        labels.metadata[META_KEY]["scale"] = None if scale is None else float(scale)
        from .corrections_panel import remember_written

        remember_written(labels)  # what was written, to find the user's corrections later

    def _watch_edits(self, labels, out: Output) -> None:
        """Mark ``out`` edited when the user paints into ``labels`` or replaces its data."""

        def edited(*_: Any) -> None:
            if not self._writing and out.labels is labels:
                out.edited = True
                labels.metadata.setdefault(META_KEY, {})["edited"] = True

        self._connect(labels.events.paint, edited)
        self._connect(labels.events.data, edited)

    def reveal(self, out: Output) -> None:
        """Show the labels layer :meth:`show_labels` added hidden (a layer it wrote in place
        keeps the visibility the user gave it)."""
        if out.hidden_new and out.labels is not None and out.labels in self.viewer.layers:
            out.labels.visible = True
        out.hidden_new = False

    def add_probability(self, result, out: Output, place: dict[str, Any], c: int) -> None:
        probs = result.probabilities
        plane = probs[..., c, :, :] if not hasattr(probs, "attrs") else _zarr_class(probs, c)
        layer = self.viewer.add_image(
            lazy_pyramid(plane, in_memory_too=True),
            name=f"{out.image.name} {result.class_names[c]} probability",
            colormap=PROBABILITY_COLORMAPS[(c - 1) % len(PROBABILITY_COLORMAPS)], blending="additive",
            contrast_limits=(0.0, 1.0), **place,
        )
        layer.metadata[META_KEY] = {"role": "probability", "image": out.image.name}
        if out.labels in self.viewer.layers:  # below the labels, which it must not cover
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(out.labels))
        out.probabilities.append(layer)


def warm_up_labels() -> None:
    """Build (and drop) a 1x1 Labels layer: napari's one-time set-up of the Labels class
    (about 0.1-0.2 s of the main thread here) then happens when the widget opens, not in the
    middle of showing the first result."""
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8))


def for_display(labels: Any) -> Any:
    """In-memory labels as uint16 when the ids fit (the worker does the conversion): napari
    draws uint8/uint16 labels as they are, but hashes every pixel of wider types on the main
    thread whenever the layer is drawn (0.4 s for 4096x4096 on a slow CPU)."""
    if isinstance(labels, np.ndarray) and labels.size and labels.min() >= 0 and labels.max() < 2**16:
        return labels.astype(np.uint16)
    return labels


def _zarr_class(probs: Any, c: int) -> Any:
    """Class ``c`` of zarr (C, Y, X) probabilities, lazily."""
    import dask.array as da

    return da.from_zarr(probs)[c]


def pyramid_on_disk(labels: Any, folder: Path) -> list[Any] | None:
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


def lazy_pyramid(data: Any, in_memory_too: bool = False) -> Any:
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


__all__ = ["Output", "ResultLayers", "Run", "for_display", "lazy_pyramid", "pyramid_on_disk"]
