"""Recompute a trained model's BatchNorm statistics over many training batches ("precise BN").

    python benchmarks/training/precise_bn.py MODEL OUT [--sets nuclei_v2_sets.txt] [--batches 400]

During training each BatchNorm layer keeps an exponential moving average of the batch means
and variances (momentum 0.1), so the statistics a trained model normalises with in eval mode
are dominated by the last ~20 batches, 160 patches of a mix of four sets and heavy
augmentation. Wu & Johnson (2021, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, sec.
3) show that such EMA statistics can lag or be noisy and that recomputing them with the final
weights, as a plain average over many batches ("precise BN"), removes that error without
training. This script does that: the same patch sampler, augmentation and precision as
``train`` (the mix of ``--sets``, its 2 monitoring images per set left out, seed 13), the
weights untouched, each layer's running mean and variance replaced by the average over
``--batches`` batches of 8 patches. It writes a new bundle whose training record says so.
Score it with tune_postprocess.py as any other candidate (docs/models.md, Training run,
"BatchNorm statistics recomputed").
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.config import TrainConfig
from napari_tiled_unet.training.data import Augmentation
from napari_tiled_unet.training.device import autocast
from napari_tiled_unet.training.loop import Trainer
from napari_tiled_unet.training.mixture import load_mixture, read_list_file

HERE = Path(__file__).resolve().parent


def batches(bundle, sets: Path, patch: int, batch: int, seed: int, augmentation: Augmentation):
    """The training batches ``train --data-list SETS`` would draw (its sampler, its augmentation)."""
    mix, monitor = load_mixture(read_list_file(sets), monitor_per_set=2, seed=seed)
    config = TrainConfig(patch_size=patch, batch_size=batch, seed=seed, val_fraction=0.15,
                         augmentation=augmentation, device="cpu")
    trainer = Trainer(bundle, mix.images, mix.labels, config, names=mix.names, val_images=monitor or None,
                      sample_weights=mix.weights, diameters=mix.diameters)
    while True:
        yield trainer.sampler.batch(batch)


def recompute(model: torch.nn.Module, source, n: int, precision: str = "bf16") -> None:
    """Replace every BatchNorm layer's running statistics by their plain average over ``n`` batches."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    dev = torch.device("cpu")
    t0 = time.monotonic()
    with torch.no_grad():
        for i in range(n):
            b = next(source)
            with autocast(dev, precision):
                model(torch.from_numpy(b.image))
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{n} batches, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--sets", type=Path, default=HERE / "nuclei_v2_sets.txt")
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--plain", action="store_true",
                    help="statistics of plain crops (no augmentation) instead of training batches")
    args = ap.parse_args()
    bundle = copy.deepcopy(load_model(args.model))
    before = {k: v.clone() for k, v in bundle.model.state_dict().items() if "running_" in k}
    augmentation = Augmentation.none() if args.plain else Augmentation.generalist()
    source = batches(bundle, args.sets, args.patch, args.batch_size, args.seed, augmentation)
    recompute(bundle.model, source, args.batches)
    after = bundle.model.state_dict()
    shift = np.mean([float((after[k] - v).abs().mean() / (v.abs().mean() + 1e-8)) for k, v in before.items()])
    print(f"mean relative change of the running statistics: {shift:.3f}")
    record = bundle.metadata.setdefault("training", {})
    record["precise_bn"] = {"batches": args.batches, "batch_size": args.batch_size, "patch_size": args.patch,
                            "sets": args.sets.name, "seed": args.seed,
                            "augmentation": "none" if args.plain else "generalist"}
    bundle.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
