"""Cost of the Segment widget's CPU window cap for a wide model, side by side in one run.

A model with 64 base channels (four times the built-in model's width) on one image, on the
CPU in fp32: the whole segmentation with the window the user asked for, and with the window
the widget lowers it to so that Cancel answers within 2 s (``_qt/cancel_window.py``); then
how long a cancel 1 s into a window of each takes. Runs alternate; medians are printed.

    nice python benchmarks/bench_cancel_window.py [--size 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time

import numpy as np
import torch


def main() -> None:
    from napari_tiled_unet._qt.cancel_window import cpu_limits
    from napari_tiled_unet._sample_data import nuclei_image
    from napari_tiled_unet.events import Cancelled, RunControl, run_to_end
    from napari_tiled_unet.model import UNet, make_metadata
    from napari_tiled_unet.model.bundle import ModelBundle
    from napari_tiled_unet.segmentation import segment_iter

    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = UNet(1, 3, base_channels=64, depth=4).eval()
    bundle = ModelBundle(net, make_metadata(net))
    image = np.tile(nuclei_image(), (8, 8))[: args.size, : args.size]
    asked = args.size
    capped = cpu_limits(net, asked, 1)
    settings = {"asked": (asked, 1), "capped": (capped.window, capped.batch_size)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    cancels: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.repeats):
        for name, (window, batch) in settings.items():
            start = time.perf_counter()
            run_to_end(segment_iter(bundle, image, device="cpu", precision="fp32", window=window,
                                    batch_size=batch))
            times[name].append(time.perf_counter() - start)
            control = RunControl()
            stopped_at: list[float] = []

            def stop(control=control, stopped_at=stopped_at) -> None:
                stopped_at.append(time.perf_counter())
                control.stop.set()

            threading.Timer(1.0, stop).start()
            with contextlib.suppress(Cancelled):
                run_to_end(segment_iter(bundle, image, device="cpu", precision="fp32", window=window,
                                        batch_size=batch, control=control))
            cancels[name].append(time.perf_counter() - stopped_at[0])
    print(f"{torch.get_num_threads()} torch threads; image {args.size}x{args.size}, fp32, 64 base channels")
    for name, (window, batch) in settings.items():
        print(f"{name:7s} window {window} batch {batch}: segment {statistics.median(times[name]):6.1f} s, "
              f"cancel 1 s in: {statistics.median(cancels[name]):5.2f} s")
    ratio = statistics.median(times["capped"]) / statistics.median(times["asked"])
    print(f"capped / asked: {ratio:.2f}")


if __name__ == "__main__":
    main()
