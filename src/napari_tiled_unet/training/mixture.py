"""Training on several image/label sets at once (the CLI's ``train --data``).

A *set* is a pair of folders (``images/<id>.tif``, ``labels/<id>.tif``) with a sampling
weight: each training patch comes from set k with probability ``weight_k / sum(weights)``,
whatever the number or size of its images (inside a set, images are drawn in proportion
to their annotated area, as in single-set training). Each set is prepared the same way:

- **ids split into connected components**: an id whose pixels form several separate pieces
  (e.g. a nucleus cut in two by an overlapping neighbour's outline) gets one id per piece,
  so no object target spans two blobs;
- **object size**: the median equivalent diameter of each image's objects is measured from
  its labels; an image whose median lies outside ``[min_diameter, max_diameter]`` is
  resized (image linearly, labels by nearest neighbour) so that it lies on the nearer
  bound, and the diameter is handed to the patch sampler (scale augmentation keeps the
  objects between ``Augmentation.diameter_range``);
- **held-out ids** (one text file per set) are never read into training;
- **ignore masks** (optional, a third folder of ``<id>.tif``, nonzero where nothing counts):
  pixels the annotators left unlabelled on purpose or by convention (e.g. out-of-focus
  nuclei in one set's tissue sections) count neither as object nor as background. An
  image without a mask file counts everywhere.

The record stored in the trained bundle names every set (folder, license read from the
set's README.md, number of images, weight) with a SHA-256 of its image and label files.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..events import TrainStep, WarningEvent, run_to_end
from ..io import read_image
from ..model.bundle import ModelBundle, load_model
from ..objectsize import resize_labels
from .config import TrainConfig
from .data import Augmentation
from .folders import image_files, read_ids, read_pair
from .loop import Trainer
from .new_model import new_bundle

log = logging.getLogger(__name__)

#: license names recognised in a set's README.md (first match wins)
_LICENSE = re.compile(r"\b(CC0(?:[ -]1\.0)?|CC[ -]BY(?:[ -]SA|[ -]NC)*[ -]\d\.\d|Apache[ -]2\.0|MIT|"
                      r"BSD[ -]\d-Clause|GPL-?\d(?:\.\d)?)\b", re.IGNORECASE)


@dataclass
class DataSet:
    """One image/label folder pair of a training mixture.

    Attributes:
        images: folder of images.
        labels: folder of instance labels with the same file names.
        weight: share of the training patches drawn from this set (relative to the others).
        name: short name (default: the folder above ``images``).
        held_out: file of ids never used for training (one per line), or None.
        license: the set's license (default: read from the README.md above ``images``).
        extra: more facts for the training record.
        ignore: folder of ignore masks named like the images (nonzero = the pixel never
            counts), or None.
    """

    images: Path
    labels: Path
    weight: float = 1.0
    name: str = ""
    held_out: Path | None = None
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    ignore: Path | None = None

    def __post_init__(self) -> None:
        self.images, self.labels = Path(self.images), Path(self.labels)
        if self.ignore is not None:
            self.ignore = Path(self.ignore)
            if not self.ignore.is_dir():
                raise ValueError(f"No folder of ignore masks at {self.ignore}; give a folder of <id>.tif "
                                 "masks.")
        if not self.weight > 0:
            raise ValueError(f"The weight of {self.images} must be positive, got {self.weight}.")
        if not self.name:
            self.name = self.images.resolve().parent.name
        if not self.license:
            self.license = read_license(self.images.resolve().parent)


def read_license(folder: Path) -> str:
    """The license named in ``folder/README.md`` (a ``## License`` section first), or ``"unknown"``."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return "unknown"
    text = readme.read_text(errors="replace")
    section = re.search(r"^#+\s*License\s*$(.*?)(?=^#|\Z)", text, re.MULTILINE | re.DOTALL | re.IGNORECASE)
    for part in ((section.group(1),) if section else ()) + (text,):
        found = _LICENSE.search(part)
        if found:
            return found.group(1).replace(" ", "-")
    return "unknown"


def parse_data_arg(text: str | Sequence[str]) -> DataSet:
    """``"IMAGES LABELS[:WEIGHT]"`` (or the two strings) -> :class:`DataSet`.

    Raises:
        ValueError: not two folders, or a weight that is not a positive number.
    """
    parts = text.split() if isinstance(text, str) else list(text)
    if len(parts) != 2:
        raise ValueError(f"Give each set as two folders, IMAGES LABELS[:WEIGHT], got {parts!r}.")
    images, labels = parts
    weight = 1.0
    head, sep, tail = labels.rpartition(":")
    if sep and head and re.fullmatch(r"[0-9.eE+-]+", tail):
        try:
            weight = float(tail)
        except ValueError:
            raise ValueError(f"The weight after ':' in {labels!r} must be a number.") from None
        labels = head
    return DataSet(Path(images), Path(labels), weight)


def read_list_file(path: str | os.PathLike) -> list[DataSet]:
    """A list file: one set per line, ``IMAGES LABELS [WEIGHT] [HELD_OUT_IDS] [ignore=FOLDER]``.

    Relative paths are relative to the list file; blank lines and ``#`` comments are skipped.
    ``ignore=FOLDER`` names the set's ignore masks (see :class:`DataSet`).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No list file at {path}; give a text file with one 'IMAGES LABELS [WEIGHT]' "
                         "per line.")
    sets = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        ignore = None
        for f in [f for f in fields if f.startswith("ignore=")]:
            fields.remove(f)
            ignore = Path(f[len("ignore="):])
            ignore = ignore if ignore.is_absolute() else path.parent / ignore
        if not 2 <= len(fields) <= 4:
            raise ValueError(f"{path}, line {n}: write 'IMAGES LABELS [WEIGHT] [HELD_OUT_IDS]'.")
        where = [p if Path(p).is_absolute() else str(path.parent / p) for p in fields[:2]]
        try:
            weight = float(fields[2]) if len(fields) > 2 else 1.0
        except ValueError:
            raise ValueError(f"{path}, line {n}: the weight {fields[2]!r} is not a number.") from None
        held = None
        if len(fields) > 3:
            held = Path(fields[3]) if Path(fields[3]).is_absolute() else path.parent / fields[3]
        sets.append(DataSet(Path(where[0]), Path(where[1]), weight, held_out=held, ignore=ignore))
    if not sets:
        raise ValueError(f"{path} lists no set; write one 'IMAGES LABELS [WEIGHT]' per line.")
    return sets


def split_components(labels: np.ndarray) -> np.ndarray:
    """Instance labels where every id is one 8-connected component (ids renumbered 1..N)."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int32)
    n = 0
    structure = np.ones((3, 3), dtype=bool)
    for i, box in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), 1):
        if box is None:
            continue
        parts, k = ndi.label(labels[box] == i, structure=structure)
        sub = out[box]
        sub[parts > 0] = parts[parts > 0] + n
        n += k
    return out


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter ``sqrt(4 A / pi)`` of the objects (0 when there is none)."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if areas.size else 0.0


