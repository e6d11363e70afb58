"""The model header's schema, checked before anything is built or allocated.

:func:`validate_metadata` takes the JSON metadata of a bundle (any JSON value, from any
file) and either returns it or raises one :class:`~napari_tiled_unet.errors.BundleError`
sentence naming the field. :func:`check_tensors` then compares the tensors listed in the
file (names, shapes, dtypes: read from the safetensors header, without loading them) with
those of the network the header describes, built on PyTorch's ``meta`` device (no memory),
so a small file can never make the loader allocate a huge network.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..errors import BundleError, SettingsError

#: limits on the architecture: far above any useful U-Net, far below what would exhaust memory
MAX_CHANNELS_IN = 64
MAX_CLASSES = 1024
MAX_BASE_CHANNELS = 512
MAX_DEPTH = 8
#: channels of the deepest level, base_channels * 2**depth
MAX_DEEPEST_CHANNELS = 8192
ACTIVATIONS = ("softmax", "sigmoid")
NORMALIZATIONS = ("percentile", "scale", "none")
UNET_ARGS = {"n_channels", "n_classes", "bilinear", "base_channels", "depth"}


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_metadata(meta: Any, name: str, format_name: str, format_version: int,
                      tasks: tuple[str, ...], architectures: tuple[str, ...]) -> dict[str, Any]:
    """``meta`` when it is a usable bundle header, else one :class:`BundleError` sentence."""

    def fail(what: str) -> BundleError:
        return BundleError(f"The model file {name} is not usable: {what}.")

    if not isinstance(meta, dict):
        raise fail(f"its metadata is a JSON {type(meta).__name__.replace('NoneType', 'null')}, not an object")
    version = meta.get("format_version")
    if meta.get("format") != format_name or version is None:
        raise BundleError(f"{name} has no napari-tiled-unet format version; it is not a model bundle.")
    if not _int(version):
        raise fail(f"its format_version is {version!r}, not a whole number (the file was edited or written "
                   "by another program)")
    if version != format_version:
        raise BundleError(
            f"{name} uses model format version {version}, but this napari-tiled-unet reads "
            f"version {format_version}; update the plugin (pip install -U napari-tiled-unet)."
        )
    task = meta.get("task")
    if task not in tasks:
        raise BundleError(f"{name} declares an unknown task {task!r}.")
    arch = meta.get("architecture")
    unknown = architecture_error(arch, architectures)
    if unknown is not None:
        raise unknown
    args = arch.get("args")
    if not isinstance(args, dict) or not {"n_channels", "n_classes"} <= set(args) or set(args) - UNET_ARGS:
        raise fail("its architecture arguments are not those of a U-Net (n_channels, n_classes, bilinear, "
                   "base_channels, depth)")
    limits = {"n_channels": (1, MAX_CHANNELS_IN), "n_classes": (1, MAX_CLASSES),
              "base_channels": (1, MAX_BASE_CHANNELS), "depth": (1, MAX_DEPTH)}
    for key, (lo, hi) in limits.items():
        if key in args and not (_int(args[key]) and lo <= args[key] <= hi):
            raise fail(f"architecture {key} is {args[key]!r}, not a whole number from {lo} to {hi}")
    if "bilinear" in args and not isinstance(args["bilinear"], bool):
        raise fail(f"architecture bilinear is {args['bilinear']!r}, not true or false")
    deepest = args.get("base_channels", 64) * 2 ** args.get("depth", 4)
    if deepest > MAX_DEEPEST_CHANNELS:
        raise fail(f"its deepest level would have {deepest} channels (base_channels * 2**depth), more than "
                   f"{MAX_DEEPEST_CHANNELS}")
    if meta.get("input_channels", args["n_channels"]) != args["n_channels"]:
        raise fail(f"input_channels {meta['input_channels']!r} differs from the architecture's n_channels "
                   f"{args['n_channels']}")
    _check_classes(meta, args["n_classes"], task, fail)
    _check_normalization(meta.get("normalization"), fail)
    _check_postprocess(meta.get("postprocess"), fail)
    for key in ("name", "description"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise fail(f"its {key} is {type(meta[key]).__name__}, not text")
    for key in ("pixel_size_um", "object_diameter"):
        size = meta.get(key)
        if size is not None and not (_real(size) and size > 0):
            raise fail(f"{key} is {size!r}, not a positive number")
    span = meta.get("object_diameter_range")
    if span is not None and not (isinstance(span, list) and len(span) == 2 and all(_real(v) for v in span)
                                 and 0 < span[0] <= span[1]):
        raise fail(f"object_diameter_range is {span!r}, not [smallest, largest] in pixels above 0")
    for key in ("training", "imported_from"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise fail(f"its {key} record is not a JSON object")
    return meta


def architecture_error(arch: Any, known: tuple[str, ...]) -> BundleError | None:
    """The error for an architecture entry that is not ``{"name": <one of known>, ...}``, else None."""
    if isinstance(arch, dict) and arch.get("name") in known:
        return None
    shown = arch.get("name") if isinstance(arch, dict) else arch
    return BundleError(f"The model file describes an unknown architecture ({shown!r}); "
                       f"this version of napari-tiled-unet knows {', '.join(known)}.")


def _check_classes(meta: dict[str, Any], n_classes: int, task: str, fail) -> None:
    activation = meta.get("output_activation", "softmax")
    if activation not in ACTIVATIONS:
        raise fail(f"output_activation is {activation!r}; use softmax or sigmoid")
    if activation == "sigmoid" and n_classes != 1:
        raise fail(f"a sigmoid output has one channel (foreground), but the network has {n_classes}; "
                   "use softmax for several classes")
    n_out = n_classes if activation == "softmax" else 2
    names = meta.get("class_names")
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise fail("class_names is not a list of names")
    if len(names) != n_out:
        raise fail(f"it names {len(names)} classes but the network predicts {n_out}")
    if task == "instances" and (n_out != 3 or activation != "softmax"):
        raise fail(f"an instances model predicts 3 classes with softmax, this one {n_out} with {activation}")


def _check_normalization(norm: Any, fail) -> None:
    if norm is None:
        return
    if not isinstance(norm, dict):
        raise fail(f"normalization is {norm!r}, not an object such as "
                   '{"kind": "percentile", "low": 1, "high": 99.8}')
    kind = norm.get("kind", "percentile")
    if kind not in NORMALIZATIONS:
        raise fail(f"normalization kind {kind!r} is unknown; use {', '.join(NORMALIZATIONS)}")
    for key, value in norm.items():
        if key == "exclude_saturated":  # leave the pixels at the image's maximum out (normalization.py)
            if not isinstance(value, bool):
                raise fail(f"normalization exclude_saturated is {value!r}, not true or false")
        elif key != "kind" and not _real(value):
            raise fail(f"normalization {key} is {value!r}, not a finite number")
    if kind == "percentile":
        low, high = norm.get("low", 1.0), norm.get("high", 99.8)
        if not 0 <= low < high <= 100:
            raise fail(f"normalization percentiles {low} and {high} are not 0 <= low < high <= 100")
    if "clip_high" in norm and not norm["clip_high"] > 0:
        raise fail(f"normalization clip_high is {norm['clip_high']!r}, not a positive number")
    if kind == "scale" and norm.get("divide", 1.0) == 0:
        raise fail("normalization divides by 0")


def _check_postprocess(post: Any, fail) -> None:
    if post is None:
        return
    if not isinstance(post, dict):
        raise fail("postprocess is not an object of parameters")
    from .. import settings

    try:
        settings.postprocess(post)
    except SettingsError as exc:
        raise fail(f"in its postprocess defaults, {str(exc)[0].lower()}{str(exc)[1:].rstrip('.')}") from None


def check_tensors(model_skeleton: Any, listed: dict[str, tuple[tuple[int, ...], bool, str]],
                  name: str) -> None:
    """Compare the file's tensors (name -> (shape, is floating point, dtype as text)) with the
    network ``model_skeleton`` (e.g. built on the meta device): same names, same shapes, floats
    exactly where the network has floats."""
    expected = model_skeleton.state_dict()
    missing = sorted(set(expected) - set(listed))
    unexpected = sorted(set(listed) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BundleError(
            f"The weights in {name} do not fit the architecture it describes ({what}, "
            f"{len(missing)} missing and {len(unexpected)} unexpected tensors)."
        )
    for key, (shape, is_float, dtype) in listed.items():
        want = tuple(expected[key].shape)
        if tuple(shape) != want:
            raise BundleError(
                f"The weights in {name} do not fit the architecture it describes ({key} has shape "
                f"{tuple(shape)}, expected {want})."
            )
        if expected[key].is_floating_point() != is_float:
            raise BundleError(
                f"The weights in {name} are not usable: {key} holds {dtype} values where the network "
                f"needs {'floating-point' if expected[key].is_floating_point() else 'integer'} numbers; the "
                "file is damaged or was not written by a training run."
            )
