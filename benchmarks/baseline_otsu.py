"""Classical baseline for nuclei: Otsu threshold + distance-transform watershed (scikit-image).

    python benchmarks/baseline_otsu.py [--data ../shared/data/dsb2018-fluo-train] [--ids FILE]

Prints F1@0.5, AP@0.5, AP@0.75 and mean matched IoU over the validation images, the same
figures `benchmarks/eval_model.py` reports for a U-Net, and saves them to
benchmarks/results/baseline_otsu.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.segmentation import watershed

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "dsb2018-fluo-train"
DEFAULT_IDS = HERE / "data" / "dsb2018_val_ids.txt"


def otsu_watershed(image: np.ndarray, min_size: int = 16, min_distance: int = 4) -> np.ndarray:
    """Nuclei by Otsu's threshold, split by a watershed on the distance transform.

    Args:
        image: (Y, X) fluorescence image, any dtype.
        min_size: objects smaller than this (pixels) are dropped.
        min_distance: minimal distance (pixels) between two seeds (distance-transform maxima).

    Returns:
        int32 (Y, X) labels, 0 background.
    """
    img = gaussian(np.asarray(image, dtype=np.float32), sigma=1, preserve_range=True)
    fg = img > threshold_otsu(img)
    parts, _ = ndi.label(ndi.binary_fill_holes(fg))
    fg = (np.bincount(parts.ravel()) >= min_size)[parts] & (parts > 0)  # drop objects under min_size
    dist = ndi.distance_transform_edt(fg)
    dist = gaussian(dist, sigma=1, preserve_range=True)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def read_ids(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def evaluate(predict_fn, data: Path, ids: list[str]) -> dict:
    """Pool TP/FP/FN over images (DSB convention); mean IoU over all pairs matched at 0.5."""
    import tifffile

    from napari_tiled_unet.metrics import Matching, match_instances

    per: dict[float, list] = {0.5: [], 0.75: []}
    for i in ids:
        img = tifffile.imread(data / "images" / f"{i}.tif")
        gt = tifffile.imread(data / "labels" / f"{i}.tif")
        pred = predict_fn(img)
        for t, found in per.items():
            found.append(match_instances(gt, pred, iou_threshold=t))
    m50, m75 = Matching.pooled(per[0.5]), Matching.pooled(per[0.75])
    return {"images": len(ids), "f1@0.5": m50.f1, "ap@0.5": m50.ap, "ap@0.75": m75.ap,
            "mean_matched_iou": m50.mean_matched_iou}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--ids", type=Path, default=DEFAULT_IDS)
    args = ap.parse_args()
    res = evaluate(otsu_watershed, args.data, read_ids(args.ids))
    print(json.dumps(res, indent=1))
    out = HERE / "results" / "baseline_otsu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
