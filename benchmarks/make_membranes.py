"""Generate a small EM-like membrane data set (the worked example of docs/user-guide.md).

    python benchmarks/make_membranes.py OUT [--train 12] [--test 4] [--size 512] [--seed 0]

No electron-microscopy images ship with the project, so this draws them: a random Voronoi
tessellation of cells (about 60 per 512x512 image) whose walls are dark membranes 3-5 px
wide, cell interiors of varying grey with a smooth texture and dark round "organelles" (the
distractors that make membrane detection harder than thresholding), blurred and with noise.
Labels are painted as the command line trains scribbles, every pixel annotated:
1 = membrane, 2 = cell.

Writes OUT/train/{images,labels}/mem<k>.tif and OUT/test/{images,labels}/mem<k>.tif.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi


def membrane_image(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8, labels uint8) pair: labels 1 membrane, 2 cell."""
    n_cells = int(rng.integers(40, 80) * (size / 512) ** 2)
    seeds = np.zeros((size, size), bool)
    seeds[rng.integers(0, size, n_cells), rng.integers(0, size, n_cells)] = True
    _, (iy, ix) = ndi.distance_transform_edt(~seeds, return_indices=True)
    cells = iy * size + ix  # one id per Voronoi cell: the index of its nearest seed
    wall = np.zeros((size, size), bool)
    wall[:-1] |= cells[:-1] != cells[1:]
    wall[:, :-1] |= cells[:, :-1] != cells[:, 1:]
    width = rng.uniform(1.0, 2.0)
    membrane = ndi.distance_transform_edt(~wall) <= width  # walls 3-5 px wide
    grey = rng.uniform(140, 210, cells.max() + 1)[cells]
    texture = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 4) * 150
    image = grey + texture
    n_org = int(size * size / 2500)
    organelles = np.zeros((size, size), bool)
    organelles[rng.integers(0, size, n_org), rng.integers(0, size, n_org)] = True
    organelles = ndi.binary_dilation(organelles, iterations=int(rng.integers(3, 7))) & ~membrane
    image[organelles] -= 80
    # membranes fade in places: their darkness follows a smooth random field
    fade = np.clip(0.5 + ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 12) * 8, 0.25, 1.0)
    image[membrane] -= (image[membrane] - 70) * fade[membrane]
    image = ndi.gaussian_filter(image, 1.2) + rng.normal(0, 20, (size, size))
    labels = np.where(membrane, 1, 2).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=12)
    ap.add_argument("--test", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    k = 0
    for part, n in (("train", args.train), ("test", args.test)):
        for sub in ("images", "labels"):
            (args.out / part / sub).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            image, labels = membrane_image(rng, args.size)
            tifffile.imwrite(args.out / part / "images" / f"mem{k}.tif", image)
            tifffile.imwrite(args.out / part / "labels" / f"mem{k}.tif", labels)
            k += 1
    print(f"{args.train} training and {args.test} test images ({args.size}x{args.size}) in {args.out}; "
          "labels: 1 membrane, 2 cell")


if __name__ == "__main__":
    main()
