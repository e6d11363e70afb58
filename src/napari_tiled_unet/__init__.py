"""napari-tiled-unet: tiled U-Net segmentation and fine-tuning for napari.

The public API is Qt-free and imported lazily, so ``import napari_tiled_unet`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-tiled-unet")
except Exception:  # pragma: no cover
    __version__ = "unknown"

_LAZY = {
    "UNet": "napari_tiled_unet.model.unet",
    "ModelBundle": "napari_tiled_unet.model.bundle",
    "BundleError": "napari_tiled_unet.model.bundle",
    "load_model": "napari_tiled_unet.model.bundle",
    "load_bundle": "napari_tiled_unet.model.bundle",
    "save_bundle": "napari_tiled_unet.model.bundle",
    "import_pytorch_unet": "napari_tiled_unet.model.bundle",
    "make_metadata": "napari_tiled_unet.model.bundle",
    "predict": "napari_tiled_unet.inference",
    "predict_iter": "napari_tiled_unet.inference",
    "segment": "napari_tiled_unet.segmentation",
    "segment_iter": "napari_tiled_unet.segmentation",
    "Segmentation": "napari_tiled_unet.segmentation",
    "read_image": "napari_tiled_unet.io",
    "write_labels": "napari_tiled_unet.io",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_tiled_unet' has no attribute {name!r}")
