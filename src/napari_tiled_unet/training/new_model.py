"""New models to train from scratch, and the checks of class names against a base model.

:func:`new_bundle` makes a randomly initialised U-Net bundle; :func:`new_bundle_for_annotation`
chooses its task and classes from the annotation (instance labels: an ``instances`` model;
scribbles: a ``semantic`` model with one class per label value or per name given).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from ..model.bundle import INSTANCE_CLASSES, ModelBundle, make_metadata
from ..model.unet import UNet
from .dataset import largest_label

#: scribbles with more label values than this, and no class names, look like instance labels
MAX_SCRIBBLE_CLASSES = 32


def new_bundle(
    task: str = "instances",
    n_classes: int | None = None,
    n_channels: int = 1,
    base_channels: int = 32,
    depth: int = 4,
    class_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    name: str | None = None,
    seed: int | None = None,
) -> ModelBundle:
    """A randomly initialised U-Net bundle, to be trained from scratch.

    Args:
        task: ``"instances"`` (3 classes: background, interior, boundary) or ``"semantic"``.
        n_classes: output classes (semantic; taken from ``class_names`` when omitted).
        n_channels: input channels (1 grayscale, 3 RGB).
        base_channels: channels of the first level (the paper uses 64).
        depth: number of poolings (4 in the paper).
        class_names: names of the semantic classes.
        normalization: intensity normalization recipe (default: percentiles 1-99.8).
        name: model name stored in the bundle.
        seed: seed of the initial weights (None: torch's global generator).

    Returns:
        A :class:`ModelBundle` with a model in eval mode on the CPU.
    """
    if task == "instances":
        if n_classes not in (None, 3):
            raise ValueError(
                f"An instances model has 3 classes (background, interior, boundary), not {n_classes}."
            )
        n_classes, class_names = 3, class_names or list(INSTANCE_CLASSES)
    elif task == "semantic":
        if n_classes is None:
            if not class_names:
                raise ValueError("Say how many classes the semantic model has (n_classes or class_names).")
            n_classes = len(class_names)
        if n_classes < 2:
            raise ValueError(f"A semantic model needs at least 2 classes, got {n_classes}.")
    else:
        raise ValueError(f"Unknown task {task!r}: use 'instances' or 'semantic'.")
    ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with ctx:
        if seed is not None:
            torch.manual_seed(seed)
        model = UNet(n_channels=n_channels, n_classes=n_classes, base_channels=base_channels, depth=depth)
    model.eval()
    meta = make_metadata(model, task=task, class_names=class_names, normalization=normalization,
                         name=name, description="Trained from scratch with napari-tiled-unet.")
    return ModelBundle(model, meta)


def new_bundle_for_annotation(
    annotation: str,
    labels: Sequence[Any],
    class_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> ModelBundle:
    """A new bundle for training from scratch on ``labels`` painted as ``annotation``.

    Instance labels make an ``instances`` model (background, interior, boundary). Scribbles
    make a ``semantic`` model: one class per label value (value k is class k - 1), as many as
    ``class_names`` name, or else as many as the largest value painted (named ``class 1``
    ... ``class n`` after the values). The training record of the trained bundle says which
    (``classes_from``).

    Args:
        annotation: ``"instances"`` or ``"scribbles"``.
        labels: the label arrays the model will be trained on.
        class_names: names of the scribble classes, for label values 1, 2, ...
        **kwargs: other arguments of :func:`new_bundle` (``n_channels``, ``base_channels``,
            ``depth``, ``name``, ``seed`` ...).

    Raises:
        ValueError: class names with instance labels, a label value without a name, fewer
            than two classes, or (without names) more label values than
            :data:`MAX_SCRIBBLE_CLASSES`, which looks like instance labels.
    """
    if annotation == "instances":
        if class_names:
            raise ValueError("Class names are for scribbles: instance labels always train the classes "
                             "background, interior and boundary; leave the class names out.")
        return new_bundle("instances", **kwargs)
    if annotation != "scribbles":
        raise ValueError(f"Unknown annotation {annotation!r}: use 'instances' or 'scribbles'.")
    top = largest_label(labels)
    if class_names:
        names = [str(n) for n in class_names]
        if top > len(names):
            raise ValueError(f"Label value {top} has no class: {len(names)} class names are given "
                             f"({', '.join(names)}); name one class per label value 1 to {top}.")
        source = "class names given"
    else:
        if top == 0:
            raise ValueError("No pixel is annotated: paint scribbles (values 1, 2, ...) to train on.")
        if top > MAX_SCRIBBLE_CLASSES:
            raise ValueError(
                f"The scribbles use label values up to {top}, one class each: if they are objects, train "
                f"with instance annotation; if you want {top} classes, give their names."
            )
        names = [f"class {k}" for k in range(1, top + 1)]
        source = f"largest label value ({top})"
    if len(names) < 2:
        raise ValueError("Only label value 1 is painted: paint scribbles of at least two classes "
                         "(values 1, 2, ...) so the network can learn to tell them apart.")
    bundle = new_bundle("semantic", class_names=names, **kwargs)
    bundle.metadata["classes_from"] = source
    return bundle


def check_class_names(bundle: ModelBundle, class_names: Sequence[str] | None) -> None:
    """Refuse class names that are not the classes of the model to fine-tune.

    Raises:
        ValueError: ``class_names`` given and different from ``bundle.class_names``.
    """
    if class_names and [str(n) for n in class_names] != bundle.class_names:
        raise ValueError(
            f"The model {bundle.name} has the classes {', '.join(bundle.class_names)}, not "
            f"{', '.join(map(str, class_names))}; leave the class names out to fine-tune it, or train a "
            "new model from scratch for these classes."
        )
