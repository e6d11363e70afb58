"""The v2 run's output -> the shipped built-in bundle ``nuclei-v2``.

    python benchmarks/training/finalize_v2.py [--from runs/nuclei_v2/nuclei-v2.safetensors]
    cd benchmarks && python tune_postprocess.py ../src/napari_tiled_unet/model/weights/nuclei-v2.safetensors \
        --mix training/nuclei_v2_sets.txt --n 40 --foreground 0.8 0.85 0.9 --seed 0.4 0.5 0.6 \
        --min-size 16 32 --min-size-fraction 0.1 0.15 0.2 --write

With ``--last-from CKPT`` the weights are the last ones of that checkpoint (the end of the
run's cosine schedule) instead of those ``train`` returned, and the training record says
which and why (``--why``).

Keeps the weights and the training record ``train`` wrote, names the bundle, describes it and
records the range of diameters the run brought its training images into (12-64 px,
``object_diameter_range``; ``train`` records it itself from now on). The post-processing
defaults are then chosen on training images of the mix by the second command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_tiled_unet.model.bundle import load_model

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "src" / "napari_tiled_unet" / "model" / "weights" / "nuclei-v2.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path,
                    default=REPO / "runs" / "nuclei_v2" / "nuclei-v2.safetensors")
    ap.add_argument("--out", type=Path, default=SHIPPED)
    ap.add_argument("--last-from", type=Path, default=None,
                    help="ship the last weights of this checkpoint of the same run")
    ap.add_argument("--why", default="", help="with --last-from: why (for the training record)")
    args = ap.parse_args()
    bundle = load_model(args.source)
    record = bundle.metadata["training"]
    bundle.metadata["name"] = "nuclei-v2"
    chosen = record.get("best_step", record["steps"])
    if args.last_from is not None:
        import torch

        ckpt = torch.load(str(args.last_from), map_location="cpu", weights_only=True)
        if ckpt["step"] != record["steps"]:
            raise SystemExit(f"{args.last_from} is at step {ckpt['step']}; the run ended at "
                             f"{record['steps']}.")
        bundle.model.load_state_dict(ckpt["model"])
        record["returned_step"], chosen = chosen, ckpt["step"]
        record["selection"] = f"the last weights (step {chosen}) are shipped, not those of step " \
                              f"{record['returned_step']} that train returned: {args.why}"
    base = record.get("base_model") or "nuclei-dsb2018"
    touching = f", {record['touching_width']} px of each nucleus next to another trained as boundary" \
        if record.get("touching_width") else ""
    bundle.metadata["description"] = (
        "Fluorescence nuclei from four public sets (DSB2018, Kromp 2020, BitDepth, Aitslab; see "
        "docs/models.md for attribution); instances: background, interior, boundary. U-Net 16x4, "
        f"fine-tuned from {base} for {record['steps']} steps ({record['time_s'] / 60:.1f} min, "
        f"bf16 on 2 CPU cores{touching}); weights of step {chosen}."
    )
    bundle.metadata.setdefault("object_diameter_range", [12.0, 64.0])
    bundle.save(args.out)
    print(f"{args.out}: steps {record['steps']}, weights of step {chosen}, "
          f"object diameter {bundle.metadata['object_diameter']} px, "
          f"range {bundle.metadata['object_diameter_range']}")


if __name__ == "__main__":
    main()
