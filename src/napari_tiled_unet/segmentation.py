"""Image -> labels: the tiled engine's probabilities followed by post-processing.

:func:`segment_iter` is the generator every front end uses (widget, CLI, cluster, scripts);
:func:`segment` is its synchronous twin.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .events import Progress, RunControl, WarningEvent, run_to_end
from .inference import predict_iter, settings_from
from .model.bundle import ModelBundle, as_bundle
from .postprocess import PostprocessParams
from .runtime import Runtime
from .tiling import TileSettings


@dataclass
class Segmentation:
    """The result of :func:`segment`.

    Attributes:
        labels: int32 (Y, X) or (Z, Y, X): object ids (instances) or class indices (semantic).
        probabilities: float32 (C, Y, X) or (Z, C, Y, X), numpy or zarr; kept so that new
            thresholds can be applied without running the network again.
        task: ``"instances"`` or ``"semantic"``.
        class_names: names of the classes.
        params: the post-processing parameters used (``InstanceParams`` or ``SemanticParams``).
        seconds: wall time of prediction and post-processing.
        objects: per-object measurements (columns, see :mod:`~napari_tiled_unet.measure`) once
            measured; None before.
        diameter: the object diameter (px of the input) the image was rescaled for, or None.
        estimated_diameter: with ``diameter="auto"``, the estimated diameter of the objects (px
            of the input) that set the scale of the last pass.
        scale: the factor the image was resized by before the network (1.0: its own scale), or
            None without a diameter.
    """

    labels: Any
    probabilities: Any
    task: str
    class_names: list[str]
    params: PostprocessParams | None = None
    seconds: float = 0.0
    objects: dict[str, Any] | None = None
    diameter: float | None = None
    estimated_diameter: float | None = None
    scale: float | None = None

    @property
    def n_objects(self) -> int:
        """Objects found (instances) or classes present besides the first (semantic).

        Blockwise labels carry their count (``attrs["n_objects"]``), so this reads nothing."""
        labels = np.asarray(self.labels) if not hasattr(self.labels, "attrs") else self.labels
        if self.task == "instances":
            stored = labels.attrs.get("n_objects") if hasattr(labels, "attrs") else None
            return int(stored) if stored is not None else _max(labels)
        return len(np.unique(np.asarray(labels))) - 1


def _max(a: Any) -> int:
    if isinstance(a, np.ndarray):
        return int(a.max()) if a.size else 0
    import dask.array as da

    return int(da.from_zarr(a).max().compute()) if hasattr(a, "attrs") else int(np.max(a))


def postprocess_params(bundle: ModelBundle, overrides: dict[str, Any] | PostprocessParams | None = None
                       ) -> PostprocessParams:
    """The bundle's default post-processing parameters updated with ``overrides`` (None values
    ignored), checked, as the typed value of the bundle's task."""
    from . import postprocess, settings

    if isinstance(overrides, (postprocess.InstanceParams, postprocess.SemanticParams)):
        overrides = overrides.as_dict()
    params = dict(bundle.postprocess)
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return postprocess.params_for(bundle.task, settings.postprocess(params))


#: the side of the blocks an in-memory result is post-processed in with ``in_blocks`` (the
#: widget): the longest single call (a watershed, the merge of enclosed objects on a block's
#: window) then holds the interpreter about 50 ms instead of 0.15-0.4 s with post-processing's
#: default of 1024, which froze napari; it costs 1.1-1.5x the post-processing time
#: (4096x4096 on 2 cores: 4.4-4.6 s against 3.2-3.8 s, the same objects)
IN_MEMORY_BLOCK = 512
#: in-memory results up to this many pixels are post-processed whole even with ``in_blocks``
#: (one call of at most ~0.2 s; blocks would make objects over 96 px inexact near borders)
IN_MEMORY_WHOLE = 1024 * 1024
#: in-memory results up to this many pixels whose blocks hold objects wider than the overlap
#: (nuclei of 100-180 px at 63x) are post-processed again whole, exact at the price of one
#: longer call (~0.3 s at 1024x1280); larger ones keep the blocks' labels and the warning
IN_MEMORY_EXACT = 2048 * 2048


def labels_from(probabilities: Any, task: str, params: PostprocessParams | dict[str, Any] | None = None,
                out: Any = None, on_event=None) -> Any:
    """Synchronous twin of :func:`labels_from_iter`; ``on_event`` receives its events."""
    return run_to_end(labels_from_iter(probabilities, task, params, out), on_event)