def resize_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear, float32; 2D or YXC) and labels (nearest neighbour) scaled by ``factor``."""
    h, w = labels.shape
    shape = (max(1, round(h * factor)), max(1, round(w * factor)))
    zoom = (shape[0] / h, shape[1] / w)
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = ndi.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
    else:
        img = np.stack([ndi.zoom(img[..., c], zoom, order=1, grid_mode=True, mode="nearest")
                        for c in range(img.shape[-1])], axis=-1)
    return img, resize_labels(labels, shape)


def _hash_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@dataclass
class Mixture:
    """Images and labels of several sets, ready for :class:`~.loop.Trainer`."""

    names: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray]
    weights: list[float]
    diameters: list[float]
    record: list[dict[str, Any]]
    ignore: list[np.ndarray | None] = field(default_factory=list)


def load_mixture(sets: Sequence[DataSet], *, min_diameter: float = 12.0, max_diameter: float = 64.0,
                 monitor_per_set: int = 0, seed: int = 0) -> tuple[Mixture, list[int]]:
    """Read every set (held-out ids left out), prepared as the module docstring says.

    Args:
        sets: the sets and their weights.
        min_diameter, max_diameter: images with a median object diameter outside are resized
            onto the nearer bound.
        monitor_per_set: images of each set set aside (drawn with ``seed``) to watch the
            validation loss during training; they are not trained on.
        seed: seed of that draw.

    Returns:
        (mixture, monitor): the data and the indices of the monitoring images in it.

    Raises:
        ValueError: a set without matching pairs, or held-out ids that name no image.
    """
    names, images, labels, weights, diameters, record, monitor = [], [], [], [], [], [], []
    ignores: list[np.ndarray | None] = []
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    for ds in sets:
        if ds.name in seen:
            raise ValueError(f"Two sets are named {ds.name!r}; give each set its own folder.")
        seen.add(ds.name)
        imgs, labs = image_files(ds.images), image_files(ds.labels, "labels")
        ids = sorted(set(imgs) & set(labs))
        if not ids:
            raise ValueError(f"No file in {ds.images} has a label file of the same name in {ds.labels}; "
                             "name each label file like its image.")
        held = set(read_ids(ds.held_out)) if ds.held_out is not None else set()
        unknown = held - set(ids)
        if unknown:
            raise ValueError(f"{len(unknown)} held-out id(s) of {ds.name} name no image (e.g. "
                             f"{sorted(unknown)[0]!r}); list file names without their extension.")
        train_ids = [i for i in ids if i not in held]
        if not train_ids:
            raise ValueError(f"Every image of {ds.name} is held out; hold out fewer.")
        watch = set(rng.choice(train_ids, size=min(monitor_per_set, len(train_ids) - 1), replace=False)
                    .tolist()) if monitor_per_set and len(train_ids) > 1 else set()
        start = len(images)
        n_resized = 0
        set_area = 0
        masks = image_files(ds.ignore, "ignore masks") if ds.ignore is not None else {}
        mask_files, ignored = [], 0
        for i in train_ids:
            img, lab = read_pair(imgs[i], labs[i])
            lab = split_components(lab)
            ign = None
            if i in masks:
                ign = read_ignore(masks[i], lab.shape)
                mask_files.append(masks[i])
            d = median_diameter(lab)
            target = float(np.clip(d, min_diameter, max_diameter)) if d > 0 else d
            if d > 0 and abs(target / d - 1) > 0.05:
                img, lab = resize_pair(img, lab, target / d)
                if ign is not None:
                    ign = resize_labels(ign.astype(np.uint8), lab.shape) > 0
                n_resized += 1
                d = median_diameter(lab)
            ignores.append(ign)
            ignored += int(ign.sum()) if ign is not None else 0
            if i in watch:
                monitor.append(len(images))
            names.append(f"{ds.name}/{i}")
            images.append(img)
            labels.append(lab)
            diameters.append(d)
            set_area += lab.size
        n = len(images) - start
        # within a set, the trainer draws in proportion to annotated area; this factor makes
        # the set's total share equal to its weight
        weights += [ds.weight * 1e6 / set_area] * n
        files = [imgs[i] for i in train_ids] + [labs[i] for i in train_ids]
        record.append({
            "name": ds.name, "images": str(ds.images), "labels": str(ds.labels), "license": ds.license,
            "n_images": n, "n_held_out": len(held), "held_out": str(ds.held_out) if ds.held_out else None,
            "n_monitor": len(watch), "weight": ds.weight, "n_resized": n_resized,
            "median_diameter": round(float(np.median(diameters[start:])), 1),
            "sha256": _hash_files(files), **ds.extra,
        })
        if ds.ignore is not None:
            record[-1].update({"ignore": str(ds.ignore), "n_ignore_masks": len(mask_files),
                               "ignored_fraction": round(ignored / max(set_area, 1), 4),
                               "ignore_sha256": _hash_files(mask_files)})
        log.info("Set %s: %d images (%d held out, %d resized), license %s, weight %g.", ds.name, n,
                 len(held), n_resized, ds.license, ds.weight)
    return Mixture(names, images, labels, weights, diameters, record, ignores), monitor


def read_ignore(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The ignore mask at ``path`` as bool, checked against the labels' ``shape``."""
    mask = np.asarray(read_image(path))
    if mask.shape != tuple(shape):
        raise ValueError(f"The ignore mask {path.name} has shape {mask.shape}, its labels {tuple(shape)}; "
                         "give one mask of the image's size.")
    return mask != 0


def weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The value below which half of the total weight lies."""
    v, w = np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, cum[-1] / 2)])


def train_mixture_iter(
    sets: Sequence[DataSet],
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike,
    base: ModelBundle | str | os.PathLike | None = None,
    new_model: dict[str, Any] | None = None,
    normalization: dict[str, Any] | None = None,
    augmentation: Augmentation | None = None,
    monitor_per_set: int = 2,
    min_diameter: float = 12.0,
    max_diameter: float = 64.0,
    **options: Any,
) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
    """Train on several sets mixed in the proportions of their weights; returns the saved bundle.

    Args:
        sets: the :class:`DataSet` s.
        out: where to save the trained bundle.
        base: model to fine-tune; None: a new one (``new_model`` arguments of :func:`~.loop.new_bundle`).
        normalization: a normalization recipe for the trained model (default: the base's).
        augmentation: default :meth:`Augmentation.generalist`.
        monitor_per_set: images of each set watched for the validation loss (not trained on).
        min_diameter, max_diameter: see :func:`load_mixture`.
        config: the settings (:class:`~.config.TrainConfig`; its ``augmentation`` and
            ``val_fraction`` are this function's); or give its fields as ``options``.
        **options: the fields of :class:`~.config.TrainConfig` (without ``config``), and
            ``should_stop`` of :class:`~.loop.Trainer`.

    The bundle records ``object_diameter``: the median object diameter of the training
    patches before scale augmentation (a weighted median over images, each weighted by its
    share of the patches), which ``segment(diameter=...)`` rescales images to, and
    ``object_diameter_range``: ``[min_diameter, max_diameter]``, the range its training images
    were brought into, inside which ``diameter="auto"`` leaves an image at its own scale.
    """
    if config is None:
        config, options = TrainConfig.split(options)
    mix, monitor = load_mixture(sets, min_diameter=min_diameter, max_diameter=max_diameter,
                                monitor_per_set=monitor_per_set, seed=config.seed)
    if base is None:
        args = dict(new_model or {})
        args.setdefault("n_channels", 1 if mix.images[0].ndim == 2 else 3)
        if normalization is not None:
            args["normalization"] = normalization
        bundle = new_bundle(**args)
    else:
        bundle = copy.deepcopy(load_model(base))
        if normalization is not None:
            bundle.metadata["normalization"] = dict(normalization)
    areas = np.array([lab.size for lab in mix.labels], dtype=np.float64)
    share = areas * np.asarray(mix.weights)
    keep = [i for i in range(len(share)) if i not in set(monitor) and mix.diameters[i] > 0]
    diameter = round(weighted_median([mix.diameters[i] for i in keep], share[keep]), 1)
    config = replace(config, val_fraction=0.0 if not monitor else 0.15,
                     augmentation=augmentation if augmentation is not None else Augmentation.generalist())
    trainer = Trainer(bundle, mix.images, mix.labels, config, names=mix.names, val_images=monitor or None,
                      sample_weights=mix.weights, diameters=mix.diameters,
                      ignore=mix.ignore if any(m is not None for m in mix.ignore) else None,
                      record_extra={"sets": mix.record, "object_diameter": diameter}, **options)
    del mix
    result = yield from trainer.iter()
    result.metadata["object_diameter"] = diameter
    result.metadata["object_diameter_range"] = [float(min_diameter), float(max_diameter)]
    result.save(out)
    log.info("Saved the trained model to %s.", out)
    return result


def train_mixture(sets: Sequence[DataSet], *, on_event: Callable[[Any], None] | None = None,
                  **kwargs: Any) -> ModelBundle:
    """Synchronous twin of :func:`train_mixture_iter`; ``on_event`` receives each event."""
    return run_to_end(train_mixture_iter(sets, **kwargs), on_event)
