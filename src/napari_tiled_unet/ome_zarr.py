"""OME-Zarr (OME-NGFF) label images: a segmentation written beside the image it came from.

:func:`write_ome_labels` adds ``labels/<name>`` to an OME-Zarr image: a multiscale pyramid
(nearest-neighbour halving of y and x, as label images need) with the image's axes and
pixel sizes and ``image-label`` metadata pointing back at the image, and lists it in
``labels/``'s metadata, as NGFF 0.4 (zarr v2) or 0.5 (zarr v3) like the image itself. The
image's own arrays are never touched; the new label group is written under a temporary name
in ``labels/`` and renamed into place once complete, so readers never see half of it.
ome-zarr-py and napari's OME-Zarr reader (napari-ome-zarr) open it as a Labels layer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ReadError

#: the pyramid stops once y or x of a level would fall below this
MIN_LEVEL_SIZE = 256
MAX_LEVELS = 8
CHUNK = 1024


def _open_image(path: Path):
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise ReadError(f"{path.name} is not an OME-Zarr image (not a zarr group); --ome-labels needs one.") \
            from exc
    attrs = dict(root.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    multiscales = (ome or attrs).get("multiscales")
    if not multiscales:
        raise ReadError(f"{path.name} has no OME-NGFF multiscales metadata; --ome-labels needs an OME-Zarr "
                        "image.")
    version = str((ome or {}).get("version") or multiscales[0].get("version") or "0.4")
    axes = multiscales[0].get("axes")
    if not axes or not all(isinstance(a, dict) and "name" in a for a in axes):
        raise ReadError(f"{path.name} uses an OME-NGFF version before 0.4 (no typed axes); convert it first.")
    return root, multiscales[0], version


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr image (a zarr group with multiscales metadata)."""
    try:
        _open_image(Path(path))
    except ReadError:
        return False
    return True


def check_target(path: str | os.PathLike, name: str, overwrite: bool = False) -> None:
    """Raise :class:`ReadError` (one sentence) unless labels ``name`` can be written into ``path``."""
    path = Path(path)
    _open_image(path)
    if not os.access(path, os.W_OK):
        raise ReadError(f"{path.name} is read-only; copy it somewhere writable to add labels to it.")
    if (path / "labels" / name).exists() and not overwrite:
        raise ReadError(f"{path.name} already has labels named {name!r}; choose another name (or replace "
                        "them with --overwrite on the command line).")


def _label_shape(image_shape: tuple[int, ...], axes: list[dict[str, Any]], labels_shape: tuple[int, ...]):
    """The image's shape with its channel axis made 1; checked against the labels' shape."""
    shape = tuple(1 if a.get("type") == "channel" else n for a, n in zip(axes, image_shape))
    squeezed = tuple(n for a, n in zip(axes, image_shape) if a.get("type") != "channel")
    if tuple(labels_shape) not in (squeezed, shape, tuple(n for n in squeezed if n != 1) or (1,)):
        raise ReadError(f"The labels' shape {tuple(labels_shape)} does not fit the image's "
                        f"{tuple(image_shape)}.")
    return shape


def write_ome_labels(image_path: str | os.PathLike, labels: Any, name: str, overwrite: bool = False) -> Path:
    """Write ``labels`` as OME-NGFF label image ``labels/<name>`` of the OME-Zarr at ``image_path``.

    Args:
        image_path: the OME-Zarr image the labels were computed from.
        labels: integer array (numpy, zarr or dask) of the image's full-resolution shape
            without its channel axis.
        name: the label image's name (a napari layer's name when opened).
        overwrite: replace an existing label image of that name.

    Returns:
        The label group's path.
    """
    import dask.array as da
    import zarr

    image_path = Path(image_path)
    check_target(image_path, name, overwrite)
    root, ms, version = _open_image(image_path)
    zarr_format = root.metadata.zarr_format
    axes = ms["axes"]
    base = root[ms["datasets"][0]["path"]]
    shape = _label_shape(tuple(base.shape), axes, tuple(labels.shape))
    arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks=CHUNK)
    arr = arr.reshape(shape)
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space"][-2:]
    base_transforms = ms["datasets"][0].get("coordinateTransformations") or [
        {"type": "scale", "scale": [1.0] * len(axes)}]

    levels = [arr]
    while len(levels) < MAX_LEVELS and min(levels[-1].shape[i] for i in spatial) // 2 >= MIN_LEVEL_SIZE:
        step = tuple(slice(None, None, 2) if i in spatial else slice(None) for i in range(len(axes)))
        levels.append(levels[-1][step])  # nearest neighbour: labels keep their ids

    labels_dir = image_path / "labels"
    labels_group = zarr.open_group(str(labels_dir), mode="a", zarr_format=zarr_format)
    tmp = labels_dir / f".{name}.{os.getpid()}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=zarr_format)
        datasets = []
        for k, level in enumerate(levels):
            chunks = tuple(min(CHUNK, n) if i in spatial else 1 for i, n in enumerate(level.shape))
            z = group.create_array(str(k), shape=level.shape, chunks=chunks, dtype=level.dtype,
                                   fill_value=0, **({"dimension_names": [a["name"] for a in axes]}
                                                    if zarr_format == 3 else {}))
            da.store(level.rechunk(chunks), z, lock=False)
            transforms = []
            for t in base_transforms:
                t = dict(t)
                if t.get("type") == "scale":
                    t["scale"] = [float(s) * (2**k if i in spatial else 1) for i, s in enumerate(t["scale"])]
                transforms.append(t)
            datasets.append({"path": str(k), "coordinateTransformations": transforms})
        multiscale = {"name": name, "axes": axes, "datasets": datasets}
        image_label = {"source": {"image": "../../"}}
        if zarr_format == 3:
            group.attrs.update({"ome": {"version": version, "multiscales": [multiscale],
                                        "image-label": image_label}})
        else:
            group.attrs.update({"multiscales": [{"version": version, **multiscale}],
                                "image-label": {"version": version, **image_label}})
        dst = labels_dir / name
        if dst.exists():
            old = labels_dir / f".{name}.{os.getpid()}.old"
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    attrs = dict(labels_group.attrs)
    if zarr_format == 3:
        ome = dict(attrs.get("ome") or {"version": version})
        ome["labels"] = [*[n for n in ome.get("labels", []) if n != name], name]
        labels_group.attrs.update({"ome": ome})
    else:
        labels_group.attrs.update({"labels": [*[n for n in attrs.get("labels", []) if n != name], name]})
    return labels_dir / name
