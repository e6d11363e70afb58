"""Reading and writing images and label maps: tif/tiff, png, zarr (OME-Zarr's full resolution).

Readers are lazy where the format allows it: zarr stays a zarr array, large tifs are opened
through tifffile's zarr interface. Writers never leave a half-written file under the final
name (temporary file + rename for tif/png).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ReadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")

#: above this many pixels, results are written as zarr unless a format is forced
ZARR_THRESHOLD_PIXELS = 8192 * 8192



def is_zarr(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix == ".zarr" or (p.is_dir() and any((p / n).exists() for n in (".zarray", ".zgroup",
                                                                                  "zarr.json")))


def store_path(array: Any) -> Path | None:
    """The folder of a zarr array on local disk (zarr 2 or 3), or None for anything else (an
    in-memory store, numpy, dask). The one store locator of the package."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if not root or not isinstance(root, (str, os.PathLike)) or not os.path.isdir(root):
        return None
    path = Path(root)
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


# -- label folders (the one reader for `evaluate` and `train`) --------------------------------

LABEL_SUFFIXES = (".tif", ".tiff", ".png")
#: name endings that label files may add to their image's name (``img_labels.tif`` pairs ``img.tif``)
PAIRING_TAILS = ("_labels", "_label", "_masks", "_mask", "_pred", "_prediction")


def pairing_key(path: Path, strip_tails: bool = True) -> str:
    """A file's name without its extension and (``strip_tails``) a trailing _labels / _mask(s) / _pred."""
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    for tail in PAIRING_TAILS if strip_tails else ():
        if stem.lower().endswith(tail):
            return stem[: -len(tail)]
    return stem


