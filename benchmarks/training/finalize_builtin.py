"""Phase 2's output -> the shipped built-in bundle: sets the name and description, keeps the
training record (phase 1 nested as ``base_training``). Then tune its post-processing:

    python benchmarks/training/finalize_builtin.py
    python benchmarks/tune_postprocess.py \
        src/napari_tiled_unet/model/weights/nuclei-dsb2018.safetensors --write
"""

from pathlib import Path

from napari_tiled_unet.model.bundle import load_model

REPO = Path(__file__).resolve().parents[2]

bundle = load_model(REPO / "runs" / "nuclei" / "nuclei-unet16-phase2.safetensors")
bundle.metadata["name"] = "nuclei-dsb2018"
bundle.metadata["description"] = (
    "Fluorescence nuclei (DSB2018 stage 1, 460 training images); instances: background, interior, "
    "boundary. U-Net, 16 base channels, depth 4; trained in two phases (95 min from scratch, then "
    "105 min from those weights)."
)
bundle.save(REPO / "src" / "napari_tiled_unet" / "model" / "weights" / "nuclei-dsb2018.safetensors")
