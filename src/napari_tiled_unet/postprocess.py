"""Probabilities -> labels: one id per object (instances) or a class index (semantic).

In memory for images that fit, and blockwise (dask or zarr in, zarr out) for larger ones; both
paths run the same steps and give the same partition of the image (tested).

Instances (3 classes: background, interior, boundary), for probabilities ``p`` (3, Y, X):

1. foreground = 1 - p[0] > ``foreground_threshold`` (pixelwise);
2. seeds = connected components of p[1] > ``seed_threshold`` inside the foreground;
3. seeds grow by watershed inside the foreground over the elevation p[2] - p[1], so touching
   objects meet where the boundary is most probable; foreground components that hold no seed
   become objects of their own;
4. holes (background enclosed by a single object) take that object's id, and so does whatever
   lies inside an object (fragments at bright spots: :mod:`napari_tiled_unet.enclosed`);
   objects smaller than ``min_size`` pixels (or than ``min_size_fraction`` of the image's typical
   object) are dropped; ids are numbered 1..N.

Why the blockwise result equals the in-memory one
-------------------------------------------------
Seeds and foreground components are labelled globally (each block with
``scipy.ndimage.label``, joined across block faces with
``scipy.sparse.csgraph.connected_components``), so every seed carries the same id in every
block. (``dask_image.ndmeasure.label`` does the same but builds its task graph in time that
grows with the square of the number of blocks: minutes for a few hundred blocks, see
dask/dask-image#391.) The watershed of each block then runs on the
block plus a margin, and it floods with priorities that are all distinct and depend only on the
pixel itself: the elevation quantised to 4096 levels, ties broken by a fixed permutation of the
pixel's position in the whole image. With distinct priorities a flood is fully determined by
its priorities (no tie is left to the queue's internals), and a pixel's object is decided by
minimax paths that stay inside that object; so every pixel whose object, plus one pixel around
it, lies inside the block's window gets the same id as in the whole-image flood.

Assumption: every object is at most ``overlap`` pixels tall and wide. Clusters of touching
objects may be any size. Hole filling needs the objects around the block to be right as well,
so with ``fill_holes`` the margin read around each block is ``2 * overlap``. Blocks holding an
object that reaches ``overlap`` pixels beyond the block are counted and reported with a
warning (raise ``overlap`` then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .blockwise import ProgressCounter
from .blockwise import blocks as _blocks
from .blockwise import compute_iter as _compute_iter
from .blockwise import shared as _shared
from .enclosed import absorb_enclosed
from .events import Progress, WarningEvent, run_to_end
from .io import scratch_prefix, store_path

log = logging.getLogger(__name__)

#: Largest object (pixels, in y and in x) for which blockwise labels equal in-memory ones.
DEFAULT_OVERLAP = 96


# -- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstanceParams:
    """Post-processing of an instances model (see :func:`instances_from_probabilities`)."""

    foreground_threshold: float = 0.5
    seed_threshold: float = 0.7
    min_size: int = 16
    fill_holes: bool = True
    min_size_fraction: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SemanticParams:
    """Post-processing of a semantic model (see :func:`semantic_from_probabilities`)."""

    thresholds: dict[int, float] | list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PostprocessParams = InstanceParams | SemanticParams

INSTANCE_PARAMS = tuple(f.name for f in fields(InstanceParams))


def params_for(task: str, values: dict[str, Any] | PostprocessParams | None = None) -> PostprocessParams:
    """The typed parameters of ``task`` from a mapping (e.g. a bundle's ``postprocess``
    metadata); None values take the defaults. Parameters of the other task, or unknown to this
    version, are ignored with a log message (a model file may come from a newer version)."""
    kinds = {"instances": InstanceParams, "semantic": SemanticParams}
    if task not in kinds:
        raise ValueError(f"Unknown task {task!r}: the model's task must be 'instances' or 'semantic'.")
    kind = kinds[task]
    if isinstance(values, kind):
        return values
    if isinstance(values, (InstanceParams, SemanticParams)):
        raise ValueError(f"{type(values).__name__} given for a model whose task is {task!r}.")
    values = dict(values or {})
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        log.info("Ignoring post-processing parameters %s (known: %s).", unknown, sorted(names))
    return kind(**{k: v for k, v in values.items() if k in names and v is not None})

_LEVELS = 4096  # elevation steps over [-1, 1]: ~5e-4, finer than any useful threshold
_MULTIPLIERS = (1_000_003, 999_983, 1_000_033)  # primes for the position permutation
_MAX_PIXELS = 2**53 // (_LEVELS + 1)  # flood priorities must stay exact in float64


# -- pixelwise steps (the same numpy code runs on whole images and on blocks) ---------------


def _foreground(p_background: np.ndarray, threshold: float) -> np.ndarray:
    return (1.0 - p_background.astype(np.float32)) > threshold


def _seeds(p_interior: np.ndarray, foreground: np.ndarray, threshold: float) -> np.ndarray:
    return (p_interior.astype(np.float32) > threshold) & foreground


def _levels(p_interior: np.ndarray, p_boundary: np.ndarray) -> np.ndarray:
    """Elevation p(boundary) - p(interior) quantised to 0.._LEVELS, int16."""
    elevation = p_boundary.astype(np.float32) - p_interior.astype(np.float32)
    q = np.rint((elevation + 1.0) * (_LEVELS / 2))
    return np.nan_to_num(np.clip(q, 0, _LEVELS), nan=_LEVELS).astype(np.int16)


def _flood_priorities(
    levels: np.ndarray, origin: tuple[int, int], image_shape: tuple[int, int]
) -> np.ndarray:
    """Distinct float64 priorities: level first, then a fixed permutation of the global position.

    The permutation (position * a prime, modulo the pixel count) spreads ties on flat
    stretches of probability over the plane, so floods cross plateaus evenly rather than in
    raster order.
    """
    n_pixels = image_shape[0] * image_shape[1]
    if n_pixels > _MAX_PIXELS:
        raise ValueError(f"Images above {_MAX_PIXELS:.2g} pixels cannot be post-processed; split the image.")
    mult = next(m for m in _MULTIPLIERS if np.gcd(m, n_pixels) == 1)
    rows = np.arange(origin[0], origin[0] + levels.shape[0], dtype=np.int64)[:, None]
    cols = np.arange(origin[1], origin[1] + levels.shape[1], dtype=np.int64)[None, :]
    position = (rows * image_shape[1] + cols) * mult % n_pixels
    return (levels.astype(np.int64) * n_pixels + position).astype(np.float64)


def _objects(
    levels: np.ndarray,
    markers: np.ndarray,
    components: np.ndarray,
    n_seeds: int,
    origin: tuple[int, int],
    image_shape: tuple[int, int],
) -> np.ndarray:
    """Watershed from the seeds inside the foreground; seedless components keep their own id.

    ``markers`` (seed ids 1..n_seeds) and ``components`` (foreground component ids, 0 outside
    the foreground) are global labellings; the result is int64 with seeds' ids for flooded
    pixels and ``n_seeds + component id`` for components without a seed.
    """
    from skimage.segmentation import watershed

    foreground = components > 0
    if markers.any():
        priorities = _flood_priorities(levels, origin, image_shape)
        labels = watershed(priorities, markers.astype(np.int32), mask=foreground).astype(np.int64)
    else:
        labels = np.zeros(markers.shape, np.int64)
    orphans = foreground & (labels == 0)
    labels[orphans] = components[orphans].astype(np.int64) + n_seeds
    return labels


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    """Give each background region enclosed by a single object that object's id.

    Regions touching the array's edge are not holes. Connectivity is 4 throughout.
    """
    background = labels == 0
    holes = ndi.binary_fill_holes(~background) & background
    if not holes.any():
        return labels
    hole_ids, n_holes = ndi.label(holes)
    # (hole, neighbouring object) pairs: a hole's neighbours outside it are all objects
    pairs = []
    for a, b in (
        (hole_ids[:-1], labels[1:]), (hole_ids[1:], labels[:-1]),
        (hole_ids[:, :-1], labels[:, 1:]), (hole_ids[:, 1:], labels[:, :-1]),
    ):
        touching = (a > 0) & (b > 0)
        pairs.append(np.stack([a[touching], b[touching]]))
    # unique pairs through one int64 key: np.unique(axis=1) sorts a structured view and
    # holds the GIL for long enough to freeze a GUI thread on large images
    both = np.concatenate(pairs, axis=1).astype(np.int64)
    span = int(both[1].max()) + 1 if both.size else 1
    keys = np.unique(both[0] * span + both[1])
    hole, owner = keys // span, keys % span
    single = np.bincount(hole, minlength=n_holes + 1) == 1
    fill = np.zeros(n_holes + 1, labels.dtype)
    keep = single[hole]
    fill[hole[keep]] = owner[keep]
    return np.where(fill[hole_ids] > 0, fill[hole_ids], labels)


def typical_size(sizes: np.ndarray) -> float:
    """The area of the object that holds the median object pixel (``sizes[0]``, the background,
    left out; 0.0 without objects): many small fragments barely move it, unlike the plain median."""
    areas = np.sort(np.asarray(sizes[1:], dtype=np.int64))
    areas = areas[areas > 0]
    if areas.size == 0:
        return 0.0
    cumulative = np.cumsum(areas)
    return float(areas[np.searchsorted(cumulative, cumulative[-1] / 2)])


def smallest_kept(sizes: np.ndarray, min_size: int, min_size_fraction: float = 0.0) -> int:
    """The smallest object size kept: ``min_size``, raised to ``min_size_fraction`` of the
    image's :func:`typical_size` (a global figure, so blockwise results stay exact)."""
    cut = max(int(min_size), 1)
    if min_size_fraction > 0:
        cut = max(cut, int(np.ceil(min_size_fraction * typical_size(sizes))))
    return cut


