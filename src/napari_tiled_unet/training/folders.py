"""Training on folder pairs: ``images/<id>.tif`` with ``labels/<id>.tif`` (the CLI's ``train``).

The layout of the DSB2018 training folder: one image per file, and a label file of the
same name (any of .tif, .tiff, .png) in the labels folder. All pairs are read into
memory once (about 4 bytes per pixel for 8-bit images once the targets are made).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..events import TrainStep, WarningEvent, run_to_end
from ..io import files_by_name, read_image, read_labels
from ..model.bundle import ModelBundle, load_model
from .config import TrainConfig
from .loop import Trainer
from .new_model import check_class_names, new_bundle_for_annotation

log = logging.getLogger(__name__)

def image_files(folder: Path, what: str = "images") -> dict[str, Path]:
    """The .tif, .tiff and .png files of ``folder`` by file name without extension."""
    return files_by_name(folder, what, strip_tails=False, required=False)


def read_pair(image: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its label map, in memory (the labels by :func:`napari_tiled_unet.io.read_labels`)."""
    return np.asarray(read_image(image)), read_labels(labels)


def read_ids(val_ids: str | os.PathLike | Sequence[str]) -> list[str]:
    """Ids from a list, or from a text file with one id per line (blank lines and ``#`` comments skipped)."""
    if isinstance(val_ids, (str, os.PathLike)):
        path = Path(val_ids)
        if not path.is_file():
            raise ValueError(f"No file of validation ids at {path}; give a text file with one id per line.")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return [line for line in lines if line]
    return [str(v) for v in val_ids]


