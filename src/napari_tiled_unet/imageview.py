"""What the axes of an image are and which of its channels the model sees: one rule for all.

The widget, the CLI and the API (:func:`napari_tiled_unet.segment`) all call
:func:`interpret` (or :func:`prepare`), so an image is read the same way everywhere:

* ``(Y, X)`` is one plane; ``(Y, X, C)`` with C of 2 to 4 (RGB, RGBA, two colours) has
  channels last; ``(Z, Y, X, C)`` and ``(Z, C, Y, X)`` likewise for stacks.
* ``(N, Y, X)`` with N of 2 to 4 could be N channels or N planes: it is read as planes (or as
  channels when N is what the model takes), and :attr:`ImageView.ambiguous` says so, so the
  caller tells the user (the widget asks; the CLI and API warn).
* When the image has more channels than the model takes, the model sees one of them: the
  ``channel`` given, or for RGB(A) images by default the luminance (ITU-R BT.709 weights
  0.2125 R + 0.7154 G + 0.0721 B, those of ``skimage.color.rgb2gray``). Anything else is
  refused with one sentence that says what to choose. Nothing is guessed silently.

:class:`ChannelSelection` applies the choice lazily: only the windows the engine reads are
read and converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ImageError

LUMINANCE = "luminance"
#: ITU-R BT.709 luma weights (skimage.color.rgb2gray uses the same)
RGB_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
#: an axis this short next to longer ones can be channels
MAX_CHANNELS = 4


@dataclass(frozen=True)
class ImageView:
    """How an image is read.

    Attributes:
        axes: the axes of the image as stored (``"YX"``, ``"YXC"``, ``"CYX"``, ``"ZYX"``,
            ``"ZYXC"``, ``"ZCYX"``).
        channel: what the model sees of the channels: None (all of them, or there are none),
            an index, ``"luminance"`` (RGB(A)), or ``"rgb"`` (RGBA without its alpha).
        ambiguous: the axes were guessed between planes and channels (``(N, Y, X)``, N <= 4).
    """

    axes: str
    channel: int | str | None = None
    ambiguous: bool = False

    @property
    def model_axes(self) -> str:
        """The axes of what the model sees (no ``C`` when one channel is chosen)."""
        return self.axes.replace("C", "") if self.channel not in (None, "rgb") else self.axes

    @property
    def spatial_axes(self) -> str:
        """The axes of the labels: the image's without ``C``."""
        return self.axes.replace("C", "")

    def describe(self) -> str:
        """Words for a status line: "" for a plain image, else e.g. "channel 1 of axis 0"."""
        if self.channel == LUMINANCE:
            return "luminance of the RGB channels"
        if isinstance(self.channel, int):
            return f"channel {self.channel}"
        return ""


def guess_axes(shape: tuple[int, ...], n_model_channels: int = 1) -> tuple[str, bool]:
    """The axes of an image of ``shape`` and whether that was a guess between planes and channels."""
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    small = [s <= MAX_CHANNELS for s in shape]
    if nd == 2:
        return "YX", False
    if nd == 3:
        if small[2] and not small[0] and not small[1]:
            return "YXC", False
        if small[0] and not small[1] and not small[2]:
            return ("CYX", True) if shape[0] == n_model_channels > 1 else ("ZYX", True)
        return "ZYX", False
    if nd == 4:
        if small[3] and not small[2]:
            return "ZYXC", False
        if small[1] and not small[2]:
            return "ZCYX", False
        raise ImageError(f"The 4D image of shape {shape} has no channel axis of at most {MAX_CHANNELS} "
                         "entries; segment one stack (Z, Y, X) at a time.")
    raise ImageError(f"Images must be 2D, 2D with channels, or a stack of those; this one has {nd} "
                     "dimensions.")


