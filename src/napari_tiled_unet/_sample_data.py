"""npe2 sample data: a real DSB2018 nuclei image, and a lazy 8192 x 8192 mosaic of it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

SAMPLE_ID = "150b0ffa318c"
ATTRIBUTION = "DSB2018 / BBBC038v1 (CC0), Caicedo et al., Nature Methods 2019"


def _file(name: str) -> Path:
    return Path(str(resources.files("napari_tiled_unet.sample_data") / name))


def nuclei_image() -> np.ndarray:
    """The shipped 520 x 696 uint8 fluorescence nuclei image."""
    import tifffile

    return tifffile.imread(_file(f"dsb2018_{SAMPLE_ID}.tif"))


def nuclei_labels() -> np.ndarray:
    """Hand-made instance labels (uint16, 198 nuclei) of :func:`nuclei_image`."""
    import tifffile

    return tifffile.imread(_file(f"dsb2018_{SAMPLE_ID}_labels.tif"))


def nuclei_mosaic(size: int = 8192):
    """A lazy (dask) ``size`` x ``size`` uint8 mosaic of flipped and rotated copies of the sample.

    Nothing is computed until napari (or the engine) reads a region.
    """
    import dask.array as da

    base = nuclei_image()
    tile = base[:512, :512]
    variants = [np.rot90(tile, k) for k in range(4)] + [np.rot90(tile[::-1], k) for k in range(4)]
    rng = np.random.default_rng(0)
    n = -(-size // 512)
    rows = [[da.from_array(variants[rng.integers(8)].copy(), chunks=512) for _ in range(n)] for _ in range(n)]
    return da.block(rows)[:size, :size]


def sample_nuclei():
    """npe2 sample: the nuclei image, with its ground-truth labels hidden by default."""
    return [
        (nuclei_image(), {"name": "nuclei (DSB2018)", "metadata": {"attribution": ATTRIBUTION}}, "image"),
        (nuclei_labels(), {"name": "nuclei ground truth", "visible": False}, "labels"),
    ]


def sample_mosaic():
    """npe2 sample: the 8192 x 8192 lazy mosaic (what tiling is for)."""
    return [(nuclei_mosaic(), {"name": "nuclei mosaic 8192x8192", "contrast_limits": (0, 120)}, "image")]