def labels_from_iter(probabilities: Any, task: str, params: PostprocessParams | dict[str, Any] | None = None,
                     out: Any = None, in_blocks: bool = False
                     ) -> Generator[Progress | WarningEvent, None, Any]:
    """Post-process probabilities of one image or a stack, in memory or blockwise.

    ``probabilities`` is (C, Y, X) or (Z, C, Y, X); numpy in memory (one step per plane),
    zarr/dask blockwise (written to ``out`` when given), yielding ``Progress`` per block (and
    a ``WarningEvent`` when a blockwise result may not be exact) and stopping within a block
    when closed. ``params``: typed, or a mapping read by
    :func:`~napari_tiled_unet.postprocess.params_for`. With ``in_blocks``, numpy (C, Y, X)
    larger than one block goes the blockwise way too (same objects, ids numbered in another
    order; numpy labels back): a front end then counts blocks and can stop between them, and
    no single call holds the interpreter for seconds.
    """
    from . import postprocess

    params = postprocess.params_for(task, params)
    if isinstance(probabilities, np.ndarray):
        if in_blocks and probabilities.ndim == 3 and math.prod(probabilities.shape[1:]) > IN_MEMORY_WHOLE:
            import dask.array as da

            # name=False: dask would otherwise hash the whole array (0.3 s of the GIL at 4096^2)
            blocks = da.from_array(probabilities, chunks=(-1, IN_MEMORY_BLOCK, IN_MEMORY_BLOCK), name=False)
            inexact: list[WarningEvent] = []
            labels = yield from _exact_only(
                _blockwise(blocks, task, params, None, block_size=IN_MEMORY_BLOCK), inexact)
            if not inexact:
                return np.asarray(labels[...])
            if math.prod(probabilities.shape[1:]) <= IN_MEMORY_EXACT:
                # objects wider than the blocks' overlap (large nuclei): the whole image at once
                # is exact, where blocks could cut an object near their borders
                return postprocess.labels_from_probabilities(probabilities, task, params)
            yield inexact[0]
            return np.asarray(labels[...])
        if probabilities.ndim == 3:
            return postprocess.labels_from_probabilities(probabilities, task, params)
        progress = postprocess.ProgressCounter(len(probabilities))
        planes = []
        for p in probabilities:
            planes.append(postprocess.labels_from_probabilities(p, task, params))
            yield progress.add(1)
        return _stack_unique(planes, task)
    return (yield from _blockwise(probabilities, task, params, out))


def _blockwise(probabilities: Any, task: str, params: Any, out: Any, **kwargs: Any
               ) -> Generator[Progress | WarningEvent, None, Any]:
    """Zarr or dask (C, Y, X) probabilities post-processed blockwise (``kwargs``: block_size)."""
    import dask.array as da

    from . import postprocess

    arr = probabilities if isinstance(probabilities, da.Array) else da.from_zarr(probabilities)
    if arr.ndim != 3:
        raise NotImplementedError("Blockwise post-processing of stacks: segment plane by plane.")
    if task == "instances":
        return (yield from postprocess.instances_blockwise_iter(arr, out, params, **kwargs))
    return (yield from postprocess.semantic_blockwise_iter(arr, out, params, **kwargs))


def _exact_only(events: Generator, inexact: list[WarningEvent]
                ) -> Generator[Progress | WarningEvent, Any, Any]:
    """``yield from events``, except the warning that a blockwise result may not be exact,
    which is appended to ``inexact`` instead (the caller then post-processes whole, or passes
    it on)."""
    try:
        event = next(events)
        while True:
            if isinstance(event, WarningEvent) and event.kind == "inexact":
                inexact.append(event)
                event = next(events)
                continue
            event = events.send((yield event))
    except StopIteration as stop:
        return stop.value
    finally:
        events.close()


def _stack_unique(planes: list[np.ndarray], task: str) -> np.ndarray:
    """Stack per-plane labels; object ids are made unique across planes."""
    out = np.stack(planes).astype(np.int32)
    if task == "instances":
        offset = 0
        for plane in out:
            n = int(plane.max())
            plane[plane > 0] += offset
            offset += n
    return out


