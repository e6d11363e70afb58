"""Post-processing a 4096x4096 in-memory result in 1024 px and in 512 px blocks, side by side.

    python benchmarks/bench_inmemory_blocks.py [--rounds 2]

The built-in model's probabilities of the shipped sample tiled to 4096x4096, post-processed
blockwise (as the Segment widget does for in-memory results over 1024x1024) with both block
sizes, alternating; prints the time, the object count and the longest gap of a 5 ms ticker
thread, which is how long one call of the post-processing held the interpreter (napari's
event loop would have waited as long).
"""

from __future__ import annotations

import argparse
import threading
import time

import dask.array as da
import numpy as np

from napari_tiled_unet import postprocess
from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.events import run_to_end
from napari_tiled_unet.model.bundle import load_model
from napari_tiled_unet.segmentation import segment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bundle = load_model(None)
    image = np.tile(nuclei_image(), (8, 8))[:4096, :4096]
    probs = np.asarray(segment(bundle, image, device="cpu").probabilities)
    params = postprocess.params_for("instances", bundle.metadata.get("postprocess"))
    for _ in range(args.rounds):
        for side in (1024, 512):
            blocks = da.from_array(probs, chunks=(-1, side, side), name=False)
            gaps: list[float] = []
            done = threading.Event()

            def tick(gaps=gaps, done=done) -> None:
                last = time.perf_counter()
                while not done.is_set():
                    time.sleep(0.005)
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now

            ticker = threading.Thread(target=tick)
            ticker.start()
            t0 = time.perf_counter()
            labels = run_to_end(postprocess.instances_blockwise_iter(blocks, None, params, block_size=side))
            seconds = time.perf_counter() - t0
            done.set()
            ticker.join()
            print(f"blocks of {side} px: {seconds:.2f} s, {labels.attrs['n_objects']} objects, "
                  f"longest hold {max(gaps):.3f} s", flush=True)


if __name__ == "__main__":
    main()
