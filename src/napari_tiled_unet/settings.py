"""The ranges of every user setting, checked in one place.

The CLI, the Python API and the widgets pass user settings through these functions (the
engine calls them itself, so a script gets the same sentence as the command line); each
raises :class:`~napari_tiled_unet.errors.SettingsError` naming the setting, the value and
the range. ``None`` always means "automatic" or "the model's default" and passes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from .errors import SettingsError


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingsError(f"{name} must be a number, not {value!r}.")
    if not math.isfinite(float(value)):
        raise SettingsError(f"{name} must be a finite number, not {value!r}.")
    return float(value)


def integer(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (a float with a fraction is refused)."""
    number = _number(name, value)
    if number != int(number):
        raise SettingsError(f"{name} must be a whole number, not {value!r}.")
    if number < minimum or (maximum is not None and number > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise SettingsError(f"{name} must be at least {minimum}{upper}, not {value!r}.")
    return int(number)


def probability(name: str, value: Any) -> float:
    """A threshold on probabilities: a finite number in [0, 1]."""
    number = _number(name, value)
    if not 0.0 <= number <= 1.0:
        raise SettingsError(f"{name} must be between 0 and 1, not {value!r}.")
    return number


def positive(name: str, value: Any) -> float:
    """A finite number above 0 (learning rate, time budget, epochs)."""
    number = _number(name, value)
    if number <= 0:
        raise SettingsError(f"{name} must be above 0, not {value!r}.")
    return number


def fraction(name: str, value: Any) -> float:
    """A finite number in [0, 1) (a held-out fraction, an overlap)."""
    number = _number(name, value)
    if not 0.0 <= number < 1.0:
        raise SettingsError(f"{name} must be at least 0 and below 1, not {value!r}.")
    return number


def iou_thresholds(values: Iterable[Any]) -> tuple[float, ...]:
    """IoU thresholds for object matching: at least one, each in (0, 1]."""
    out = []
    for v in values:
        number = _number("An IoU threshold", v)
        if not 0.0 < number <= 1.0:
            raise SettingsError(f"IoU thresholds must be above 0 and at most 1, not {v!r}.")
        out.append(number)
    if not out:
        raise SettingsError("Give at least one IoU threshold, e.g. 0.5.")
    return tuple(out)


def workers(value: Any) -> int | None:
    """Worker processes of a local dask cluster (None: the default)."""
    return None if value is None else integer("The number of workers", value, 1, 1024)


def prediction(batch_size: Any = None, window: Any = None, overlap: Any = None) -> None:
    """The tiled engine's settings: windows per batch, window size (px), blend overlap."""
    if batch_size is not None:
        integer("The batch size", batch_size, 1, 4096)
    if window is not None:
        sizes = window if isinstance(window, (tuple, list)) else (window,)
        for size in sizes:
            integer("The tile size", size, 1)
    if overlap is not None:
        fraction("The tile overlap", overlap)


#: post-processing parameters with their checks (others pass to the post-processing as given)
_POSTPROCESS = {
    "foreground_threshold": lambda v: probability("The foreground threshold", v),
    "seed_threshold": lambda v: probability("The seed threshold", v),
    "min_size": lambda v: integer("The smallest object size (min_size)", v, 0),
    "min_size_fraction": lambda v: fraction("The smallest object size as a fraction of the typical object "
                                            "(min_size_fraction)", v),
}


def postprocess(params: dict[str, Any]) -> dict[str, Any]:
    """Checked post-processing parameters (None values are left out: the model's defaults)."""
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = _POSTPROCESS[key](value) if key in _POSTPROCESS else value
    return out


def training(batch_size: Any, patch_size: Any, lr: Any, val_fraction: Any, epochs: Any = None,
             minutes: Any = None) -> None:
    """The training loop's settings."""
    integer("The batch size", batch_size, 1, 4096)
    integer("The patch size", patch_size, 1)
    positive("The learning rate", lr)
    fraction("The validation fraction", val_fraction)
    if epochs is not None:
        positive("The number of epochs", epochs)
    if minutes is not None:
        positive("The time budget (minutes)", minutes)