def _numbering(sizes: np.ndarray, min_size: int, min_size_fraction: float = 0.0) -> np.ndarray:
    """Lookup table old id -> new id that drops objects below :func:`smallest_kept` and numbers
    the rest 1..N."""
    keep = sizes >= smallest_kept(sizes, min_size, min_size_fraction)
    keep[0] = False
    lut = np.zeros(len(sizes), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut


def _check_instance_probabilities(shape: tuple[int, ...]) -> None:
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(
            f"Instance post-processing needs probabilities of shape (3, Y, X), got {tuple(shape)}: "
            "use a model trained for instances (background, interior, boundary)."
        )


# -- in memory ------------------------------------------------------------------------------


def instances_from_probabilities(
    prob: np.ndarray,
    foreground_threshold: float = 0.5,
    seed_threshold: float = 0.7,
    min_size: int = 16,
    fill_holes: bool = True,
    min_size_fraction: float = 0.0,
) -> np.ndarray:
    """Objects from 3-class probabilities: seeds grown by watershed inside the foreground.

    Parameters
    ----------
    prob : np.ndarray
        float (3, Y, X): probabilities of background, interior and boundary (softmax, summing
        to 1 per pixel).
    foreground_threshold : float
        A pixel is foreground where 1 - p(background) exceeds this.
    seed_threshold : float
        Seeds are the connected components of p(interior) > ``seed_threshold`` (inside the
        foreground); each seed becomes one object, so touching objects stay apart as long
        as their interiors are separated by boundary.
    min_size : int
        Objects smaller than this many pixels (after hole filling) are removed.
    fill_holes : bool
        Give background regions enclosed by a single object to that object, and merge
        whatever lies inside an object (other objects too) into it.
    min_size_fraction : float
        Objects smaller than this fraction of the image's typical object (the area of the
        object that holds the median object pixel) are removed too: fragments beside large
        nuclei, while small nuclei in an image of small nuclei stay. 0 turns it off.

    Returns
    -------
    np.ndarray
        int32 (Y, X): 0 for background, objects numbered 1..N.
    """
    prob = np.asarray(prob)
    _check_instance_probabilities(prob.shape)
    foreground = _foreground(prob[0], foreground_threshold)
    markers, n_seeds = ndi.label(_seeds(prob[1], foreground, seed_threshold))
    components, n_components = ndi.label(foreground)
    shape = prob.shape[1:]
    labels = _objects(_levels(prob[1], prob[2]), markers, components, n_seeds, (0, 0), shape)
    if fill_holes:
        labels = absorb_enclosed(_fill_holes(labels))
    sizes = np.bincount(labels.ravel(), minlength=n_seeds + n_components + 1)
    return _numbering(sizes, min_size, min_size_fraction)[labels]


def semantic_from_probabilities(
    prob: np.ndarray, thresholds: dict[int, float] | list[float] | None = None
) -> np.ndarray:
    """Class index per pixel: the most probable class, optionally held to a minimum probability.

    Parameters
    ----------
    prob : np.ndarray
        float (C, Y, X) class probabilities.
    thresholds : dict or list, optional
        Minimum probability per class (``{class index: threshold}`` or a list of C values).
        Rule: a pixel takes its most probable class c only where p(c) >= thresholds[c];
        elsewhere it falls back to class 0 (the first class, usually background). Classes
        without a threshold always win where they are most probable.

    Returns
    -------
    np.ndarray
        (Y, X) class indices, uint8 (uint16 for more than 256 classes); 0 = first class.
    """
    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ValueError(
            f"Semantic post-processing needs probabilities of shape (C, Y, X), got {prob.shape}."
        )
    dtype = np.uint8 if prob.shape[0] <= 256 else np.uint16
    classes = prob.argmax(axis=0).astype(dtype)
    if thresholds:
        items = thresholds.items() if isinstance(thresholds, dict) else enumerate(thresholds)
        for c, t in items:
            c = int(c)
            if not 0 <= c < prob.shape[0]:
                raise ValueError(f"Threshold given for class {c}, but the model has {prob.shape[0]} classes.")
            classes[(classes == c) & (prob[c] < t)] = 0
    return classes


def labels_from_probabilities(prob: np.ndarray, task: str, params: PostprocessParams | None = None,
                              **values: Any) -> np.ndarray:
    """Labels for a model's task.

    Parameters
    ----------
    prob : np.ndarray
        float (C, Y, X) probabilities; C = 3 for ``"instances"``.
    task : str
        ``"instances"`` (see :func:`instances_from_probabilities`) or ``"semantic"`` (see
        :func:`semantic_from_probabilities`).
    params : InstanceParams or SemanticParams, optional
        The parameters; or give them as keywords (``min_size=30``, a bundle's ``postprocess``
        metadata with ``**``), read by :func:`params_for`.

    Returns
    -------
    np.ndarray
        int32 (Y, X) object ids for instances; uint8/uint16 (Y, X) class indices for semantic.
    """
    params = _params(task, params, values)
    if isinstance(params, InstanceParams):
        return instances_from_probabilities(prob, **params.as_dict())
    return semantic_from_probabilities(prob, params.thresholds)


def _params(task: str, params: PostprocessParams | None, values: dict[str, Any]) -> PostprocessParams:
    if params is not None and values:
        raise TypeError(f"Give {', '.join(sorted(values))} inside params=, not beside it.")
    return params_for(task, params if params is not None else values)


def import_helpers() -> None:
    """Import the libraries post-processing and measuring load on first use. A first import
    in a worker thread holds the interpreter for up to half a second (dask.compute imports
    dask.distributed to look for a client: 0.3-0.4 s here; scipy.sparse, scikit-image), which
    freezes napari; the Segment widget calls this when it opens."""
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401
    import dask.array  # noqa: F401
    import scipy.sparse.csgraph  # noqa: F401
    import skimage.measure
    import skimage.segmentation  # noqa: F401
    import zarr  # noqa: F401


# -- blockwise ------------------------------------------------------------------------------


def _as_dask(prob: Any, block_size: int):
    import dask.array as da

    if not isinstance(prob, da.Array):
        is_zarr = hasattr(prob, "attrs") and hasattr(prob, "chunks")
        prob = da.from_zarr(prob) if is_zarr else da.from_array(prob)
    if prob.ndim != 3:
        raise ValueError(
            f"Blockwise post-processing needs probabilities of shape (C, Y, X), got {prob.shape}."
        )
    return prob.rechunk((prob.shape[0], block_size, block_size))


def _local_dir(array: Any) -> str | None:
    """The folder of a zarr array's on-disk store, or None for an in-memory store."""
    path = store_path(array)
    return None if path is None else str(path)


def _open_out(out: Any, shape: tuple[int, int], block_size: int, dtype: str):
    import zarr

    if out is None:
        return zarr.zeros(shape, chunks=(block_size, block_size), dtype=dtype)
    if isinstance(out, zarr.Array):
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"The output zarr array has shape {out.shape}; it must be {shape}.")
        return out
    return zarr.open_array(str(out), mode="w", shape=shape, chunks=(block_size, block_size), dtype=dtype)


