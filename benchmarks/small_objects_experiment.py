"""Small objects that stand alone (micronuclei) against small pieces next to a nucleus (fragments).

    cd benchmarks && python small_objects_experiment.py MODEL [--cache DIR]

Post-processing drops every object smaller than max(min_size, min_size_fraction x the image's
typical object). Aitslab's annotators count micronuclei, most of its missed nuclei on training
images (175 of 194 on 30 images, `error_kinds.py`), while the fragments the rule is meant for
usually touch the nucleus they broke from. This scores, on the 40 tuning images of the mix
(training images only), rules that keep a small object when no other object lies within
``gap`` px of it and it has at least ``floor`` pixels.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tune_postprocess import pooled_by_set, training_probabilities

from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.postprocess import instances_from_probabilities, smallest_kept

HERE = Path(__file__).resolve().parent


def keep_lonely(labels: np.ndarray, cut: int, floor: int, gap: int) -> np.ndarray:
    """``labels`` without objects under ``cut`` px, except those of at least ``floor`` px with no
    other object within ``gap`` px."""
    sizes = np.bincount(labels.ravel())
    small = (sizes < cut) & (sizes > 0)
    small[0] = False
    keep = ~small
    if floor < cut:
        boxes = ndi.find_objects(labels)
        for i in np.flatnonzero(small & (sizes >= floor)):
            sl = tuple(slice(max(0, s.start - gap), s.stop + gap) for s in boxes[i - 1])
            sub = labels[sl]
            ring = ndi.binary_dilation(sub == i, iterations=gap) & (sub != i)
            keep[i] = not (sub[ring] > 0).any()
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--floor", type=int, nargs="+", default=[8, 16, 24])
    ap.add_argument("--gap", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    bundle = load_model(args.model)
    pp = bundle.postprocess
    cached, weights, _ = training_probabilities(bundle, HERE / "training" / "nuclei_v2_sets.txt", 40,
                                                cache=args.cache)
    raws = [(name, instances_from_probabilities(p, pp["foreground_threshold"], pp["seed_threshold"], 1), gt)
            for name, p, gt in cached]

    def score(rule):
        ms = [(name, match_instances(gt, rule(lab), 0.5)) for name, lab, gt in raws]
        w, by_set = pooled_by_set(ms, weights)
        return w, {n: f"{m.ap:.3f} ({m.tp}/{m.fp}/{m.fn})" for n, m in by_set.items()}

    def cut_of(lab):
        return smallest_kept(np.bincount(lab.ravel())[1:], pp["min_size"], pp["min_size_fraction"])

    w, s = score(lambda lab: keep_lonely(lab, cut_of(lab), 10**9, 1))
    print(f"shipped rule: weighted AP@0.5 {w:.4f} {s}")
    for floor, gap in itertools.product(args.floor, args.gap):
        w, s = score(lambda lab, f=floor, g=gap: keep_lonely(lab, cut_of(lab), max(f, 1), g))
        print(f"lonely small objects kept (>= {floor} px, nothing within {gap} px): {w:.4f} {s}")


if __name__ == "__main__":
    main()
