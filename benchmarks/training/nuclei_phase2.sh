#!/bin/bash
# Second phase of the built-in nuclei model: larger patches (more context for big nuclei),
# lower learning rate, starting from the first phase's best weights.
HERE=$(cd "$(dirname "$0")" && pwd)
D=${DSB:-$HERE/../../../shared/data/dsb2018-fluo-train}
mkdir -p "$HERE/../../runs/nuclei" && cd "$HERE/../../runs/nuclei"
exec napari-tiled-unet -v train --images $D/images --labels $D/labels --base nuclei-unet16.safetensors \
  --val-ids ../../benchmarks/data/dsb2018_val_ids.txt \
  --patch-size 256 --batch-size 4 --lr 5e-4 --precision bf16 --device cpu \
  --minutes 18 --val-every 150 --patience 0 --seed 1 \
  --checkpoint nuclei2.ckpt --checkpoint-minutes 3 \
  --out nuclei-unet16-phase2.safetensors
