#!/bin/bash
# `napari-tiled-unet` with distance_head.py's output channel and loss swapped in (the NTU of nuclei_v2.sh):
#   NTU=$PWD/benchmarks/training/distance_head_train.sh NAME=nuclei_v2_distance BASE=nuclei-v2 TOUCH=3 \
#     KEEP=last MINUTES=100 benchmarks/training/nuclei_v2.sh
HERE=$(cd "$(dirname "$0")" && pwd)
exec "${PYTHON:-$HERE/../../.venv/bin/python}" "$HERE/distance_head.py" train "$@"
