"""Per-object measurements: in memory vs blockwise from zarr, side by side on the same labels.

    python benchmarks/bench_measure.py [--tiles 8 6] [--block 1024]

The in-memory path is one regionprops_table call (numpy labels, block_size above the image
size); the blockwise one reads zarr in 1024-px blocks. The label map is the shipped sample's
ground truth tiled (ids made unique per tile), with its image tiled alike: 8 x 6 tiles give
4160 x 4176 pixels and 9,504 nuclei. Prints the seconds of each path, their ratio, how many
objects crossed block borders, and checks that both tables agree (labels, areas and
intensities exactly, centroids to 1e-9 px).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from napari_tiled_unet._sample_data import nuclei_image, nuclei_labels
from napari_tiled_unet.measure import measure_objects


def tiled(ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
    lab, img = nuclei_labels().astype(np.int32), nuclei_image()
    n = int(lab.max())
    rows = [np.hstack([np.where(lab > 0, lab + (i * nx + j) * n, 0) for j in range(nx)]) for i in range(ny)]
    return np.vstack(rows), np.tile(img, (ny, nx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs=2, default=(8, 6))
    ap.add_argument("--block", type=int, default=1024)
    args = ap.parse_args()
    labels, image = tiled(*args.tiles)
    with tempfile.TemporaryDirectory() as tmp:
        z = zarr.open_array(str(Path(tmp) / "labels.zarr"), mode="w", shape=labels.shape,
                            chunks=(args.block, args.block), dtype="int32")
        z[:] = labels
        zi = zarr.open_array(str(Path(tmp) / "image.zarr"), mode="w", shape=image.shape,
                             chunks=(args.block, args.block), dtype=image.dtype)
        zi[:] = image
        t0 = time.perf_counter()
        mem = measure_objects(labels, image, block_size=10**6)  # one regionprops_table call
        t_mem = time.perf_counter() - t0
        t0 = time.perf_counter()
        blk = measure_objects(z, zi, block_size=args.block)
        t_blk = time.perf_counter() - t0
    for k in mem:
        if k.startswith("centroid"):
            assert np.allclose(mem[k], blk[k], rtol=0, atol=1e-9), k
        else:
            assert np.array_equal(mem[k], blk[k]), k
    edges = [labels[e - 1: e + 1, :] for e in range(args.block, labels.shape[0], args.block)]
    edges += [labels[:, e - 1: e + 1].T for e in range(args.block, labels.shape[1], args.block)]
    crossing = set()
    for pair in edges:
        crossing |= set(pair[0][(pair[0] == pair[1]) & (pair[0] > 0)].tolist())
    print(f"{labels.shape[0]}x{labels.shape[1]} px, {len(mem['label'])} objects, "
          f"{len(crossing)} across {args.block}-px block borders")
    print(f"in memory (numpy):   {t_mem:.2f} s")
    print(f"blockwise (zarr):    {t_blk:.2f} s   ratio blockwise/in-memory {t_blk / t_mem:.2f}")
    print("tables equal: yes")


if __name__ == "__main__":
    main()
