"""Post-processing with and without the enclosed-object merge, side by side in one run.

    python benchmarks/bench_enclosed.py [--size 4096] [--repeats 3] [--block 1024]

The probabilities are synthetic (napari_tiled_unet._synthetic.fragment_probabilities): a
dense field of small nuclei (~70,000 objects at 4096^2) and large nuclei holding bright spots
that each grow an object inside the nucleus (~1,200 fragments). Each repeat runs the in-memory
post-processing with the merge and without it (the merge replaced by a no-op), in alternating
order after one warm-up run, in a worker thread while the main thread wakes every 5 ms:
printed are the median wall and CPU seconds, their ratio, and the longest the main thread
waited for the GIL (napari's event loop would wait as long). Then the merge alone (and its
Euler screen, with how many objects it flags as having a hole) and the blockwise path (zarr in
memory, ``--block`` px blocks) with and without it, and a worst case for the merge alone:
every object a ring around a fragment.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

from napari_tiled_unet import enclosed, postprocess
from napari_tiled_unet._synthetic import fragment_probabilities


def in_thread(fn):
    """(result, wall s, CPU s of the worker, longest wait of the main thread for the GIL)."""
    out: dict = {}

    def work():
        t0, c0 = time.perf_counter(), time.thread_time()
        out["result"] = fn()
        out["wall"], out["cpu"] = time.perf_counter() - t0, time.thread_time() - c0

    worker = threading.Thread(target=work)
    gaps = []
    worker.start()
    last = time.perf_counter()
    while worker.is_alive():
        time.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last - 0.005)
        last = now
    worker.join()
    return out["result"], out["wall"], out["cpu"], max(gaps, default=0.0)


def side_by_side(run, repeats: int) -> dict[bool, list[tuple]]:
    merge = postprocess.absorb_enclosed
    times: dict[bool, list[tuple]] = {True: [], False: []}
    run()  # warm-up: imports, dask's first thread pool
    for r in range(repeats):
        for with_merge in ((True, False) if r % 2 == 0 else (False, True)):
            postprocess.absorb_enclosed = merge if with_merge else (lambda labels: labels)
            try:
                times[with_merge].append(in_thread(run))
            finally:
                postprocess.absorb_enclosed = merge
    return times


def report(title: str, times: dict[bool, list[tuple]], cpu: bool = True) -> None:
    """Medians; CPU only where the work runs in the worker thread itself (not in dask's)."""
    med = {k: [statistics.median(t[i] for t in v) for i in (1, 2)] + [max(t[3] for t in v)]
           for k, v in times.items()}
    (w1, c1, g1), (w0, c0, g0) = med[True], med[False]
    text = f"with merge {w1:.2f} s, without {w0:.2f} s (wall): ratio {w1 / w0:.3f}"
    if cpu:
        text += f"; CPU {c1:.2f} s / {c0:.2f} s: ratio {c1 / c0:.3f}"
    print(f"{title}: {text}; longest GIL wait of the main thread {1000 * g1:.0f} ms with, "
          f"{1000 * g0:.0f} ms without")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--block", type=int, default=1024)
    args = ap.parse_args()
    prob = fragment_probabilities((args.size, args.size))
    params = {"foreground_threshold": 0.5, "seed_threshold": 0.7, "min_size": 4}

    times = side_by_side(lambda: postprocess.instances_from_probabilities(prob, **params), args.repeats)
    with_merge, without = times[True][0][0], times[False][0][0]
    print(f"{args.size}x{args.size}: {int(without.max())} objects without the merge, "
          f"{int(with_merge.max())} with it")
    report("in memory", times)

    from scipy import ndimage as ndi

    foreground = postprocess._foreground(prob[0], params["foreground_threshold"])
    markers, n_seeds = ndi.label(postprocess._seeds(prob[1], foreground, params["seed_threshold"]))
    components, _ = ndi.label(foreground)
    labels = postprocess._objects(postprocess._levels(prob[1], prob[2]), markers, components, n_seeds,
                                  (0, 0), prob.shape[1:])
    labels = postprocess._fill_holes(labels)
    top = int(labels.max())
    _, screen, screen_cpu, _ = in_thread(lambda: enclosed.euler_numbers(labels, top))
    present, euler = enclosed.euler_numbers(labels, top)
    flagged = int((present & (euler != 1))[1:].sum())
    _, alone, alone_cpu, gap = in_thread(lambda: enclosed.absorb_enclosed(labels.copy()))
    print(f"the merge alone: {alone:.2f} s wall / {alone_cpu:.2f} s CPU (Euler screen {screen:.2f} s / "
          f"{screen_cpu:.2f} s CPU), longest GIL wait {1000 * gap:.0f} ms; {flagged} of the "
          f"{int(present[1:].sum())} objects have a hole")

    times = side_by_side(lambda: postprocess.instances_blockwise(prob, block_size=args.block, **params), 1)
    report(f"blockwise, {args.block} px blocks", times, cpu=False)
    worst_case(args.size)


def worst_case(size: int) -> None:
    """Every object has a hole: 12 px cells, each a ring of 8x8 px around a fragment of 2x2."""
    cell = np.zeros((12, 12), np.int64)
    cell[2:10, 2:10], cell[4:8, 4:8], cell[5:7, 5:7] = 1, 0, 2
    n = size // 12
    offsets = np.kron(2 * np.arange(n * n).reshape(n, n), np.ones((12, 12), np.int64))
    tiles = np.tile(cell, (n, n))
    labels = np.where(tiles > 0, tiles + offsets, 0)
    out, wall, cpu, gap = in_thread(lambda: enclosed.absorb_enclosed(labels.copy()))
    assert len(np.unique(out)) == n * n + 1
    print(f"worst case, {n * n} ring objects each holding a fragment: the merge alone {wall:.2f} s wall / "
          f"{cpu:.2f} s CPU, longest GIL wait {1000 * gap:.0f} ms")


if __name__ == "__main__":
    main()
