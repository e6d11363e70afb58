"""Reading napari layers for the engine, without Qt: what a layer's array and axes are, which
channel the user chose, where a result layer goes, and the 2D plane that Fine-tune trains on.

The axes and channels follow :mod:`napari_tiled_unet.imageview` (the one rule for the CLI,
the API and both widgets); this module only turns a layer and the user's picks into its
arguments. Nothing here imports Qt (the widgets call it; tests can too); layers are only read,
never changed, and never converted to numpy whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..imageview import MAX_CHANNELS, ImageView, guess_axes, interpret

#: what the plugin writes into the metadata of the layers it makes
META_KEY = "napari_tiled_unet"
#: the channel-axis choice that means "the user has not said yet"
CHOOSE = "choose"
CHANNEL_NAMES = ["red", "green", "blue", "alpha"]


def camera_of(viewer) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` (napari >= 0.9, where ``viewer.camera`` is
    deprecated), else ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def layer_origin(layer) -> dict[str, Any]:
    """What the plugin recorded about a layer it made: ``{"role", "image", "edited", "model",
    "scale"}`` (``model``: the source of the model that wrote a result; ``scale``: the factor
    the image was resized by for it, None at its own size), or {}."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get(META_KEY, {}) if isinstance(meta, dict) else {}


def full_resolution(layer) -> Any:
    """A layer's full-resolution data (the first level of a multiscale layer), not read."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_image_and_axes(layer) -> tuple[Any, str | None]:
    """The full-resolution array of an Image layer (lazily) and its axes when they are known.

    Multiscale layers give their first (full-resolution) level; RGB(A) layers are ``...YXC``.
    """
    data = full_resolution(layer)
    if getattr(layer, "rgb", False):
        return data, "YXC" if data.ndim == 3 else "ZYXC"
    return data, None


def labels_data(layer) -> Any:
    """The full-resolution labels of a layer, without reading a lazy layer into memory; a
    copy of in-memory data (the user may paint on while a worker reads it)."""
    data = full_resolution(layer)
    return data.copy() if isinstance(data, np.ndarray) else data


def layer_scale_and_unit(layer) -> dict[str, Any]:
    """``scale`` and ``unit`` of a layer for :func:`~napari_tiled_unet.measure.measure_objects`:
    the pixel size per axis, and the unit's short name (``um``, ``nm`` ...) when the Y and X
    axes share one other than pixels."""
    units = {u for u in tuple(getattr(layer, "units", ()))[-2:] if str(u) != "pixel"}
    unit = f"{units.pop():~}".replace("µ", "u") if len(units) == 1 else None
    return {"scale": tuple(float(s) for s in layer.scale), "unit": unit}


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


# -- channels -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelAxisOptions:
    """What the channel-axis picker offers for a layer.

    Attributes:
        items: (text, value) pairs; value is a layer dimension, None (no channels) or
            :data:`CHOOSE` (the user must say).
        current: the index chosen at first.
        needed: whether the picker is shown at all (False: the image has no channels).
    """

    items: list[tuple[str, Any]]
    current: int = 0
    needed: bool = False


def channel_axis_options(layer) -> ChannelAxisOptions:
    """The channel-axis choices for an image layer: RGB(A)'s last axis; for (N, Y, X) and
    stacks, every short axis (and "choose…" first when the shape alone cannot tell)."""
    if layer is None:
        return ChannelAxisOptions([])
    data, axes = layer_image_and_axes(layer)
    shape = tuple(int(s) for s in data.shape)
    if axes is not None:  # RGB(A): the last axis, always
        return ChannelAxisOptions([(f"RGB{'A' if shape[-1] == 4 else ''} (last)", data.ndim - 1)], 0, True)
    if not 3 <= data.ndim <= 4:
        return ChannelAxisOptions([])
    candidates = [i for i, n in enumerate(shape[:-2]) if n <= MAX_CHANNELS]
    if data.ndim == 3 and shape[-1] <= MAX_CHANNELS:
        candidates.append(2)
    if not candidates:
        return ChannelAxisOptions([])
    try:
        guess, ambiguous = guess_axes(shape)
    except ValueError:
        guess, ambiguous = "", False
    items: list[tuple[str, Any]] = []
    if ambiguous:
        items.append(("choose…", CHOOSE))
    if data.ndim == 3:
        items.append((f"none ({shape[0]} planes)" if 2 not in candidates else "none", None))
    items += [(f"axis {i} ({shape[i]} channels)", i) for i in candidates]
    current = 0
    if not ambiguous and "C" in guess:
        current = [value for _, value in items].index(guess.index("C"))
    return ChannelAxisOptions(items, current, True)


def channel_options(layer, axis: Any) -> tuple[list[tuple[str, Any]], int]:
    """The nuclei-channel choices once ``axis`` holds the channels: (items, index chosen at
    first); RGB(A) offers the luminance (chosen at first) and red, green, blue."""
    if layer is None or not isinstance(axis, int):
        return [], -1
    data, rgb_axes = layer_image_and_axes(layer)
    n = int(data.shape[axis])
    items: list[tuple[str, Any]] = [("auto", None)]
    if rgb_axes is not None or (axis == data.ndim - 1 and n in (3, 4)):
        items.append(("luminance", "luminance"))
        items += [(f"{c} ({CHANNEL_NAMES[c]})", c) for c in range(min(n, 3))]
        return items, 1
    return items + [(str(c), c) for c in range(n)], 0


@dataclass(frozen=True)
class ChannelChoice:
    """An image layer as the user described it: ``axes`` (None: let the rule guess),
    ``channel`` (None: the rule's default), and ``drop_axis``, the layer dimension that holds
    the channels when it is not RGB (the result layers leave it out)."""

    axes: str | None = None
    channel: int | str | None = None
    drop_axis: int | None = None


def channel_choice(layer, needed: bool, axis: Any, channel: Any) -> ChannelChoice:
    """The user's picks (``axis`` from :func:`channel_axis_options`, ``channel`` from
    :func:`channel_options`; ``needed`` when the picker is shown) as a :class:`ChannelChoice`.

    Raises:
        ValueError: the user still has to say whether an axis holds channels.
    """
    data, rgb_axes = layer_image_and_axes(layer)
    if not needed:
        return ChannelChoice(rgb_axes)
    if axis == CHOOSE:
        raise ValueError(f"Say whether the first axis of {layer.name} ({data.shape[0]} entries) holds "
                         "channels or planes, with 'channels: axis'.")
    channel = channel if isinstance(axis, int) else None
    if rgb_axes is not None:
        return ChannelChoice(rgb_axes, channel)
    if axis is None:
        return ChannelChoice("YX" if data.ndim == 2 else "ZYX")
    spatial = "YX" if data.ndim == 3 else "ZYX"
    return ChannelChoice(spatial[:axis] + "C" + spatial[axis:], channel, axis)


def image_view(layer, choice: ChannelChoice, n_model_channels: int,
               option: str = "the 'nuclei' channel picker") -> ImageView:
    """How the engine will read ``layer`` for a model taking ``n_model_channels`` channels
    (:func:`napari_tiled_unet.imageview.interpret`; raises its one-sentence ImageError)."""
    data, _ = layer_image_and_axes(layer)
    return interpret(tuple(data.shape), n_model_channels, axes=choice.axes, channel=choice.channel,
                     option=option)


# -- Fine-tune's plane ----------------------------------------------------------------------------


@dataclass
class TrainingPlane:
    """The 2D plane of an image layer that Fine-tune trains on (or previews).

    Attributes:
        image: the plane as the model sees it, lazily: (Y, X), or (C, Y, X) / (Y, X, C) when
            the model takes several channels.
        axes: ``"YX"``, ``"CYX"`` or ``"YXC"``.
        channel_axis: what :class:`~napari_tiled_unet.training.loop.Trainer` needs (None
            for one channel).
        index: the indices of the layer's stack axes (``()`` for a 2D image).
        view: how the layer was read (:class:`~napari_tiled_unet.imageview.ImageView`).
        stack: the lengths of the layer's stack axes (``()`` for a 2D image).
    """

    image: Any
    axes: str
    channel_axis: int | None
    index: tuple[int, ...]
    view: ImageView
    stack: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the plane."""
        y, x = self.axes.index("Y"), self.axes.index("X")
        return int(self.image.shape[y]), int(self.image.shape[x])


