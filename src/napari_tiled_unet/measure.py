"""Per-object measurements of a label map: one row per object, in memory or blockwise.

Every measure comes from :func:`skimage.measure.regionprops_table` (``num_pixels``, ``area``,
``centroid``, ``intensity_mean``, ``intensity_max``, ``eccentricity``, ``solidity``), run with
``spacing`` set to the pixel size, so that area, centroid and eccentricity are physical
(eccentricity then accounts for non-square pixels); the pixel centroid is the physical one
divided by the pixel size.

The table is a dict of equal-length numpy columns, sorted by label (napari takes it as a Labels
layer's ``features``; :func:`write_csv` writes it). Columns, in order:

``label``; ``plane`` (and ``z_<unit>``) for a stack of planes; ``area_px``; ``area_<unit>2``;
``centroid_y_px``, ``centroid_x_px``; ``centroid_y_<unit>``, ``centroid_x_<unit>``;
``intensity_mean``, ``intensity_max`` (``intensity_mean_<c>`` ... per channel of a
multichannel image; absent without an image); ``eccentricity``; ``solidity``. The physical
columns are present when a unit is given or the pixel size is not 1 (their unit is then
called ``scaled``); positions are measured from the image's first pixel, without the layer's
translate.

Large label maps (zarr, dask) are measured blockwise and exactly as in memory: (1) every block
is measured on its own; an object found in one block only lies wholly inside it, so its row is
final; (2) the objects found in several blocks get their global bounding box from the blocks'
ones, and each is measured whole, once, on a window holding its bounding box (the objects
sharing a starting block share one window). Only one object at a time must fit in memory.
A stack (Z, Y, X) is measured plane by plane (the plugin segments stacks that way).
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import blockwise
from .blockwise import ProgressCounter, compute_iter, shared
from .events import Progress, run_to_end

_PROPERTIES = ("label", "num_pixels", "area", "centroid", "eccentricity", "solidity")
_INTENSITY = ("intensity_mean", "intensity_max")

Table = dict[str, np.ndarray]


class _Counter(ProgressCounter):
    def add(self, n: int) -> Progress:
        return replace(super().add(n), stage="measure")


def measure_objects(labels: Any, image: Any = None, **kwargs: Any) -> Table:
    """Synchronous twin of :func:`measure_objects_iter` (same arguments)."""
    return run_to_end(measure_objects_iter(labels, image, **kwargs))


def measure_objects_iter(
    labels: Any,
    image: Any = None,
    *,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
    block_size: int = 1024,
) -> Generator[Progress, None, Table]:
    """Measure every object of ``labels``; yields ``Progress(stage="measure")``, returns the table.

    Args:
        labels: integer (Y, X) or (Z, Y, X) label map (0 = background): numpy in memory, zarr
            or dask blockwise.
        image: the intensities, of the labels' shape or with one more axis of channels (last,
            or first for a 2D map); numpy, zarr or dask (read window by window). None: no
            intensity columns.
        scale: pixel size per axis of ``labels`` (napari's layer ``scale``); None: 1.
        unit: name of the physical unit for the column names (e.g. ``"um"``).
        block_size: side of the blocks of a lazy label map (rounded to its chunks); numpy
            planes larger than a block are measured blockwise too (progress, cancel).
    """
    ndim = len(labels.shape)
    if ndim not in (2, 3):
        raise ValueError(f"Objects can be measured in 2D label maps or stacks of them, not {ndim}D data.")
    scale = tuple(float(s) for s in (scale if scale is not None else (1.0,) * ndim))
    if len(scale) != ndim or min(scale) <= 0:
        raise ValueError(f"The pixel size {scale} must give one positive number per axis of the labels.")
    layout = _image_layout(labels.shape, image)
    suffix = (unit or "scaled") if unit is not None or any(s != 1 for s in scale[-2:]) else None
    if not isinstance(labels, np.ndarray):
        labels = _as_lazy(labels)
    if image is not None and not isinstance(image, np.ndarray):
        image = _as_lazy(image)  # slicing a plane or a window reads only that
    progress = _Counter(0)
    if ndim == 2:
        raw = yield from _measure_plane(labels, image, layout, scale, block_size, progress)
        return _columns(raw, scale, suffix, None)
    planes = []
    for z in range(len(labels)):
        plane_image = None if image is None else image[z]
        raw = yield from _measure_plane(labels[z], plane_image, layout, scale[1:], block_size, progress)
        planes.append(_columns(raw, scale[1:], suffix, (z, scale[0])))
    return {k: np.concatenate([p[k] for p in planes]) for k in planes[0]}


def _image_layout(shape: tuple[int, ...], image: Any) -> str | None:
    """How ``image`` lines up with labels of ``shape``: ``"same"``, channels ``"last"`` or
    ``"first"``; None without an image."""
    if image is None:
        return None
    ishape = tuple(image.shape)
    if ishape == tuple(shape):
        return "same"
    if ishape[:-1] == tuple(shape):
        return "last"
    k = len(shape) - 2  # channels just before Y: (C, Y, X), (Z, C, Y, X)
    if len(ishape) == len(shape) + 1 and ishape[:k] + ishape[k + 1:] == tuple(shape):
        return "first"  # (C, Y, X) for a plane, (Z, C, Y, X) for a stack
    raise ValueError(f"The image has shape {ishape}, which does not match the labels' {tuple(shape)}.")


def _as_lazy(labels: Any) -> Any:
    import dask.array as da

    if isinstance(labels, da.Array):
        return labels
    if hasattr(labels, "attrs") and hasattr(labels, "chunks"):  # zarr
        return da.from_zarr(labels)
    return da.from_array(labels)


def _read(array: Any, window: tuple[slice, ...]) -> np.ndarray:
    """``array[window]`` as numpy; a dask array is computed here, on this thread."""
    part = array[window]
    if hasattr(part, "compute"):
        return np.asarray(part.compute(scheduler="synchronous"))
    return np.asarray(part)


def _image_window(image: Any, layout: str | None, window: tuple[slice, slice]) -> np.ndarray | None:
    if image is None:
        return None
    if layout == "first":
        return np.moveaxis(_read(image, (slice(None), *window)), 0, -1)
    return _read(image, window)


def _regionprops(labels: np.ndarray, image: np.ndarray | None, spacing: tuple[float, float],
                 origin: tuple[int, int] = (0, 0), bbox: bool = False) -> Table:
    """skimage's table of one window, positions moved to the whole plane's coordinates."""
    from skimage.measure import regionprops_table

    props = _PROPERTIES + (_INTENSITY if image is not None else ()) + (("bbox",) if bbox else ())
    if image is not None and image.dtype == bool:
        image = image.astype(np.uint8)
    table = regionprops_table(labels, image, properties=props, spacing=spacing)
    for axis in (0, 1):
        table[f"centroid-{axis}"] = table[f"centroid-{axis}"] + origin[axis] * spacing[axis]
        if bbox:
            table[f"bbox-{axis}"] = table[f"bbox-{axis}"] + origin[axis]
            table[f"bbox-{axis + 2}"] = table[f"bbox-{axis + 2}"] + origin[axis]
    return table


def _measure_plane(labels: Any, image: Any, layout: str | None, spacing: tuple[float, float],
                   block_size: int, progress: ProgressCounter) -> Generator[Progress, None, Table]:
    if isinstance(labels, np.ndarray) and labels.size <= block_size**2:
        progress.total += 1
        table = _regionprops(labels, _image_window(image, layout, (slice(None),) * 2), spacing)
        yield progress.add(1)
        return table
    if isinstance(labels, np.ndarray):
        import dask.array as da

        labels = da.from_array(labels, chunks=block_size)
    return (yield from _measure_blockwise(labels, image, layout, spacing, block_size, progress))


def _block_table(labels, image, layout, window, spacing) -> Table:
    origin = (window[0].start, window[1].start)
    lab = _read(labels, window)
    return _regionprops(lab, _image_window(image, layout, window), spacing, origin, bbox=True)


def _window_table(labels, image, layout, window, ids, spacing) -> Table:
    """The objects ``ids`` (all wholly inside ``window``), measured on that window alone."""
    origin = (window[0].start, window[1].start)
    lab = _read(labels, window)
    lab = np.where(np.isin(lab, ids), lab, 0)
    return _regionprops(lab, _image_window(image, layout, window), spacing, origin)


def _measure_blockwise(labels, image, layout, spacing, block_size, progress
                       ) -> Generator[Progress, None, Table]:
    import dask

    shape = tuple(int(s) for s in labels.shape)
    block = tuple(max(block_size // c[0], 1) * c[0] for c in labels.chunks)
    blocks = blockwise.blocks(shape, block)
    progress.total += 2 * len(blocks)
    args = [shared(labels), shared(image), layout]
    task = dask.delayed(_block_table, pure=False)
    parts = yield from compute_iter([task(*args, window, spacing) for window in blocks], True, progress)

    ids = np.concatenate([p["label"] for p in parts])
    unique, counts = np.unique(ids, return_counts=True)
    crossing = unique[counts > 1]  # found in several blocks: measured again, whole
    keep = [~np.isin(p["label"], crossing) for p in parts]
    whole = {k: np.concatenate([p[k][m] for p, m in zip(parts, keep)]) for k in parts[0] if "bbox" not in k}

    windows = _crossing_windows(parts, crossing, block)
    task = dask.delayed(_window_table, pure=False)
    again = yield from compute_iter([task(*args, w, i, spacing) for w, i in windows], True, progress)
    yield progress.add(len(blocks) - len(windows))
    tables = [whole, *again]
    table = {k: np.concatenate([t[k] for t in tables]) for k in whole}
    order = np.argsort(table["label"], kind="stable")
    return {k: v[order] for k, v in table.items()}


def _crossing_windows(parts: list[Table], crossing: np.ndarray, block: tuple[int, int]
                      ) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """(window, ids) for the objects found in several blocks: each object's bounding box is
    the union of its boxes in the blocks; the objects whose box starts in the same block
    share the window that holds all their boxes."""
    if not len(crossing):
        return []
    sel = [np.isin(p["label"], crossing) for p in parts]
    ids = np.concatenate([p["label"][m] for p, m in zip(parts, sel)])
    boxes = np.stack([np.concatenate([p[f"bbox-{i}"][m] for p, m in zip(parts, sel)]) for i in range(4)], 1)
    order = np.argsort(ids, kind="stable")
    ids, boxes = ids[order], boxes[order]
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ids = ids[first]
    starts = np.minimum.reduceat(boxes[:, :2], first)
    stops = np.maximum.reduceat(boxes[:, 2:], first)
    home = starts // np.asarray(block)  # the block each box starts in
    keys, group = np.unique(home, axis=0, return_inverse=True)
    group = group.ravel()
    out = []
    for g in range(len(keys)):
        m = group == g
        lo, hi = starts[m].min(0), stops[m].max(0)
        out.append(((slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))), ids[m]))
    return out


def _columns(raw: Table, spacing: Sequence[float], suffix: str | None,
             plane: tuple[int, float] | None) -> Table:
    """skimage's column names -> the table's (see the module docstring)."""
    n = len(raw["label"])
    out: Table = {"label": raw["label"].astype(np.int64)}
    if plane is not None:
        out["plane"] = np.full(n, plane[0], np.int64)
        if suffix:
            out[f"z_{suffix}"] = np.full(n, plane[0] * plane[1])
    out["area_px"] = raw["num_pixels"].astype(np.int64)
    if suffix:
        out[f"area_{suffix}2" if suffix != "scaled" else "area_scaled"] = raw["area"]
    for i, axis in enumerate("yx"):
        out[f"centroid_{axis}_px"] = raw[f"centroid-{i}"] / spacing[i]
    if suffix:
        for i, axis in enumerate("yx"):
            out[f"centroid_{axis}_{suffix}"] = raw[f"centroid-{i}"]
    for name in _INTENSITY:
        channels = sorted(k for k in raw if k.startswith(name + "-"))
        if name in raw:
            out[name] = raw[name]
        for k in channels:
            out[f"{name}_{k.rsplit('-', 1)[1]}"] = raw[k]
    out["eccentricity"] = raw["eccentricity"]
    out["solidity"] = raw["solidity"]
    return out


# -- writing ---------------------------------------------------------------------------------


def write_csv(table: Table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the table as CSV (comma-separated, a header row, ``.`` decimals), atomically.

    An existing file is replaced only with ``overwrite`` (a FileExistsError otherwise).
    """
    import csv

    from .io import publish, temp_beside

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow replacing it.")
    names = list(table)
    columns = [np.asarray(table[k]) for k in names]
    tmp = temp_beside(path)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(names)
            writer.writerows(zip(*(c.tolist() for c in columns)))
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def objects_csv_path(labels_path: str | os.PathLike) -> Path:
    """``<name>_objects.csv`` beside the label file ``<name>_labels.<ext>``."""
    labels_path = Path(labels_path)
    name = labels_path.name
    stem = name[: name.rindex("_labels")] if "_labels" in name else Path(name).stem
    return labels_path.with_name(f"{stem}_objects.csv")


def write_objects_csv(labels: Any, image: Any, labels_path: str | os.PathLike, overwrite: bool = False,
                      **kwargs: Any) -> Path:
    """Measure ``labels`` (with ``image``'s intensities) into ``<name>_objects.csv`` beside the
    label file ``labels_path``; returns the CSV's path. ``kwargs`` go to :func:`measure_objects`."""
    path = objects_csv_path(labels_path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it.")
    return write_csv(measure_objects(labels, image, **kwargs), path, overwrite=True)


__all__ = ["measure_objects", "measure_objects_iter", "objects_csv_path", "write_csv", "write_objects_csv"]