@contextlib.contextmanager
def _scratch(target: Any) -> Iterator[Any]:
    """Yield a function making temporary zarr arrays: in memory if ``target`` is, else on disk
    beside it (removed afterwards)."""
    import zarr

    if _local_dir(target) is None:
        yield lambda name, shape, chunks, dtype: zarr.zeros(shape, chunks=chunks, dtype=dtype)
        return
    folder = tempfile.mkdtemp(prefix=scratch_prefix("postprocess"), dir=Path(_local_dir(target)).parent)
    try:
        yield lambda name, shape, chunks, dtype: zarr.open_array(
            os.path.join(folder, name + ".zarr"), mode="w", shape=shape, chunks=chunks, dtype=dtype
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _grow(core: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(core, shape))


def _label_block(prob, stores, core, foreground_threshold, seed_threshold):
    """Pass 1 on one block: masks, elevation levels and per-block connected components.

    Writes local component ids (1..n per block) of the seeds and of the foreground, and the
    levels, to the scratch ``stores``; returns for each mask its count and the block's four
    edges (top, bottom, left, right), which is all the joining across blocks needs.
    """
    foreground = _foreground(prob[0], foreground_threshold)
    edges = []
    for mask, store in zip((_seeds(prob[1], foreground, seed_threshold), foreground), stores):
        local, n = ndi.label(mask)
        store[core] = local
        edges.append((n, local[0].copy(), local[-1].copy(), local[:, 0].copy(), local[:, -1].copy()))
    stores[2][core] = _levels(prob[1], prob[2])
    return edges


class _JoinedLabels:
    """Connected components labelled block by block, then joined across block faces.

    The same components, with consecutive ids 1..n, as ``scipy.ndimage.label`` of the whole
    mask (4-connectivity): per-block ids are made unique with offsets, ids that touch across
    a face are joined with ``scipy.sparse.csgraph.connected_components``.
    """

    def __init__(self, store, block: tuple[int, int], grid: tuple[int, int], edges: list) -> None:
        from scipy import sparse
        from scipy.sparse.csgraph import connected_components

        self.store, self.block = store, block
        counts = np.array([e[0] for e in edges], np.int64)
        self.offsets = (np.cumsum(counts) - counts).reshape(grid)
        total = int(counts.sum())
        ny, nx = grid
        a, b = [], []
        for i, (_, _, bottom, _, right) in enumerate(edges):
            iy, ix = divmod(i, nx)
            for below, other, j in ((True, bottom, i + nx), (False, right, i + 1)):
                if (iy + 1 >= ny) if below else (ix + 1 >= nx):
                    continue
                facing = edges[j][1] if below else edges[j][3]  # top row / left column of the neighbour
                touching = (other > 0) & (facing > 0)
                a.append(other[touching] + self.offsets.flat[i])
                b.append(facing[touching] + self.offsets.flat[j])
        a = np.concatenate(a) if a else np.zeros(0, np.int64)
        b = np.concatenate(b) if b else np.zeros(0, np.int64)
        graph = sparse.coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(total + 1, total + 1))
        _, component = connected_components(graph, directed=False)
        ids, first = np.unique(component[1:], return_index=True)
        order = np.empty(len(ids), np.int64)
        order[np.argsort(first)] = np.arange(len(ids))  # number components by their first block id
        self.lut = np.zeros(total + 1, np.int32)
        self.lut[1:] = order[np.searchsorted(ids, component[1:])] + 1
        self.n = len(ids)

    def read(self, window: tuple[slice, slice]) -> np.ndarray:
        """Global ids (int32) of the components in ``window``."""
        local = self.store[window].astype(np.int64)
        rows = np.arange(window[0].start, window[0].stop) // self.block[0]
        cols = np.arange(window[1].start, window[1].stop) // self.block[1]
        local[local > 0] += self.offsets[rows[:, None], cols[None, :]][local > 0]
        return self.lut[local]


