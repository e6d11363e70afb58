"""A ceiling on the normalized values (``clip_high``): false objects beside saturated nuclei, and
the tuning images of the mix.

    cd benchmarks && python clip_experiment.py [--model nuclei-v2] [--ceilings 0 2 2.5 3 4] [--tuning]
    cd benchmarks && python clip_experiment.py --flattened 30 [--ceilings 2]

For each ceiling (0 = none) the model's own recipe gets ``clip_high`` and segments 12 synthetic
fields of dim nuclei beside 2 or 4 saturated ones (``_synthetic.saturated_field``, seeds 0-5),
printing true and false objects against all nuclei. ``--tuning`` also scores the 40 training
images of ``tune_postprocess.py --mix training/nuclei_v2_sets.txt --n 40`` with the model's
post-processing (weighted AP@0.5 and each set's). ``--flattened N`` instead looks for the
training images of the mix whose nuclei the ceiling flattens most (sparse fields, where the
high percentile lies in the background and nuclei normalize far above 1): the N with the largest
share of annotated nucleus pixels above the ceiling (at least 10 %), segmented with and
without it (bf16), F1@0.5 per image and pooled. Held-out images play no part.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import tifffile
from baseline_otsu import read_ids
from tune_postprocess import pooled_by_set, training_probabilities

from napari_tiled_unet import normalization
from napari_tiled_unet._synthetic import saturated_field
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.postprocess import instances_from_probabilities
from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training.mixture import read_list_file


def with_ceiling(bundle, ceiling: float):
    """A copy of ``bundle`` whose recipe caps normalized values at ``ceiling`` (0: no cap)."""
    out = copy.deepcopy(bundle)
    recipe = {k: v for k, v in bundle.normalization.items() if k != "clip_high"}
    if ceiling > 0:
        recipe["clip_high"] = ceiling
    out.metadata["normalization"] = recipe
    return out


def flattened(base, ceiling: float, mix: Path, n: int) -> None:
    """The ``n`` training images whose nuclei lie most above ``ceiling``: with it and without."""
    plain, capped = with_ceiling(base, 0), with_ceiling(base, ceiling)
    found = []
    for s in read_list_file(mix):
        held = set(read_ids(s.held_out)) if s.held_out else set()
        for path in sorted(s.images.glob("*.tif")):
            gt = tifffile.imread(s.labels / path.name)
            if path.stem in held or gt.max() == 0:
                continue
            image = tifffile.imread(path)
            gray = image if image.ndim == 2 else image.mean(axis=-1 if image.shape[-1] <= 4 else 0)
            x = normalization.apply(gray[None], normalization.compute_stats(gray, plain.normalization))[0]
            share = float((x[gt > 0] > ceiling).mean())
            if share >= 0.1:
                found.append((share, path, gt))
    found.sort(key=lambda r: -r[0])
    print(f"{len(found)} training images with at least 10 % of their nucleus pixels above {ceiling:g}")
    pooled: dict[str, list] = {"with": [], "without": []}
    for share, path, gt in found[:n]:
        image = tifffile.imread(path)
        a = match_instances(gt, segment(capped, image, device="cpu", precision="bf16").labels, 0.5)
        b = match_instances(gt, segment(plain, image, device="cpu", precision="bf16").labels, 0.5)
        pooled["with"].append(a)
        pooled["without"].append(b)
        print(f"{path.parent.parent.name}/{path.stem}: {share:.2f} above; "
              f"F1@0.5 with {a.f1:.3f}, without {b.f1:.3f}", flush=True)
    for name, ms in pooled.items():
        m = Matching.pooled(ms)
        print(f"{name} the ceiling: pooled F1@0.5 {m.f1:.4f}, AP@0.5 {m.ap:.4f} "
              f"(TP {m.tp} FP {m.fp} FN {m.fn})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nuclei-v2")
    ap.add_argument("--ceilings", type=float, nargs="+", default=[0, 2, 2.5, 3, 4])
    ap.add_argument("--tuning", action="store_true")
    ap.add_argument("--mix", type=Path, default=Path("training/nuclei_v2_sets.txt"))
    ap.add_argument("--flattened", type=int, default=0, metavar="N")
    args = ap.parse_args()
    base = load_model(args.model)
    if args.flattened:
        for ceiling in args.ceilings:
            flattened(base, ceiling, args.mix, args.flattened)
        return
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
            found = []
            for name, prob, gt in cached:
                labels = instances_from_probabilities(prob, **bundle.postprocess)
                found.append((name, match_instances(gt, labels, 0.5)))
            weighted, pooled = pooled_by_set(found, weights)
            line += (f"; tuning images weighted AP@0.5 {weighted:.4f} ("
                     + ", ".join(f"{n} {m.ap:.3f}" for n, m in pooled.items()) + ")")
        print(line, flush=True)


if __name__ == "__main__":
    main()
