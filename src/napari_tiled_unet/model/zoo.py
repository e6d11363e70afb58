"""Built-in models shipped inside the package (``napari_tiled_unet/model/weights/``): names
mapped to files. Loading one is :func:`~napari_tiled_unet.model.bundle.load_model` (by name).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import BundleError

#: name -> (file inside ``weights/``, one-line description)
BUILTIN: dict[str, tuple[str, str]] = {
    "nuclei-v2": ("nuclei-v2.safetensors",
                  "Fluorescence nuclei from four public sets (DSB2018, Kromp, BitDepth, Aitslab), "
                  "U-Net 16x4, instances; the default: far better than nuclei-dsb2018 on images from other "
                  "labs (tissue sections, cytospins, 16-bit widefield, large nuclei at 40-63x)"),
    "nuclei-dsb2018": ("nuclei-dsb2018.safetensors",
                       "Fluorescence nuclei (DSB2018), U-Net 16x4, instances; a little better than nuclei-v2 "
                       "on cultured cells like DSB2018's, far worse on images from other labs"),
}

#: the model a user gets without choosing one (listed first wherever models are offered)
DEFAULT: str = "nuclei-v2"


def _weights_dir() -> Path:
    return Path(str(resources.files("napari_tiled_unet.model") / "weights"))


def available() -> list[str]:
    """Names of the built-in models whose files are installed."""
    return [name for name, (fname, _) in BUILTIN.items() if (_weights_dir() / fname).is_file()]


def path(name: str) -> Path:
    """The file of built-in model ``name``."""
    if name not in BUILTIN:
        raise BundleError(f"No built-in model named {name!r}; available: {', '.join(available()) or 'none'}.")
    return _weights_dir() / BUILTIN[name][0]
