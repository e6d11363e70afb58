"""A bundle from the v2 run's checkpoint, to score the run while it goes on.

    python benchmarks/training/ckpt_to_bundle.py [--which best|current] [--ckpt FILE] [--out FILE]
    python benchmarks/eval_model.py --by-set --model runs/nuclei_v2/nuclei-v2-step<N>.safetensors

The weights (the best ones by the watched images' validation loss, or the current ones) go
into a copy of the base model's bundle with the run's normalization recipe and object
diameter (the same as `train` stores at the end). The checkpoint is read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.training.mixture import load_mixture, read_list_file, weighted_median

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: what nuclei_v2.sh passes to train
RECIPE = {"kind": "percentile", "low": 1.0, "high": 99.0, "exclude_saturated": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=HERE / "checkpoints" / "nuclei_v2.ckpt")
    ap.add_argument("--sets", type=Path, default=HERE / "nuclei_v2_sets.txt")
    ap.add_argument("--which", choices=["best", "current"], default="best")
    ap.add_argument("--diameter", type=float, default=None,
                    help="object diameter to record (default: measured from the sets, as train does)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ckpt = torch.load(str(args.ckpt), map_location="cpu", weights_only=True)
    state = ckpt["best_state"] if args.which == "best" and ckpt.get("best_state") else ckpt["model"]
    bundle = load_model("nuclei-dsb2018")
    bundle.model.load_state_dict(state)
    diameter = args.diameter
    if diameter is None:
        mix, monitor = load_mixture(read_list_file(args.sets), monitor_per_set=2, seed=13)
        share = [lab.size * w for lab, w in zip(mix.labels, mix.weights)]
        keep = [i for i in range(len(share)) if i not in set(monitor) and mix.diameters[i] > 0]
        diameter = round(weighted_median([mix.diameters[i] for i in keep], [share[i] for i in keep]), 1)
    step = ckpt["best_step"] if args.which == "best" and ckpt.get("best_state") else ckpt["step"]
    bundle.metadata.update({
        "name": f"nuclei-v2-step{step}", "normalization": RECIPE, "object_diameter": diameter,
        "description": f"nuclei v2 in training: {args.which} weights at step {step} of {args.ckpt.name}",
    })
    out = args.out or REPO / "runs" / "nuclei_v2" / f"nuclei-v2-step{step}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    bundle.save(out)
    print(f"{out} (step {step}, object diameter {diameter} px)", file=sys.stdout)


if __name__ == "__main__":
    main()
