"""The tiled inference engine: a U-Net bundle over an image of any size, window by window.

:func:`predict_iter` is a generator: it yields :class:`~napari_tiled_unet.events.Progress`
(one per batch of windows) and :class:`~napari_tiled_unet.events.Warning` events and returns
the class probabilities; :func:`predict` is its synchronous twin. Closing the generator
cancels within one batch, stops the reader thread and frees the buffers; nothing partial is
returned (a zarr output is marked ``complete = False`` until the last window is written).

Memory is bounded by the window queue: the input is read window by window (numpy, dask,
zarr or anything with ``shape``, ``dtype`` and slicing), normalization uses global
statistics from a strided sample, and the output goes to a zarr store when asked or when
it would not fit the RAM budget.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import normalization, tiling
from ._readahead import ReadAhead
from .errors import ImageError, reading
from .events import Progress, RunControl, WarningEvent, run_to_end
from .model.bundle import ModelBundle, as_bundle
from .runtime import (  # noqa: F401  (available_devices, memory_budget: public here too)
    PRECISIONS,
    Runtime,
    autocast,
    available_devices,
    cpu_has_fast_bf16,
    memory_budget,
    resolve_device,
    resolve_precision,
)
from .tiling import TileSettings

log = logging.getLogger(__name__)

#: most pixels pushed through the network at once when the window and batch are automatic
MAX_BATCH_PIXELS = 2048 * 2048

#: training still imports the autocast policy under this name; it moves to
#: ``Runtime(device, precision).resolve().autocast()`` once training uses the runtime
_autocast = autocast


def bytes_per_pixel(model: torch.nn.Module, precision: str = "fp32") -> int:
    """Estimated peak activation bytes per window pixel for ``model`` at ``precision``."""
    base = getattr(model, "base_channels", 64)
    element = 4 if precision == "fp32" else 2
    return int(tiling.BYTES_PER_PIXEL_PER_BASE_CHANNEL * base * element / 4) + 16


def as_image(image: Any) -> Any:
    """``image`` itself when it is array-like (numpy, dask, zarr: anything with ``shape``,
    ``dtype`` and slicing), else ``np.asarray(image)`` (a nested list is in memory anyway);
    :class:`ImageError` for what cannot be an image."""
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        return image
    try:
        array = np.asarray(image)
    except (TypeError, ValueError) as exc:
        raise ImageError(f"This {type(image).__name__} is not an image; give a numpy, dask or zarr "
                         "array.") from exc
    if array.dtype.kind not in "biuf":
        raise ImageError(f"This {type(image).__name__} is not an image of numbers; give a numpy, dask or "
                         "zarr array.")
    return array


# -- axes -----------------------------------------------------------------------------------


def infer_axes(shape: tuple[int, ...], n_channels: int) -> str:
    """Guess the axes of an image for a model with ``n_channels`` inputs.

    Returns one of ``YX``, ``YXC``, ``CYX``, ``ZYX``, ``ZYXC``, ``ZCYX``; raises
    :class:`ImageError` with what to do when the image cannot fit the model.
    """
    nd = len(shape)
    if nd == 2:
        if n_channels == 1:
            return "YX"
        raise ImageError(
            f"The model expects {n_channels} channels but the image has one; choose a "
            f"{n_channels}-channel image or a model for single-channel images."
        )
    if nd == 3:
        if n_channels == 1:
            return "ZYX"
        if shape[-1] == n_channels and shape[0] != n_channels:
            return "YXC"
        if shape[0] == n_channels:
            return "CYX"
        raise ImageError(
            f"The model expects {n_channels} channels but no axis of this image of shape "
            f"{tuple(shape)} has {n_channels} entries; choose a model made for this image."
        )
    if nd == 4:
        if shape[-1] == n_channels:
            return "ZYXC"
        if shape[1] == n_channels:
            return "ZCYX"
        if n_channels == 1 and shape[-1] in (3, 4):
            raise ImageError("This looks like an RGB stack; the model expects one channel.")
        raise ImageError(
            f"The model expects {n_channels} channels but this image of shape {tuple(shape)} "
            f"has no axis of that size; choose a model made for this image."
        )
    raise ImageError(
        f"Images must be 2D, 2D with channels, or a stack of those; this one has {nd} dimensions."
    )


def _check_axes(axes: str, shape: tuple[int, ...], n_channels: int) -> str:
    axes = axes.upper().replace("T", "Z")
    if len(axes) != len(shape) or sorted(axes) != sorted(set(axes)) or not {"Y", "X"} <= set(axes):
        raise ImageError(f"Axes {axes!r} do not describe an image of shape {tuple(shape)}.")
    if not set(axes) <= set("ZCYX"):
        raise ImageError(f"Axes {axes!r} may only use Z (or T), C, Y and X.")
    have = shape[axes.index("C")] if "C" in axes else 1
    if have != n_channels:
        raise ImageError(
            f"The image has {have} channel{'s' if have != 1 else ''} but the model expects "
            f"{n_channels}; choose a model made for {have}-channel images or another image."
        )
    return axes


@dataclass
class _PlaneSource:
    """Reads (C, y0:y1, x0:x1) windows of one plane of an image with arbitrary axes."""

    image: Any
    axes: str
    z: int | None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[Any] = []
        for a in self.axes:
            index.append({"Z": self.z, "Y": slice(y0, y1), "X": slice(x0, x1), "C": slice(None)}[a])
        with reading("the image"):  # a damaged or truncated file: one sentence, not a decoder's traceback
            block = np.asarray(self.image[tuple(index)])
        kept = [a for a in self.axes if a in "CYX"]
        if "C" not in kept:
            return block[None]
        return np.moveaxis(block, kept.index("C"), 0)


# -- the engine -------------------------------------------------------------------------------


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _make_output(out: Any, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Any:
    if out is None:
        return np.zeros(shape, dtype=np.float32)
    import zarr

    if isinstance(out, zarr.Array):
        if tuple(out.shape) != shape:
            raise ImageError(f"The output store has shape {out.shape}, expected {shape}.")
        arr = out
    else:
        arr = zarr.open_array(str(out), mode="w", shape=shape, chunks=chunks, dtype="float32")
    arr.attrs["complete"] = False
    return arr


#: keyword shorthands of :func:`predict_iter` / :func:`predict` / ``segment``: which value each fills
TILE_OPTIONS = ("mode", "window", "overlap", "blend", "batch_size", "halo", "plan")
RUNTIME_OPTIONS = ("device", "precision", "channels_last", "ram_budget", "prefetch")


def settings_from(tiles: TileSettings | None = None, runtime: Runtime | None = None,
                  **options: Any) -> tuple[TileSettings, Runtime]:
    """The typed settings from typed values and/or their keyword shorthands.

    ``predict(..., window=256, device="cpu")`` is ``predict(..., tiles=TileSettings(window=256),
    runtime=Runtime(device="cpu"))``. A keyword that belongs to neither, or one given beside
    the value it would fill, is a ``TypeError``: nothing is dropped silently.
    """
    unknown = sorted(set(options) - set(TILE_OPTIONS) - set(RUNTIME_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown option(s) {', '.join(unknown)}; the engine takes "
                        f"{', '.join(TILE_OPTIONS + RUNTIME_OPTIONS)} (or tiles=/runtime=).")
    tile_kw = {k: v for k, v in options.items() if k in TILE_OPTIONS}
    run_kw = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
    for value, kw, name in ((tiles, tile_kw, "tiles"), (runtime, run_kw, "runtime")):
        if value is not None and kw:
            raise TypeError(f"Give {', '.join(sorted(kw))} inside {name}=, not beside it.")
    return tiles or TileSettings(**tile_kw), runtime or Runtime(**run_kw)


def predict_iter(
    model: ModelBundle | torch.nn.Module | str,
    image: Any,
    *,
    axes: str | None = None,
    tiles: TileSettings | None = None,
    runtime: Runtime | None = None,
    tta: bool = False,
    out: Any = None,
    stats: np.ndarray | None = None,
    control: RunControl | None = None,
    **options: Any,
) -> Generator[Progress | WarningEvent, None, Any]:
    """Predict class probabilities tile by tile, yielding progress events.

    Args:
        model: a :class:`ModelBundle`, a path or built-in name, or a bare ``UNet`` (then
            percentile normalization and softmax are assumed).
        image: (Y, X), (Y, X, C), (C, Y, X) or a stack (Z, Y, X[, C]) / (Z, C, Y, X); numpy,
            dask, zarr or any array with ``shape``, ``dtype`` and slicing. Never converted
            whole: only windows are read.
        axes: the image's axes as a string (``"YX"``, ``"YXC"``, ``"CYX"``, ``"ZYX"``, ...;
            ``T`` is treated like ``Z``). None: inferred from the shape and the model.
        tiles: the :class:`~napari_tiled_unet.tiling.TileSettings` (mode, window, batch,
            blend, a chunk-aligned or ready plan); default: exact, automatic window and batch.
        runtime: the :class:`~napari_tiled_unet.runtime.Runtime` (device, precision, memory
            layout, RAM budget, read-ahead); default: automatic device, fp32.
        tta: test-time augmentation: average the probabilities of the window and its three
            mirror images (up-down, left-right, both). Four times the computation; exact
            tiling stays exact, because windows are whole 2^depth blocks at block offsets.
        out: None for a numpy result, or a zarr array / path to write into. When None and
            the result would exceed the RAM budget, an error asks for a zarr path.
        stats: normalization statistics (C, 3) computed elsewhere (the cluster path computes
            them once for the whole image); None computes them from ``image``.
        control: a :class:`~napari_tiled_unet.events.RunControl`: cancel between two layers
            of the network (raises :class:`~napari_tiled_unet.events.Cancelled`) and progress
            within a batch, for front ends whose windows take seconds.
        **options: keyword shorthands of ``tiles`` and ``runtime`` (``window=256``,
            ``device="cpu"``, ...; see :func:`settings_from`).

    Yields:
        ``Progress`` after every batch (windows done / total, elapsed, eta) and ``WarningEvent``
        on out-of-memory back-off.

    Returns:
        float32 probabilities (n_classes, Y, X), or (Z, n_classes, Y, X) for stacks, as
        numpy or as the zarr array given in ``out``.
    """
    tiles, runtime = settings_from(tiles, runtime, **options)
    bundle = as_bundle(model)
    net = bundle.model
    n_in = bundle.n_channels
    image = as_image(image)
    shape = tuple(int(s) for s in image.shape)
    axes = _check_axes(axes, shape, n_in) if axes else infer_axes(shape, n_in)
    if not {"f", "i", "u", "b"} >= {np.dtype(image.dtype).kind}:
        raise ImageError(f"Images of type {image.dtype} cannot be segmented; use an integer or float image.")
    runtime = runtime.resolve()
    dev = runtime.device
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    n_planes = shape[axes.index("Z")] if "Z" in axes else 1
    if height == 0 or width == 0 or n_planes == 0:
        raise ImageError("The image is empty (one of its dimensions is 0); choose another image.")
    n_classes = len(bundle.class_names)
    out_shape = (n_classes, height, width) if "Z" not in axes else (n_planes, n_classes, height, width)

    budget = runtime.budget()
    bpp = bytes_per_pixel(net, runtime.precision)
    out_bytes = 4 * math.prod(out_shape)
    if out is None and dev.type == "cpu" and runtime.ram_budget is None:
        import psutil

        if out_bytes > 0.5 * psutil.virtual_memory().available:
            raise ImageError(
                f"The probabilities of this image need {out_bytes / 1e9:.1f} GB, more than half the "
                "free memory; give a zarr path as output so they are written to disk."
            )

    # Global normalization (never per tile): statistics from the whole image or a sample.
    if stats is None:
        stats = normalization.compute_stats(
            image, bundle.normalization, channel_axis=axes.index("C") if "C" in axes else None
        )
    sigmoid = bundle.metadata.get("output_activation") == "sigmoid"
    job = _Job(net, runtime, n_classes, sigmoid, tta, tiles.blend)

    depth = getattr(net, "depth", 4)
    bilinear = bool(getattr(net, "bilinear", False))
    # Pixels per batch: what the budget allows, but no more than MAX_BATCH_PIXELS, past which
    # larger windows stop paying (the halo overhead is already small) and only cost memory.
    batch_pixels = max(min(budget // bpp, MAX_BATCH_PIXELS), 1)
    try:
        plan = tiles.make_plan((height, width), depth, max_pixels=batch_pixels, bilinear=bilinear)
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    batch_size = tiles.batch_size
    if batch_size is None:
        batch_size = max(1, min(16, batch_pixels // (plan.window[0] * plan.window[1])))

    log.info("tiles: %d window(s) of %dx%d px, %s mode, %d per batch; %s", len(plan), *plan.window, plan.mode,
             batch_size, ", ".join(f"{k} {v}" for k, v in runtime.describe().items()))
    chunk = (min(height, 1024), min(width, 1024))
    store = _make_output(out, out_shape, (1, *chunk) if "Z" not in axes else (1, 1, *chunk))
    runtime.place(net)

    start = time.perf_counter()
    total = len(plan) * n_planes
    done = 0
    if control is not None:
        control.windows_done, control.windows_total = 0.0, total
    for z in range(n_planes):
        source = _PlaneSource(image, axes, z if "Z" in axes else None)
        target = store if "Z" not in axes else _PlaneView(store, z)
        while True:  # re-entered only after an out-of-memory back-off shrinks the plan
            gen = _run_plan(job, plan, source, stats, tiling.sink_for(plan, target, n_classes, tiles.blend),
                            batch_size, _LayerWatch(net, control, done))
            try:
                for n in gen:
                    done += n
                    if control is not None:
                        control.windows_total = total
                    yield Progress(done, total, time.perf_counter() - start, "predict")
                break
            except _OutOfMemory as oom:
                done -= oom.done_in_plan
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size //= 2
                    msg = f"Out of GPU memory: continuing with {batch_size} window(s) per batch."
                else:
                    tiles = tiles.smaller((max(plan.window[0] // 2, 1), max(plan.window[1] // 2, 1)))
                    try:
                        plan = tiles.make_plan((height, width), depth, bilinear=bilinear)
                    except ValueError:
                        raise ImageError(
                            "Out of GPU memory even with the smallest window; close other GPU "
                            "programs or run on the CPU."
                        ) from oom.__cause__
                    total += (len(plan) - oom.plan_len) * (n_planes - z)
                    if control is not None:
                        control.windows_total = total
                    msg = f"Out of GPU memory: continuing with {plan.window[0]}x{plan.window[1]} windows."
                log.info(msg)
                yield WarningEvent(msg, kind="out_of_memory")
            finally:
                gen.close()  # on cancel too: stops the reader thread, frees the batch
    if hasattr(store, "attrs"):
        store.attrs["complete"] = True
    return store


@dataclass(frozen=True)
class _Job:
    """What every window of one prediction shares: the network and how to run it."""

    net: torch.nn.Module
    runtime: Runtime  # resolved
    n_classes: int
    sigmoid: bool
    tta: bool
    blend: str


class _OutOfMemory(Exception):
    def __init__(self, done_in_plan: int, plan_len: int) -> None:
        super().__init__("out of memory")
        self.done_in_plan = done_in_plan
        self.plan_len = plan_len


class _PlaneView:
    """Write access to plane ``z`` of a (Z, C, Y, X) output."""

    def __init__(self, store: Any, z: int) -> None:
        self.store, self.z = store, z

    def __setitem__(self, key: tuple, value: np.ndarray) -> None:
        self.store[(self.z, *key)] = value

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.store[(self.z, *key)]


def _batches(plan: tiling.TilePlan, batch_size: int) -> Iterator[list[tiling.Window]]:
    wins = list(plan.windows)
    for i in range(0, len(wins), batch_size):
        yield wins[i : i + batch_size]


def _read_batch(source: _PlaneSource, wins: list[tiling.Window], stats: np.ndarray, height: int,
                width: int, pin: bool) -> torch.Tensor:
    wy, wx = wins[0].shape
    batch = torch.zeros((len(wins), stats.shape[0], wy, wx), dtype=torch.float32, pin_memory=pin)
    arr = batch.numpy()
    for i, w in enumerate(wins):
        # Only the part inside the image is read; the rest stays 0, as the whole-image pass pads.
        y1, x1 = min(w.y1, height), min(w.x1, width)
        block = source.read(w.y0, y1, w.x0, x1)
        normalization.apply(block, stats, out=arr[i, :, : y1 - w.y0, : x1 - w.x0])
    return batch


class _LayerWatch:
    """Forward pre-hooks on the network's convolutions that act on a :class:`RunControl`:
    cancel between two layers, and the share of the running batch's layers done.

    Every convolution of a U-Net level costs about the same (each level has a quarter of the
    pixels and twice the channels, so (1/4) x 2 x 2 the multiply-adds), so the share of
    convolutions run is a fair share of the work. Costs one Python call per convolution
    (see docs/benchmarks.md, "Cancel within a window").
    """

    def __init__(self, net: torch.nn.Module, control: RunControl | None, done: int) -> None:
        self.control, self.done = control, done
        self.convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        self.calls, self.per_batch, self.batch = 0, 1, 0
        self.handles: list[Any] = []

    def __enter__(self) -> _LayerWatch:
        if self.control is not None:
            self.handles = [m.register_forward_pre_hook(self._hook) for m in self.convs]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def start_batch(self, n_windows: int, passes: int) -> None:
        self.calls, self.batch = 0, n_windows
        self.per_batch = max(len(self.convs) * passes, 1)

    def end_batch(self) -> None:
        self.done += self.batch
        self.batch = 0
        if self.control is not None:
            self.control.windows_done = float(self.done)

    def _hook(self, module: Any, args: Any) -> None:
        control = self.control
        control.check()
        self.calls += 1
        control.windows_done = self.done + self.batch * min(self.calls / self.per_batch, 1.0)


def _run_plan(job: _Job, plan: tiling.TilePlan, source: _PlaneSource, stats: np.ndarray,
              sink: tiling.Sink, batch_size: int, watch: _LayerWatch | None = None
              ) -> Generator[int, None, None]:
    """Run every window of ``plan`` for one plane into ``sink``; yields the windows finished."""
    height, width = plan.shape
    runtime = job.runtime
    batches = list(_batches(plan, batch_size))
    pin = runtime.pin_memory
    reader = ReadAhead(((b, _read_batch(source, b, stats, height, width, pin)) for b in batches),
                       enabled=runtime.prefetch and len(batches) > 1, name="tiled-unet-reader")
    done = 0
    watch = watch or _LayerWatch(job.net, None, 0)
    try:
        for wins, host in reader:
            x = runtime.batch(host)
            try:
                watch.start_batch(len(wins), len(TTA_FLIPS) if job.tta else 1)
                with watch, torch.inference_mode(), runtime.autocast():
                    probs = _forward(job.net, x, job.sigmoid, job.tta)
                probs = probs.cpu().numpy()
                watch.end_batch()
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not _is_oom(exc):
                    raise
                raise _OutOfMemory(done, len(plan)) from exc
            finally:
                x = None
            for w, p in zip(wins, probs):
                sink.put(w, p)
            done += len(wins)
            probs = None
            _trim_heap()
            yield len(wins)
        sink.close()
    finally:
        reader.close()


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc only; a no-op elsewhere).

    Each batch allocates and frees tens of MB in two threads; without this, glibc keeps the
    freed blocks in per-thread arenas and the resident size creeps up with the number of
    windows instead of staying at one batch's worth.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc() if sys.platform.startswith("linux") else None


#: the mirror images averaged by test-time augmentation (dims of an (N, C, Y, X) batch)
TTA_FLIPS = ((), (-2,), (-1,), (-2, -1))


def _forward(net: torch.nn.Module, x: torch.Tensor, sigmoid: bool, tta: bool) -> torch.Tensor:
    """Probabilities of a batch; with ``tta`` the mean over :data:`TTA_FLIPS`.

    Mirroring a window whose size is a multiple of 2^depth maps the pooling blocks onto
    pooling blocks, so the mirrored pass is as tileable as the plain one.
    """
    if not tta:
        return _activate(net(x).float(), sigmoid)
    total = None
    for dims in TTA_FLIPS:
        probs = _activate(net(torch.flip(x, dims) if dims else x).float(), sigmoid)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total.add_(probs)
    return total.div_(len(TTA_FLIPS))


def _activate(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    if sigmoid:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def predict(model: ModelBundle | torch.nn.Module | str, image: Any, on_event=None, **kwargs: Any) -> Any:
    """Synchronous twin of :func:`predict_iter` (same arguments): returns the probabilities.

    ``on_event`` (optional) receives every event (e.g. to drive a tqdm bar).
    """
    return run_to_end(predict_iter(model, image, **kwargs), on_event)


def whole_image_probabilities(bundle: ModelBundle | torch.nn.Module, image: np.ndarray,
                              axes: str | None = None, channels_last: bool = False,
                              tta: bool = False) -> np.ndarray:
    """Reference: one forward pass over the whole (2D) image, normalized the same way.

    For tests and benchmarks; holds everything in memory. ``channels_last`` runs the pass in
    that memory layout (the tiled engine's default on CPU), for a like-for-like timing.
    ``tta`` mirrors the image zero-padded to whole 2^depth blocks (as the tiled engine's
    windows are), so the two agree.
    """
    bundle = as_bundle(bundle)
    shape = tuple(image.shape)
    axes = _check_axes(axes, shape, bundle.n_channels) if axes else infer_axes(shape, bundle.n_channels)
    if "Z" in axes:
        raise ImageError("The whole-image reference takes one plane.")
    stats = normalization.compute_stats(
        image, bundle.normalization, channel_axis=axes.index("C") if "C" in axes else None
    )
    src = _PlaneSource(image, axes, None)
    x = normalization.apply(src.read(0, shape[axes.index("Y")], 0, shape[axes.index("X")]), stats)
    net = bundle.model.eval().cpu()
    with torch.inference_mode():
        xt = torch.from_numpy(x)[None]
        h, w = xt.shape[-2:]
        if tta:
            m = getattr(net, "size_multiple", 1)
            xt = torch.nn.functional.pad(xt, [0, -w % m, 0, -h % m])
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        probs = _forward(net, xt, bundle.metadata.get("output_activation") == "sigmoid", tta)
    return probs[0, :, :h, :w].numpy()