def _instances_block(levels, seeds, components, target, core, overlap, fill_holes, shape):
    """Pass 2 on one block: flood a window around it, fill holes, write the block.

    Returns the block's (ids, pixel counts) and whether one of its objects reaches
    ``overlap`` pixels beyond it (the assumption that makes the block exact then fails).
    """
    margin = 2 * overlap if fill_holes else overlap
    window = _grow(core, margin, shape)
    origin = (window[0].start, window[1].start)
    labels = _objects(levels[window], seeds.read(window), components.read(window), seeds.n, origin, shape)
    # labels are right wherever their object fits in the window: within `overlap` of the core
    inner = _grow(core, overlap, shape)
    labels = labels[tuple(slice(i.start - w.start, i.stop - w.start) for i, w in zip(inner, window))]
    if fill_holes:
        labels = absorb_enclosed(_fill_holes(labels))
    block = labels[tuple(slice(c.start - i.start, c.stop - i.start) for c, i in zip(core, inner))]
    target[core] = block.astype(np.int32)
    edges = [edge for edge, inside in (
        (labels[0], inner[0].start > 0), (labels[-1], inner[0].stop < shape[0]),
        (labels[:, 0], inner[1].start > 0), (labels[:, -1], inner[1].stop < shape[1]),
    ) if inside]
    ids, counts = np.unique(block, return_counts=True)
    on_edge = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.int64)
    too_large = bool(np.isin(on_edge[on_edge > 0], ids).any())
    return ids, counts, too_large


