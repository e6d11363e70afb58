"""Validation figures of a U-Net bundle next to the classical baseline, on the same images.

    python benchmarks/eval_model.py [--model NAME_OR_FILE] [--data ../shared/data/dsb2018-fluo-train]
                                    [--ids benchmarks/data/dsb2018_val_ids.txt]

    python benchmarks/eval_model.py --by-set [--model NAME_OR_FILE] [--diameter PX|auto] [--sets A,B]

Segments every listed image with the model (the same `segment` call as the CLI and the
widget) and with Otsu + distance-transform watershed (baseline_otsu.py), and prints F1@0.5,
AP@0.5, AP@0.75 (DSB2018 convention: TP / (TP + FP + FN), pooled over images) and the mean
IoU of matched pairs. Saves benchmarks/results/models.json.

With --by-set: the held-out ids of every training set of the built-in model v2
(benchmarks/data/<set>_val_ids.txt, never trained on or tuned with), one row per set with
F1@0.5, AP@0.5 and TP / FP / FN pooled over the set's images; no Otsu baseline. Saves
benchmarks/results/by_set_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from baseline_otsu import DEFAULT_DATA, DEFAULT_IDS, HERE, evaluate, otsu_watershed, read_ids

from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment

#: (data folder, held-out ids) of each set scored by --by-set
SETS = {
    "dsb2018-fluo-train": "dsb2018_val_ids.txt",
    "kromp-sbsst265": "kromp_sbsst265_val_ids.txt",
    "aitslab-bioimaging1": "aitslab_bioimaging1_val_ids.txt",
    "bitdepth-nucseg": "bitdepth_nucseg_val_ids.txt",
}


def by_set(bundle, args) -> dict:
    """F1@0.5, AP@0.5 and TP/FP/FN per set on its held-out ids."""
    import tifffile

    from napari_tiled_unet.metrics import Matching, match_instances

    rows = {}
    for name, ids_file in SETS.items():
        if args.sets and name not in args.sets.split(","):
            continue
        folder = DEFAULT_DATA.parent / name
        if not folder.is_dir():
            print(f"{name}: not found at {folder}, skipped")
            continue
        t0 = time.perf_counter()
        found, estimates = [], []
        for i in read_ids(HERE / "data" / ids_file):
            img = tifffile.imread(folder / "images" / f"{i}.tif")
            gt = tifffile.imread(folder / "labels" / f"{i}.tif")
            res = segment(bundle, img, device="cpu", precision=args.precision, tta=args.tta,
                          diameter=args.diameter)
            if res.estimated_diameter is not None:
                estimates.append(res.estimated_diameter)
            found.append(match_instances(gt, res.labels, iou_threshold=0.5))
        m = Matching.pooled(found)
        rows[name] = {"images": len(found), "f1@0.5": round(m.f1, 4), "ap@0.5": round(m.ap, 4),
                      "tp": m.tp, "fp": m.fp, "fn": m.fn, "seconds": round(time.perf_counter() - t0, 1)}
        if estimates:
            rows[name]["median_estimated_diameter"] = round(float(sorted(estimates)[len(estimates) // 2]), 1)
        r = rows[name]
        print(f"{name:<22}{r['images']:>5}{r['f1@0.5']:>8.3f}{r['ap@0.5']:>8.3f}"
              f"{r['tp']:>7}{r['fp']:>7}{r['fn']:>7}{r['seconds']:>8.0f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="bundle file or built-in name (default: the built-in model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--ids", type=Path, default=DEFAULT_IDS)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tta", action="store_true", help="average over mirror images (test-time augmentation)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--by-set", action="store_true",
                    help="score the held-out ids of every training set (see above)")
    ap.add_argument("--diameter", default=None, help="object diameter (px or 'auto'), --by-set only")
    ap.add_argument("--sets", default=None, help=f"--by-set: only these, comma-separated ({', '.join(SETS)})")
    args = ap.parse_args()
    bundle = load_model(args.model)
    if args.sets and not set(args.sets.split(",")) <= set(SETS):
        ap.error(f"--sets takes names among {', '.join(SETS)}")
    if args.by_set:
        print(f"{'set':<22}{'imgs':>5}{'F1@0.5':>8}{'AP@0.5':>8}{'TP':>7}{'FP':>7}{'FN':>7}{'s':>8}")
        rows = by_set(bundle, args)
        suffix = (f"_diameter-{args.diameter}" if args.diameter else "") + ("_tta" if args.tta else "")
        out = args.out or HERE / "results" / f"by_set_{bundle.name}{suffix}.json"
        machine = platform.processor() or platform.machine()
        out.write_text(json.dumps({"model": bundle.name, "precision": args.precision, "tta": args.tta,
                                   "diameter": args.diameter, "machine": machine, "sets": rows}, indent=1))
        return
    args.out = args.out or HERE / "results" / "models.json"
    ids = read_ids(args.ids)
    t0 = time.perf_counter()
    def run(img):
        return segment(bundle, img, device="cpu", precision=args.precision, tta=args.tta).labels

    unet = evaluate(run, args.data, ids)
    unet["seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    base = evaluate(otsu_watershed, args.data, ids)
    base["seconds"] = round(time.perf_counter() - t0, 1)
    res = {"model": bundle.name, "precision": args.precision, "tta": args.tta, "ids": str(args.ids.name),
           "machine": f"{platform.processor() or platform.machine()}", "unet": unet, "baseline_otsu": base}
    print(f"{'metric':<18}{'U-Net':>10}{'Otsu+watershed':>16}")
    for k in ("f1@0.5", "ap@0.5", "ap@0.75", "mean_matched_iou", "seconds"):
        print(f"{k:<18}{unet[k]:>10.3f}{base[k]:>16.3f}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
