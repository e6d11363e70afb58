"""How should ``diameter="auto"`` rescale? Measured on training images, never on held-out ones.

    python benchmarks/diameter_policy.py [--model nuclei-v2] [--n 20] [--policies native auto range]

Draws ``--n`` training images per set of benchmarks/training/nuclei_v2_sets.txt (seed 0; each
set's held-out ids left out) and segments each with the model under every policy:

- ``native``: no rescaling (``diameter=None``).
- ``auto``: ``diameter="auto"``, the image rescaled so that its objects match the model's one
  diameter.
- ``range``: ``diameter="auto"`` for a model whose bundle records the range of diameters it was
  trained at (``object_diameter_range``): the image is left at its own scale when the estimate
  lies inside the range, else rescaled onto the nearer bound; this script gives the range with
  ``--range LO HI`` when the bundle has none.

Prints F1@0.5 and AP@0.5 pooled per set, and the images each policy rescaled. The model has
seen these images in training (at most at the bounds of its range), so the absolute figures
are optimistic; the comparison between policies is what this is for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
from baseline_otsu import read_ids

from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training.mixture import read_list_file

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="nuclei-v2")
    ap.add_argument("--mix", type=Path, default=HERE / "training" / "nuclei_v2_sets.txt")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--policies", nargs="+", default=["native", "auto", "range"])
    ap.add_argument("--range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "diameter_policy.json")
    args = ap.parse_args()
    bundle = load_model(args.model)
    if args.range is not None:
        bundle.metadata["object_diameter_range"] = list(args.range)
    rows: dict = {}
    for ds in read_list_file(args.mix):
        held = set(read_ids(ds.held_out)) if ds.held_out else set()
        ids = sorted(p.stem for p in ds.images.glob("*.tif") if p.stem not in held)
        rng = np.random.default_rng(0)
        ids = sorted(rng.choice(ids, size=min(args.n, len(ids)), replace=False))
        name = ds.images.parent.name
        found: dict[str, list] = {p: [] for p in args.policies}
        rescaled = dict.fromkeys(args.policies, 0)
        seconds = dict.fromkeys(args.policies, 0.0)
        for i in ids:
            img = tifffile.imread(ds.images / f"{i}.tif")
            gt = tifffile.imread(ds.labels / f"{i}.tif")
            for policy in args.policies:
                keep = bundle.metadata.pop("object_diameter_range", None)
                if policy == "range":
                    bundle.metadata["object_diameter_range"] = keep
                t0 = time.perf_counter()
                res = segment(bundle, img, device="cpu", diameter=None if policy == "native" else "auto")
                seconds[policy] += time.perf_counter() - t0
                if keep is not None:
                    bundle.metadata["object_diameter_range"] = keep
                if res.labels.shape != gt.shape:
                    raise SystemExit(f"{name}/{i}: labels {res.labels.shape} against {gt.shape}")
                rescaled[policy] += res.scale not in (None, 1.0)
                found[policy].append(match_instances(gt, res.labels, iou_threshold=0.5))
        rows[name] = {}
        for policy in args.policies:
            m = Matching.pooled(found[policy])
            rows[name][policy] = {"images": len(ids), "f1@0.5": round(m.f1, 4), "ap@0.5": round(m.ap, 4),
                                  "tp": m.tp, "fp": m.fp, "fn": m.fn, "rescaled": rescaled[policy],
                                  "seconds": round(seconds[policy], 1)}
            r = rows[name][policy]
            print(f"{name:<22}{policy:<8}{r['images']:>4}{r['f1@0.5']:>8.3f}{r['ap@0.5']:>8.3f}"
                  f"{r['tp']:>7}{r['fp']:>6}{r['fn']:>6}  rescaled {r['rescaled']:>3}"
                  f"  {r['seconds']:>6.0f} s",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "n": args.n, "range": args.range,
                                    "sets": rows}, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
