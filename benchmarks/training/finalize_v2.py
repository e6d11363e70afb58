"""The v2 run's output -> the shipped built-in bundle ``nuclei-v2``.

    python benchmarks/training/finalize_v2.py [--from runs/nuclei_v2/nuclei-v2.safetensors]
    cd benchmarks && python tune_postprocess.py ../src/napari_tiled_unet/model/weights/nuclei-v2.safetensors \
        --mix training/nuclei_v2_sets.txt --n 40 --foreground 0.8 0.85 0.9 --seed 0.4 0.5 0.6 \
        --min-size 16 32 --min-size-fraction 0.1 0.15 0.2 --write

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
    args = ap.parse_args()
    bundle = load_model(args.source)
    record = bundle.metadata["training"]
    bundle.metadata["name"] = "nuclei-v2"
    chosen = record.get("best_step", record["steps"])
    bundle.metadata["description"] = (
        "Fluorescence nuclei from four public sets (DSB2018, Kromp 2020, BitDepth, Aitslab; see "
        "docs/models.md for attribution); instances: background, interior, boundary. U-Net 16x4, "
        f"fine-tuned from nuclei-dsb2018 for {record['steps']} steps ({record['time_s'] / 60:.1f} min, "
        f"bf16 on 2 CPU cores); weights of step {chosen}."
    )
    bundle.metadata.setdefault("object_diameter_range", [12.0, 64.0])
    bundle.save(args.out)
    print(f"{args.out}: steps {record['steps']}, weights of step {record.get('best_step')}, "
          f"object diameter {bundle.metadata['object_diameter']} px, "
          f"range {bundle.metadata['object_diameter_range']}")


if __name__ == "__main__":
    main()
