"""Built-in models shipped inside the package (``napari_tiled_unet/model/weights/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: name -> (file inside ``weights/``, one-line description)
BUILTIN: dict[str, tuple[str, str]] = {
    "nuclei-dsb2018": ("nuclei-dsb2018.safetensors", "Fluorescence nuclei (DSB2018), U-Net 16x4, instances"),
}

DEFAULT: str | None = "nuclei-dsb2018"


def _weights_dir() -> Path:
    return Path(str(resources.files("napari_tiled_unet.model") / "weights"))


def available() -> list[str]:
    """Names of the built-in models whose files are installed."""
    return [name for name, (fname, _) in BUILTIN.items() if (_weights_dir() / fname).is_file()]


def describe(name: str) -> str:
    return BUILTIN[name][1]


def path(name: str) -> Path:
    """The file of built-in model ``name``."""
    if name not in BUILTIN:
        raise KeyError(f"No built-in model named {name!r}; available: {', '.join(available()) or 'none'}.")
    return _weights_dir() / BUILTIN[name][0]


def load(name: str | None = None):
    """Load built-in model ``name`` (default: :data:`DEFAULT`) as a :class:`ModelBundle`."""
    from .bundle import BundleError, load_bundle

    name = name or DEFAULT
    if name is None:
        raise BundleError("No built-in model is installed; load a model file instead.")
    return load_bundle(path(name))