@dataclass(frozen=True)
class _Passes:
    """What every network pass of one segment call shares (the diameter search makes several)."""

    tiles: TileSettings
    runtime: Runtime
    tta: bool = False
    stats: Any = None
    control: RunControl | None = None
    in_blocks: bool = False  # see labels_from_iter

    def predict(self, bundle: ModelBundle, image: Any, axes: str | None, out: Any = None):
        return predict_iter(bundle, image, axes=axes, tiles=self.tiles, runtime=self.runtime, tta=self.tta,
                            out=out, stats=self.stats, control=self.control)


def segment_iter(
    model: ModelBundle | str,
    image: Any,
    *,
    axes: str | None = None,
    channel: int | str | None = None,
    postprocess: dict[str, Any] | PostprocessParams | None = None,
    probabilities_out: Any = None,
    labels_out: Any = None,
    diameter: float | str | None = None,
    tiles: TileSettings | None = None,
    runtime: Runtime | None = None,
    tta: bool = False,
    stats: Any = None,
    control: RunControl | None = None,
    in_blocks: bool = False,
    **options: Any,
) -> Generator[Progress | WarningEvent, None, Segmentation]:
    """Segment ``image``: yields the engine's events, returns a :class:`Segmentation`.

    Args:
        model: bundle, path or built-in name.
        image: (Y, X), RGB(A) (Y, X, 3|4), (Y, X, C), (C, Y, X) or a stack of those;
            numpy, dask, zarr or anything with ``shape``, ``dtype`` and slicing.
        axes: the image's axes (e.g. ``"YXC"``, ``"CYX"``, ``"ZYX"``); None: the rule of
            :func:`~napari_tiled_unet.imageview.interpret` (the CLI and the widget use it too).
        channel: the channel that holds the nuclei (an index, or ``"luminance"`` for RGB);
            None: all channels when the model takes them, the luminance of RGB(A), else an
            error that asks for it.
        postprocess: overrides of the bundle's post-processing defaults (e.g.
            ``{"min_size": 30}``), or the typed parameters.
        probabilities_out: zarr path/array for the probabilities (large images).
        labels_out: zarr path/array for the labels (used with ``probabilities_out``).
        diameter: the objects' diameter in pixels of ``image`` (or ``"auto"``: estimated from a
            first pass): the image is rescaled so that they match the diameter the model was
            trained at, and the labels come back at the input's shape (see
            :mod:`~napari_tiled_unet.objectsize`). None: no rescaling.
        tiles, runtime, tta, stats, control: as in
            :func:`~napari_tiled_unet.inference.predict_iter`.
        in_blocks: post-process in-memory results larger than one block blockwise too
            (see :func:`labels_from_iter`; the widget's progress count and Cancel).
        **options: keyword shorthands of ``tiles`` and ``runtime`` (``window=256``,
            ``device="cpu"``, ...).
    """
    tiles, runtime = settings_from(tiles, runtime, **options)
    bundle = as_bundle(model)
    params = postprocess_params(bundle, postprocess)  # checked before the network runs
    passes = _Passes(tiles, runtime.resolve(), tta, stats, control, in_blocks)
    if diameter is not None:
        return (yield from _segment_at_diameter(bundle, image, diameter, postprocess, passes,
                                                probabilities_out is not None or labels_out is not None,
                                                axes, channel))
    return (yield from _segment_once(bundle, image, params, passes, axes, channel, probabilities_out,
                                     labels_out))


def _segment_once(bundle: ModelBundle, image: Any, params: PostprocessParams, passes: _Passes,
                  axes: str | None, channel: int | str | None, probabilities_out: Any = None,
                  labels_out: Any = None) -> Generator[Progress | WarningEvent, None, Segmentation]:
    from .imageview import ambiguity_warning, prepare
    from .io import ChunkWatch

    start = time.perf_counter()
    watch = ChunkWatch.of(image)
    if watch is not None and watch.absent_message():
        yield WarningEvent(watch.absent_message())
    seen, seen_axes, view = prepare(image, bundle.n_channels, axes=axes, channel=channel)
    message = ambiguity_warning(view, tuple(image.shape))
    if message:
        yield WarningEvent(message)
    probs = yield from passes.predict(bundle, seen, seen_axes, out=probabilities_out)
    if watch is not None:
        watch.check()  # every pixel has been read: a chunk gone since the start means a wrong result
    yield Progress(0, 1, 0.0, "postprocess")
    labels = yield from labels_from_iter(probs, bundle.task, params, out=labels_out,
                                         in_blocks=passes.in_blocks)
    elapsed = time.perf_counter() - start
    return Segmentation(labels, probs, bundle.task, bundle.class_names, params, elapsed)


