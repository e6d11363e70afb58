"""Seeds flooded over another elevation, and the kinds of errors, on the tuning images of the mix.

    cd benchmarks && python flood_experiment.py MODEL --foreground 0.85 0.9 --seed 0.2 0.3 \
        --flood prob edt16 [--kinds] [--cache /tmp/probs]

The same 40 training images as ``tune_postprocess.py --mix training/nuclei_v2_sets.txt --n 40``
(held-out ids left out; ``--cache`` shares its probabilities). Seeds, foreground, hole filling
and minimum sizes are the shipped post-processing's; only the elevation the seeds are flooded
over changes:

- ``prob``: p(boundary) - p(interior), as shipped;
- ``edtN``: the distance to the background capped at N px (a flood from the centre outwards,
  splitting touching objects halfway between their seeds), with the shipped elevation breaking
  ties beyond N px.

Prints the weighted AP@0.5 (weights of the list) and each set's AP@0.5; ``--kinds`` adds, per
set, true/false positives, misses, and how many annotated nuclei were merged (at least half of
two or more of them in one predicted object) or split (two predicted objects each covering a
quarter of it). Experiments only: the shipped post-processing floods over ``prob``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from tune_postprocess import pooled_by_set, training_probabilities

from napari_tiled_unet import postprocess as pp
from napari_tiled_unet.enclosed import absorb_enclosed
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model.bundle import load_model


def elevation(prob: np.ndarray, foreground: np.ndarray, flood: str) -> np.ndarray:
    """Levels 0.._LEVELS (int16) to flood the seeds over (see the module docstring)."""
    if flood == "prob":
        return pp._levels(prob[1], prob[2])
    if not flood.startswith("edt"):
        raise SystemExit(f"Unknown flood {flood!r}: use prob or edtN (N px).")
    cap = float(flood[3:])
    dist = np.minimum(ndi.distance_transform_edt(foreground), cap)
    e = (cap - dist) / cap + (prob[2].astype(np.float32) - prob[1].astype(np.float32) + 1) / 2
    return np.clip(np.rint(e * (pp._LEVELS / 2)), 0, pp._LEVELS).astype(np.int16)


def segment(prob: np.ndarray, foreground_threshold: float, seed_threshold: float, flood: str,
            min_size: int, min_size_fraction: float) -> np.ndarray:
    """:func:`~napari_tiled_unet.postprocess.instances_from_probabilities` with another flood."""
    foreground = pp._foreground(prob[0], foreground_threshold)
    markers, n_seeds = ndi.label(pp._seeds(prob[1], foreground, seed_threshold))
    components, n_components = ndi.label(foreground)
    labels = pp._objects(elevation(prob, foreground, flood), markers, components, n_seeds, (0, 0),
                         prob.shape[1:])
    labels = absorb_enclosed(pp._fill_holes(labels))
    sizes = np.bincount(labels.ravel(), minlength=n_seeds + n_components + 1)
    return pp._numbering(sizes, min_size, min_size_fraction)[labels]


def merged_and_split(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Annotated nuclei merged with another one into one prediction, and those split in two or more."""
    g, p = gt.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    both = (g > 0) & (p > 0)
    if not both.any():
        return 0, 0
    pairs, counts = np.unique(np.stack([g[both], p[both]]), axis=1, return_counts=True)
    size = np.bincount(g, minlength=int(g.max()) + 1)[pairs[0]]
    _, holders = np.unique(pairs[1][counts >= 0.5 * size], return_counts=True)
    _, pieces = np.unique(pairs[0][counts >= 0.25 * size], return_counts=True)
    return int(holders[holders >= 2].sum()), int((pieces >= 2).sum())


def tuning_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with the arguments every experiment on the 40 tuning images of the mix takes."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--mix", type=Path, default=Path("training/nuclei_v2_sets.txt"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=None)
    return ap


def main() -> None:
    ap = tuning_arguments(__doc__)
    ap.add_argument("--foreground", type=float, nargs="+", default=[0.85])
    ap.add_argument("--seed", type=float, nargs="+", default=[0.3])
    ap.add_argument("--flood", nargs="+", default=["prob", "edt16"])
    ap.add_argument("--min-size", type=int, default=32)
    ap.add_argument("--min-size-fraction", type=float, default=0.1)
    ap.add_argument("--kinds", action="store_true", help="count the kinds of errors per set")
    args = ap.parse_args()
    cached, weights, _ = training_probabilities(load_model(args.model), args.mix, args.n, cache=args.cache)
    for fg, seed, flood in itertools.product(args.foreground, args.seed, args.flood):
        found = []
        kinds = {name: np.zeros(2, np.int64) for name in weights}
        for name, prob, gt in cached:
            pred = segment(prob, fg, seed, flood, args.min_size, args.min_size_fraction)
            found.append((name, match_instances(gt, pred, 0.5)))
            if args.kinds:
                kinds[name] += merged_and_split(gt, pred)
        weighted, pooled = pooled_by_set(found, weights)
        print(f"foreground {fg} seed {seed} flood {flood}: weighted AP@0.5 {weighted:.4f}; "
              + ", ".join(f"{n} {m.ap:.3f}" for n, m in pooled.items()), flush=True)
        if args.kinds:
            for name, m in pooled.items():
                n_gt = sum(int(len(np.unique(g)) - 1) for s, _, g in cached if s == name)
                print(f"    {name}: TP {m.tp} FP {m.fp} FN {m.fn}; of {n_gt} nuclei, merged "
                      f"{kinds[name][0]}, split {kinds[name][1]}", flush=True)


if __name__ == "__main__":
    main()
