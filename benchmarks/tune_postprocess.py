"""Choose a model's post-processing defaults on training images (never on validation ones).

    python benchmarks/tune_postprocess.py MODEL.safetensors [--n 96] [--write]
    python benchmarks/tune_postprocess.py MODEL.safetensors --mix benchmarks/training/nuclei_v2_sets.txt

Runs the network once on ``--n`` images drawn (seed 0) from the training part of
../shared/data/dsb2018-fluo-train (the ids of benchmarks/data/dsb2018_val_ids.txt are left
out), then tries a grid of foreground threshold, seed threshold and minimum size on the
cached probabilities and reports pooled AP@0.5 for each. ``--write`` stores the best setting
in the model file's metadata (``postprocess``), atomically.

With ``--mix LIST`` (a ``train --data-list`` file), the images come from every set of the
list in proportion to its weight (``--n`` in all, at least 6 per set), each set's held-out
ids left out, so the defaults follow the annotation convention of the whole training mix:
settings are ranked by the mean of the sets' AP@0.5 weighted as in the list (pooled AP would
favour the sets with most nuclei per image), and each set's own best foreground threshold is
printed beside. ``--foreground/--seed/--min-size/--min-size-fraction`` replace the grid's values;
``--cache DIR`` keeps the probabilities (one .npy per image, under the hash of the weights) for a
second run of the same weights.

``--ignore-masks`` scores with the ignore masks of the list's sets (``ignore=FOLDER``, see
``train --data-list``): a predicted object with at least half of its pixels in its image's mask
lies on a nucleus the annotators left out and counts neither as right nor as wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import tifffile
from baseline_otsu import DEFAULT_DATA, DEFAULT_IDS, read_ids

from napari_tiled_unet.inference import predict
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.postprocess import instances_from_probabilities
from napari_tiled_unet.training.dataset import state_hash

GRID = {
    "foreground_threshold": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9],
    "seed_threshold": [0.6, 0.7, 0.8, 0.9, 0.95],
    "min_size": [16, 32, 48],
}


def training_ids(mix: Path | None, n: int, data: Path = DEFAULT_DATA) -> tuple[list, dict[str, float], str]:
    """``n`` training images (seed 0; held-out ids left out), drawn from the sets of ``mix`` in
    proportion to their weights (at least 6 per set) or from ``data``.

    Returns ``[(set folder, image id)]``, each set's weight, and where they came from.
    """
    if mix is not None:
        from napari_tiled_unet.training.mixture import read_list_file

        sets = read_list_file(mix)
        total = sum(s.weight for s in sets)
        sources = [(s.images.parent, set(read_ids(s.held_out)) if s.held_out else set(),
                    max(6, round(n * s.weight / total))) for s in sets]
        weights = {s.images.parent.name: s.weight / total for s in sets}
        origin = f"training parts of {', '.join(s.name for s in sets)} (held-out ids excluded)"
    else:
        sources = [(data, set(read_ids(DEFAULT_IDS)), n)]
        weights = {data.name: 1.0}
        origin = "training part of DSB2018 (validation ids excluded)"
    ids = []
    for folder, held, count in sources:
        train = sorted(p.stem for p in (folder / "images").glob("*.tif") if p.stem not in held)
        picked = np.random.default_rng(0).choice(train, min(count, len(train)), replace=False).tolist()
        ids += [(folder, i) for i in sorted(picked)]
    return ids, weights, origin


def pooled_by_set(named: list, weights: dict[str, float]) -> tuple[float, dict[str, Matching]]:
    """``[(set name, Matching)]`` -> (the sets' AP@0.5 weighted by ``weights``, each set's pooled
    :class:`Matching`), the figure every tuning experiment ranks by."""
    pooled = {n: Matching.pooled([m for k, m in named if k == n]) for n in weights}
    return sum(weights[n] * m.ap for n, m in pooled.items()), pooled


def ignore_masks(mix: Path | None, ids: list) -> list:
    """Per image of ``ids`` (:func:`training_ids`), its set's ignore mask (bool) or None."""
    from napari_tiled_unet.training.mixture import read_list_file

    folders = {s.images.parent: s.ignore for s in read_list_file(mix)} if mix is not None else {}
    out = []
    for folder, i in ids:
        where = folders.get(folder)
        path = where / f"{i}.tif" if where is not None else None
        out.append(tifffile.imread(path) > 0 if path is not None and path.exists() else None)
    return out


def without_ignored(pred: np.ndarray, ignore: np.ndarray | None, share: float = 0.5) -> np.ndarray:
    """``pred`` without the objects that lie at least ``share`` inside ``ignore``."""
    if ignore is None:
        return pred
    from training.make_ignore_masks import share_on

    drop = share_on(pred, ignore) >= share
    drop[0] = False
    return np.where(drop[pred], 0, pred)


