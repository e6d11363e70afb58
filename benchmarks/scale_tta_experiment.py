"""Probabilities averaged over the image and an enlarged copy of it (test-time scale augmentation).

    cd benchmarks && python scale_tta_experiment.py MODEL [--scales 1.25 1.5] [--cache DIR]

Most missed nuclei of the dense sets are touching nuclei merged into one (docs/models.md): an
enlarged copy shows the network wider gaps between them. For each scale s, the network runs on
the image resized by s (linear), its probabilities are resized back and averaged with those of
the image itself; the shipped post-processing then makes the objects. Scored on the 40 tuning
images of the mix (training images only), weighted AP@0.5 as in tune_postprocess.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
from tune_postprocess import pooled_by_set, training_ids, training_probabilities

from napari_tiled_unet.inference import predict
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.objectsize import resize, scaled_shape
from napari_tiled_unet.postprocess import instances_from_probabilities

HERE = Path(__file__).resolve().parent
MIX = HERE / "training" / "nuclei_v2_sets.txt"


def scaled_probabilities(bundle, image: np.ndarray, s: float) -> np.ndarray:
    """The probabilities of ``image`` enlarged by ``s``, at the image's own size."""
    shape = image.shape[:2]
    axes = "YX" if image.ndim == 2 else "YXC"
    big = resize(image.astype(np.float32), axes, scaled_shape(shape, s))
    prob = predict(bundle, big, device="cpu", precision="bf16")
    return resize(prob, "CYX", shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.25, 1.5])
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    bundle = load_model(args.model)
    pp = bundle.postprocess
    cached, weights, _ = training_probabilities(bundle, MIX, 40, cache=args.cache)
    ids, _, _ = training_ids(MIX, 40)

    def score(probs):
        ms = [(name, match_instances(gt, instances_from_probabilities(
                  p, pp["foreground_threshold"], pp["seed_threshold"], pp["min_size"],
                  min_size_fraction=pp["min_size_fraction"]), 0.5))
              for (name, _, gt), p in zip(cached, probs)]
        w, by_set = pooled_by_set(ms, weights)
        return f"{w:.4f} " + str({n: f"{m.ap:.3f} ({m.tp}/{m.fp}/{m.fn})" for n, m in by_set.items()})

    print("image alone:", score([p for _, p, _ in cached]))
    for s in args.scales:
        big = [scaled_probabilities(bundle, tifffile.imread(folder / "images" / f"{i}.tif"), s)
               for folder, i in ids]
        print(f"enlarged {s}x alone:", score(big))
        print(f"mean of 1x and {s}x:", score([(p + b) / 2 for (_, p, _), b in zip(cached, big)]))


if __name__ == "__main__":
    main()
