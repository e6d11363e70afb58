"""bioimage.io model packages: export a bundle as one, and import one back as a bundle.

Export (:func:`export_bioimageio`) writes a zip in the bioimage.io model format 0.5: an
``rdf.yaml`` describing the input and output tensors, their axes and the preprocessing that
matches the bundle's normalization; ``pytorch_state_dict`` weights with the architecture's
source file; a TorchScript copy; test input and output tensors; a cover image; a README made
from the training record; license and citations. The network in the package ends in the
bundle's output activation (softmax, or a sigmoid written as two channels), so its output
is class probabilities; turning them into objects (seeded watershed) cannot be expressed in
the format and is described in the README and in ``config.napari_tiled_unet``, which also
carries the whole bundle metadata so that a re-import is exact.

Import (:func:`import_bioimageio`) reads a package (zip, folder or its ``rdf.yaml``) whose
``pytorch_state_dict`` weights are a U-Net this plugin can build, without running any code
from it: the architecture file is never imported, TorchScript is never loaded, and the
weights are read with ``torch.load(weights_only=True)``, which refuses a pickle that would
build anything but tensors and plain containers before it runs. Anything else is refused
with one sentence.

The bioimage.io libraries are not needed for either; :func:`validate` uses
``bioimageio.spec`` when it is installed (the ``[bioimageio]`` extra).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .model.bundle import ModelBundle, load_model
from .model.package import (  # noqa: F401  (reading packages: re-exported, the public names of this module)
    CONFIG_KEY,
    RDF_NAMES,
    PackageError,
    import_bioimageio,
    is_package,
    read_rdf,
)

FORMAT_VERSION = "0.5.4"
ARCHITECTURE_FILE = "tiled_unet_architecture.py"
ARCHITECTURE_CALLABLE = "UNetProbabilities"

UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox: U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
DSB2018_CITATION = {
    "text": "Caicedo et al.: Nucleus segmentation across imaging experiments: the 2018 Data Science "
    "Bowl. Nature Methods 16, 2019 (BBBC038v1, CC0).",
    "doi": "10.1038/s41592-019-0612-7",
}
PLUGIN_CITATION = {
    "text": "napari-tiled-unet: tiled U-Net segmentation and fine-tuning in napari.",
    "url": "https://github.com/napari-tiled-unet/napari-tiled-unet",
}

# appended to the U-Net's source in the package: the same weights, probabilities out
_WRAPPER_SOURCE = '''

class UNetProbabilities(UNet):
    """The U-Net followed by its output activation, as napari-tiled-unet applies it:
    softmax over the classes, or for a one-logit model the sigmoid written as two channels
    (1 - p, p). The state dict is the U-Net's."""

    def __init__(self, *args, sigmoid: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if self.sigmoid:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)