def files_by_name(folder: str | os.PathLike, what: str, *, strip_tails: bool = True,
                  required: bool = True) -> dict[str, Path]:
    """The .tif, .tiff and .png files of ``folder`` by :func:`pairing_key`, sorted by name.

    Raises:
        ValueError: ``folder`` is not a folder, or (``required``) it holds no such file;
            ``what`` names the folder in the sentence (``"ground-truth"``, ``"images"`` ...).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"The {what} folder {folder} does not exist: give the folder that holds the files.")
    files = {pairing_key(p, strip_tails): p for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES}
    if required and not files:
        raise ValueError(f"The {what} folder {folder} holds no .tif, .tiff or .png label maps: check the "
                         "path.")
    return files


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """An integer label map from a .tif/.tiff/.png file, in memory; a float map is accepted
    only when every value is a whole number >= 0 (a probability or intensity image is refused,
    it is not labels). Integer maps keep their dtype.

    Raises:
        ReadError: fractional, negative or NaN values, or a non-numeric type.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        labels = tifffile.imread(path)
    else:
        from skimage.io import imread

        labels = imread(path)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any() or (labels < 0).any():
            raise ReadError(
                f"{path.name} holds fractional (or negative, or NaN) values, not integer labels: give "
                "label maps (0 = background, 1, 2, ... one id per object), not probabilities."
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "biu":
        raise ReadError(f"{path.name} holds {labels.dtype} values, not integer labels.")
    return labels


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
                # hidden entries are scratch (a partial store, a temporary file), never images
                found = sorted(q for q in p.iterdir()
                               if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."))
                if not found:
                    raise ReadError(f"The folder {p} holds no .tif, .png or .zarr images.")
                out.extend(found)
            else:
                out.append(p)
    return out


def scratch_tag() -> str:
    """``<pid>@<host>``: the owner written into the name of every scratch file or folder this
    process makes beside an output, so that a later run can tell whose it is (see
    :func:`remove_stale_scratch`)."""
    import socket

    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
    return f"{os.getpid()}@{host}"


def scratch_prefix(kind: str) -> str:
    """Name prefix of this process's temporary folders of ``kind`` beside an output. The
    owner tag in it lets an interrupted run find and remove its own, and only its own."""
    return f".{kind}-{scratch_tag()}-"


def temp_beside(path: Path, suffix: str = "") -> str:
    """A new empty temporary file in ``path``'s folder, for an atomic write-then-rename
    (finish with :func:`publish`); ``suffix`` is appended after ``.tmp`` (e.g. ``.png`` for
    writers that choose the format by the extension)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{scratch_tag()}.", suffix=".tmp" + suffix,
                               dir=path.parent)
    os.close(fd)
    return tmp


_SCRATCH = re.compile(r"^\..*?[.-](\d+)@([A-Za-z0-9_]+)[.-]")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_stale_scratch(folder: str | os.PathLike) -> list[str]:
    """Remove the scratch that runs killed outright (SIGKILL, a power cut) left in ``folder``:
    hidden entries whose owner tag (:func:`scratch_tag`) names this host and a process that
    no longer runs. Scratch of live processes, of other hosts (a shared file system) and
    every other file are left alone. Returns the names removed."""
    import shutil
    import socket

    folder = Path(folder)
    if not folder.is_dir():
        return []
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
    removed = []
    for entry in folder.iterdir():
        m = _SCRATCH.match(entry.name)
        if not m or m.group(2) != host or _process_alive(int(m.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:
            continue  # another run removed it meanwhile
        removed.append(entry.name)
    return removed


def publish(tmp: str, path: Path) -> None:
    """Give the written temporary file the permissions a plainly created file would have
    (0666 minus the umask; ``mkstemp`` makes it owner-only), then rename it to ``path``."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def stage(path: Path, write: Callable[[str], Any], suffix: str = "") -> str:
    """Run ``write(tmp)`` on a new temporary file beside ``path`` (:func:`temp_beside`) and
    return its name, for :func:`publish`; nothing is left behind when ``write`` fails."""
    tmp = temp_beside(path, suffix)
    try:
        write(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write a file the atomic way: ``write(tmp)`` beside ``path``, then rename it into place
    (:func:`stage` + :func:`publish`). The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    publish(stage(path, write), path)
    return path


def write_labels(labels: Any, path: str | os.PathLike) -> Path:
    """Write a label map to ``.tif`` (zlib-compressed, atomically) or copy it into ``.zarr``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zarr":
        import dask.array as da
        import zarr

        if store_path(labels) == path.resolve():  # already written in place by the post-processing
            zarr.open_array(str(path), mode="r+").attrs.update(OUTPUT_MARK)
            return path
        arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=1024)
        z = zarr.open_array(str(path), mode="w", shape=arr.shape, chunks=(1024,) * arr.ndim,
                            dtype=arr.dtype)
        da.store(arr, z, lock=False)
        z.attrs.update(OUTPUT_MARK)
        return path
    publish(stage_tif(labels, path), path)
    return path


#: written into the label files this package makes, so that they are never taken as inputs
OUTPUT_MARK = {"napari_tiled_unet": "labels"}


def is_marked_output(path: str | os.PathLike) -> bool:
    """True when ``path`` is a label map written by this package (its tif metadata or zarr
    attributes carry :data:`OUTPUT_MARK`)."""
    path = Path(path)
    key, value = next(iter(OUTPUT_MARK.items()))
    try:
        if is_zarr(path):
            import zarr

            return zarr.open(str(path), mode="r").attrs.get(key) == value
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                return any(isinstance(m, dict) and m.get(key) == value for m in (tf.shaped_metadata or ()))
    except Exception as exc:  # unreadable: not ours to skip; reading it later names the problem
        log.debug("could not look for the output mark in %s: %s", path, exc)
    return False


def stage_tif(labels: Any, path: Path) -> str:
    """Write ``labels`` to a temporary tif beside ``path`` (zlib-compressed, marked as this
    package's output); returns its name, for :func:`publish`. Nothing is left on failure."""
    import tifffile

    data = np.asarray(labels)
    mark = dict(OUTPUT_MARK)
    return stage(path, lambda tmp: tifffile.imwrite(tmp, data, compression="zlib", metadata=mark))


def stage_png(image: np.ndarray, labels: np.ndarray, path: Path) -> str:
    """:func:`overlay_png` into a temporary file beside ``path``; returns its name."""
    return stage(path, lambda tmp: _draw_overlay(image, labels, tmp), suffix=".png")


def overlay_png(image: np.ndarray, labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a PNG of ``image`` with the outlines of ``labels`` drawn in colour (for a quick
    look), atomically."""
    path = Path(path)
    publish(stage_png(image, labels, path), path)
    return path


def _draw_overlay(image: np.ndarray, labels: np.ndarray, path: str) -> None:
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
        work = path.with_name(f".{path.name}.{scratch_tag()}.partial.zarr")
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


# -- zarr chunks that are absent ----------------------------------------------------------------

_ZARR_METADATA = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}


class ChunkWatch:
    """Which chunk files of a zarr array on local disk exist, to tell a chunk that was never
    written from one that vanished.

    zarr stores no chunk that holds only the fill value (``write_empty_chunks=False``, the
    default), and reads any absent chunk as the fill value, so an absent chunk alone proves
    nothing: :attr:`absent` counts those missing when the run starts (reported as a warning),
    and :meth:`check` fails when a chunk present at the start is gone at the end (deleted
    mid-run: its pixels were read as the fill value).
    """

    def __init__(self, array: Any, root: Path) -> None:
        self.root = root
        self.name = root.name
        grid = getattr(array, "shards", None) or array.chunks  # one file per shard when sharded
        self.expected = int(np.prod([-(-int(s) // int(c)) for s, c in zip(array.shape, grid)]))
        self.fill_value = getattr(array, "fill_value", 0)
        self.present = self._files()
        self.absent = max(0, self.expected - len(self.present))

    @classmethod
    def of(cls, image: Any) -> ChunkWatch | None:
        """A watch for a zarr array on local disk; None for anything else (numpy, dask, a tif)."""
        root = store_path(image)
        if root is None or not root.is_dir() or not hasattr(image, "chunks"):
            return None
        return cls(image, root)

    def _files(self) -> set[str]:
        out = set()
        for folder, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(folder, self.root)
            out.update(os.path.join(rel, f) for f in files if f not in _ZARR_METADATA)
        return out

    def absent_message(self) -> str | None:
        """A warning when chunks are absent at the start, else None."""
        if not self.absent:
            return None
        return (f"{self.absent} of {self.expected} chunks of {self.name} are not stored and read as the "
                f"fill value {self.fill_value!r}; zarr leaves out chunks that hold only the fill value, "
                "but if the array was not written completely, export it again.")

    def check(self) -> None:
        """Raise :class:`ReadError` when chunks present at the start are gone now."""
        gone = self.present - self._files()
        if gone:
            raise ReadError(
                f"{len(gone)} chunk(s) of {self.name} disappeared while it was being read, so part of "
                "the result would be wrong; nothing was written for it: restore the image and run again."
            )
