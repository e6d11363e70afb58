"""Cluster benchmark: one 8192x8192 zarr image, single process vs a LocalCluster of 2 workers.

    python benchmarks/bench_cluster.py [--size 8192] [--workers 2]

Both runs are the CLI (`napari-tiled-unet segment ... --format zarr`, with and without
`--workers N`) on the same input and model, measured side by side in one run: wall time,
and peak memory of the whole process tree (client, scheduler and workers together),
sampled every 50 ms with psutil. The outputs are compared label for label.
Results: benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent


def make_input(folder: Path, size: int) -> Path:
    import zarr

    from napari_tiled_unet._sample_data import nuclei_image

    tile = nuclei_image()
    src = zarr.open_array(str(folder / "mosaic.zarr"), mode="w", shape=(size, size), chunks=(1024, 1024),
                          dtype=tile.dtype)
    th, tw = tile.shape
    for y in range(0, size, 1024):
        for x in range(0, size, 1024):
            ys, xs = np.arange(y, min(y + 1024, size)) % th, np.arange(x, min(x + 1024, size)) % tw
            src[y : y + len(ys), x : x + len(xs)] = tile[np.ix_(ys, xs)]
    return folder / "mosaic.zarr"


def make_model(folder: Path) -> Path:
    from napari_tiled_unet.model import zoo

    if zoo.DEFAULT is not None:
        return zoo.path(zoo.DEFAULT)
    from napari_tiled_unet.training.loop import new_bundle

    return new_bundle(base_channels=8, depth=3, seed=0).save(folder / "small.safetensors")


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time and peak summed RSS of it and all its descendants."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):  # a process that just ended
                        total += p.memory_info().rss
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": peak / 2**20, "summary": json.loads(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    import zarr

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src, model = make_input(d, args.size), make_model(d)
        cli = [sys.executable, "-m", "napari_tiled_unet.cli", "segment", str(src), "-m", str(model),
               "--format", "zarr", "--device", "cpu", "--json"]
        single = run_measured([*cli, "-o", str(d / "single")])
        cluster = run_measured([*cli, "-o", str(d / "cluster"), "--workers", str(args.workers)])
        a = zarr.open_array(str(d / "single" / "mosaic_labels.zarr"), mode="r")
        b = zarr.open_array(str(d / "cluster" / "mosaic_labels.zarr"), mode="r")
        identical = all(np.array_equal(a[y : y + 2048], b[y : y + 2048]) for y in range(0, args.size, 2048))
    import os

    res = {
        "machine": f"{os.cpu_count()} cores", "image": f"{args.size}x{args.size} zarr (chunks 1024)",
        "model": Path(model).name, "workers": args.workers,
        "single": {k: single[k] for k in ("seconds", "peak_rss_mb")},
        "cluster": {k: cluster[k] for k in ("seconds", "peak_rss_mb")},
        "objects": single["summary"]["segmented"][0]["objects"],
        "speedup": single["seconds"] / cluster["seconds"],
        "identical_labels": bool(identical),
    }
    print(json.dumps(res, indent=1))
    out = HERE / "results" / "cluster.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
