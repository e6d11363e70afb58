#!/bin/bash
# Trains the built-in nuclei model; re-running resumes from the checkpoint.
HERE=$(cd "$(dirname "$0")" && pwd)
D=${DSB:-$HERE/../../../shared/data/dsb2018-fluo-train}
mkdir -p "$HERE/../../runs/nuclei" && cd "$HERE/../../runs/nuclei"
exec napari-tiled-unet -v train --images $D/images --labels $D/labels \
  --val-ids ../../benchmarks/data/dsb2018_val_ids.txt \
  --base-channels 16 --depth 4 --name dsb2018-nuclei-unet16 \
  --patch-size 128 --batch-size 8 --lr 2e-3 --precision bf16 --device cpu \
  --minutes 95 --val-every 250 --patience 0 --seed 0 \
  --checkpoint nuclei.ckpt --checkpoint-minutes 3 \
  --out nuclei-unet16.safetensors