'''


# -- export ------------------------------------------------------------------------------


def architecture_source() -> str:
    """The Python source written into a package: the U-Net module and the probability wrapper."""
    from .model import unet

    return Path(unet.__file__).read_text(encoding="utf-8") + _WRAPPER_SOURCE


def probability_network(bundle: ModelBundle) -> torch.nn.Module:
    """The bundle's U-Net with its output activation, as the package's architecture builds it."""
    namespace: dict[str, Any] = {"__name__": "napari_tiled_unet_bioimageio_architecture"}
    exec(compile(architecture_source(), ARCHITECTURE_FILE, "exec"), namespace)  # our own source
    sigmoid = bundle.metadata.get("output_activation") == "sigmoid"
    net = namespace[ARCHITECTURE_CALLABLE](**bundle.model.config, sigmoid=sigmoid)
    net.load_state_dict(bundle.model.state_dict())
    return net.eval()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _rdf_name(name: str) -> str:
    """A bioimage.io name: letters, digits, ``_+- ()``; 5 to 64 characters."""
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", name).strip() or "U-Net model"
    clean = re.sub(r"\s+", " ", clean)[:64]
    return clean if len(clean) >= 5 else f"{clean} U-Net"


def _preprocessing(normalization: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """bioimage.io preprocessing steps for a bundle's normalization recipe, and a sentence on
    how exactly they match it."""
    kind = normalization.get("kind", "percentile")
    to_float = {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}
    steps, note = _scaling(normalization, kind, to_float)
    if "clip_high" in normalization:
        ceiling = float(normalization["clip_high"])
        # after the scaling, on float32 values (before the last ensure_dtype where there is one)
        steps.insert(max(len(steps) - 1, 1), {"id": "clip", "kwargs": {"max": ceiling}})
        note += f" Values above {ceiling:g} after that are set to {ceiling:g} (`clip`)."
    return steps, note


def _scaling(normalization: dict[str, Any], kind: str, to_float: dict[str, Any]) -> tuple[list, str]:
    """The steps and sentence of the recipe's scaling, without its ceiling."""
    if kind == "percentile":
        low, high = float(normalization.get("low", 1.0)), float(normalization.get("high", 99.8))
        step = {
            "id": "scale_range",
            "kwargs": {"axes": ["y", "x"], "min_percentile": low, "max_percentile": high},
        }
        note = (
            f"Each channel of each image is scaled so that its {low:g}th percentile maps to 0 and "
            f"its {high:g}th to 1 (`scale_range` over y and x). napari-tiled-unet computes these "
            "percentiles over the whole image (from an evenly spread sample of at most 2 million "
            "pixels per channel for larger ones) and never per tile; `scale_range` adds 1e-6 to the "
            "range, a difference far below the network's precision."
        )
        if normalization.get("exclude_saturated"):
            note += (" napari-tiled-unet first leaves the pixels at the image's maximum value out of the "
                     "percentiles (a saturated camera's plateau); `scale_range` has no such option, so on "
                     "images with a large saturated area other tools scale them somewhat differently.")
        return [to_float, step, to_float], note
    if kind == "scale":
        divide, offset = float(normalization.get("divide", 1.0)), float(normalization.get("offset", 0.0))
        step = {"id": "scale_linear", "kwargs": {"gain": 1.0 / divide, "offset": -offset / divide}}
        return [to_float, step, to_float], f"Intensities are mapped as (x - {offset:g}) / {divide:g}."
    if kind == "none":
        return [to_float], "Intensities go to the network unchanged."
    raise PackageError(
        f"The model's normalization {kind!r} has no bioimage.io equivalent; it cannot be exported."
    )


def _test_image(bundle: ModelBundle, image: np.ndarray | None, size: int) -> np.ndarray:
    """A (C, size, size) float32 crop from the middle of ``image`` (default: the shipped sample)."""
    if image is None:
        from ._sample_data import nuclei_image

        image = nuclei_image()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] not in (1, 3, 4):
        image = np.moveaxis(image, -1, 0)  # YXC -> CYX
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise PackageError(f"The test image has shape {image.shape}; give a 2D image (Y, X) or (C, Y, X).")
    c = bundle.n_channels
    if image.shape[0] != c:
        image = np.repeat(image[:1], c, axis=0) if image.shape[0] == 1 else image[:c]
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise PackageError(
            f"The test image ({h}x{w}) is smaller than the {size}x{size} the package needs; "
            "give a larger one."
        )
    y0, x0 = (h - size) // 2, (w - size) // 2
    return image[:, y0 : y0 + size, x0 : x0 + size].astype(np.float32)


def _cover_png(raw: np.ndarray, probs: np.ndarray, bundle: ModelBundle) -> bytes:
    """A 2:1 cover: the test image beside it with the objects (or classes) outlined."""
    from skimage.io import imsave

    from .io import overlay_png
    from .postprocess import labels_from_probabilities, params_for

    labels = labels_from_probabilities(probs, bundle.task, params_for(bundle.task, bundle.postprocess))
    gray = raw.mean(axis=0)
    lo, hi = np.percentile(gray, [1, 99.8])
    left = (np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "overlay.png"
        overlay_png(gray, labels, overlay)
        from skimage.io import imread

        right = imread(overlay)[..., :3]
        both = np.concatenate([np.stack([left] * 3, axis=-1), right], axis=1)
        out = Path(tmp) / "cover.png"
        imsave(str(out), both, check_contrast=False)
        return out.read_bytes()


def _documentation(bundle: ModelBundle, norm_note: str, size_note: str) -> str:
    meta = bundle.metadata
    training = meta.get("training") or {}
    post = bundle.postprocess
    lines = [
        f"# {meta.get('name') or bundle.name}",
        "",
        meta.get("description") or "A U-Net for microscopy segmentation, exported by napari-tiled-unet.",
        "",
    ]
    lines += ["## What it does", ""]
    if bundle.task == "instances":
        lines += [
            "The network predicts, for every pixel, the probabilities of three classes: background, "
            "the interior of an object, and an object's boundary. napari-tiled-unet turns them into one "
            "label per object with a seeded watershed (seeds where the interior probability exceeds "
            f"{post.get('seed_threshold')}, grown over the pixels where 1 - p(background) exceeds "
            f"{post.get('foreground_threshold')}; objects under {post.get('min_size')} px dropped). "
            "That step has no bioimage.io equivalent, so this package's output is the probabilities; "
            "open the package in napari-tiled-unet to get objects.",
            "",
        ]
    else:
        lines += [
            f"The network predicts the probability of each class ({', '.join(bundle.class_names)}) "
            "for every pixel; the class of a pixel is the most probable one.",
            "",
        ]
    lines += ["## Input", "", norm_note, "", size_note, ""]
    if meta.get("pixel_size_um"):
        lines += [f"Pixel size of the training data: {meta['pixel_size_um']} µm.", ""]
    lines += ["## Training", ""]
    if training:
        lines += _markdown_record({k: v for k, v in training.items() if k != "metrics"})
    else:
        lines.append("No training record is stored with this model.")
    lines += ["", "## Validation", ""]
    metrics = {k: v for k, v in (training.get("metrics") or {}).items() if v is not None}
    if metrics:
        lines.append("On the images held out from training (best weights):")
        lines.append("")
        lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in metrics.items()]
    else:
        lines.append(
            "No validation figures are stored with this model; evaluate it on annotated images of "
            "your own (`napari-tiled-unet evaluate`)."
        )
    lines += [
        "",
        "## Use",
        "",
        "In napari-tiled-unet: `napari-tiled-unet segment IMAGE -o OUT -m this_package.zip`, or load the "
        "zip in the Segment or Fine-tune widget. Elsewhere: any bioimage.io consumer (bioimageio.core, "
        "deepImageJ, ilastik) runs the network and its preprocessing.",
        "",
        f"Exported by napari-tiled-unet {meta.get('package_version', '')} on {_dt.date.today().isoformat()}.",
        "",
    ]
    return "\n".join(lines)


def _markdown_record(record: dict[str, Any], indent: str = "") -> list[str]:
    """A training record as nested Markdown bullets; long lists show their first items (the whole
    record is in ``rdf.yaml`` under ``config.napari_tiled_unet``)."""
    lines = []
    for key, value in record.items():
        if isinstance(value, dict):
            lines.append(f"{indent}- **{key}**:" + ("" if value else " -"))
            lines += _markdown_record(value, indent + "  ")
            continue
        if isinstance(value, list) and len(value) > 8:
            text = ", ".join(map(str, value[:5])) + f", … ({len(value)} in all; see rdf.yaml)"
        elif isinstance(value, list):
            text = ", ".join(map(str, value)) or "-"
        else:
            text = "-" if value is None or value == "" else str(value)
        lines.append(f"{indent}- **{key}**: {text}")
    return lines


def export_bioimageio(
    model: ModelBundle | str | os.PathLike,
    out: str | os.PathLike,
    *,
    authors: list[str] | None = None,
    license: str = "BSD-3-Clause",  # noqa: A002 - the field's name in the format
    test_image: np.ndarray | None = None,
    cite_training_data: list[dict[str, str]] | None = None,
) -> Path:
    """Write ``model`` as a bioimage.io model package (zip) at ``out``, atomically.

    Args:
        model: bundle, model file or built-in name.
        out: the ``.zip`` to write (replaced if present, only once the new one is complete).
        authors: names for the package's authors (default: the model's training record or
            "napari-tiled-unet user").
        license: SPDX identifier of the weights' license.
        test_image: image to take the test tensors and the cover from (default: the
            shipped DSB2018 sample).
        cite_training_data: citations of the training data (default: DSB2018 when the
            training record names it).

    Returns:
        The path written.
    """
    import yaml

    bundle = load_model(model)
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise PackageError(f"{out.name}: a bioimage.io package is a .zip file; give a name ending in .zip.")
    if not out.parent.is_dir():
        raise PackageError(f"The folder {out.parent} does not exist; create it or choose another output.")
    from .tiling import exact_halo

    multiple = bundle.model.size_multiple
    halo = exact_halo(bundle.depth, bundle.model.bilinear)
    min_size = -(-(2 * halo + multiple) // multiple) * multiple
    size = max(256, min_size)
    preprocessing, norm_note = _preprocessing(bundle.normalization)
    size_note = (
        f"Height and width must be multiples of {multiple}, at least {min_size} px. For tiled "
        f"prediction, {halo} px at each inner tile edge are influenced by the edge (the halo); "
        "napari-tiled-unet discards them, so its tiles have no seams."
    )

    raw = _test_image(bundle, test_image, size)
    from . import normalization

    stats = normalization.compute_stats(raw, bundle.normalization, channel_axis=0)
    net = probability_network(bundle)
    import warnings

    x = torch.from_numpy(normalization.apply(raw, stats))[None]
    with torch.no_grad(), warnings.catch_warnings():
        probs = net(x).numpy().astype(np.float32)
        warnings.simplefilter("ignore")  # tracer notes on the shape arithmetic (constant for valid sizes)
        traced = torch.jit.trace(net, x, check_trace=False)
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}, buf)
    files["weights.pt"] = buf.getvalue()
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    files["weights_torchscript.pt"] = buf.getvalue()
    files[ARCHITECTURE_FILE] = architecture_source().encode("utf-8")
    for name, arr in (("test_input.npy", raw[None]), ("test_output.npy", probs)):
        buf = io.BytesIO()
        np.save(buf, arr)
        files[name] = buf.getvalue()
    import tifffile

    for name, arr in (("sample_input.tif", raw[None]), ("sample_output.tif", probs)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, compression="zlib", photometric="minisblack")
        files[name] = buf.getvalue()
    files["cover.png"] = _cover_png(raw, probs[0], bundle)
    files["README.md"] = _documentation(bundle, norm_note, size_note).encode("utf-8")

    meta = bundle.metadata
    training = meta.get("training") or {}
    if cite_training_data is None:
        trained_on = json.dumps(training).lower()
        cite_training_data = [DSB2018_CITATION] if ("dsb" in trained_on or "2018" in trained_on) else []
    names = authors or [a for a in [training.get("author")] if a] or ["napari-tiled-unet user"]
    in_channels = ["raw"] if bundle.n_channels == 1 else [f"channel{i}" for i in range(bundle.n_channels)]
    # The training data's pixel size is stated in the README, not as axis scales: bioimage.io tools
    # compute an output size as size * input scale / output scale, which rounds 56 * 0.65 / 0.65
    # down to 55 (bioimageio.core 0.11), and this network keeps the size anyway.
    space = [{"type": "space", "id": axis, "size": {"min": min_size, "step": multiple}} for axis in "yx"]
    out_space = [
        {"type": "space", "id": axis, "size": {"tensor_id": "input", "axis_id": axis}, "halo": halo}
        for axis in "yx"
    ]
    torch_version = torch.__version__.split("+")[0]
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": _rdf_name(meta.get("name") or bundle.name),
        "description": (meta.get("description") or "U-Net segmentation model exported by napari-tiled-unet.")[
            :512
        ],
        "authors": [{"name": n} for n in names],
        "cite": [UNET_CITATION, *cite_training_data, PLUGIN_CITATION],
        "license": license,
        "tags": [
            "napari-tiled-unet",
            "unet",
            "unet2d",
            "pytorch",
            "segmentation",
            "2d",
            *(
                ["instance-segmentation", "nuclei"]
                if bundle.task == "instances"
                else ["semantic-segmentation"]
            ),
        ],
        "documentation": {"source": "README.md", "sha256": _sha256(files["README.md"])},
        "covers": [{"source": "cover.png", "sha256": _sha256(files["cover.png"])}],
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": "input",
                "description": "the image, one or more channels",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_channels}, *space],
                "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
                "sample_tensor": {"source": "sample_input.tif", "sha256": _sha256(files["sample_input.tif"])},
                "data": {"type": "float32"},
                "preprocessing": preprocessing,
            }
        ],
        "outputs": [
            {
                "id": "probabilities",
                "description": "probability of each class per pixel (they sum to 1)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": bundle.class_names},
                    *out_space,
                ],
                "test_tensor": {"source": "test_output.npy", "sha256": _sha256(files["test_output.npy"])},
                "sample_tensor": {
                    "source": "sample_output.tif",
                    "sha256": _sha256(files["sample_output.tif"]),
                },
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "sha256": _sha256(files["weights.pt"]),
                "architecture": {
                    "source": ARCHITECTURE_FILE,
                    "sha256": _sha256(files[ARCHITECTURE_FILE]),
                    "callable": ARCHITECTURE_CALLABLE,
                    "kwargs": {**bundle.model.config, "sigmoid": meta.get("output_activation") == "sigmoid"},
                },
                "pytorch_version": torch_version,
            },
            "torchscript": {
                "source": "weights_torchscript.pt",
                "sha256": _sha256(files["weights_torchscript.pt"]),
                "parent": "pytorch_state_dict",
                "pytorch_version": torch_version,
                "comment": "Traced from the state-dict weights; valid for the sizes the input axes allow.",
            },
        },
        "config": {CONFIG_KEY: {"metadata": _plain(meta)}},
    }
    files["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode("utf-8")

    from .io import publish, temp_beside

    tmp = temp_beside(out)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("rdf.yaml", files.pop("rdf.yaml"))
            for name, data in files.items():
                zf.writestr(name, data)
        publish(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _plain(value: Any) -> Any:
    """JSON-safe copy (tuples -> lists, numpy scalars -> Python)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def validate(path: str | os.PathLike) -> Any:
    """Validate a package with ``bioimageio.spec`` (install the ``[bioimageio]`` extra);
    returns its validation summary (``.status`` is ``"passed"`` or ``"failed"``)."""
    from bioimageio.spec import load_description

    descr = load_description(str(path), perform_io_checks=True)
    return descr.validation_summary
