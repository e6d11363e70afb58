"""The network, its one-file bundle format and the built-in models."""

from .bundle import (
    BundleError,
    ModelBundle,
    import_pytorch_unet,
    load_bundle,
    load_model,
    make_metadata,
    read_metadata,
    save_bundle,
)
from .unet import UNet

__all__ = [
    "BundleError",
    "ModelBundle",
    "UNet",
    "import_pytorch_unet",
    "load_bundle",
    "load_model",
    "make_metadata",
    "read_metadata",
    "save_bundle",
]
