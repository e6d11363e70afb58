"""The bundle format: one ``.safetensors`` file that holds the weights and, in its metadata
header, everything else as JSON. Reading never runs code.

:class:`ModelBundle`, its metadata, atomic saves, reading a bundle file, and PyTorch-UNet
``.pth`` state dicts converted with ``torch.load(weights_only=True)`` (which refuses any pickle
that would construct objects other than tensors and containers). Choosing among the ways to
load a model (built-in name, bundle, ``.pth``, bioimage.io package) is
:func:`napari_tiled_unet.model.bundle.load_model`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import BundleError
from .schema import architecture_error
from .unet import UNet

log = logging.getLogger(__name__)

FORMAT_NAME = "napari-tiled-unet"
FORMAT_VERSION = 1
METADATA_KEY = "napari_tiled_unet"
ARCHITECTURES = {"UNet": UNet}
TASKS = ("instances", "semantic")
INSTANCE_CLASSES = ["background", "interior", "boundary"]
DEFAULT_NORMALIZATION = {"kind": "percentile", "low": 1.0, "high": 99.8}
DEFAULT_POSTPROCESS = {
    "instances": {"foreground_threshold": 0.5, "seed_threshold": 0.7, "min_size": 16},
    "semantic": {},
}



def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-tiled-unet")
    except Exception:  # pragma: no cover - not installed, e.g. running from a checkout
        return "unknown"


@dataclass
class ModelBundle:
    """A U-Net with the metadata that says how to use it.

    Attributes:
        model: the network, in eval mode, on the CPU after loading.
        metadata: the JSON-serialisable description (see :func:`make_metadata`).
        path: the file it was loaded from, if any.
    """

    model: UNet
    metadata: dict[str, Any]
    path: Path | None = None

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def n_channels(self) -> int:
        return int(self.metadata["architecture"]["args"]["n_channels"])

    @property
    def depth(self) -> int:
        return int(self.metadata["architecture"]["args"].get("depth", 4))

    @property
    def normalization(self) -> dict[str, Any]:
        return dict(self.metadata.get("normalization") or DEFAULT_NORMALIZATION)

    @property
    def postprocess(self) -> dict[str, Any]:
        return dict(self.metadata.get("postprocess") or DEFAULT_POSTPROCESS.get(self.task, {}))

    @property
    def name(self) -> str:
        return self.metadata.get("name") or (self.path.stem if self.path else "model")

    def save(self, path: str | os.PathLike) -> Path:
        """Write this bundle to ``path`` atomically (see :func:`save_bundle`)."""
        return save_bundle(self.model, path, self.metadata)


def make_metadata(
    model: UNet,
    task: str = "instances",
    class_names: list[str] | None = None,
    normalization: dict[str, Any] | None = None,
    name: str | None = None,
    description: str = "",
    pixel_size_um: float | None = None,
    postprocess: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    output_activation: str = "softmax",
) -> dict[str, Any]:
    """Build the metadata of a bundle for ``model``.

    ``instances`` models predict 3 classes (background, interior, boundary);
    ``semantic`` models predict ``n_classes`` classes named by ``class_names``.
    """
    if task not in TASKS:
        raise BundleError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
    n_out = model.n_classes if output_activation == "softmax" else model.n_classes + 1
    if class_names is None:
        class_names = INSTANCE_CLASSES if task == "instances" else [f"class {i}" for i in range(n_out)]
    if task == "instances" and n_out != 3:
        raise BundleError(f"An instances model needs 3 output classes, this one has {n_out}.")
    if len(class_names) != n_out:
        raise BundleError(f"{len(class_names)} class names given for a model with {n_out} classes.")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "architecture": {"name": type(model).__name__, "args": model.config},
        "task": task,
        "class_names": list(class_names),
        "output_activation": output_activation,
        "input_channels": model.n_channels,
        "normalization": dict(normalization or DEFAULT_NORMALIZATION),
        "pixel_size_um": pixel_size_um,
        "postprocess": dict(postprocess if postprocess is not None else DEFAULT_POSTPROCESS[task]),
        "training": training or {},
        "package_version": package_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def build_model(architecture: dict[str, Any]) -> UNet:
    """Construct the network that ``architecture`` (``{"name": ..., "args": {...}}``) describes."""
    unknown = architecture_error(architecture, tuple(ARCHITECTURES))
    if unknown is not None:
        raise unknown
    args = architecture.get("args")
    try:
        return ARCHITECTURES[architecture["name"]](**args)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"The model file's architecture arguments are not valid ({exc}).") from exc


def save_bundle(model: UNet, path: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Save weights and metadata to one ``.safetensors`` file, atomically.

    The file is written to a temporary name in the same folder and renamed over
    ``path`` only when complete, so an interrupted save never leaves a broken model.
    Non-finite weights are refused.
    """
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BundleError(f"Refusing to save a model with non-finite weights (in {bad[0]}).")
    meta = dict(metadata)
    meta["architecture"] = {"name": type(model).__name__, "args": model.config}
    header = {METADATA_KEY: json.dumps(meta, sort_keys=True)}
    from ..io import write_atomically

    return write_atomically(path, lambda tmp: save_file(state, tmp, metadata=header))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a bundle's metadata without loading its weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"No model file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:
        raise BundleError(
            f"{path.name} is not a safetensors model file; choose a .safetensors bundle "
            "or a PyTorch-UNet .pth checkpoint."
        ) from exc
    if METADATA_KEY not in header:
        raise BundleError(
            f"{path.name} is a safetensors file but not a napari-tiled-unet model (it has no "
            "format version); import it from its original checkpoint instead."
        )
    try:
        meta = json.loads(header[METADATA_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise BundleError(f"The metadata of {path.name} is {what}; the file is damaged.") from None
    from .schema import validate_metadata

    return validate_metadata(meta, path.name, FORMAT_NAME, FORMAT_VERSION, TASKS, tuple(ARCHITECTURES))


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Load a ``.safetensors`` bundle into a model in eval mode on the CPU."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .schema import check_tensors

    path = Path(path)
    meta = read_metadata(path)
    # the file's tensors against the network the header describes, built on the meta device
    # (no memory), before the real network is allocated
    with safe_open(str(path), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (not iterable)
        listed = {k: (tuple(f.get_slice(k).get_shape()), dtypes[k].upper().startswith(("F", "BF")), dtypes[k])
                  for k in dtypes}
    with torch.device("meta"):
        skeleton = build_model(meta.get("architecture"))
    check_tensors(skeleton, listed, path.name)
    model = build_model(meta.get("architecture"))
    state = load_file(str(path))
    load_state(model, state, path.name)
    model.eval()
    return ModelBundle(model, meta, path)


def load_state(model: UNet, state: dict[str, torch.Tensor], name: str) -> None:
    """Load ``state`` into ``model`` after checking its tensors and that they are finite;
    ``name`` (the file) goes into the sentence of an error."""
    from .schema import check_tensors

    check_tensors(model, {k: (tuple(v.shape), v.is_floating_point(), str(v.dtype)) for k, v in state.items()},
                  name)
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise BundleError(
                f"The weights in {name} are not usable: {key} holds NaN or infinite values (a training "
                "run that diverged); use an earlier checkpoint or train again."
            )
    model.load_state_dict(state)


# -- PyTorch-UNet checkpoints ------------------------------------------------------------


def infer_pytorch_unet_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the :class:`UNet` arguments from a PyTorch-UNet state dict."""
    try:
        first = state["inc.double_conv.0.weight"]
        out = state["outc.conv.weight"]
    except KeyError as exc:
        raise BundleError(f"This checkpoint is not a PyTorch-UNet state dict (no {exc.args[0]}).") from None
    downs = {int(m.group(1)) for k in state if (m := re.match(r"down(\d+)\.", k))}
    depth = max(downs) if downs else 0
    return {
        "n_channels": int(first.shape[1]),
        "n_classes": int(out.shape[0]),
        "bilinear": "up1.up.weight" not in state,
        "base_channels": int(first.shape[0]),
        "depth": depth,
    }


def import_pytorch_unet(path: str | os.PathLike, task: str | None = None) -> ModelBundle:
    """Convert a PyTorch-UNet ``.pth`` checkpoint into a bundle (not saved).

    The file is read with ``torch.load(weights_only=True)``: a pickle that would run code
    or build arbitrary objects is refused before anything in it is executed. A
    ``mask_values`` entry (PyTorch-UNet stores the mask values of its classes) is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"No model file at {path}.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():
            raise BundleError(
                f"{path.name} is not a readable PyTorch checkpoint (damaged or of an unsupported "
                "kind); choose a .safetensors bundle or a PyTorch-UNet .pth file."
            ) from exc
        raise BundleError(
            f"Refused to load {path.name}: it contains Python objects other than weights, and "
            "loading it could run code. Only plain PyTorch-UNet state dicts can be imported."
        ) from exc
    except Exception as exc:
        raise BundleError(
            f"{path.name} is not a readable PyTorch checkpoint; choose a .safetensors bundle or a "
            "PyTorch-UNet .pth file."
        ) from exc
    if not isinstance(state, dict):
        raise BundleError(
            f"{path.name} does not hold a state dict; save it with torch.save(model.state_dict())."
        )
    mask_values = state.pop("mask_values", None)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    config = infer_pytorch_unet_config(tensors)
    model = UNet(**config)
    load_state(model, tensors, path.name)
    model.eval()
    n = config["n_classes"]
    if n == 1:
        activation, classes, inferred_task = "sigmoid", ["background", "foreground"], "semantic"
    elif n == 3 and task == "instances":
        activation, classes, inferred_task = "softmax", INSTANCE_CLASSES, "instances"
    else:
        activation, classes, inferred_task = "softmax", [f"class {i}" for i in range(n)], "semantic"
    if mask_values is not None and inferred_task == "semantic" and len(mask_values) == len(classes):
        classes = [f"mask value {v}" for v in mask_values]
    meta = make_metadata(
        model,
        task=task or inferred_task,
        class_names=classes if (task or inferred_task) == inferred_task else None,
        # PyTorch-UNet divides 8-bit images by 255 before the network.
        normalization={"kind": "scale", "divide": 255.0},
        name=path.stem,
        description="Imported from a PyTorch-UNet checkpoint.",
        output_activation=activation,
        training={"source": "PyTorch-UNet checkpoint", "file": path.name},
    )
    meta["imported_from"] = {"format": "PyTorch-UNet .pth", "file": path.name, "mask_values": mask_values}
    return ModelBundle(model, meta, path)
