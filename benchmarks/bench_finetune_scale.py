"""Fine-tuning at the scale segmentation used, against fine-tuning at the image's own size.

    python benchmarks/bench_finetune_scale.py [--base nuclei-v2] [--minutes 2]

The images of bench_finetune.py (Kromp et al. 2020, 63x, nuclei of 80-190 px): its two "train"
images fully annotated, its six "dev" images scored (F1@0.5, AP@0.5 pooled; the held-out ids
are not used). For ``--base``:

- the base model on the dev images with ``diameter="auto"`` and at their own size;
- **own size**: fine-tuned for ``--minutes`` on the two images as they are (what Learn from my
  corrections did before), scored at the dev images' own size (the fine-tuned model drops
  the base's size range);
- **segmentation scale**: the two images (and labels) resized by the factor that the base's
  ``diameter="auto"`` chose for them (their mean), fine-tuned for as long with ``scale=`` (the
  Trainer's option the widget uses), scored with ``diameter="auto"``.

Caveat: nuclei-v2 was trained on these Kromp images (they are not in its held-out list), so
for it the figures say whether fine-tuning keeps or loses what it knows, not how it learns a
new lab. ``nuclei-dsb2018`` never saw them. Appends to benchmarks/results/finetune_scale.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from bench_finetune import HERE, read, split

from napari_tiled_unet import objectsize
from napari_tiled_unet.metrics import Matching, match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment
from napari_tiled_unet.training.adaptation import short_run_options
from napari_tiled_unet.training.loop import finetune

RESULTS = HERE / "results" / "finetune_scale.json"


def score(bundle, ids, diameter) -> dict:
    found = []
    for i in ids:
        img, gt = read(i)
        found.append(match_instances(gt, segment(bundle, img, device="cpu", diameter=diameter).labels, 0.5))
    m = Matching.pooled(found)
    return {"f1@0.5": round(m.f1, 4), "ap@0.5": round(m.ap, 4), "tp": m.tp, "fp": m.fp, "fn": m.fn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="nuclei-v2")
    ap.add_argument("--minutes", type=float, default=2.0)
    args = ap.parse_args()
    train, dev, _ = split()
    base = load_model(args.base)
    row = {"base": args.base, "minutes": args.minutes, "train": train, "dev": dev,
           "machine": f"{platform.machine()}, {platform.node()}", "date": time.strftime("%Y-%m-%d %H:%M")}
    row["base_auto"] = score(base, dev, "auto")
    row["base_own_size"] = score(base, dev, None)
    print(row, flush=True)
    images, labels = zip(*[read(i) for i in train])
    options = {**short_run_options(base), "minutes": args.minutes, "seed": 0}
    own = finetune(base, list(images), list(labels), **options)
    row["own_size"] = {**score(own, dev, None), "steps": own.metadata["training"]["steps"],
                       "selection": own.metadata["training"]["selection"]}
    print(row["own_size"], flush=True)
    scales = [segment(base, img, device="cpu", diameter="auto").scale for img in images]
    row["scales"] = [round(s, 3) for s in scales]
    # the Trainer takes one scale for its images: their mean (they differ by a few percent)
    model = finetune(base, list(images), list(labels), **options, scale=float(np.mean(scales)))
    assert objectsize.prefers_auto(model)  # the fine-tuned model segments with auto, as the base did
    row["segmentation_scale"] = {**score(model, dev, "auto"), "steps": model.metadata["training"]["steps"],
                                 "selection": model.metadata["training"]["selection"]}
    print(row["segmentation_scale"], flush=True)
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    rows.append(row)
    RESULTS.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