def _relabel_block(target, core, lut):
    target[core] = lut[target[core]]


def instances_blockwise(prob: Any, out: Any = None, params: InstanceParams | None = None,
                        **kwargs: Any) -> Any:
    """Synchronous twin of :func:`instances_blockwise_iter` (same parameters); the warning
    events go to the log."""
    return run_to_end(instances_blockwise_iter(prob, out, params, **kwargs), _log_warnings)


def _log_warnings(event: Any) -> None:
    if isinstance(event, WarningEvent):
        log.warning(event.message)


def instances_blockwise_iter(
    prob: Any,
    out: Any = None,
    params: InstanceParams | None = None,
    *,
    block_size: int = 1024,
    overlap: int | None = None,
    **values: Any,
) -> Generator[Progress | WarningEvent, None, Any]:
    """:func:`instances_from_probabilities` for probability maps larger than memory.

    An engine generator: yields ``Progress(stage="postprocess")`` as blocks end (three
    passes over the blocks) and a ``WarningEvent`` when the result may not be exact, returns
    the labels; closing it stops the work within a block.

    Three passes, each holding a few blocks at a time: (1) per block, the masks, the
    quantised elevation and the connected components of the seeds and of the foreground go
    to temporary zarr arrays (beside ``out`` when it is on disk, else in memory), and the
    components are joined across block faces into global ids; (2) each block is flooded on a
    window of ``2 * overlap`` (``overlap`` without hole filling) around it and written to
    ``out`` while object sizes are counted; (3) small objects are dropped and ids renumbered
    in place. The module docstring says why this equals the in-memory result.

    Parameters
    ----------
    prob : dask.array.Array, zarr.Array or np.ndarray
        float (3, Y, X) probabilities of background, interior, boundary.
    out : zarr.Array, str or Path, optional
        Where to write the int32 (Y, X) labels: a zarr array of that shape, or a path for a new
        zarr array (overwritten); None for an in-memory zarr array.
    block_size : int
        Side of the blocks processed at once and of the output chunks (when ``out`` is an
        existing array, blocks are the nearest multiple of its chunks).
    params : InstanceParams, optional
        As in :func:`instances_from_probabilities`; or give them as keywords (read by
        :func:`params_for`).
    overlap : int, optional
        The largest object (pixels, in y and x) for which the result is exact; default
        :data:`DEFAULT_OVERLAP`. Clusters of touching objects may be larger. A warning event
        says when an object reaches further than this beyond its block.

    Returns
    -------
    zarr.Array
        int32 (Y, X) labels: globally unique, consecutive 1..N (N in ``attrs["n_objects"]``);
        an object crossing block borders has one id. The partition equals the in-memory one;
        ids may be numbered in another order. ``attrs["exact"]`` is False when the size
        assumption was seen to fail.
    """
    import dask

    params = _params("instances", params, values)
    overlap = DEFAULT_OVERLAP if overlap is None else int(overlap)
    if overlap < 1 or block_size < 1:
        raise ValueError("block_size and overlap must be positive numbers of pixels.")
    _check_instance_probabilities(tuple(getattr(prob, "shape", ())))
    shape = tuple(int(s) for s in prob.shape[1:])
    target = _open_out(out, shape, block_size, "int32")
    block = tuple(max(block_size // c, 1) * c for c in target.chunks)
    p = _as_dask(prob, block_size).rechunk((3, *block))
    grid = p.numblocks[1:]
    blocks = _blocks(shape, block)
    # in-memory stores cannot travel to other processes: keep those to threads
    threads_only = _local_dir(target) is None

    progress = ProgressCounter(3 * len(blocks))
    with _scratch(target) as make:
        stores = [make(name, shape, block, dtype) for name, dtype in
                  (("seeds", "int32"), ("foreground", "int32"), ("levels", "int16"))]
        task = dask.delayed(_label_block, pure=False)
        edges = yield from _compute_iter(
            [task(piece, stores, core, params.foreground_threshold, params.seed_threshold)
             for piece, core in zip(p.to_delayed().ravel(), blocks)],
            threads_only, progress,
        )
        seeds = _JoinedLabels(stores[0], block, grid, [e[0] for e in edges])
        components = _JoinedLabels(stores[1], block, grid, [e[1] for e in edges])
        del edges
        if seeds.n + components.n >= 2**31 - 1:
            raise ValueError("Too many objects for int32 labels; post-process the image in parts.")
        log.debug("blockwise: %d seeds, %d foreground components", seeds.n, components.n)

        task = dask.delayed(_instances_block, pure=False)
        args = [_shared(a) for a in (stores[2], seeds, components, target)]
        results = yield from _compute_iter(
            [task(*args, core, overlap, params.fill_holes, shape) for core in blocks], threads_only, progress)

    sizes = np.zeros(seeds.n + components.n + 1, np.int64)
    for ids, counts, _ in results:
        sizes[ids] += counts
    lut = _numbering(sizes, params.min_size, params.min_size_fraction)
    task = dask.delayed(_relabel_block, pure=False)
    args = [_shared(target), _shared(lut)]
    yield from _compute_iter([task(args[0], core, args[1]) for core in blocks], threads_only, progress)

    inexact = sum(r[2] for r in results)
    if inexact:
        yield WarningEvent(
            f"{inexact} of {len(blocks)} blocks hold objects larger than {overlap} px; labels near those "
            "block borders may differ from whole-image post-processing: raise the overlap.", kind="inexact")
    target.attrs.update({"n_objects": int(lut.max(initial=0)), "exact": not inexact})
    return target


def _semantic_block(prob, target, core, thresholds, dtype) -> None:
    target[core] = semantic_from_probabilities(prob, thresholds).astype(dtype)


def semantic_blockwise(prob: Any, out: Any = None, params: SemanticParams | None = None,
                       **kwargs: Any) -> Any:
    """Synchronous twin of :func:`semantic_blockwise_iter` (same parameters)."""
    return run_to_end(semantic_blockwise_iter(prob, out, params, **kwargs))


def semantic_blockwise_iter(
    prob: Any,
    out: Any = None,
    params: SemanticParams | None = None,
    *,
    block_size: int = 1024,
    **values: Any,
) -> Generator[Progress, None, Any]:
    """:func:`semantic_from_probabilities` block by block (each pixel needs only itself).

    An engine generator like :func:`instances_blockwise_iter`.

    Parameters
    ----------
    prob : dask.array.Array, zarr.Array or np.ndarray
        float (C, Y, X) class probabilities.
    out : zarr.Array, str or Path, optional
        Where to write the (Y, X) class indices (uint8, or uint16 above 256 classes); None for
        an in-memory zarr array.
    block_size : int
        Side of the blocks processed at once and of the output chunks.
    params : SemanticParams, optional
        ``thresholds`` as in :func:`semantic_from_probabilities`; or give it as a keyword.

    Returns
    -------
    zarr.Array
        (Y, X) class indices, 0 = first class.
    """
    import dask

    thresholds = _params("semantic", params, values).thresholds
    p = _as_dask(prob, block_size)
    dtype = np.uint8 if p.shape[0] <= 256 else np.uint16
    shape = tuple(int(s) for s in p.shape[1:])
    target = _open_out(out, shape, block_size, np.dtype(dtype).name)
    block = tuple(max(block_size // c, 1) * c for c in target.chunks)
    pieces = p.rechunk((p.shape[0], *block)).to_delayed().ravel()
    task = dask.delayed(_semantic_block, pure=False)
    shared = _shared(target)
    tasks = [task(piece, shared, core, thresholds, dtype)
             for piece, core in zip(pieces, _blocks(shape, block))]
    yield from _compute_iter(tasks, _local_dir(target) is None, ProgressCounter(len(tasks)))
    return target