def training_plane(layer, choice: ChannelChoice, n_model_channels: int, world_point: Any) -> TrainingPlane:
    """The plane of ``layer`` on display at ``world_point`` (the viewer's dims point), read
    with the same channel rule as Segment: RGB(A) -> its luminance or the chosen channel,
    (C, Y, X) -> the chosen channel, all channels for a model that takes them."""
    from ..imageview import ChannelSelection

    data, _ = layer_image_and_axes(layer)
    view = image_view(layer, choice, n_model_channels)
    if "Z" in view.axes:  # the plane on display
        z = view.axes.index("Z")
        pos = layer.world_to_data(world_point)
        stack = (int(data.shape[z]),)
        index = (int(np.clip(round(float(pos[z])), 0, stack[0] - 1)),)
        key = [slice(None)] * data.ndim
        key[z] = index[0]
        data = data[tuple(key)]
        view = ImageView(view.axes.replace("Z", ""), view.channel, view.ambiguous)
    else:
        index = stack = ()
    if view.channel is None or view.channel == "rgb":
        plane = data if view.channel is None else ChannelSelection(data, view)
        axes = view.axes
    else:
        plane, axes = ChannelSelection(data, view), view.model_axes
    return TrainingPlane(plane, axes, axes.index("C") if "C" in axes else None, index, view, stack)


def labels_plane(labels_layer, plane: TrainingPlane) -> Any:
    """The labels of ``plane`` in ``labels_layer`` (not copied): a 2D layer of the plane's size,
    or the plane's slice of a stack of labels of the image's stack shape.

    Raises:
        ValueError: the layer fits neither (one sentence).
    """
    data = full_resolution(labels_layer)
    shape = tuple(data.shape)
    if plane.index and shape[:-2] == plane.stack:
        data = data[plane.index]
    if tuple(data.shape) != plane.shape:
        raise ValueError(f"The labels have shape {shape} but the image is {plane.stack + plane.shape}; "
                         "paint the labels on a layer of the image's size.")
    return data


def plane_words(index: tuple[int, ...]) -> str:
    """The plane of a stack at ``index`` in words: "plane 5" ("plane 2, 5" with two stack axes)."""
    return f"plane {', '.join(map(str, index))}"


def plane_placement(image_layer, index: tuple[int, ...], y0: int, x0: int) -> tuple[int, Any, Any]:
    """Where a 2D result of the window at (``y0``, ``x0``) of the plane ``index`` of
    ``image_layer`` goes: ``(k, scale, translate)``, the result to be given ``k`` leading axes
    of length 1 (``labels.reshape((1,) * k + labels.shape)``) so that on a stack it lies on
    that plane only; ``k`` is 0 for a 2D image, or where the layer has other axes (channels)."""
    k = len(index) if image_layer.ndim == len(index) + 2 else 0
    scale = np.asarray(image_layer.scale[image_layer.ndim - 2 - k:])
    translate = np.asarray(image_layer.translate[image_layer.ndim - 2 - k:]) + scale * (*index[:k], y0, x0)
    return k, scale, translate
