"""Dropping faint objects after segmentation, on the tuning images of the mix.

    cd benchmarks && python dim_objects_experiment.py MODEL [--cache /tmp/probs] \
        [--foreground 0.85 --seed 0.3 --min-size 32 --min-size-fraction 0.1]

Kromp's false objects are mostly dim, out-of-focus nuclei its annotators left out
(flood_experiment.py --kinds). This asks whether a per-object rule can drop them without
dropping annotated nuclei on the other sets. The 40 training images and the post-processing
are those of ``tune_postprocess.py --mix training/nuclei_v2_sets.txt --n 40``; each predicted
object gets three scores, and objects below a threshold of one score are dropped:

- ``foreground``: the object's mean foreground probability (the network's confidence);
- ``brightness``: its mean image intensity above the background (median of the pixels the
  network calls background), relative to that of the image's typical object (the one holding
  the median object pixel);
- ``contrast``: its mean intensity minus that of a 3 px ring around it, relative as above
  (out-of-focus nuclei fade into their surroundings).

Brightness and contrast do not depend on the image's offset or scale, so raw intensities serve
(the mean of the channels for RGB). Prints, per score, the quartiles of true and false objects
per set, then weighted AP@0.5 (weights of the list) with TP/FP/FN per set for each threshold.
Experiments only: the shipped post-processing keeps every object above its minimum size.
"""

from __future__ import annotations

import numpy as np
import tifffile
from flood_experiment import segment, tuning_arguments
from scipy import ndimage as ndi
from tune_postprocess import pooled_by_set, training_ids, training_probabilities

from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model.bundle import load_model

THRESHOLDS = {
    "foreground": [0.9, 0.92, 0.93, 0.94, 0.95],
    "brightness": [0.2, 0.3, 0.4, 0.5],
    "contrast": [0.1, 0.15, 0.2, 0.25, 0.3],
}


def scores(image: np.ndarray, prob: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Each object's scores (index k-1 for label k; see the module docstring)."""
    if image.ndim == 3:
        image = image.mean(axis=-1 if image.shape[-1] <= 4 else 0)
    image = image.astype(np.float32)
    idx = np.arange(1, int(labels.max()) + 1)
    mean = np.asarray(ndi.mean(image, labels, idx))
    ring = ndi.grey_dilation(labels, size=7) * (labels == 0)
    around = np.asarray(ndi.mean(image, ring, idx))
    background = prob[0] > 0.5
    bg = float(np.median(image[background])) if background.any() else float(image.min())
    area = np.bincount(labels.ravel(), minlength=idx.size + 1)[1:]
    order = np.argsort(mean)
    typical = mean[order][np.searchsorted(np.cumsum(area[order]), 0.5 * area.sum())]
    unit = max(float(typical) - bg, 1e-6)
    return {"foreground": np.asarray(ndi.mean(1.0 - prob[0].astype(np.float32), labels, idx)),
            "brightness": (mean - bg) / unit, "contrast": (mean - around) / unit}


def true_objects(gt: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether each predicted object matches an annotated one at IoU >= 0.5."""
    n, m = int(labels.max()), int(gt.max())
    if m == 0:
        return np.zeros(n, bool)
    pair = np.bincount(labels.ravel().astype(np.int64) * (m + 1) + gt.ravel(), minlength=(n + 1) * (m + 1))
    inter = pair.reshape(n + 1, m + 1)[1:, 1:]
    union = (np.bincount(labels.ravel(), minlength=n + 1)[1:, None]
             + np.bincount(gt.ravel(), minlength=m + 1)[None, 1:] - inter)
    return (inter / np.maximum(union, 1)).max(axis=1) >= 0.5


def main() -> None:
    ap = tuning_arguments(__doc__)
    ap.add_argument("--foreground", type=float, default=0.85)
    ap.add_argument("--seed", type=float, default=0.3)
    ap.add_argument("--min-size", type=int, default=32)
    ap.add_argument("--min-size-fraction", type=float, default=0.1)
    args = ap.parse_args()
    cached, weights, _ = training_probabilities(load_model(args.model), args.mix, args.n, cache=args.cache)
    ids, _, _ = training_ids(args.mix, args.n)
    rows = []
    for (folder, i), (name, prob, gt) in zip(ids, cached):
        labels = segment(prob, args.foreground, args.seed, "prob", args.min_size, args.min_size_fraction)
        image = tifffile.imread(folder / "images" / f"{i}.tif")
        rows.append((name, gt, labels, true_objects(gt, labels), scores(image, prob, labels)))
    for score in THRESHOLDS:
        for name in weights:
            true = np.concatenate([r[3] for r in rows if r[0] == name])
            value = np.concatenate([r[4][score] for r in rows if r[0] == name])
            q = [0.05, 0.25, 0.5]
            false = np.quantile(value[~true], q).round(3) if (~true).any() else "none"
            print(f"{score}, {name}: true objects {true.sum()} at 5/25/50 % "
                  f"{np.quantile(value[true], q).round(3)}, false {(~true).sum()} at {false}")
        for t in [None, *THRESHOLDS[score]]:
            found = []
            for name, gt, labels, _, s in rows:
                keep = np.concatenate([[0], np.where(s[score] >= t, np.arange(1, s[score].size + 1), 0)]) \
                    if t is not None else np.arange(int(labels.max()) + 1)
                found.append((name, match_instances(gt, keep[labels], 0.5)))
            weighted, pooled = pooled_by_set(found, weights)
            print(f"{score} >= {t if t is not None else '-'}: weighted AP@0.5 {weighted:.4f}; "
                  + ", ".join(f"{n} {m.ap:.3f} (TP {m.tp} FP {m.fp} FN {m.fn})" for n, m in pooled.items()),
                  flush=True)


if __name__ == "__main__":
    main()
