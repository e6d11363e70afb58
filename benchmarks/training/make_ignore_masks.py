"""Ignore masks for nuclei a set's annotators left out (issue 13: each set's caveats handled).

    python benchmarks/training/make_ignore_masks.py ../shared/data/kromp-sbsst265 \
        benchmarks/data/kromp_sbsst265_ignore --held-out benchmarks/data/kromp_sbsst265_val_ids.txt \
        --preparation "tissue section"

Kromp et al.'s README says that in its tissue sections out-of-focus nuclei are visible but not
annotated: trained as background, they teach the network one lab's focus convention (dim
nuclei are not nuclei), which the other sets' annotators do not share. This script marks
them so that `train` counts them neither as nuclei nor as background: a model (default
`nuclei-v2`, auto diameter, a permissive foreground threshold of 0.5) segments each training
image of the chosen preparation; every predicted object of which less than ``--overlap`` of
the pixels lie on an annotated nucleus is one the annotators left out; those objects, grown
by ``--grow`` px, minus a ``--keep`` px ring around every annotated nucleus (so each annotated
nucleus keeps its outline and the background next to it), are the mask. Held-out ids are
never read. Writes ``OUT/<id>.tif`` (uint8, 1 = ignore, zlib) and prints a line per image.
``--picture ID PNG`` draws one image's mask (magenta) and annotations (green) instead
(docs/images/kromp_ignore_mask.png: ``--picture Ganglioneuroblastoma_7 docs/images/kromp_ignore_mask.png``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training.folders import image_files, read_ids, read_pair


def share_on(pred: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per object id of ``pred`` (index 0 = background), the share of its pixels on ``mask``
    (1 for ids without pixels)."""
    pred = np.asarray(pred, dtype=np.int64).ravel()
    area = np.bincount(pred)
    on = np.bincount(pred, weights=np.asarray(mask, dtype=bool).ravel(), minlength=area.size)
    return np.where(area > 0, on / np.maximum(area, 1), 1.0)


def left_out_objects(pred: np.ndarray, labels: np.ndarray, overlap: float) -> np.ndarray:
    """bool: the predicted objects with less than ``overlap`` of their pixels on annotations."""
    left = share_on(pred, labels > 0) < overlap
    left[0] = False
    return left[pred]


def _disc(r: int) -> np.ndarray:
    d = np.arange(-r, r + 1) ** 2
    return np.add.outer(d, d) <= r * r


def ignore_mask(pred: np.ndarray, labels: np.ndarray, *, overlap: float = 0.1, grow: int = 2,
                keep: int = 2) -> np.ndarray:
    """bool (Y, X): left-out objects grown by ``grow`` px, outside ``keep`` px of every annotation."""
    mask = left_out_objects(pred, labels, overlap)
    if grow:
        mask = ndi.binary_dilation(mask, _disc(grow))
    if keep:
        mask &= ~ndi.binary_dilation(labels > 0, _disc(keep))
    return mask


def picture(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, path: Path) -> None:
    """A 600x500 px crop: the image in grey, annotated outlines green, mask outlines magenta."""
    from PIL import Image

    img = image.astype(np.float32) if image.ndim == 2 else image[..., 0].astype(np.float32)
    grey = np.clip(img / np.percentile(img, 99.5), 0, 1) * 255
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[(labels > 0) & ~ndi.binary_erosion(labels > 0)] = (0, 255, 0)
    rgb[mask & ~ndi.binary_erosion(mask)] = (255, 0, 255)
    Image.fromarray(rgb.astype(np.uint8)[200:700, 200:800]).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set", type=Path, help="folder with images/, labels/ and per_image.csv")
    ap.add_argument("out", type=Path)
    ap.add_argument("--held-out", type=Path, required=True)
    ap.add_argument("--preparation", default=None, help="only images of this per_image.csv preparation")
    ap.add_argument("--model", default="nuclei-v2")
    ap.add_argument("--foreground", type=float, default=0.5)
    ap.add_argument("--overlap", type=float, default=0.1)
    ap.add_argument("--grow", type=int, default=2)
    ap.add_argument("--keep", type=int, default=2)
    ap.add_argument("--picture", nargs=2, metavar=("ID", "PNG"), default=None,
                    help="draw the mask already in OUT for image ID into PNG, and stop")
    args = ap.parse_args()
    if args.picture:
        i, png = args.picture
        image, labels = read_pair(args.set / "images" / f"{i}.tif", args.set / "labels" / f"{i}.tif")
        picture(image, labels, tifffile.imread(args.out / f"{i}.tif") > 0, Path(png))
        return
    imgs, labs = image_files(args.set / "images"), image_files(args.set / "labels", "labels")
    held = set(read_ids(args.held_out))
    ids = sorted(set(imgs) & set(labs) - held)
    if args.preparation:
        with open(args.set / "per_image.csv", newline="") as f:
            prep = {row["id"]: row["preparation"] for row in csv.DictReader(f)}
        ids = [i for i in ids if prep.get(i) == args.preparation]
    args.out.mkdir(parents=True, exist_ok=True)
    total_obj = total_px = 0
    for i in ids:
        image, labels = read_pair(imgs[i], labs[i])
        seg = segment(args.model, image, diameter="auto",
                      postprocess={"foreground_threshold": args.foreground})
        mask = ignore_mask(seg.labels, labels, overlap=args.overlap, grow=args.grow, keep=args.keep)
        n = int(ndi.label(mask)[1])
        total_obj, total_px = total_obj + n, total_px + int(mask.sum())
        tifffile.imwrite(args.out / f"{i}.tif", mask.astype(np.uint8), compression="zlib")
        print(f"{i}: {n} regions left out by the annotators, {mask.mean():.1%} of the image ignored, "
              f"{int(labels.max())} annotated nuclei")
    print(f"{len(ids)} images, {total_obj} regions, {total_px} pixels ignored -> {args.out}")


if __name__ == "__main__":
    main()
