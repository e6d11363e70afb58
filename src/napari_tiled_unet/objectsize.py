"""Object size: rescale an image so that its objects match the diameter a model was trained at.

A bundle records ``metadata["object_diameter"]``: the median equivalent diameter (px) of the
objects in its training patches before scale augmentation. Given the diameter of the
user's objects ``d``, :func:`~napari_tiled_unet.segmentation.segment_iter` resizes the
image by ``D / d`` (linear interpolation, with a gaussian anti-aliasing filter when it
shrinks), runs the tiled engine on the resized image (exact tiling holds there), brings the
class probabilities back to the input's size (linear) and post-processes them there, so the
labels have the input's shape and pixel grid.

``"auto"`` estimates ``d`` from a first pass at the input's own scale: the median
equivalent diameter ``sqrt(4 A / pi)`` of the objects it finds, fragments left out
(:func:`estimate_diameter`). A bundle that records the range of diameters its training
images were brought into (``metadata["object_diameter_range"]``, ``[lo, hi]``) is trusted
inside that range: the image stays at its own scale when ``lo <= d <= hi`` and is otherwise
resized so that its objects land on the nearer bound, as its training images were
(:func:`auto_factor`); a bundle without a range is resized to its one diameter. When the scale
asked for differs from the scale of the pass by more than 15 %, the image is segmented at the
new scale and the estimate made again (at most 3 passes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ImageError

#: diameters of built-in models whose files predate ``object_diameter`` (the area-weighted
#: median of their training images' median nucleus diameters; DSB2018 training ids: 27.5 px)
KNOWN_DIAMETERS = {"nuclei-dsb2018": 27.5}
#: the rescaled image may not be more than this many times larger than the input (in pixels)
MAX_UPSCALE_PIXELS = 16.0
#: most passes of ``diameter="auto"`` (the first at the image's own scale)
AUTO_PASSES = 3


def recorded_diameter(bundle: Any) -> float | None:
    """The object diameter (px) the bundle records (or that its built-in name is known for), or None."""
    value = bundle.metadata.get("object_diameter") or KNOWN_DIAMETERS.get(bundle.metadata.get("name"))
    return float(value) if value else None


def check_training_scale(scale: float | None) -> float | None:
    """The factor a model is trained at (None: the image's own size), as a float.

    Raises:
        ValueError: a factor outside 0.1-10.
    """
    if scale is None:
        return None
    if not (np.isfinite(scale) and 0.1 <= scale <= 10):
        raise ValueError(f"The training scale must be between 0.1 and 10, got {scale}.")
    return float(scale)


def scale_phrase(scale: float | None) -> str:
    """\" at 0.65x the image's size\" for a status line, or "" at the image's own size."""
    return f" at {scale:.2f}x the image's size" if scale is not None and scale != 1.0 else ""


def finetuned_metadata(base: Any, scale: float | None) -> dict[str, Any]:
    """A copy of ``base``'s metadata for a model fine-tuned from it, with its sizes right.

    Trained on images at their own size (``scale`` None), ``diameter="auto"`` must not move
    images out of it: the range of sizes is dropped. Trained at the scale auto chose for them,
    the model keeps its sizes and auto keeps working. The object diameter is kept, also a
    built-in's that is known only by its name (which fine-tuning changes).
    """
    import copy

    meta = copy.deepcopy(base.metadata)
    if scale is None:
        meta.pop("object_diameter_range", None)
    known = recorded_diameter(base)
    if known and not meta.get("object_diameter"):
        meta["object_diameter"] = known
    return meta


def model_diameter(bundle: Any) -> float:
    """The object diameter (px) the bundle was trained at.

    Raises:
        ImageError: the bundle does not say (a model trained before this was recorded).
    """
    value = recorded_diameter(bundle)
    if not value:
        raise ImageError(f"The model {bundle.name!r} does not record the object diameter it was trained at; "
                         "segment without a diameter, or use a model that records it.")
    return float(value)


def model_range(bundle: Any) -> tuple[float, float] | None:
    """The range of object diameters (px) the bundle's training images were brought into, or
    None when it does not record one."""
    value = bundle.metadata.get("object_diameter_range")
    if not value:
        return None
    lo, hi = (float(v) for v in value)
    return (lo, hi) if 0 < lo <= hi else None


def prefers_auto(bundle: Any) -> bool:
    """Whether ``diameter="auto"`` is the right default for ``bundle``: it records the range of
    sizes it was trained on, or it was fine-tuned on images at the scale auto chose for them
    (its training record's ``image_scale``). The Segment widget, ``segment`` and the
    Fine-tune widget's preview use auto then."""
    if model_range(bundle) is not None:
        return True
    record = bundle.metadata.get("training") or {}
    return record.get("image_scale") is not None and recorded_diameter(bundle) is not None


def auto_factor(bundle: Any, estimated: float) -> float:
    """The resize factor ``diameter="auto"`` applies to an image whose objects measure
    ``estimated`` px: onto the model's range when it records one (1.0 inside it), else onto its
    one diameter; never more than the largest enlargement :func:`scaled_shape` allows (an
    estimate made of specks must not stop the run)."""
    span = model_range(bundle)
    target = model_diameter(bundle) if span is None else float(np.clip(estimated, *span))
    factor = target / estimated
    return min(factor, float(np.sqrt(MAX_UPSCALE_PIXELS)))


def estimate_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent diameter (px) of the objects in ``labels``, fragments left out; None
    without objects.

    Objects narrower than half the area-weighted median diameter (the diameter of the object
    that holds the median object pixel) are left out first: a model that splits large nuclei
    makes many small pieces, which would otherwise pull the plain median far down.
    """
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    diameters = np.sqrt(4.0 * areas / np.pi)
    order = np.argsort(diameters)
    cumulative = np.cumsum(areas[order])
    weighted = diameters[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    return float(np.median(diameters[diameters >= 0.5 * weighted]))


def describe(result: Any) -> str:
    """One sentence on the scale a :class:`~napari_tiled_unet.segmentation.Segmentation` was
    made at ("" without a diameter): the estimate of ``auto`` and what it did with the image."""
    scale = getattr(result, "scale", None)
    at = "" if scale is None else (" at its own scale" if scale == 1.0 else f" at {scale:.2f}x its size")
    if getattr(result, "estimated_diameter", None):
        return f"Estimated object diameter: {result.estimated_diameter:.1f} px; the image was segmented{at}."
    if getattr(result, "diameter", None):
        return f"Rescaled for objects of {result.diameter:.1f} px (the image was segmented{at})."
    return ""


def check_diameter(diameter: Any) -> float | str:
    """A diameter argument -> a positive float or ``"auto"``.

    Raises:
        ValueError: anything else, in one sentence.
    """
    if isinstance(diameter, str):
        if diameter.strip().lower() == "auto":
            return "auto"
        try:
            diameter = float(diameter)
        except ValueError:
            raise ValueError(f"The object diameter must be a number of pixels or 'auto', got {diameter!r}.") \
                from None
    value = float(diameter)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"The object diameter must be a positive number of pixels, got {diameter}.")
    return value


def in_memory(image: Any) -> np.ndarray:
    """The image as a numpy array, refusing lazy (zarr/dask) images with what to do instead."""
    if isinstance(image, np.ndarray):
        return image
    if hasattr(image, "chunks") or hasattr(image, "attrs"):
        raise ImageError("Object-diameter rescaling works on images held in memory; segment this large "
                         "image without a diameter, or rescale it beforehand.")
    return np.asarray(image)


def spatial_axes(axes: str) -> tuple[int, int]:
    """Positions of Y and X in an axes string such as ``"YX"``, ``"ZCYX"``."""
    return axes.index("Y"), axes.index("X")


def resize(array: np.ndarray, axes: str, shape_yx: tuple[int, int], *, order: int = 1) -> np.ndarray:
    """``array`` with its Y and X axes resized to ``shape_yx`` (float32; other axes untouched).

    Shrinking smooths first (anti-aliasing, ``sigma = (in/out - 1) / 2`` per axis).
    """
    from skimage.transform import resize as _resize

    y, x = spatial_axes(axes)
    out_shape = list(array.shape)
    out_shape[y], out_shape[x] = int(shape_yx[0]), int(shape_yx[1])
    shrinking = out_shape[y] < array.shape[y] or out_shape[x] < array.shape[x]
    return _resize(array.astype(np.float32, copy=False), tuple(out_shape), order=order, mode="reflect",
                   anti_aliasing=shrinking and order > 0, preserve_range=True).astype(np.float32)


def resize_labels(labels: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Integer (Y, X) ``labels`` resized to ``shape_yx`` by nearest neighbour (each output pixel
    takes the label under its centre; ids and dtype are kept)."""
    from scipy import ndimage as ndi

    h, w = labels.shape
    zoom = (shape_yx[0] / h, shape_yx[1] / w)
    return ndi.zoom(labels, zoom, order=0, grid_mode=True, mode="nearest")


def scaled_shape(shape_yx: tuple[int, int], factor: float) -> tuple[int, int]:
    """``shape_yx`` times ``factor``, rounded, at least 1 px.

    Raises:
        ImageError: the result would hold more than :data:`MAX_UPSCALE_PIXELS` times the input's pixels.
    """
    if factor * factor > MAX_UPSCALE_PIXELS:
        raise ImageError(f"An object diameter this small would enlarge the image {factor:.1f} times per "
                         "side; check the diameter (in pixels of this image).")
    return max(1, round(shape_yx[0] * factor)), max(1, round(shape_yx[1] * factor))
