"""Validation figures of a U-Net bundle next to the classical baseline, on the same images.

    python benchmarks/eval_model.py [--model NAME_OR_FILE] [--data ../shared/data/dsb2018-fluo-train]
                                    [--ids benchmarks/data/dsb2018_val_ids.txt]

Segments every listed image with the model (the same `segment` call as the CLI and the
widget) and with Otsu + distance-transform watershed (baseline_otsu.py), and prints F1@0.5,
AP@0.5, AP@0.75 (DSB2018 convention: TP / (TP + FP + FN), pooled over images) and the mean
IoU of matched pairs. Saves benchmarks/results/models.json.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="bundle file or built-in name (default: the built-in model)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--ids", type=Path, default=DEFAULT_IDS)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tta", action="store_true", help="average over mirror images (test-time augmentation)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "models.json")
    args = ap.parse_args()
    if args.model is None:
        from napari_tiled_unet.model import zoo

        bundle = zoo.load()
    else:
        bundle = load_model(args.model)
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
