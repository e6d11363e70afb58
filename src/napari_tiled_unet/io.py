"""Reading and writing images and label maps: tif/tiff, png, zarr (OME-Zarr's full resolution).

Readers are lazy where the format allows it: zarr stays a zarr array, large tifs are opened
through tifffile's zarr interface. Writers never leave a half-written file under the final
name (temporary file + rename for tif/png).
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReadError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")

#: above this many pixels, results are written as zarr unless a format is forced
ZARR_THRESHOLD_PIXELS = 8192 * 8192



def is_zarr(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and any((p / n).exists() for n in (".zarray", ".zgroup",
                                                                                  "zarr.json")))


def store_path(array: Any) -> Path | None:
    """The folder of a zarr array on local disk (zarr 2 or 3), or None for anything else."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if not root:
        return None
    path = Path(str(root))
    inner = getattr(array, "path", "") or ""  # an array inside a group
    return (path / inner if inner else path).resolve()


def read_image(path: str | os.PathLike) -> Any:
    """Open an image: numpy for png and small tifs, a zarr array for zarr and big tifs.

    For an OME-Zarr (or any zarr group) the full-resolution array is returned: the first
    dataset of the multiscales metadata, else the array named ``0``, else the only array.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(f"{path} does not exist.")
    try:
        if is_zarr(path):
            return _read_zarr(path)
        suffix = path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                big = np.prod(series.shape) > ZARR_THRESHOLD_PIXELS
                if not big:
                    return series.asarray()
            import zarr

            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        if suffix == ".png":
            from skimage.io import imread

            return imread(path)
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(f"{path.name} could not be read as an image ({type(exc).__name__}: {exc}).") from exc
    raise ReadError(f"{path.name}: unsupported file type; use .tif, .tiff, .png or .zarr.")


def _read_zarr(path: Path) -> Any:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    ms = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if ms:
        return node[ms[0]["datasets"][0]["path"]]
    if "0" in node:
        return node["0"]
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    raise ReadError(f"{path.name} is a zarr group without a single image array; point at the array.")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order."""
    out: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise ReadError(f"No file matches {item!r}.")
        for m in matches:
            p = Path(m)
            if p.is_dir() and not is_zarr(p):
                found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
                if not found:
                    raise ReadError(f"The folder {p} holds no .tif, .png or .zarr images.")
                out.extend(found)
            else:
                out.append(p)
    return out


def scratch_prefix(kind: str) -> str:
    """Name prefix of this process's temporary folders of ``kind`` beside an output. The
    process id in it lets an interrupted run find and remove its own, and only its own."""
    return f".{kind}-{os.getpid()}-"


def temp_beside(path: Path) -> str:
    """A new empty temporary file in ``path``'s folder, for an atomic write-then-rename
    (finish with :func:`publish`)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def publish(tmp: str, path: Path) -> None:
    """Give the written temporary file the permissions a plainly created file would have
    (0666 minus the umask; ``mkstemp`` makes it owner-only), then rename it to ``path``."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def write_labels(labels: Any, path: str | os.PathLike) -> Path:
    """Write a label map to ``.tif`` (zlib-compressed, atomically) or copy it into ``.zarr``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zarr":
        import dask.array as da
        import zarr

        if store_path(labels) == path.resolve():
            return path  # already written in place by the blockwise post-processing
        arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=1024)
        z = zarr.open_array(str(path), mode="w", shape=arr.shape, chunks=(1024,) * arr.ndim,
                            dtype=arr.dtype)
        da.store(arr, z, lock=False)
        return path
    import tifffile

    data = np.asarray(labels)
    tmp = temp_beside(path)
    try:
        tifffile.imwrite(tmp, data, compression="zlib")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def overlay_png(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a PNG of ``image`` with the outlines of ``labels`` drawn in colour (for a quick look)."""
    from skimage.color import label2rgb
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    lo, hi = np.percentile(img, [1, 99.8])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.stack([img] * 3, axis=-1)
    edges = find_boundaries(labels, mode="inner")
    colours = label2rgb(labels, bg_label=0)
    rgb[edges] = colours[edges]
    imsave(str(path), (rgb * 255).astype(np.uint8), check_contrast=False)
    return Path(path)


def save_labels(labels: Any, path: str | os.PathLike, tile: int = 1024, name: str = "labels") -> Path:
    """Save a label map the user asked for under ``path``: ``.tif``/``.tiff`` (replaced
    atomically; a lazy map is written tile by tile, never whole in memory) or a new ``.zarr``
    (written beside its name and moved there once complete; an existing folder is never
    replaced). An existing OME-Zarr image gets the labels as its OME-NGFF label image
    ``labels/<name>`` (see :mod:`~napari_tiled_unet.ome_zarr`); its own arrays stay as they are."""
    path = Path(path)
    lazy = not isinstance(labels, np.ndarray)
    if path.suffix.lower() == ".zarr":
        from .ome_zarr import is_ome_zarr, write_ome_labels

        if is_ome_zarr(path):
            return write_ome_labels(path, labels, name)
        if path.exists():
            raise FileExistsError(f"{path.name} already exists; choose a new name (folders are not "
                                  "replaced).")
        work = path.with_name(f".{path.name}.{os.getpid()}.partial.zarr")
        try:
            write_labels(labels, work)
            os.replace(work, path)
        except BaseException:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
            raise
        return path
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{path.name}: labels are saved as .tif, .tiff or .zarr.")
    if not lazy:
        return write_labels(labels, path)
    import tifffile

    shape = tuple(labels.shape)

    def tiles():
        for plane in np.ndindex(*shape[:-2]):
            for y in range(0, shape[-2], tile):
                for x in range(0, shape[-1], tile):
                    part = labels[(*plane, slice(y, y + tile), slice(x, x + tile))]
                    yield np.asarray(part.compute() if hasattr(part, "compute") else part)

    tmp = temp_beside(path)
    try:
        tifffile.imwrite(tmp, tiles(), shape=shape, dtype=labels.dtype, tile=(tile, tile), compression="zlib")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
