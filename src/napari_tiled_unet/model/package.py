"""Reading bioimage.io model packages (a zip, its folder or its ``rdf.yaml``) as bundles,
without running any code from the package: the architecture file is never imported,
TorchScript is never loaded, and weights are read with ``torch.load(weights_only=True)``.

Writing packages is :mod:`napari_tiled_unet.bioimageio`; loading by path goes through
:func:`~napari_tiled_unet.model.bundle.load_model`.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..errors import BundleError
from .format import (
    FORMAT_NAME,
    TASKS,
    ModelBundle,
    build_model,
    infer_pytorch_unet_config,
    load_state,
    make_metadata,
)
from .unet import UNet

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
CONFIG_KEY = "napari_tiled_unet"


class PackageError(BundleError):
    """A bioimage.io package that cannot be imported or written; the message says why."""


# -- import ------------------------------------------------------------------------------


class _Package:
    """Read access to the files of a package: a zip, a folder, or an rdf.yaml in one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file() and zipfile.is_zipfile(path):
            self.zip = zipfile.ZipFile(path)
            names = set(self.zip.namelist())
            found = [n for n in names if n in RDF_NAMES or n.endswith(".bioimageio.yaml")]
            if not found:
                raise PackageError(
                    f"{path.name} is a zip file without an rdf.yaml; it is not a bioimage.io model package."
                )
            self.rdf_name = sorted(found)[0]
            self.root = None
        elif path.is_dir():
            found = [path / n for n in RDF_NAMES if (path / n).is_file()]
            if not found:
                raise PackageError(
                    f"The folder {path.name} holds no rdf.yaml; it is not a bioimage.io package."
                )
            self.root, self.rdf_name = path, found[0].name
        elif path.is_file():
            self.root, self.rdf_name = path.parent, path.name
        else:
            raise PackageError(f"No bioimage.io package at {path}.")

    def read(self, name: str) -> bytes:
        if re.match(r"^[a-z]+://", name):
            raise PackageError(
                f"The package's file {name} lies on the internet; download the package with its "
                "files (a zip) and open that."
            )
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise PackageError(f"The package names a file outside itself ({name}); it is refused.")
        try:
            if self.zip is not None:
                return self.zip.read(str(rel))
            return (self.root / rel).read_bytes()
        except (KeyError, FileNotFoundError):
            raise PackageError(f"The package lacks its file {name}; it is incomplete.") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _source(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("source") or entry.get("uri")
    return None


def read_rdf(path: str | os.PathLike) -> dict[str, Any]:
    """The package's description (parsed YAML; no code runs)."""
    pkg = _Package(Path(path))
    try:
        return _parse_rdf(pkg)
    finally:
        pkg.close()


def _parse_rdf(pkg: _Package) -> dict[str, Any]:
    import yaml

    try:
        rdf = yaml.safe_load(pkg.read(pkg.rdf_name))
    except yaml.YAMLError as exc:
        raise PackageError(
            f"The package's {pkg.rdf_name} is not valid YAML ({exc.__class__.__name__})."
        ) from None
    if not isinstance(rdf, dict):
        raise PackageError(f"{pkg.path.name}: its {pkg.rdf_name} is not a bioimage.io description.")
    if rdf.get("type") != "model":
        raise PackageError(
            f"{pkg.path.name} describes a bioimage.io {rdf.get('type')} resource, not a model."
        )
    return rdf


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a bioimage.io package (a zip, a folder with an rdf.yaml, or the yaml)."""
    p = Path(path)
    name = p.name.lower()
    return (
        name.endswith(".zip")
        or name in RDF_NAMES
        or name.endswith(".bioimageio.yaml")
        or (p.is_dir() and any((p / n).is_file() for n in RDF_NAMES))
    )


def import_bioimageio(path: str | os.PathLike) -> ModelBundle:
    """Convert a bioimage.io model package into a bundle (not saved), running none of its code.

    Accepted: ``pytorch_state_dict`` weights that are a U-Net this plugin builds (a package
    exported by napari-tiled-unet, or weights with PyTorch-UNet's parameter names).

    Raises:
        PackageError: anything else, with one sentence saying why.
    """
    path = Path(path)
    pkg = _Package(path)
    try:
        rdf = _parse_rdf(pkg)
        weights = rdf.get("weights") or {}
        entry = weights.get("pytorch_state_dict")
        if not isinstance(entry, dict) or not _source(entry):
            have = ", ".join(weights) or "none"
            raise PackageError(
                f"{path.name} has no PyTorch state-dict weights (it has: {have}); napari-tiled-unet imports "
                "only U-Net state dicts, never TorchScript, ONNX or TensorFlow models, which would run their "
                "own code."
            )
        data = pkg.read(_source(entry))
    finally:
        pkg.close()
    state = _load_weights(data, path.name)
    ours = ((rdf.get("config") or {}).get(CONFIG_KEY) or {}).get("metadata")
    if isinstance(ours, dict):
        bundle = _bundle_from_our_metadata(ours, state, path)
    else:
        bundle = _bundle_from_foreign(rdf, state, path)
    bundle.metadata["imported_from"] = {
        "format": "bioimage.io model package",
        "file": path.name,
        "rdf_name": rdf.get("name"),
    }
    return bundle


def _load_weights(data: bytes, name: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PackageError(
            f"Refused the weights in {name}: they contain Python objects other than tensors, and loading "
            "them could run code."
        ) from exc
    except Exception as exc:
        raise PackageError(
            f"The weights in {name} are not a readable PyTorch state dict ({type(exc).__name__})."
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise PackageError(
            f"The weights in {name} are not a state dict; napari-tiled-unet imports U-Net state dicts."
        )
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _bundle_from_our_metadata(
    meta: dict[str, Any], state: dict[str, torch.Tensor], path: Path
) -> ModelBundle:
    if meta.get("format") != FORMAT_NAME or meta.get("task") not in TASKS:
        raise PackageError(
            f"{path.name} carries napari-tiled-unet settings this version does not understand; "
            "update the plugin."
        )
    model = build_model(meta.get("architecture"))
    load_state(model, state, path.name)
    model.eval()
    return ModelBundle(model, dict(meta), path)


def _bundle_from_foreign(rdf: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> ModelBundle:
    try:
        config = infer_pytorch_unet_config(state)
        model = UNet(**config)
        load_state(model, state, path.name)
    except (BundleError, ValueError, TypeError, RuntimeError):
        raise PackageError(
            f"The weights in {path.name} are not a U-Net this plugin can build (they do not have the U-Net "
            "layout of napari-tiled-unet or PyTorch-UNet); use the package with a bioimage.io tool instead."
        ) from None
    model.eval()
    inputs, outputs = rdf.get("inputs") or [{}], rdf.get("outputs") or [{}]
    normalization = _normalization_from(inputs[0].get("preprocessing") or [], path.name)
    post_ids = [step.get("id") or step.get("name") for step in outputs[0].get("postprocessing") or []]
    n = config["n_classes"]
    sigmoid = n == 1
    names = _channel_names(outputs[0])
    if sigmoid:
        classes = ["background", names[0] if names else "foreground"]
    else:
        classes = names if names and len(names) == n else [f"class {i}" for i in range(n)]
    meta = make_metadata(
        model,
        task="semantic",
        class_names=classes,
        normalization=normalization,
        name=str(rdf.get("name") or path.stem),
        description=str(rdf.get("description") or ""),
        output_activation="sigmoid" if sigmoid else "softmax",
        training={
            "source": "bioimage.io model package",
            "file": path.name,
            "cite": [c.get("text") for c in rdf.get("cite") or [] if isinstance(c, dict)],
            "license": rdf.get("license"),
            "postprocessing in the package": post_ids,
        },
    )
    return ModelBundle(model, meta, path)


def _channel_names(tensor: dict[str, Any]) -> list[str]:
    for ax in tensor.get("axes") or []:
        if isinstance(ax, dict) and ax.get("type") == "channel" and isinstance(ax.get("channel_names"), list):
            return [str(c) for c in ax["channel_names"]]
    return []


def _normalization_from(steps: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The bundle recipe equivalent to a package's preprocessing; refuses what has none."""
    found = None
    for step in steps:
        op = step.get("id") or step.get("name")
        kwargs = step.get("kwargs") or {}
        ceiling = kwargs.get("max")
        if op == "clip" and found is not None and isinstance(ceiling, (int, float)) and ceiling > 0:
            found["clip_high"] = float(ceiling)  # a ceiling on the normalized values (normalization.py)
            continue
        if op in ("ensure_dtype", "clip") or (op == "binarize"):
            continue
        if found is not None:
            raise PackageError(
                f"{name} chains two intensity normalizations, which napari-tiled-unet cannot reproduce."
            )
        if op == "scale_range" and not kwargs.get("reference_tensor"):
            found = {
                "kind": "percentile",
                "low": float(kwargs.get("min_percentile", 0.0)),
                "high": float(kwargs.get("max_percentile", 100.0)),
            }
        elif (
            op == "scale_linear"
            and np.ndim(kwargs.get("gain", 1.0)) == 0
            and np.ndim(kwargs.get("offset", 0.0)) == 0
        ):
            gain, offset = float(kwargs.get("gain", 1.0)), float(kwargs.get("offset", 0.0))
            found = {"kind": "scale", "divide": 1.0 / gain, "offset": -offset / gain}
        else:
            raise PackageError(
                f"{name} normalizes its input with {op!r}, which napari-tiled-unet does not "
                "reproduce, so its results would be wrong; use the package with a bioimage.io tool."
            )
    return found or {"kind": "none"}