def read_folder_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
                      ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Read the image/label pairs with matching file names.

    Args:
        images_dir: folder of images (.tif, .tiff, .png), e.g. uint8 (Y, X).
        labels_dir: folder of integer label images with the same names, e.g. uint16 (Y, X).

    Returns:
        (ids, images, labels): sorted ids (file stems), and the arrays in that order.

    Raises:
        ValueError: no file name appears in both folders.
    """
    images, labels = image_files(Path(images_dir)), image_files(Path(labels_dir), "labels")
    ids = sorted(set(images) & set(labels))
    if not ids:
        raise ValueError(
            f"No file in {images_dir} has a label file of the same name in {labels_dir} "
            f"({len(images)} images, {len(labels)} label files); name each label file like its image."
        )
    missing = len(images) - len(ids)
    if missing:
        log.warning("%d image(s) in %s have no label file and are left out.", missing, images_dir)
    pairs = [read_pair(images[i], labels[i]) for i in ids]
    return ids, [p[0] for p in pairs], [p[1] for p in pairs]


def train_folders_iter(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike,
    base: ModelBundle | str | os.PathLike | None = None,
    val_ids: str | os.PathLike | Sequence[str] | None = None,
    new_model: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> Generator[TrainStep | WarningEvent, None, ModelBundle]:
    """Train on folder pairs; a generator of training events that returns the saved bundle.

    Args:
        images_dir: folder of images, ``<id>.tif``.
        labels_dir: folder of instance labels (or scribbles with ``annotation="scribbles"``),
            ``<id>.tif``.
        config: the settings (:class:`~.config.TrainConfig`); or give its fields as ``options``.
        out: where to save the trained bundle (``.safetensors``, written atomically).
        base: model to fine-tune; None trains a new one from scratch.
        val_ids: ids held out for validation (a list, or a text file with one id per line);
            None: ``val_fraction`` of the images, drawn with ``seed``.
        new_model: arguments of :func:`~.new_model.new_bundle` for a model from scratch
            (e.g. ``{"base_channels": 32, "depth": 4}``); ``n_channels`` is taken from the
            first image when not given. With ``annotation="scribbles"`` the new model is
            ``semantic``, with one class per label value (see
            :func:`~.new_model.new_bundle_for_annotation`).
        class_names: names of the scribble classes, for label values 1, 2, ...: a new model
            gets as many classes; a base model must have exactly these.
        **options: the fields of :class:`~.config.TrainConfig` (without ``config``), and
            ``should_stop`` / ``record_extra`` of :class:`~.loop.Trainer`.

    Yields:
        :class:`TrainStep` and :class:`WarningEvent` events.

    Returns:
        The trained :class:`ModelBundle`, saved to ``out``.

    Raises:
        ValueError: no matching file names, unknown validation ids, and the input errors of
            :class:`~.loop.Trainer`.
    """
    if config is None:
        config, options = TrainConfig.split(options)
    ids, images, labels = read_folder_pairs(images_dir, labels_dir)
    val_images = None
    if val_ids is not None:
        wanted = read_ids(val_ids)
        unknown = [v for v in wanted if v not in ids]
        if unknown:
            raise ValueError(f"{len(unknown)} validation id(s) have no image/label pair (e.g. "
                             f"{unknown[0]!r}); list file names without their extension.")
        index = {v: i for i, v in enumerate(ids)}
        val_images = [index[v] for v in wanted]
    if base is None:
        args = dict(new_model or {})
        if "n_channels" not in args:
            first = images[0]
            args["n_channels"] = 1 if first.ndim == 2 else 3
        bundle = new_bundle_for_annotation(config.annotation, labels, class_names, **args)
    else:
        bundle = load_model(base)
        check_class_names(bundle, class_names)
    log.info("Training on %d pairs from %s (%s).", len(ids), images_dir,
             f"{len(val_images)} held out" if val_images is not None else "automatic hold-out")
    trainer = Trainer(bundle, images, labels, config, names=ids, val_images=val_images, **options)
    del images, labels  # the trainer keeps what it needs (compact targets, held-out labels)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    check_room(Path(out), 4 * n_params + 1_000_000)  # the bundle: float32 weights and a header
    checkpoint = config.checkpoint_path
    if checkpoint is not None:  # weights, two Adam moments, the best weights
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        check_room(checkpoint, 4 * 4 * n_params + 1_000_000)
    result = yield from trainer.iter()
    save_or_keep(result, Path(out), checkpoint)
    log.info("Saved the trained model to %s.", out)
    return result


def check_room(path: Path, n_bytes: int) -> None:
    """Before training: ``path``'s folder exists, takes files and has room for ``n_bytes``
    (twice: the file is written beside its final name first)."""
    import shutil
    import tempfile

    from ..errors import OutputError

    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"The folder {folder} does not exist; create it or save elsewhere.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise OutputError(f"Cannot write in {folder} ({exc.strerror or exc}); choose another place for "
                          f"{path.name}.") from None
    if free < 2 * n_bytes:
        raise OutputError(f"Only {free / 1e6:.0f} MB are free in {folder}, and {path.name} needs about "
                          f"{2 * n_bytes / 1e6:.0f} MB while it is written; free space or save elsewhere.")


def save_or_keep(bundle: ModelBundle, out: Path, checkpoint: str | os.PathLike | None) -> None:
    """Save the trained ``bundle`` to ``out``; when that fails (disk full, folder gone), keep the
    weights and raise one sentence that says where: the run's checkpoint (the same command
    saves them once there is room), else a file in the temporary folder or the home folder."""
    import tempfile
    import time

    from ..errors import OutputError

    try:
        bundle.save(out)
        return
    except OSError as exc:
        reason = exc.strerror or str(exc)
    if checkpoint is not None and Path(checkpoint).is_file():
        raise OutputError(f"Could not write {out} ({reason}); the trained weights are kept in the checkpoint "
                          f"{checkpoint}: make room (or choose another --out) and run the same command again "
                          "to save them.")
    name = f"{out.stem}.unsaved-{time.strftime('%Y%m%d-%H%M%S')}.safetensors"
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        try:
            kept = bundle.save(folder / name)
        except OSError:
            continue
        raise OutputError(f"Could not write {out} ({reason}); the trained model was saved to {kept} "
                          "instead: move it where you want it.")
    raise OutputError(f"Could not write {out} ({reason}), nor a copy in the temporary or home folder; "
                      "the trained weights are lost: make room and train again with --checkpoint.")


def train_folders(images_dir: str | os.PathLike, labels_dir: str | os.PathLike, *,
                  on_event: Callable[[Any], None] | None = None, **kwargs: Any) -> ModelBundle:
    """Synchronous twin of :func:`train_folders_iter`; ``on_event`` receives each event."""
    return run_to_end(train_folders_iter(images_dir, labels_dir, **kwargs), on_event)
