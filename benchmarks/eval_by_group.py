"""The built-in model and the baseline on the validation images, by image size (one group per
kind of DSB2018 acquisition).

    python benchmarks/eval_by_group.py [--data ../shared/data/dsb2018-fluo-train]

Prints a markdown table: images, nuclei, median nucleus area, and pooled F1@0.5, AP@0.5 and
mean matched IoU of the U-Net (fp32, the model's stored post-processing) next to the baseline's
AP@0.5 and matched IoU.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import tifffile
from baseline_otsu import DEFAULT_DATA, DEFAULT_IDS, otsu_watershed, read_ids

from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model import load_model
from napari_tiled_unet.segmentation import segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--ids", type=Path, default=DEFAULT_IDS)
    args = ap.parse_args()
    bundle = load_model()
    unet, base = collections.defaultdict(list), collections.defaultdict(list)
    areas = collections.defaultdict(list)
    for i in read_ids(args.ids):
        img = tifffile.imread(args.data / "images" / f"{i}.tif")
        gt = tifffile.imread(args.data / "labels" / f"{i}.tif")
        key = f"{img.shape[0]}x{img.shape[1]}"
        unet[key].append(match_instances(gt, segment(bundle, img, device="cpu").labels, 0.5))
        base[key].append(match_instances(gt, otsu_watershed(img), 0.5))
        a = np.bincount(gt.ravel())[1:]
        areas[key] += a[a > 0].tolist()
    print("| image size | images | nuclei | median nucleus area (px) | F1@0.5 | AP@0.5 | matched IoU "
          "| baseline AP@0.5 | baseline matched IoU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in sorted(unet, key=lambda k: -len(unet[k])):
        m, b = Matching.pooled(unet[key]), Matching.pooled(base[key])
        area = int(np.median(areas[key]))
        print(f"| {key} | {len(unet[key])} | {m.n_true} | {area} | {m.f1:.3f} | {m.ap:.3f} "
              f"| {m.mean_matched_iou:.3f} | {b.ap:.3f} | {b.mean_matched_iou:.3f} |")


if __name__ == "__main__":
    main()