def _segment_at_diameter(bundle: ModelBundle, image: Any, diameter: float | str, postprocess: Any,
                         passes: _Passes, to_zarr: bool, axes: str | None, channel: int | str | None,
                         ) -> Generator[Progress | WarningEvent, None, Segmentation]:
    """:func:`segment_iter` with the image rescaled to the model's object diameter.

    ``"auto"``: a first pass at the image's own scale, then up to two more, each at the scale
    that :func:`objectsize.auto_factor` asks for given the diameter estimated from the previous
    pass, until that scale agrees with the one of the pass within 15 % (a model that splits
    large nuclei underestimates them at first).
    """
    from . import objectsize
    from .errors import ImageError
    from .imageview import ambiguity_warning, prepare

    start = time.perf_counter()
    diameter = objectsize.check_diameter(diameter)
    trained = objectsize.model_diameter(bundle)
    if to_zarr:
        raise ImageError("With an object diameter the results stay in memory; leave out the zarr "
                         "outputs or the diameter.")
    seen, axes, view = prepare(objectsize.in_memory(image), bundle.n_channels, axes=axes, channel=channel)
    message = ambiguity_warning(view, tuple(image.shape))
    if message:
        yield WarningEvent(message)
    arr = np.asarray(seen[...]) if not isinstance(seen, np.ndarray) else seen  # the chosen channel(s)
    axes = axes.upper().replace("T", "Z")
    if diameter != "auto":
        result = yield from _rescaled_pass(bundle, arr, axes, trained / float(diameter), postprocess, passes)
        result.diameter = float(diameter)
        result.scale = trained / float(diameter)
    else:
        result = yield from _segment_once(bundle, arr, postprocess_params(bundle, postprocess), passes, axes,
                                          None)
        factor, estimated = 1.0, None  # the first pass is at the image's own scale
        for _ in range(objectsize.AUTO_PASSES - 1):
            found = objectsize.estimate_diameter(result.labels)
            if found is None:
                yield WarningEvent("No object was found, so the object diameter could not be estimated; "
                                   + ("the image was segmented at its own scale." if estimated is None else
                                      f"the image was segmented at {factor:.2f}x its size."))
                result.scale = factor
                return result
            estimated = found
            wanted = objectsize.auto_factor(bundle, found)
            if abs(wanted / factor - 1) < 0.15:
                break
            factor = wanted
            result = yield from _rescaled_pass(bundle, arr, axes, factor, postprocess, passes)
        result.estimated_diameter = float(estimated)
        result.diameter = trained / factor
        result.scale = factor
    result.seconds = time.perf_counter() - start
    return result


def _rescaled_pass(bundle: ModelBundle, arr: np.ndarray, axes: str, factor: float, postprocess: Any,
                   passes: _Passes) -> Generator[Progress | WarningEvent, None, Segmentation]:
    """Segment ``arr`` resized by ``factor``; probabilities and labels at ``arr``'s size."""
    from dataclasses import replace

    from . import objectsize

    y, x = objectsize.spatial_axes(axes)
    shape_yx = (arr.shape[y], arr.shape[x])
    small = objectsize.resize(arr, axes, objectsize.scaled_shape(shape_yx, factor))
    probs = yield from passes.predict(bundle, small, axes)
    del small
    # probabilities are (C, Y, X) or (Z, C, Y, X): back to the input's grid
    probs = objectsize.resize(np.asarray(probs), "CYX" if probs.ndim == 3 else "ZCYX", shape_yx)
    params = postprocess_params(bundle, postprocess)
    overrides = postprocess.as_dict() if hasattr(postprocess, "as_dict") else (postprocess or {})
    if "min_size" in bundle.postprocess and not overrides.get("min_size"):
        # the model's default is in pixels of its own scale; the labels are in the input's
        params = replace(params, min_size=max(1, round(bundle.postprocess["min_size"] / factor**2)))
    yield Progress(0, 1, 0.0, "postprocess")
    labels = yield from labels_from_iter(probs, bundle.task, params, in_blocks=passes.in_blocks)
    return Segmentation(labels, probs, bundle.task, bundle.class_names, params)


def segment(model: ModelBundle | str, image: Any, on_event=None, **kwargs: Any) -> Segmentation:
    """Synchronous twin of :func:`segment_iter` (same arguments)."""
    return run_to_end(segment_iter(model, image, **kwargs), on_event)
