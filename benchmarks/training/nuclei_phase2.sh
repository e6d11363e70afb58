#!/bin/bash
# Second phase of the built-in nuclei model: the same data, split and patches, starting from
# the first phase's weights (runs/nuclei/nuclei-unet16.safetensors) with a new warm-up and
# cosine schedule at half the first phase's peak learning rate. Re-running resumes.
HERE=$(cd "$(dirname "$0")" && pwd)
D=${DSB:-$HERE/../../../shared/data/dsb2018-fluo-train}
mkdir -p "$HERE/../../runs/nuclei" && cd "$HERE/../../runs/nuclei"
exec napari-tiled-unet -v train --images $D/images --labels $D/labels --base nuclei-unet16.safetensors \
  --val-ids ../../benchmarks/data/dsb2018_val_ids.txt \
  --patch-size 128 --batch-size 8 --lr 1e-3 --precision bf16 --device cpu \
  --minutes ${MINUTES:-105} --val-every 250 --patience 0 --seed 1 \
  --checkpoint nuclei-p2.ckpt --checkpoint-minutes 3 \
  --out nuclei-unet16-phase2.safetensors