def interpret(shape: tuple[int, ...], n_model_channels: int, *, axes: str | None = None,
              channel: int | str | None = None, option: str = "the channel argument") -> ImageView:
    """How to read an image of ``shape`` for a model taking ``n_model_channels`` channels.

    Args:
        axes: the image's axes when known (``T`` counts as ``Z``); None guesses them.
        channel: the channel holding the nuclei (an index, or ``"luminance"`` for RGB(A));
            None: all channels when the model takes them, the luminance of RGB(A), else an error.
        option: how the caller's user names the channel choice, for the error messages
            (``"--channel"`` in the CLI).

    Raises:
        ImageError: one sentence saying what to choose.
    """
    shape = tuple(int(s) for s in shape)
    ambiguous = False
    if axes is None:
        axes, ambiguous = guess_axes(shape, n_model_channels)
    else:
        axes = axes.upper().replace("T", "Z")
        if len(axes) != len(shape) or len(set(axes)) != len(axes) or not set(axes) <= set("ZCYX") \
                or not {"Y", "X"} <= set(axes):
            raise ImageError(f"The axes {axes!r} do not describe an image of shape {shape}; use Y, X and "
                             "optionally Z (or T) and C, one letter per dimension.")
    if isinstance(channel, str) and channel != LUMINANCE:
        if not channel.lstrip("-").isdigit():
            raise ImageError(f"The {option} must be a channel number or 'luminance', not {channel!r}.")
        channel = int(channel)
    if "C" not in axes:
        if channel not in (None, 0):
            raise ImageError(f"This image of shape {shape} has no channels; leave {option} unset.")
        if n_model_channels != 1:
            raise ImageError(f"The model expects {n_model_channels} channels but the image has one; choose a "
                             f"{n_model_channels}-channel image or a model for single-channel images.")
        return ImageView(axes, None, ambiguous)
    n = shape[axes.index("C")]
    rgb_like = axes.endswith("C") and n in (3, 4)
    if channel is None:
        if n == n_model_channels:
            return ImageView(axes, None, ambiguous)
        if n == 4 and n_model_channels == 3 and rgb_like:
            return ImageView(axes, "rgb", ambiguous)
        if n_model_channels == 1 and rgb_like:
            return ImageView(axes, LUMINANCE, ambiguous)
        if n_model_channels == 1:
            raise ImageError(f"This image has {n} channels (axes {axes}); choose the one that holds the "
                             f"nuclei with {option} (0 to {n - 1}).")
        raise ImageError(f"The image has {n} channels but the model expects {n_model_channels}; choose a "
                         f"model made for {n}-channel images or another image.")
    if n_model_channels != 1:
        raise ImageError(f"The model takes {n_model_channels} channels, so it sees all of them; leave the "
                         f"{option} unset.")
    if channel == LUMINANCE:
        if n not in (3, 4):
            raise ImageError(f"Luminance needs an RGB or RGBA image; this one has {n} channels, so choose "
                             f"one of them with {option} (0 to {n - 1}).")
        return ImageView(axes, LUMINANCE, ambiguous)
    if not 0 <= channel < n:
        raise ImageError(f"The image has channels 0 to {n - 1}; channel {channel} does not exist.")
    return ImageView(axes, int(channel), ambiguous)


class ChannelSelection:
    """An image with one channel chosen (or the luminance, or RGB without alpha), lazily.

    Offers ``shape``, ``dtype``, ``ndim`` and slicing, which is all the engine needs; only
    what is sliced is read.
    """

    def __init__(self, image: Any, view: ImageView) -> None:
        self.image, self.view = image, view
        self.c_axis = view.axes.index("C")
        shape = [int(s) for s in image.shape]
        if view.channel == "rgb":
            shape[self.c_axis] = 3
        else:
            del shape[self.c_axis]
        self.shape = tuple(shape)
        self.ndim = len(shape)
        self.dtype = np.dtype(np.float32) if view.channel == LUMINANCE else np.dtype(image.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = list(key) if isinstance(key, tuple) else [key]
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key[i:i + 1] = [slice(None)] * (self.ndim - len(key) + 1)
        key += [slice(None)] * (self.ndim - len(key))
        channel = self.view.channel
        if isinstance(channel, int):
            key.insert(self.c_axis, channel)
            return np.asarray(self.image[tuple(key)])
        if channel == "rgb":
            key[self.c_axis] = _compose(key[self.c_axis], 3)
            return np.asarray(self.image[tuple(key)])
        key.insert(self.c_axis, slice(0, 3))
        block = np.asarray(self.image[tuple(key)], dtype=np.float32)
        where = sum(1 for k in key[: self.c_axis] if not isinstance(k, (int, np.integer)))
        return np.tensordot(np.moveaxis(block, where, -1), RGB_WEIGHTS, axes=([-1], [0]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


def _compose(k: Any, n: int) -> Any:
    """Index ``k`` applied to ``range(n)`` (the first ``n`` channels)."""
    if isinstance(k, slice):
        return slice(*k.indices(n))
    return k


def prepare(image: Any, n_model_channels: int, *, axes: str | None = None, channel: int | str | None = None,
            option: str = "the channel argument") -> tuple[Any, str, ImageView]:
    """``image`` as the model sees it: (array, its axes, the :class:`ImageView`).

    The array is ``image`` itself when nothing is selected, else a lazy
    :class:`ChannelSelection`.
    """
    view = interpret(tuple(image.shape), n_model_channels, axes=axes, channel=channel, option=option)
    if view.channel is None:
        return image, view.axes, view
    return ChannelSelection(image, view), view.model_axes, view


def ambiguity_warning(view: ImageView, shape: tuple[int, ...],
                      option: str = "the axes argument") -> str | None:
    """The sentence that tells the user a (N, Y, X) image was read as planes (or channels)."""
    if not view.ambiguous:
        return None
    n = int(shape[0])
    if view.axes.startswith("Z"):
        return (f"The image of shape {tuple(shape)} was read as a stack of {n} planes; if its first axis "
                f"holds {n} channels instead, say so with {option} (CYX) and choose the nuclei channel.")
    return (f"The image of shape {tuple(shape)} was read as {n} channels for this {n}-channel model; if its "
            f"first axis holds planes instead, say so with {option} (ZYX).")