def training_probabilities(bundle, mix: Path | None, n: int, data: Path = DEFAULT_DATA,
                           cache: Path | None = None) -> tuple[list, dict[str, float], str]:
    """The network's probabilities on the images of :func:`training_ids`.

    Returns ``[(set name, probabilities, ground truth)]`` in the order of :func:`training_ids`,
    each set's weight, and where they came from.
    """
    ids, weights, origin = training_ids(mix, n, data)
    cached = []
    # the weights' hash and the normalization recipe in the path: probabilities of another model,
    # or of the same weights under another recipe (a ceiling, say), are never reused
    recipe = hashlib.sha256(json.dumps(bundle.normalization, sort_keys=True).encode()).hexdigest()[:8]
    weights_key = f"{state_hash(bundle.model)[:16]}-{recipe}"
    for folder, i in ids:
        gt = tifffile.imread(folder / "labels" / f"{i}.tif")
        saved = cache / weights_key / f"{folder.name}--{i}.npy" if cache else None
        if saved is not None and saved.exists():
            prob = np.load(saved)
        else:
            image = tifffile.imread(folder / "images" / f"{i}.tif")
            prob = predict(bundle, image, device="cpu", precision="bf16")
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                np.save(saved, prob)
        cached.append((folder.name, prob, gt))
    return cached, weights, origin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--mix", type=Path, default=None, help="a train --data-list file (see above)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--cache", type=Path, default=None, help="folder for the probabilities (.npy)")
    for name, key in (("--foreground", "foreground_threshold"), ("--seed", "seed_threshold")):
        ap.add_argument(name, type=float, nargs="+", default=GRID[key])
    ap.add_argument("--min-size", type=int, nargs="+", default=GRID["min_size"])
    ap.add_argument("--min-size-fraction", type=float, nargs="+", default=[0.0],
                    help="objects below this fraction of the image's typical object are dropped too")
    ap.add_argument("--ignore-masks", action="store_true",
                    help="objects on the list's ignore masks count neither way (see above)")
    args = ap.parse_args()
    grid = {"foreground_threshold": args.foreground, "seed_threshold": args.seed, "min_size": args.min_size,
            "min_size_fraction": args.min_size_fraction}
    bundle = load_model(args.model)
    cached, weights, origin = training_probabilities(bundle, args.mix, args.n, args.data, args.cache)
    masks = ignore_masks(args.mix, training_ids(args.mix, args.n, args.data)[0]) if args.ignore_masks \
        else [None] * len(cached)
    if args.ignore_masks:
        print(f"ignore masks on {sum(m is not None for m in masks)} of {len(cached)} images")
    rows = []
    for fg, seed, size, frac in itertools.product(*grid.values()):
        ms = [(name, match_instances(gt, without_ignored(
                  instances_from_probabilities(p, fg, seed, size, min_size_fraction=frac), ign), 0.5))
              for (name, p, gt), ign in zip(cached, masks)]
        m = Matching.pooled([x for _, x in ms])
        weighted, pooled = pooled_by_set(ms, weights)
        by_set = {name: p.ap for name, p in pooled.items()}
        rows.append({"foreground_threshold": fg, "seed_threshold": seed, "min_size": size,
                     "min_size_fraction": frac,
                     "ap@0.5": round(weighted, 4),
                     "pooled_ap@0.5": round(m.ap, 4), "f1@0.5": round(m.f1, 4),
                     "mean_matched_iou": round(m.mean_matched_iou, 4),
                     "by_set": {n: round(a, 4) for n, a in by_set.items()}})
    rows.sort(key=lambda r: -r["ap@0.5"])
    current = bundle.postprocess
    for r in rows[:8]:
        print(r)
    for fg in grid["foreground_threshold"]:  # the foreground threshold's curve, the rest at their best
        r = max((r for r in rows if r["foreground_threshold"] == fg), key=lambda r: r["ap@0.5"])
        print("foreground", fg, "best AP@0.5", r["ap@0.5"], "by set", r["by_set"])
    for name in weights:  # each set's own convention, for comparison
        own = max(rows, key=lambda r: r["by_set"][name])
        print(name, "alone would choose", {k: own[k] for k in grid}, "AP@0.5", own["by_set"][name])
    best = rows[0]
    print("current", current, "->", {k: best[k] for k in grid}, "on", len(cached), "training images")
    if args.write:
        bundle.metadata["postprocess"] = {**current, **{k: best[k] for k in grid}}
        bundle.metadata["postprocess_tuning"] = {
            "images": len(cached), "from": origin,
            "grid": grid, "ap@0.5": best["ap@0.5"],
        }
        bundle.save(args.model)
        print(json.dumps(bundle.metadata["postprocess"]))


if __name__ == "__main__":
    main()
