"""Loading a model: the one place that turns a name or a file into a :class:`ModelBundle`.

:func:`load_model` takes a built-in name (:mod:`~napari_tiled_unet.model.zoo`), a
``.safetensors`` bundle, a PyTorch-UNet ``.pth`` or a bioimage.io package
(:mod:`~napari_tiled_unet.model.package`); :func:`as_bundle` also wraps a bare network. The
bundle format itself (the class, its metadata, saving and reading a file) is
:mod:`~napari_tiled_unet.model.format`, whose names are importable from here as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .format import (  # noqa: F401  (the format's names, importable from here as before)
    ARCHITECTURES,
    DEFAULT_NORMALIZATION,
    DEFAULT_POSTPROCESS,
    FORMAT_NAME,
    FORMAT_VERSION,
    INSTANCE_CLASSES,
    METADATA_KEY,
    TASKS,
    BundleError,
    ModelBundle,
    build_model,
    import_pytorch_unet,
    infer_pytorch_unet_config,
    load_bundle,
    load_state,
    make_metadata,
    package_version,
    read_metadata,
    save_bundle,
)
from .package import import_bioimageio, is_package

#: training still imports this name; it becomes ``package_version`` once training switches
_package_version = package_version


def load_model(source: str | os.PathLike | ModelBundle | None = None) -> ModelBundle:
    """Load a model: the one place that turns a name or a file into a :class:`ModelBundle`.

    ``source`` is a built-in name (:mod:`~napari_tiled_unet.model.zoo`; None: the default
    built-in model), a ``.safetensors`` bundle path, a PyTorch-UNet ``.pth`` or a bioimage.io
    package (``.zip``, its folder or its ``rdf.yaml``)."""
    if isinstance(source, ModelBundle):
        return source
    from . import zoo

    if source is None:
        return load_bundle(zoo.path(zoo.DEFAULT))
    if isinstance(source, str) and source in zoo.available():
        return load_bundle(zoo.path(source))
    path = Path(source)
    if path.suffix.lower() in (".pth", ".pt"):
        return import_pytorch_unet(path)
    if is_package(path):
        return import_bioimageio(path)
    if not path.exists():
        names = ", ".join(zoo.available()) or "none installed"
        raise BundleError(f"No model file at {path} and no built-in model of that name (built-in: {names}).")
    return load_bundle(path)


def as_bundle(model: ModelBundle | torch.nn.Module | str | os.PathLike | None) -> ModelBundle:
    """:func:`load_model`, and a bare network wrapped with default metadata (percentile
    normalization, softmax; instances for 3 classes, else semantic)."""
    if isinstance(model, torch.nn.Module):
        n = getattr(model, "n_classes", 3)
        return ModelBundle(model, make_metadata(model, task="instances" if n == 3 else "semantic"))
    return load_model(model)
