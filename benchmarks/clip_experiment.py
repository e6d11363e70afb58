"""A ceiling on the normalized values (``clip_high``): false objects beside saturated nuclei, and
the tuning images of the mix.

    cd benchmarks && python clip_experiment.py [--model nuclei-v2] [--ceilings 0 2 2.5 3 4] [--tuning]

For each ceiling (0 = none) the model's own recipe gets ``clip_high`` and segments 12 synthetic
fields of dim nuclei beside 2 or 4 saturated ones (``_synthetic.saturated_field``, seeds 0-5),
printing true and false objects against all nuclei. ``--tuning`` also scores the 40 training
images of ``tune_postprocess.py --mix training/nuclei_v2_sets.txt --n 40`` with the model's
post-processing (weighted AP@0.5 and each set's). Held-out images play no part.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
from tune_postprocess import training_probabilities

from napari_tiled_unet._synthetic import saturated_field
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.postprocess import instances_from_probabilities
from napari_tiled_unet.segmentation import segment


def with_ceiling(bundle, ceiling: float):
    """A copy of ``bundle`` whose recipe caps normalized values at ``ceiling`` (0: no cap)."""
    out = copy.deepcopy(bundle)
    recipe = {k: v for k, v in bundle.normalization.items() if k != "clip_high"}
    if ceiling > 0:
        recipe["clip_high"] = ceiling
    out.metadata["normalization"] = recipe
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nuclei-v2")
    ap.add_argument("--ceilings", type=float, nargs="+", default=[0, 2, 2.5, 3, 4])
    ap.add_argument("--tuning", action="store_true")
    ap.add_argument("--mix", type=Path, default=Path("training/nuclei_v2_sets.txt"))
    args = ap.parse_args()
    base = load_model(args.model)
    for ceiling in args.ceilings:
        bundle = with_ceiling(base, ceiling)
        counts = np.zeros(3, np.int64)
        for seed in range(6):
            for n_saturated in (2, 4):
                image, labels = saturated_field(dim=12, seed=seed, n_saturated=n_saturated)
                m = match_instances(labels, segment(bundle, image, device="cpu").labels, 0.5)
                counts += (m.tp, m.fp, m.fn)
        line = f"ceiling {ceiling:g}: synthetic fields TP {counts[0]} FP {counts[1]} FN {counts[2]}"
        if args.tuning:
            cached, weights, _ = training_probabilities(bundle, args.mix, 40)
            per_set: dict[str, list] = {name: [] for name in weights}
            for name, prob, gt in cached:
                labels = instances_from_probabilities(prob, **bundle.postprocess)
                per_set[name].append(match_instances(gt, labels, 0.5))
            pooled = {n: Matching.pooled(ms) for n, ms in per_set.items()}
            weighted = sum(weights[n] * m.ap for n, m in pooled.items())
            line += (f"; tuning images weighted AP@0.5 {weighted:.4f} ("
                     + ", ".join(f"{n} {m.ap:.3f}" for n, m in pooled.items()) + ")")
        print(line, flush=True)


if __name__ == "__main__":
    main()
