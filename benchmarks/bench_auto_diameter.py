"""What ``diameter="auto"`` costs with nuclei-v2, side by side with no diameter, in one run.

    python benchmarks/bench_auto_diameter.py [--rounds 3] [--model nuclei-v2 --model other.safetensors]

Two images: the shipped DSB2018 sample tiled to 1024x1024 (nuclei of ~20 px, inside the range
nuclei-v2 was trained on: auto only measures them) and, when ../shared/data is there, a 63x
cytospin of Kromp et al. 2020 (Neuroblastoma_11, 1024x1280, nuclei of ~100 px: auto segments it
again at about 0.6x). Each round runs both settings in alternating order; prints the median wall
times, their ratio and the megapixels per second of the whole ``segment`` call at the default
precision.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment

KROMP = Path(__file__).resolve().parents[2] / "shared/data/kromp-sbsst265/images/Neuroblastoma_11.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", action="append", default=None,
                    help="a model to time (repeat to compare models side by side; default nuclei-v2); "
                         "ratios are to the first")
    args = ap.parse_args()
    bundles = {m: load_model(m) for m in (args.model or ["nuclei-v2"])}
    images = {"DSB2018 sample tiled, 1024x1024": np.tile(nuclei_image(), (2, 2))[:1024, :1024]}
    if KROMP.exists():
        import tifffile

        images["Kromp 63x cytospin, 1024x1280"] = tifffile.imread(KROMP)
    for bundle in bundles.values():
        segment(bundle, images[next(iter(images))][:256, :256], device="cpu")  # warm-up
    runs = [(m, setting) for m in bundles for setting in ("none", "auto")]
    for name, image in images.items():
        times: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        scales: dict[str, float] = {}
        for r in range(args.rounds):
            for model, setting in (runs if r % 2 == 0 else runs[::-1]):
                t0 = time.perf_counter()
                result = segment(bundles[model], image, device="cpu",
                                 diameter=None if setting == "none" else "auto")
                times[(model, setting)].append(time.perf_counter() - t0)
                if setting == "auto":
                    scales[model] = result.scale
        first = statistics.median(times[runs[0]])
        mpx = image.size / 1e6
        for model in bundles:
            none, auto = (statistics.median(times[(model, k)]) for k in ("none", "auto"))
            print(f"{name}, {model}: no diameter {none:.2f} s ({mpx / none:.2f} MP/s), auto {auto:.2f} s "
                  f"({mpx / auto:.2f} MP/s, segmented at {scales[model]:.2f}x): ratio auto/none "
                  f"{auto / none:.2f}" + (f"; no diameter against {runs[0][0]}: {none / first:.2f}"
                                          if model != runs[0][0] else ""))


if __name__ == "__main__":
    main()
