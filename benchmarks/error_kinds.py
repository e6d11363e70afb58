"""What kind of errors a model makes on training images of the sets (held-out ids left out).

    python benchmarks/error_kinds.py MODEL SET[,SET...] N

For N training images per set (drawn with random.Random(0)), segmented with diameter="auto",
every annotated nucleus not matched at IoU 0.5 is counted as tiny (< 0.15 of the median
annotated area), missed (< 0.3 of it covered by one object), merged (the object covering it
covers >= 0.3 of another annotated nucleus too) or misshapen; every unmatched object as on no
annotated nucleus, a split piece, a merge or misshapen.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import tifffile
from baseline_otsu import read_ids
from eval_model import SETS

from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"


def kinds(gt: np.ndarray, pred: np.ndarray, counts: dict[str, int]) -> None:
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    ng, npr = int(g.max()) + 1, int(p.max()) + 1
    inter = np.bincount(g * npr + p, minlength=ng * npr).reshape(ng, npr)
    ga, pa = inter.sum(1), inter.sum(0)
    iou = inter / (ga[:, None] + pa[None, :] - inter + 1e-9)
    iou[0, :] = iou[:, 0] = 0
    gts = [k for k in range(1, ng) if ga[k]]
    counts["annotated"] += len(gts)
    median = np.median([ga[k] for k in gts]) if gts else 1
    for k in gts:
        if iou[k].max() >= 0.5:
            counts["matched"] += 1
            continue
        j = int(inter[k, 1:].argmax()) + 1 if npr > 1 else 0
        cover = inter[k, j] / ga[k] if j else 0
        if ga[k] < 0.15 * median:
            counts["fn_tiny"] += 1
        elif cover < 0.3:
            counts["fn_missed"] += 1
        elif (inter[1:, j] > 0.3 * ga[1:]).sum() >= 2:
            counts["fn_merged"] += 1
        else:
            counts["fn_misshapen"] += 1
    for j in range(1, npr):
        if not pa[j] or iou[:, j].max() >= 0.5:
            continue
        k = int(inter[1:, j].argmax()) + 1 if ng > 1 else 0
        if not k or inter[k, j] / pa[j] < 0.3:
            counts["fp_on_no_nucleus"] += 1
        elif (inter[k, 1:] > 0.3 * pa[1:]).sum() >= 2 or pa[j] < 0.5 * ga[k]:
            counts["fp_split"] += 1
        elif (inter[1:, j] > 0.3 * ga[1:]).sum() >= 2:
            counts["fp_merge"] += 1
        else:
            counts["fp_misshapen"] += 1


def main() -> None:
    model, sets, n = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    bundle = load_model(model)
    for name in sets:
        held = set(read_ids(HERE / "data" / SETS[name]))
        ids = sorted(p.stem for p in (DATA / name / "images").glob("*.tif") if p.stem not in held)
        random.Random(0).shuffle(ids)
        counts = dict.fromkeys(["annotated", "matched", "fn_tiny", "fn_missed", "fn_merged", "fn_misshapen",
                                "fp_on_no_nucleus", "fp_split", "fp_merge", "fp_misshapen"], 0)
        for i in ids[:n]:
            image = tifffile.imread(DATA / name / "images" / f"{i}.tif")
            gt = tifffile.imread(DATA / name / "labels" / f"{i}.tif")
            kinds(gt, segment(bundle, image, device="cpu", diameter="auto").labels, counts)
        print(name, min(n, len(ids)), "images", counts, flush=True)


if __name__ == "__main__":
    main()
