#!/usr/bin/env bash
# One command from a fresh clone to a segmented image, on Linux or macOS with Python >= 3.10:
#
#     bash scripts/quickstart.sh
#
# 1. makes a virtual environment (.venv in the repository),
# 2. installs the PyTorch build that fits this machine: the CUDA build where an NVIDIA GPU
#    answers nvidia-smi, the CPU build on other Linux machines (the default PyPI build on Linux
#    carries CUDA: gigabytes for nothing), the standard build on macOS (CPU + Apple GPU),
# 3. installs this plugin with napari,
# 4. segments the shipped DSB2018 sample with the built-in nuclei model and says where the
#    labels and the overlay are and how to open them in napari.
#
# Settings (environment variables):
#   PYTHON=python3.12         the Python to make the environment with (default: python3)
#   VENV=path                 where the environment goes (default: .venv in the repository)
#   OUT=path                  where the results go (default: results/quickstart)
#   TORCH_INSTALL="args"      pip arguments for PyTorch instead of the automatic choice, e.g.
#                             TORCH_INSTALL="torch==2.13.0" where a local index serves the right build
#   EXTRAS=all                the extras installed with the plugin (default: all = napari with Qt)
#   QUICKSTART_SKIP_INSTALL=1 use the environment as it is (it must have the plugin): only segment
#   QUICKSTART_PLAN=1         only say which PyTorch build would be installed
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$repo/.venv}"
OUT="${OUT:-$repo/results/quickstart}"
EXTRAS="${EXTRAS:-all}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS

say() { printf '\n== %s\n' "$*"; }

# The PyTorch build for this machine: sets torch_args (pip arguments) and why.
choose_torch() {
    if [[ -n "${TORCH_INSTALL:-}" ]]; then
        read -r -a torch_args <<< "$TORCH_INSTALL"
        why="TORCH_INSTALL"
    elif [[ "$(uname -s)" == Darwin ]]; then
        torch_args=(torch); why="macOS: the standard build (CPU and Apple GPU)"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        torch_args=(torch); why="NVIDIA GPU found: the CUDA build"
    else
        torch_args=(torch --index-url https://download.pytorch.org/whl/cpu)
        why="no NVIDIA GPU: the CPU build"
    fi
}
choose_torch
if [[ "${QUICKSTART_PLAN:-0}" == 1 ]]; then  # say what would be installed, install nothing
    echo "PyTorch ($why): pip install ${torch_args[*]}"
    exit 0
fi

if [[ "${QUICKSTART_SKIP_INSTALL:-0}" != 1 ]]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "quickstart: $PYTHON is missing or older than 3.10; install Python 3.10+ and run again" \
             "(or set PYTHON=/path/to/python3.x)." >&2
        exit 1
    fi
    say "1/4 virtual environment: $VENV"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    pip=("$VENV/bin/python" -m pip)
    "${pip[@]}" install -q --upgrade pip

    say "2/4 PyTorch ($why): pip install ${torch_args[*]}"
    if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
        echo "PyTorch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') is already installed."
    else
        "${pip[@]}" install -q "${torch_args[@]}"
    fi

    say "3/4 napari-tiled-unet with napari (.[${EXTRAS}])"
    "${pip[@]}" install -q -e ".[${EXTRAS}]"
fi

cli="$VENV/bin/napari-tiled-unet"
[[ -x "$cli" ]] || { echo "quickstart: $cli is missing; run without QUICKSTART_SKIP_INSTALL." >&2; exit 1; }
sample="$repo/sample_data/dsb2018_150b0ffa318c.tif"
say "4/4 segmenting the sample ($sample) with the built-in nuclei model"
"$cli" segment "$sample" -o "$OUT" --overlay --overwrite

labels="$OUT/dsb2018_150b0ffa318c_labels.tif"
overlay="$OUT/dsb2018_150b0ffa318c_labels.png"
[[ -f "$labels" && -f "$overlay" ]] || { echo "quickstart: the results are missing in $OUT." >&2; exit 1; }
cat <<EOF

Done in $((SECONDS - start)) s.
  labels  (one number per nucleus): $labels
  overlay (outlines on the image):  $overlay

Open them in napari (the labels as a Labels layer over the image):
  $VENV/bin/python -c "import napari, tifffile; v = napari.Viewer(); v.open('$sample'); v.add_labels(tifffile.imread('$labels'), name='nuclei'); napari.run()"
or start napari ($VENV/bin/napari) and use File > Open Sample > Tiled U-Net > Nuclei (DSB2018, 520x696),
then Plugins > Tiled U-Net > Segment (U-Net) and press Segment.
Segment your own images: $cli segment your_images/ -o results/
EOF
