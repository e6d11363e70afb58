"""What the Segment widget's choices cost: cancel inside the forward pass, capping the window,
and precision ``auto``. Side by side in one run; ratios are the figures to read.

    python benchmarks/bench_widget.py          # writes benchmarks/results/widget.json

Parts (see docs/benchmarks.md, "The Segment widget"):
  a  cancel inside the forward pass: the cost of its checks (a RunControl's hooks on every
     convolution) on a 2048x2048 image, and how long a cancel takes with and without them
  b  the other way to cancel quickly on a CPU, a smaller window: its cost on the same image
  c  precision auto (bf16 on this CPU) vs fp32: time and agreement of the objects
  h  the checks' cost alone, finely: one 512x512 window through the network, with and
     without the hooks, alternating 15 times (part a's whole runs are too noisy for it)

    python benchmarks/bench_widget.py --parts h   # some parts (merged into widget.json)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import machine

from napari_tiled_unet._sample_data import nuclei_image
from napari_tiled_unet.events import Cancelled, Progress, RunControl
from napari_tiled_unet.inference import resolve_device, resolve_precision
from napari_tiled_unet.metrics import match_instances
from napari_tiled_unet.model import load_model
from napari_tiled_unet.segmentation import segment, segment_iter

RESULTS = Path(__file__).parent / "results"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def cancel_latency(bundle, image, control: RunControl | None, after: float = 1.0) -> float:
    """Seconds from a cancel request ``after`` s into the first window until the run stops:
    with a RunControl the hooks raise; without, the generator stops at its next event."""
    stop_asked = []
    done = []

    def run():
        gen = segment_iter(bundle, image, device="cpu", precision="fp32", control=control)
        try:
            for event in gen:
                if stop_asked and isinstance(event, Progress):
                    break  # the first chance a generator without hooks has to stop
        except Cancelled:
            pass
        finally:
            gen.close()
            done.append(time.perf_counter())

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(after)
    stop_asked.append(time.perf_counter())
    if control is not None:
        control.stop.set()
    thread.join()
    return done[0] - stop_asked[0]


def hook_cost(bundle) -> dict:
    import torch

    from napari_tiled_unet.inference import _LayerWatch

    net = bundle.model.eval()
    x = torch.randn(1, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    plain, hooked = [], []
    with torch.inference_mode():
        net(x)
        for _ in range(15):
            plain.append(timed(lambda: net(x))[0])
            watch = _LayerWatch(net, RunControl(), 0)
            watch.start_batch(1, 1)
            with watch:
                hooked.append(timed(lambda: net(x))[0])
    return {"convolutions_per_window": len(watch.convs), "plain_median_s": float(np.median(plain)),
            "with_checks_median_s": float(np.median(hooked)),
            "ratio": float(np.median(hooked) / np.median(plain))}


def main() -> None:
    parts = sys.argv[sys.argv.index("--parts") + 1].split(",") if "--parts" in sys.argv else list("abch")
    bundle = load_model()
    image = np.tile(nuclei_image(), (4, 4))[:2048, :2048]
    path = RESULTS / "widget.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    out.update({"machine": machine() + " (2 shared cores, busy with other work)", "image": "2048x2048"})
    if "h" in parts:
        out["h"] = hook_cost(bundle)
        print("h", out["h"], flush=True)
    if not set(parts) & set("abc"):
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        return

    # a: the checks' cost, alternating to spread the machine's noise evenly
    plain, hooked = [], []
    for _ in range(2):
        plain.append(timed(lambda: segment(bundle, image, device="cpu", precision="fp32"))[0])
        hooked.append(timed(lambda: segment(bundle, image, device="cpu", precision="fp32",
                                            control=RunControl()))[0])
    out["a"] = {"plain_s": min(plain), "with_checks_s": min(hooked), "ratio": min(hooked) / min(plain),
                "cancel_with_checks_s": cancel_latency(bundle, image, RunControl()),
                "cancel_without_checks_s": cancel_latency(bundle, image, None)}
    print("a", out["a"], flush=True)

    # b: a 512 px window instead (what capping the window on the CPU would cost)
    capped = timed(lambda: segment(bundle, image, device="cpu", precision="fp32", window=512))[0]
    out["b"] = {"auto_window_s": min(plain), "window_512_s": capped, "ratio": capped / min(plain)}
    print("b", out["b"], flush=True)

    # c: precision auto vs fp32
    auto = resolve_precision("auto", resolve_device("cpu"))
    t32, r32 = timed(lambda: segment(bundle, image, device="cpu", precision="fp32"))
    tauto, rauto = timed(lambda: segment(bundle, image, device="cpu", precision="auto"))
    m = match_instances(np.asarray(r32.labels), np.asarray(rauto.labels), 0.5)
    same = float((np.asarray(r32.labels) > 0).__eq__(np.asarray(rauto.labels) > 0).mean())
    out["c"] = {"auto_is": auto, "fp32_s": t32, "auto_s": tauto, "speedup": t32 / tauto,
                "objects_fp32": r32.n_objects, "objects_auto": rauto.n_objects, "f1_at_0.5": m.f1,
                "same_foreground_fraction": same}
    print("c", out["c"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
